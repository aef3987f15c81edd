"""What every provider module offers: the wire schema of one provider family."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from extproc.errors import BadRequest, ClientError
from extproc.providers.sse import Event

# Sanity bound on a requested answer length: larger values are a bug or an attack, not a
# real model's output window.
MAX_OUTPUT_TOKENS = 1_000_000
# A rewrite that removes the field (e.g. a client's `priority`, which is the gateway's to
# decide and which providers refuse).
DROP: Any = object()


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """What governance needs from a request body. The body is forwarded as the client sent
    it unless `rewrites` or a lowered completion cap change fields of it (`body_with`)."""

    model: str
    stream: bool
    max_output_tokens: int | None  # None: the client did not say
    prompt_texts: tuple[str, ...]  # text to count with the model's tokenizer
    framing_tokens: int  # per-message overhead and fixed estimates (images, documents, …)
    # Fields to set in the body before it goes upstream (e.g. OpenAI streams asked to report
    # usage; `DROP` removes one); empty: nothing to change.
    rewrites: Mapping[str, Any] = field(default_factory=dict)
    # The client did not ask for the usage event we made the provider send: hide it.
    hide_usage_event: bool = False
    # The body field the provider enforces as the completion cap (None: the API generates
    # nothing, e.g. embeddings). The gateway writes it, clamped to the caller's budget.
    cap_field: str | None = "max_tokens"
    # Completions generated per request (`n`, `best_of`): each may reach the cap.
    completion_multiplier: int = 1
    # The smallest cap the API accepts (the Responses API refuses `max_output_tokens` < 16):
    # clamping never writes less.
    min_cap: int = 1
    # The decoded request body, for `body_with`.
    body: Mapping[str, Any] = field(default_factory=dict)

    @property
    def generates(self) -> bool:
        return self.cap_field is not None

    def body_with(self, cap: int | None) -> bytes | None:
        """The body to send instead of the client's, or None to forward it untouched: the
        rewrites, and the completion cap when it must be written."""
        changes = dict(self.rewrites)
        if cap is not None and self.cap_field is not None:
            changes[self.cap_field] = cap
        if not changes:
            return None
        sent = {k: v for k, v in {**self.body, **changes}.items() if v is not DROP}
        return json.dumps(sent, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Usage:
    """What the provider reported. `prompt_tokens` includes cached and cache-write tokens;
    `completion_tokens` includes hidden reasoning tokens (both providers bill them as
    output)."""

    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0
    cache_write_tokens: int = 0  # Anthropic's cache creation, billed at its own rate
    reasoning_tokens: int = 0  # of completion_tokens: generated but never shown

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class EventMeaning:
    """What one SSE event of an answer means to governance."""

    texts: tuple[str, ...] = ()  # generated text (content, tool arguments, reasoning)
    hide: bool = False  # drop it from what the client sees


NOTHING = EventMeaning()


class StreamReader(Protocol):
    """Reads the events of one streamed answer, in order; stateful, one per stream."""

    def read(self, event: Event) -> EventMeaning: ...

    @property
    def usage(self) -> Usage | None:
        """The provider's reported usage, once the stream has carried all of it."""

    @property
    def reported(self) -> Usage | None:
        """What the provider reported so far, complete or not (e.g. Anthropic's input
        tokens from `message_start`): a stream that ends early — cut, client gone, upstream
        error — is never settled below these numbers."""


class Provider(Protocol):
    """One provider wire schema: usage, stream events, errors, its credential header."""

    name: str
    credential_header: str

    def credential_value(self, key: str) -> str: ...

    def parse_usage(self, body: dict[str, Any]) -> Usage | None: ...

    def error_body(self, error: ClientError) -> bytes: ...

    def stream_reader(self, *, hide_usage_event: bool) -> StreamReader: ...

    def stream_error(self, error: ClientError) -> bytes:
        """One complete SSE event that makes the provider's SDK raise `error` mid-stream."""
        ...


def require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("'model' is required and must be a non-empty string", param="model")
    if len(model) > 256:
        raise BadRequest("'model' is too long", param="model")
    return model


def optional_token_count(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{field}' must be an integer", param=field)
    if value < 1 or value > MAX_OUTPUT_TOKENS:
        raise BadRequest(
            f"'{field}' must be between 1 and {MAX_OUTPUT_TOKENS}, got {value}", param=field
        )
    return value


def optional_bool(body: dict[str, Any], field: str) -> bool:
    value = body.get(field, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"'{field}' must be a boolean", param=field)
    return value
