"""What every provider module offers: the wire schema of one provider family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from extproc.errors import BadRequest, ClientError
from extproc.providers.sse import Event

# Sanity bound on a requested answer length: larger values are a bug or an attack, not a
# real model's output window.
MAX_OUTPUT_TOKENS = 1_000_000


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """What governance needs from a request body; the body itself is forwarded untouched."""

    model: str
    stream: bool
    max_output_tokens: int | None  # None: the client did not say
    prompt_texts: tuple[str, ...]  # text to count with the model's tokenizer
    framing_tokens: int  # per-message overhead the provider adds to the prompt
    # The body to send upstream instead of the client's (None: forward it untouched), e.g.
    # OpenAI streams rewritten to ask for usage.
    rewritten_body: bytes | None = None
    # The client did not ask for the usage event we made the provider send: hide it.
    hide_usage_event: bool = False


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0

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
