"""The governed endpoints: which paths carry generation, with which request parser, provider
schema and upstream cluster.

This is the *endpoint* axis (how a request is parsed); the provider module is the other axis
(how usage is read and errors are written). Which processor serves a request is decided in
`routes.py` from this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from extproc.providers import ParsedRequest, Provider
from extproc.providers import anthropic as _anthropic
from extproc.providers import openai as _openai
from extproc.providers import openai_completions as _completions
from extproc.providers import openai_embeddings as _embeddings
from extproc.providers import openai_responses as _responses


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # metrics label
    provider: Provider
    parse: Callable[[dict[str, Any]], ParsedRequest]
    upstream: str  # Envoy cluster the request is routed to


ENDPOINTS: dict[str, Endpoint] = {
    "/v1/chat/completions": Endpoint(
        "chat.completions", _openai.PROVIDER, _openai.parse_chat_request, "openai"
    ),
    "/v1/messages": Endpoint(
        "messages", _anthropic.PROVIDER, _anthropic.parse_messages_request, "anthropic"
    ),
    "/v1/responses": Endpoint(
        "responses", _responses.PROVIDER, _responses.parse_responses_request, "openai"
    ),
    "/v1/completions": Endpoint(
        "completions", _completions.PROVIDER, _completions.parse_completions_request, "openai"
    ),
    "/v1/embeddings": Endpoint(
        "embeddings", _embeddings.PROVIDER, _embeddings.parse_embeddings_request, "openai"
    ),
}

# A provider family by the upstream cluster it is served from (a `Route` names one of these).
PROVIDERS: dict[str, Provider] = {"openai": _openai.PROVIDER, "anthropic": _anthropic.PROVIDER}
_ANTHROPIC_PATHS = "/v1/messages"  # Anthropic's API lives under it; everything else is OpenAI's


def provider_for_path(path: str) -> Provider:
    """The schema a refusal of `path` is written in: the one its SDK expects."""
    return _anthropic.PROVIDER if path.startswith(_ANTHROPIC_PATHS) else _openai.PROVIDER


def path_of(raw: str) -> str:
    """The table key of a request's `:path`: the query string dropped, nothing else. Envoy
    has normalised it (dot segments, doubled slashes, escaped slashes), so it is exactly what
    the upstream will see; any other spelling (a trailing slash, `;params`, upper case) is a
    different path and is refused, not guessed at."""
    return raw.partition("?")[0]
