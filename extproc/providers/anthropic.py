"""Anthropic wire schema: Messages requests, usage, stream events and `{"type": "error"}` bodies.

The real `POST /v1/messages` of api.anthropic.com. A stream is a sequence of named events:
message_start (usage so far) → content_block_start / content_block_delta / content_block_stop
(per block) → message_delta (final output tokens) → message_stop, with `ping` anywhere and
`error` when the provider fails mid-stream. Anthropic always streams usage, so requests are
never rewritten and no event is ever hidden.
"""

from __future__ import annotations

import json
from typing import Any, TypeGuard

from extproc.errors import BadRequest, ClientError
from extproc.providers import anthropic_content
from extproc.providers._base import (
    NOTHING,
    EventMeaning,
    ParsedRequest,
    Usage,
    optional_bool,
    optional_token_count,
    require_model,
)
from extproc.providers.prompt_parts import PromptParts
from extproc.providers.sse import Event

# Matches the project's mock provider (3 per message) so e2e counts agree; Anthropic does not
# publish its framing, and the provider's usage settles the bill.
TOKENS_PER_MESSAGE = 3

# Anthropic's documented error types by HTTP status
# (https://docs.anthropic.com/en/api/errors). Our 503 (a dependency is down, fail closed) is
# rendered like Anthropic's 529: temporary, retry later, which the SDK already retries.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}

_ROLES = ("user", "assistant")
# Where generated text sits in a content block start and in each kind of block delta.
_BLOCK_TEXT = {
    "text": "text",
    "thinking": "thinking",
    "tool_use": "name",
    "server_tool_use": "name",
}
_DELTA_TEXT = {
    "text_delta": "text",
    "input_json_delta": "partial_json",
    "thinking_delta": "thinking",
}
# Events that carry nothing we count: skipped without parsing their JSON.
_SKIP_EVENTS = frozenset(("ping", "content_block_stop", "message_stop", "error"))
# Usage fields, in the order of the reader's counts.
_INPUT, _CREATION, _READ, _OUTPUT = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
)


class AnthropicProvider:
    name = "anthropic"
    credential_header = "x-api-key"

    def credential_value(self, key: str) -> str:
        return key

    def parse_usage(self, body: dict[str, Any]) -> Usage | None:
        """Usage of a non-streamed Message; None when missing or untrustworthy."""
        counts = _usage_counts(body.get("usage"), required=(_INPUT, _OUTPUT))
        return None if counts is None else _to_usage(counts)

    def error_body(self, error: ClientError) -> bytes:
        return _dumps(_error_payload(error)).encode()

    def stream_reader(self, *, hide_usage_event: bool) -> AnthropicStreamReader:
        """`hide_usage_event` has no effect: Anthropic's usage rides events the SDK needs
        (message_start, message_delta), and we never ask for usage the client did not."""
        return AnthropicStreamReader()

    def stream_error(self, error: ClientError) -> bytes:
        """An `error` event: the Anthropic SDK raises `APIStatusError` carrying this body."""
        return f"event: error\ndata: {_dumps(_error_payload(error))}\n\n".encode()


PROVIDER = AnthropicProvider()


class AnthropicStreamReader:
    """Generated text per event, and the usage once message_start and message_delta gave it.

    Runs once per event: events without countable content are skipped by name, the others are
    parsed once. Anything malformed counts as NOTHING and never raises — our parsing must never
    break a user's stream; an event we cannot read is at worst a few uncounted tokens, and the
    provider's usage (or the reservation) still settles the bill.
    """

    __slots__ = ("_counts", "_finished", "_started")

    def __init__(self) -> None:
        self._counts = [0, 0, 0, 0]  # input, cache creation, cache read, output
        self._started = False
        self._finished = False

    def read(self, event: Event) -> EventMeaning:
        if event.event in _SKIP_EVENTS:
            return NOTHING
        try:
            data = json.loads(event.data)
        except (ValueError, RecursionError):
            return NOTHING
        if not isinstance(data, dict):
            return NOTHING
        kind = data.get("type")
        if kind == "content_block_delta":
            return _meaning(data.get("delta"), _DELTA_TEXT)
        if kind == "content_block_start":
            return _meaning(data.get("content_block"), _BLOCK_TEXT)
        if kind == "message_start":
            message = data.get("message")
            if isinstance(message, dict):
                self._started |= self._merge(message.get("usage"), _INPUT)
        elif kind == "message_delta":
            self._finished |= self._merge(data.get("usage"), _OUTPUT)
        return NOTHING

    @property
    def usage(self) -> Usage | None:
        return _to_usage(self._counts) if self._started and self._finished else None

    @property
    def reported(self) -> Usage | None:
        """From `message_start` on: the input (and cache) tokens, and the output so far."""
        return _to_usage(self._counts) if self._started or self._finished else None

    def _merge(self, usage: object, required: str) -> bool:
        """Fold one usage object in, field by field by max: output_tokens is cumulative, and
        newer API versions repeat the input counts in message_delta."""
        counts = _usage_counts(usage, required=(required,))
        if counts is None:
            return False
        self._counts = [max(a, b) for a, b in zip(self._counts, counts, strict=True)]
        return True


def _meaning(block: object, fields: dict[str, str]) -> EventMeaning:
    if not isinstance(block, dict):
        return NOTHING
    kind = block.get("type")
    field = fields.get(kind) if isinstance(kind, str) else None
    text = block.get(field) if field else None
    return EventMeaning(texts=(text,)) if isinstance(text, str) and text else NOTHING


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _usage_counts(usage: object, *, required: tuple[str, ...]) -> list[int] | None:
    """[input, cache creation, cache read, output], or None if a `required` field is missing
    or any present field is not a count. Absent or null optional fields are 0; a malformed
    cache count makes the prompt total untrustworthy, so it rejects the whole usage."""
    if not isinstance(usage, dict) or not all(_count(usage.get(f)) for f in required):
        return None
    counts: list[int] = []
    for field in (_INPUT, _CREATION, _READ, _OUTPUT):
        value = usage.get(field)
        if value is None:
            value = 0
        elif not _count(value):
            return None
        counts.append(value)
    return counts


def _to_usage(counts: list[int]) -> Usage:
    """Anthropic's input_tokens exclude cached tokens; our prompt tokens include them."""
    fresh, creation, read, output = counts
    return Usage(
        fresh + creation + read, output, cached_prompt_tokens=read, cache_write_tokens=creation
    )


def _error_payload(error: ClientError) -> dict[str, Any]:
    """By status, not our `error_type`: e.g. a 413 is `request_too_large` on Anthropic."""
    kind = ERROR_TYPES.get(
        error.status, "api_error" if error.status >= 500 else "invalid_request_error"
    )
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def _dumps(value: object) -> str:
    """Compact, unescaped JSON: as Anthropic sends it, and what tokens are counted on."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def parse_messages_request(body: dict[str, Any]) -> ParsedRequest:
    """`POST /v1/messages`: every billed prompt part counted (`anthropic_content`)."""
    model = require_model(body)
    if body.get("max_tokens") is None:
        raise BadRequest("'max_tokens' is required", param="max_tokens")
    max_tokens = optional_token_count(body, "max_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", param="messages")
    prompt = PromptParts()
    anthropic_content.content(prompt, body.get("system"), model)
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"'messages[{index}]' must be an object", param="messages")
        if message.get("role") not in _ROLES:
            raise BadRequest(
                f"'messages[{index}].role' must be 'user' or 'assistant'", param="messages"
            )
        prompt.add(TOKENS_PER_MESSAGE)
        anthropic_content.content(prompt, message.get("content"), model)
    anthropic_content.tools(prompt, body, model)
    return ParsedRequest(
        model=model,
        stream=optional_bool(body, "stream"),
        max_output_tokens=max_tokens,
        prompt_texts=tuple(prompt.texts),
        framing_tokens=prompt.fixed,
        cap_field="max_tokens",
        body=body,
    )
