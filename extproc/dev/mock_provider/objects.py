"""Endpoints beyond generation: models, files, Anthropic's token counter, embeddings.

The gateway forwards these (but embeddings, which it governs) only when a policy `Route`
opens them, so the mock answers them to let an e2e test (and `make run`) show an opened
route end to end: the client gets the provider's answer, the recorder shows what was
forwarded. They are stateless: a file "exists"
for any id and deleting it changes nothing; nothing here is a storage simulator.

Paths are matched exactly (`/v1/models/{id}` has one segment after the prefix); anything else
is the provider's 404, a known path with another method its 405, as the real APIs answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from extproc.dev.mock_provider import embeddings
from extproc.dev.mock_provider.anthropic import AnthropicDialect
from extproc.dev.mock_provider.common import ApiError
from extproc.dev.mock_provider.parser import Request
from extproc.providers.tokens import encoding_name_for

MODELS = ("gpt-4o", "gpt-4o-mini", "claude-haiku-4-5", "claude-opus-4-5")
CREATED = 1_700_000_000
_ANTHROPIC = AnthropicDialect()

Answer = Callable[[Request, str, object], dict[str, Any]]
"""(request, the `{id}` segment or "", parsed JSON body) -> the JSON answer."""
Cost = Callable[[dict[str, Any]], int]
"""The JSON answer -> the tokens it costs the key's rate limit."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """`provider` is whose format and credential apply: openai, anthropic, or `either`
    (`/v1/models` exists on both; a request carrying `anthropic-version` is Anthropic's).
    `cost`, when set, makes an answer count against the key's rate limits (1 request and that
    many tokens), as model work does; other endpoints only report the key's limits."""

    provider: str
    answers: dict[str, Answer]
    cost: Cost | None = None

    def provider_for(self, request: Request) -> str:
        if self.provider != "either":
            return self.provider
        return "anthropic" if request.header("anthropic-version") else "openai"


def find(path: str) -> tuple[Endpoint, str] | None:
    """The endpoint serving `path` and its `{id}` segment ("" for collection paths)."""
    exact = _EXACT.get(path)
    if exact is not None:
        return exact, ""
    prefix, _, item = path.rpartition("/")
    one = _ONE.get(prefix)
    if one is not None and item:
        return one, item
    return None


def provider_of_unknown(path: str) -> str:
    """Whose 404 an unknown path gets: Anthropic's under `/v1/messages`, else OpenAI's."""
    return "anthropic" if path.startswith("/v1/messages") else "openai"


def _models(request: Request, _: str, __: object) -> dict[str, Any]:
    if request.header("anthropic-version"):
        data = [_anthropic_model(m) for m in MODELS if m.startswith("claude")]
        first, last = data[0]["id"], data[-1]["id"]
        return {"data": data, "has_more": False, "first_id": first, "last_id": last}
    return {"object": "list", "data": [_openai_model(m) for m in MODELS if m.startswith("gpt")]}


def _model(request: Request, model: str, _: object) -> dict[str, Any]:
    if model not in MODELS:
        raise ApiError(404, f"The model '{model}' does not exist")
    return _anthropic_model(model) if request.header("anthropic-version") else _openai_model(model)


def _openai_model(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": CREATED, "owned_by": "system"}


def _anthropic_model(model: str) -> dict[str, Any]:
    created = "2025-10-01T00:00:00Z"
    return {"type": "model", "id": model, "display_name": model, "created_at": created}


def _files(_: Request, __: str, ___: object) -> dict[str, Any]:
    return {"object": "list", "data": [], "has_more": False}


def _file(_: Request, file_id: str, __: object) -> dict[str, Any]:
    return {
        "id": file_id,
        "object": "file",
        "bytes": 0,
        "created_at": int(time.time()),
        "filename": f"{file_id}.jsonl",
        "purpose": "batch",
    }


def _file_deleted(_: Request, file_id: str, __: object) -> dict[str, Any]:
    return {"id": file_id, "object": "file", "deleted": True}


def _count_tokens(_: Request, __: str, payload: object) -> dict[str, Any]:
    """Anthropic's counter: the prompt tokens a Messages request with this body would bill."""
    if not isinstance(payload, dict):
        raise ApiError(400, "the request body must be a JSON object")
    parsed = _ANTHROPIC.parse({**payload, "max_tokens": 1})  # the counter takes no max_tokens
    return {"input_tokens": parsed.prompt_tokens(encoding_name_for(parsed.model))}


_EXACT: dict[str, Endpoint] = {
    "/v1/models": Endpoint(provider="either", answers={"GET": _models}),
    "/v1/files": Endpoint(provider="openai", answers={"GET": _files}),
    "/v1/messages/count_tokens": Endpoint(provider="anthropic", answers={"POST": _count_tokens}),
    "/v1/embeddings": Endpoint(
        provider="openai", answers={"POST": embeddings.answer}, cost=embeddings.cost
    ),
}
_ONE: dict[str, Endpoint] = {
    "/v1/models": Endpoint(provider="either", answers={"GET": _model}),
    "/v1/files": Endpoint(provider="openai", answers={"GET": _file, "DELETE": _file_deleted}),
}
