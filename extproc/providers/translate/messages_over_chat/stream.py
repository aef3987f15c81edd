"""An OpenAI chat.completion.chunk stream as the events of an Anthropic Messages stream.

message_start (at the backend's first chunk: its id and model; input tokens 0, since OpenAI
reports usage only in its last chunk) → per block content_block_start / content_block_delta /
content_block_stop → message_delta (stop_reason, and the whole usage) → message_stop.

Blocks are numbered in order of appearance: text (content or refusal pieces, `text_delta`)
and one `tool_use` block per tool call (`input_json_delta` with the argument pieces as sent);
a block ends when the next kind starts. OpenAI sends finish_reason one chunk before its usage,
so message_delta waits for the usage (or `[DONE]`): the client's usage is never invented.
"""

from __future__ import annotations

import json
from typing import Any

from extproc.providers.sse import SSEError, SSEParser
from extproc.providers.translate.messages_over_chat.answer import (
    STREAM_ERROR_TYPES,
    dumps,
    openai_error_message,
    stop_reason,
    tool_use,
    usage,
)

_TEXT = "text"  # the open block is text (else a tool call's OpenAI index, or None)
_ZERO_USAGE = usage(None)


def event(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {dumps(payload)}\n\n".encode()


def error_event(kind: str, text: str) -> bytes:
    return event("error", {"type": "error", "error": {"type": kind, "message": text}})


class MessagesStream:
    """One streamed answer; `feed` and `close` return the Anthropic SSE bytes they complete.

    After an `error` event or message_stop nothing more is sent. `close()` before the stream
    was complete (no finish with usage, no `[DONE]`) sends one `error` event (api_error): the
    SDK raises instead of handing over a message silently cut short; nothing else is invented.
    """

    __slots__ = ("_blocks", "_ended", "_finish", "_open", "_parser", "_started", "_tools", "_usage")

    def __init__(self) -> None:
        self._parser = SSEParser()
        self._started = False
        self._ended = False
        self._open: str | int | None = None
        self._blocks = 0  # blocks opened so far (the next block's index)
        self._tools: dict[int, int] = {}  # OpenAI tool call index -> block index
        self._finish: object = None
        self._usage: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> bytes:
        if self._ended:
            return b""
        out: list[bytes] = []
        try:
            events = self._parser.feed(chunk)
        except SSEError:  # an event over the parser's bound: the stream cannot be read on
            self._ended = True
            return error_event("api_error", "the backend's stream could not be read")
        for sse in events:
            self._read(sse.data, out)
            if self._ended:
                break
        return b"".join(out)

    def close(self) -> bytes:
        if self._ended or not self._started:
            return b""
        self._ended = True
        return error_event("api_error", "the backend's stream ended before it was complete")

    def _read(self, data: str, out: list[bytes]) -> None:
        if data == "[DONE]":
            if not self._started:
                self._ended = True
                out.append(error_event("api_error", "the backend's stream carried no answer"))
            else:
                self._end(out)
            return
        try:
            chunk = json.loads(data)
        except (ValueError, RecursionError):
            return  # not a chunk (OpenAI sends none such): nothing to translate
        if not isinstance(chunk, dict):
            return
        if chunk.get("error") is not None:
            self._error(chunk, out)
            return
        if not self._started:
            self._start(chunk, out)
        choices = chunk.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if isinstance(choice, dict):
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._delta(delta, out)
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
                self._stop_block(out)  # the last block is complete; the usage may follow
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        if self._finish is not None and self._usage is not None:
            self._end(out)

    def _start(self, chunk: dict[str, Any], out: list[bytes]) -> None:
        self._started = True
        message: dict[str, Any] = {
            "id": chunk.get("id"),
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _ZERO_USAGE,
        }
        out.append(event("message_start", {"type": "message_start", "message": message}))

    def _delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        for field in ("content", "refusal"):
            text = delta.get(field)
            if isinstance(text, str) and text:
                if self._open != _TEXT:
                    self._begin(_TEXT, {"type": "text", "text": ""}, out)
                self._block_delta(self._blocks - 1, {"type": "text_delta", "text": text}, out)
        calls = delta.get("tool_calls")
        for position, call in enumerate(calls if isinstance(calls, list) else ()):
            if isinstance(call, dict):
                self._tool_call(call, position, out)

    def _tool_call(self, call: dict[str, Any], position: int, out: list[bytes]) -> None:
        index = call.get("index")
        if not isinstance(index, int):
            index = position
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        if index not in self._tools:
            self._begin(index, tool_use(call.get("id"), function.get("name"), index), out)
            self._tools[index] = self._blocks - 1
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            # To its own block even if another began since (OpenAI sends calls one by one;
            # the SDK's accumulator joins deltas by index).
            delta = {"type": "input_json_delta", "partial_json": arguments}
            self._block_delta(self._tools[index], delta, out)

    def _begin(self, kind: str | int, block: dict[str, Any], out: list[bytes]) -> None:
        self._stop_block(out)
        self._open = kind
        start = {"type": "content_block_start", "index": self._blocks, "content_block": block}
        out.append(event("content_block_start", start))
        self._blocks += 1

    def _block_delta(self, index: int, delta: dict[str, Any], out: list[bytes]) -> None:
        payload = {"type": "content_block_delta", "index": index, "delta": delta}
        out.append(event("content_block_delta", payload))

    def _stop_block(self, out: list[bytes]) -> None:
        if self._open is not None:
            stop = {"type": "content_block_stop", "index": self._blocks - 1}
            out.append(event("content_block_stop", stop))
            self._open = None

    def _end(self, out: list[bytes]) -> None:
        self._stop_block(out)
        self._ended = True
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(self._finish), "stop_sequence": None},
            "usage": usage(self._usage),
        }
        out.append(event("message_delta", delta))
        out.append(event("message_stop", {"type": "message_stop"}))

    def _error(self, chunk: dict[str, Any], out: list[bytes]) -> None:
        self._ended = True
        found = chunk["error"]
        kind = found.get("type") if isinstance(found, dict) else None
        text = openai_error_message(chunk) or "the backend's stream failed"
        out.append(error_event(STREAM_ERROR_TYPES.get(str(kind), "api_error"), text))
