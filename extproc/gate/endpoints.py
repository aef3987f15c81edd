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
}

# Unknown paths are answered in this schema when they must be refused.
DEFAULT_PROVIDER: Provider = _openai.PROVIDER
DEFAULT_UPSTREAM = "openai"


def normalise(path: str) -> str:
    """The table key of a request path: query string and trailing slash dropped."""
    return path.partition("?")[0].rstrip("/") or "/"
