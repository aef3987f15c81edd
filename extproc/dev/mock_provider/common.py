"""Types shared by the provider dialects and the request router.

A dialect (OpenAI, Anthropic) owns its wire format: how a request body is validated, how an
answer and an error are rendered, and which credential header it takes. The router owns
everything the dialects have in common (scripting headers, auth, recording, token counting),
so adding a provider to the mock is one module implementing `Dialect`.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Protocol

from extproc.providers.tokens import count

Headers = tuple[tuple[str, str], ...]

_ALPHABET = (string.ascii_letters + string.digits).encode()
_TO_ALPHABET = bytes(_ALPHABET[b % len(_ALPHABET)] for b in range(256))


class ApiError(Exception):
    """A client-visible failure; each dialect renders it in its provider's error format.

    `headers` go on the error answer (a rate-limit refusal carries `retry-after` and the
    provider's rate-limit headers).
    """

    def __init__(self, status: int, message: str, *, headers: Headers = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """What the mock needs from a validated request body, independent of the provider.

    `overhead` is the dialect's fixed per-message token cost (and any tokens not given as
    text: token arrays, a previous response's context), so prompt tokens are
    `sum(count(t) for t in texts) + overhead` for every provider. `include_usage` says whether
    a stream reports usage (OpenAI: `stream_options.include_usage`; Anthropic: always).
    `choices` completions are returned and `generated` (at least as many) are billed: chat's
    and legacy completions' `n`, legacy `best_of`, times a legacy batch of prompts.
    """

    model: str
    stream: bool
    max_tokens: int | None
    include_usage: bool
    texts: tuple[str, ...]
    overhead: int
    choices: int = 1
    generated: int = 1

    def prompt_tokens(self, encoding: str) -> int:
        return sum(count(t, encoding) for t in self.texts) + self.overhead


@dataclass(frozen=True, slots=True)
class Completion:
    """One generated answer with its exact token accounting.

    `words` is the first returned choice, `others` the rest (`n` > 1). `completion_tokens`
    is everything billed: every generated choice's words and its hidden reasoning
    (`reasoning_tokens`, all choices together). `cached_tokens` of `prompt_tokens` were
    read from the provider's prompt cache.
    """

    id: str
    created: int
    model: str
    words: list[str]
    prompt_tokens: int
    completion_tokens: int
    truncated: bool
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    others: tuple[list[str], ...] = ()

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def choices(self) -> tuple[list[str], ...]:
        return (self.words, *self.others)


class Dialect(Protocol):
    """One provider's wire format. Implementations are stateless.

    `provider` ("openai" or "anthropic") names the family whose conventions the answer
    follows beyond the body: credential, error format, rate-limit headers.
    """

    provider: str
    path: str
    key_header: str
    key_prefix: str
    request_id_header: str

    def new_id(self) -> str: ...

    def parse(self, payload: object) -> ParsedRequest: ...

    def error_body(self, status: int, message: str) -> bytes: ...

    def completion_body(self, c: Completion, *, omit_usage: bool) -> bytes: ...

    def stream_events(
        self, c: Completion, *, per_chunk: int, send_usage: bool
    ) -> Generator[bytes, None, None]: ...


def dumps(obj: Any) -> str:
    """Compact JSON, as the providers send it (no spaces after separators)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def random_id(prefix: str, length: int) -> str:
    """Provider-looking opaque ids, random like the real ones (the answer text is what is
    deterministic). One urandom call and a byte translation: ids are on every response."""
    return prefix + os.urandom(length).translate(_TO_ALPHABET).decode("ascii")


def require_messages(payload: dict[str, Any]) -> list[Any]:
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty array")
    return messages


def require_model(payload: dict[str, Any]) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must provide a model parameter")
    return model


def optional_bool(payload: dict[str, Any], field: str) -> bool:
    value = payload.get(field, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"'{field}' must be a boolean")
    return value


def positive_int(payload: dict[str, Any], field: str) -> int | None:
    value = payload.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, f"'{field}' must be an integer >= 1")
    return value


def choice_count(payload: dict[str, Any], field: str) -> int:
    """`n` / `best_of`: completions per prompt, 1 to 128 (OpenAI's bound), 1 when absent."""
    value = positive_int(payload, field)
    if value is None:
        return 1
    if value > 128:
        raise ApiError(400, f"'{field}' must be at most 128")
    return value


def block_texts(content: object) -> list[str]:
    """Text of a message's content: a plain string, or the `text` of each text part/block."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
    return []
