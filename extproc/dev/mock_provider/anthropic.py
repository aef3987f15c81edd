"""Anthropic Messages, as the real API sends it (JSON answers and named SSE events).

A stream is message_start (input tokens, output_tokens 1) → content_block_start → ping →
content_block_delta (n times) → content_block_stop → message_delta (stop_reason, output tokens) →
message_stop, each as `event: <type>` + `data: <json>`, exactly the sequence the SDK's
accumulator and the gateway's codec expect.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from extproc.dev.mock_provider.common import (
    ApiError,
    Completion,
    ParsedRequest,
    block_texts,
    dumps,
    optional_bool,
    positive_int,
    random_id,
    require_messages,
    require_model,
)
from extproc.dev.mock_provider.text import chunk_texts

_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


_EMPTY_TEXT = {"type": "text", "text": ""}


class AnthropicDialect:
    """`POST /v1/messages`, credential `x-api-key: <key>`."""

    provider = "anthropic"
    path = "/v1/messages"
    key_header = "x-api-key"
    key_prefix = ""
    request_id_header = "request-id"

    def new_id(self) -> str:
        return random_id("msg_01", 22)

    def parse(self, payload: object) -> ParsedRequest:
        if not isinstance(payload, dict):
            raise ApiError(400, "the request body must be a JSON object")
        model = require_model(payload)
        if payload.get("max_tokens") is None:
            raise ApiError(400, "max_tokens: Field required")
        max_tokens = positive_int(payload, "max_tokens")
        messages = require_messages(payload)
        texts = block_texts(payload.get("system"))
        for message in messages:
            if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
                raise ApiError(400, "each message must have role 'user' or 'assistant'")
            texts.extend(block_texts(message.get("content")))
        return ParsedRequest(
            model=model,
            stream=optional_bool(payload, "stream"),
            max_tokens=max_tokens,
            include_usage=True,
            texts=tuple(texts),
            overhead=3 * len(messages),
        )

    def error_body(self, status: int, message: str) -> bytes:
        kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()

    def completion_body(self, c: Completion, *, omit_usage: bool) -> bytes:
        body = _message(c, text=c.text, stop_reason=_stop(c))
        if not omit_usage:
            body["usage"] = _usage(c, c.completion_tokens)
        return dumps(body).encode()

    def stream_events(
        self, c: Completion, *, per_chunk: int, send_usage: bool
    ) -> Generator[bytes, None, None]:
        start = _message(c, text=None, stop_reason=None)
        if send_usage:
            start["usage"] = _usage(c, 1)
        yield _event("message_start", {"type": "message_start", "message": start})
        block = {"type": "content_block_start", "index": 0, "content_block": _EMPTY_TEXT}
        yield _event("content_block_start", block)
        yield b'event: ping\ndata: {"type": "ping"}\n\n'
        head = 'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        for piece in chunk_texts(c.words, per_chunk):
            yield f'{head}"delta":{{"type":"text_delta","text":{dumps(piece)}}}}}\n\n'.encode()
        yield _event("content_block_stop", {"type": "content_block_stop", "index": 0})
        delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": _stop(c), "stop_sequence": None},
        }
        if send_usage:
            delta["usage"] = {"output_tokens": c.completion_tokens}
        yield _event("message_delta", delta)
        yield _event("message_stop", {"type": "message_stop"})


def _message(c: Completion, *, text: str | None, stop_reason: str | None) -> dict[str, Any]:
    """The message object; `text=None` renders the empty content of a stream's message_start."""
    return {
        "id": c.id,
        "type": "message",
        "role": "assistant",
        "model": c.model,
        "content": [] if text is None else [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
    }


def _usage(c: Completion, output_tokens: int) -> dict[str, int]:
    """Anthropic's `input_tokens` exclude the tokens read from the cache."""
    return {
        "input_tokens": c.prompt_tokens - c.cached_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": c.cached_tokens,
        "output_tokens": output_tokens,
    }


def _stop(c: Completion) -> str:
    return "max_tokens" if c.truncated else "end_turn"


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {dumps(data)}\n\n".encode()
