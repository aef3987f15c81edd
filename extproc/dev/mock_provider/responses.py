"""OpenAI Responses API, as the real API sends it (a `response` object; typed SSE events).

A stream is response.created → response.in_progress → (a reasoning item added and done, when
the request was scripted to reason) → the message item added → its output_text part added →
response.output_text.delta (n times) → output_text.done → content_part.done →
output_item.done → response.completed (or response.incomplete when the cap cut it), each as
`event: <type>` + `data: {"type": <type>, "sequence_number": i, …}`, with no `[DONE]`. Usage
is always sent, in the terminal event (`x-mock-omit-usage` sends `usage: null`).

`previous_response_id` is honoured without storing anything: the id of every response the
mock makes ends with 10 hex digits holding its context (input plus visible output tokens),
which a later request naming it adds to its input tokens, as the real API bills the history
it replays. An id the mock did not make is the real API's 400.
"""

from __future__ import annotations

import os
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
    require_model,
)
from extproc.dev.mock_provider.openai import OpenAIDialect
from extproc.dev.mock_provider.text import chunk_texts

TOKENS_PER_ITEM = 3
REPLY_PRIMING_TOKENS = 3
MIN_OUTPUT_TOKENS = 16  # the real API refuses a smaller max_output_tokens
_ID_HEX = 40  # random part of a response id
_CONTEXT_HEX = 10  # the context suffix (see the module docstring)
# A request must name some context: an input, or a history or template held by the API.
_CONTEXT_FIELDS = ("input", "previous_response_id", "conversation", "prompt")


class ResponsesDialect(OpenAIDialect):
    """`POST /v1/responses`; OpenAI's credential, request id and error format."""

    path = "/v1/responses"

    def new_id(self) -> str:
        return "resp_" + os.urandom(_ID_HEX // 2).hex()

    def parse(self, payload: object) -> ParsedRequest:
        if not isinstance(payload, dict):
            raise ApiError(400, "the request body must be a JSON object")
        model = require_model(payload)
        if all(payload.get(f) is None for f in _CONTEXT_FIELDS):
            raise ApiError(400, "Missing required parameter: 'input'.")
        texts: list[str] = []
        overhead = REPLY_PRIMING_TOKENS + _previous_context(payload.get("previous_response_id"))
        for field, role in (("instructions", "developer"), ("input", "user")):
            value = payload.get(field)
            if isinstance(value, str):
                texts.extend((role, value))
                overhead += TOKENS_PER_ITEM
            elif isinstance(value, list):
                overhead += _items(value, texts)
            elif value is not None:
                raise ApiError(400, f"Invalid type for '{field}'")
        if payload.get("tools"):
            texts.append(dumps(payload["tools"]))
        text = payload.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
        if isinstance(fmt, dict) and fmt.get("type") != "text":
            texts.append(dumps(fmt))
        return ParsedRequest(
            model=model,
            stream=optional_bool(payload, "stream"),
            max_tokens=_max_output_tokens(payload),
            include_usage=True,
            texts=tuple(texts),
            overhead=overhead,
        )

    def completion_body(self, c: Completion, *, omit_usage: bool) -> bytes:
        output = [item for item in (_reasoning_item(c), _message_item(c, "completed")) if item]
        return dumps(_response(c, _status(c), output, None if omit_usage else usage(c))).encode()

    def stream_events(
        self, c: Completion, *, per_chunk: int, send_usage: bool
    ) -> Generator[bytes, None, None]:
        events = _Events()
        yield events.next("response.created", response=_response(c, "in_progress", [], None))
        yield events.next("response.in_progress", response=_response(c, "in_progress", [], None))
        output: list[dict[str, Any]] = []
        reasoning = _reasoning_item(c)
        if reasoning is not None:
            yield events.next("response.output_item.added", output_index=0, item=reasoning)
            yield events.next("response.output_item.done", output_index=0, item=reasoning)
            output.append(reasoning)
        message = _message_item(c, "completed")
        if message is not None:
            yield from _message_events(events, c, len(output), per_chunk)
            output.append(message)
        status = _status(c)
        final = _response(c, status, output, usage(c) if send_usage else None)
        yield events.next(f"response.{status}", response=final)


class _Events:
    """Renders events in order, numbering them as the real API does."""

    def __init__(self) -> None:
        self._sequence = 0

    def next(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return f"event: {kind}\ndata: {dumps(data)}\n\n".encode()


def _message_events(
    events: _Events, c: Completion, index: int, per_chunk: int
) -> Generator[bytes, None, None]:
    item = _message_item(c, "in_progress")
    assert item is not None
    at = {"item_id": item["id"], "output_index": index, "content_index": 0}
    yield events.next("response.output_item.added", output_index=index, item=item)
    yield events.next("response.content_part.added", **at, part=_text_part(""))
    for piece in chunk_texts(c.words, per_chunk):
        yield events.next("response.output_text.delta", **at, delta=piece, logprobs=[])
    yield events.next("response.output_text.done", **at, text=c.text, logprobs=[])
    yield events.next("response.content_part.done", **at, part=_text_part(c.text))
    done = _message_item(c, "completed")
    yield events.next("response.output_item.done", output_index=index, item=done)


def usage(c: Completion) -> dict[str, Any]:
    return {
        "input_tokens": c.prompt_tokens,
        "input_tokens_details": {"cached_tokens": c.cached_tokens},
        "output_tokens": c.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": c.reasoning_tokens},
        "total_tokens": c.prompt_tokens + c.completion_tokens,
    }


def response_id(c: Completion) -> str:
    """The id a later request can name as `previous_response_id`."""
    context = c.prompt_tokens + c.completion_tokens - c.reasoning_tokens
    return f"{c.id}{context:0{_CONTEXT_HEX}x}"


def _previous_context(previous: object) -> int:
    if previous is None:
        return 0
    text = previous if isinstance(previous, str) else ""
    suffix = text[-_CONTEXT_HEX:]
    expected = len("resp_") + _ID_HEX + _CONTEXT_HEX
    if len(text) != expected or not text.startswith("resp_") or not _is_hex(text[5:]):
        raise ApiError(400, f"Previous response with id '{str(previous)[:80]}' not found.")
    return int(suffix, 16)


def _is_hex(text: str) -> bool:
    return all(ch in "0123456789abcdef" for ch in text)


def _items(items: list[Any], texts: list[str]) -> int:
    """Collect the text of input items; return their framing tokens. Messages (their role
    and text, as OpenAI's chat framing counts them), function calls and outputs, reasoning
    summaries; other items cost their framing only."""
    overhead = 0
    for item in items:
        if not isinstance(item, dict):
            raise ApiError(400, "Invalid type for 'input[]': expected an object")
        overhead += TOKENS_PER_ITEM
        kind = item.get("type")
        if kind in (None, "message"):
            role = item.get("role")
            texts.extend([role] if isinstance(role, str) else [])
            texts.extend(block_texts(item.get("content")))
        elif kind in ("function_call", "function_call_output", "custom_tool_call"):
            texts.extend(
                value
                for value in (item.get(f) for f in ("name", "arguments", "input", "output"))
                if isinstance(value, str)
            )
        elif kind == "reasoning":
            texts.extend(block_texts(item.get("summary")))
    return overhead


def _max_output_tokens(payload: dict[str, Any]) -> int | None:
    value = positive_int(payload, "max_output_tokens")
    if value is not None and value < MIN_OUTPUT_TOKENS:
        raise ApiError(
            400,
            "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
            f"{MIN_OUTPUT_TOKENS}, but got {value} instead.",
        )
    return value


def _status(c: Completion) -> str:
    return "incomplete" if c.truncated else "completed"


def _response(
    c: Completion, status: str, output: list[dict[str, Any]], used: dict[str, Any] | None
) -> dict[str, Any]:
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": response_id(c),
        "object": "response",
        "created_at": c.created,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": None,
        "max_output_tokens": None,
        "model": c.model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": used,
        "user": None,
        "metadata": {},
    }


def _reasoning_item(c: Completion) -> dict[str, Any] | None:
    if not c.reasoning_tokens:
        return None
    return {"id": "rs_" + c.id[5:], "type": "reasoning", "summary": []}


def _message_item(c: Completion, status: str) -> dict[str, Any] | None:
    """The assistant message; None when the cap left no words after reasoning."""
    if not c.words:
        return None
    content = [_text_part(c.text)] if status == "completed" else []
    return {
        "id": "msg_" + c.id[5:],
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
