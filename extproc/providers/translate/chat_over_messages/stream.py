"""An Anthropic Messages event stream as OpenAI `chat.completion.chunk` events, as bytes arrive.

Event by event (`replies` holds the shared mappings):
- message_start: the opening chunk, delta `{"role": "assistant", "content": "", "refusal":
  null}`; its id and model are every chunk's (the Message id is kept as the completion id);
- text blocks: each `text_delta` is a `delta.content` chunk;
- tool_use blocks: the start is a chunk with `delta.tool_calls[0]` = `{index, id, type:
  "function", function: {name, arguments: ""}}` (`index` counts tool calls from 0, as
  OpenAI's does), each `input_json_delta` piece a chunk with `{index, function: {arguments}}`;
- thinking and redacted_thinking blocks, and any block a translated request cannot cause
  (server tools), are not shown; ping and content_block_stop send nothing;
- message_delta: a chunk with an empty delta and the finish reason;
- message_stop: with `include_usage`, the usage chunk (`choices: []`; every earlier chunk then
  carries `"usage": null`, as OpenAI's do), then `data: [DONE]`;
- error: OpenAI's stream error line `data: {"error": {...}}`, on which the openai SDK raises
  `APIError`; nothing is sent after it. An event too large to buffer (`SSEError`) ends the
  stream the same way.
An event whose JSON cannot be read sends nothing. `close()` never sends anything: a stream the
backend cut short before message_stop ends for the client without `[DONE]` and without a
finish reason, which is what it is (nothing is invented to look complete).
"""

from __future__ import annotations

import json
from typing import Any

from extproc.providers.anthropic import AnthropicStreamReader
from extproc.providers.sse import Event, SSEError, SSEParser
from extproc.providers.translate.chat_over_messages.replies import (
    error_event,
    error_line,
    finish_reason,
    tool_call,
    usage_json,
)

_DONE = b"data: [DONE]\n\n"
_SILENT = frozenset(("ping", "content_block_stop"))  # skipped by name, JSON never parsed
_USAGE_EVENTS = frozenset(("message_start", "message_delta"))


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class ChunkStream:
    """One streamed answer; `feed` and `close` as `translate.StreamTranslator` says."""

    __slots__ = (
        "_created",
        "_ended",
        "_head",
        "_include_usage",
        "_parser",
        "_tail",
        "_tools",
        "_usage",
    )

    def __init__(self, *, include_usage: bool, created: int) -> None:
        self._parser = SSEParser()
        self._usage = AnthropicStreamReader()  # the gateway's own reading of the usage events
        self._include_usage = include_usage
        self._created = created
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool call index
        self._ended = False  # message_stop or an error was sent: nothing more is
        self._head = self._chunk_head("", "")
        self._tail = ',"usage":null}' if include_usage else "}"

    def feed(self, chunk: bytes) -> bytes:
        if self._ended:
            return b""
        try:
            events = self._parser.feed(chunk)
        except SSEError:
            self._ended = True
            return error_line(502, "The upstream provider's stream could not be read.")
        out: list[bytes] = []
        for event in events:
            out.append(self._event(event))
            if self._ended:
                break
        return b"".join(out)

    def close(self) -> bytes:
        return b""

    def _event(self, event: Event) -> bytes:
        if event.event in _SILENT:
            return b""
        try:
            data = json.loads(event.data)
        except (ValueError, RecursionError):
            return b""
        if not isinstance(data, dict):
            return b""
        kind = data.get("type")
        if not isinstance(kind, str):  # e.g. `"type": []`: no event of ours, never a crash
            return b""
        if kind in _USAGE_EVENTS:
            self._usage.read(event)
        if kind == "content_block_delta":
            return self._delta(data)
        if kind == "content_block_start":
            return self._block_start(data)
        if kind == "message_start":
            message = data.get("message")
            if isinstance(message, dict):
                self._head = self._chunk_head(message.get("id"), message.get("model"))
            return self._chunk({"role": "assistant", "content": "", "refusal": None})
        if kind == "message_delta":
            delta = data.get("delta")
            reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            return self._chunk({}, finish=finish_reason(reason))
        if kind == "message_stop":
            self._ended = True
            return self._usage_chunk() + _DONE
        if kind == "error":
            self._ended = True
            return error_event(data)
        return b""

    def _delta(self, data: dict[str, Any]) -> bytes:
        delta = data.get("delta")
        if not isinstance(delta, dict):
            return b""
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            return self._chunk({"content": text}) if isinstance(text, str) and text else b""
        if kind == "input_json_delta":
            piece = delta.get("partial_json")
            block = data.get("index")
            index = self._tools.get(block) if isinstance(block, int) else None
            if index is None or not isinstance(piece, str) or not piece:
                return b""
            return self._chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        return b""  # thinking, signature and citation deltas

    def _block_start(self, data: dict[str, Any]) -> bytes:
        block = data.get("content_block")
        if not isinstance(block, dict):
            return b""
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            return self._chunk({"content": text}) if isinstance(text, str) and text else b""
        if kind != "tool_use":
            return b""
        index = len(self._tools)
        block_index = data.get("index")
        if isinstance(block_index, int):
            self._tools[block_index] = index
        value = block.get("input")
        arguments = _dumps(value) if value else ""  # Anthropic streams the input: {} here
        call = {"index": index, **tool_call(block.get("id"), block.get("name"), arguments)}
        return self._chunk({"tool_calls": [call]})

    def _chunk(self, delta: dict[str, Any], *, finish: str | None = None) -> bytes:
        choice = f'{{"index":0,"delta":{_dumps(delta)},"logprobs":null,"finish_reason":'
        text = f"{self._head}[{choice}{_dumps(finish)}}}]{self._tail}"
        return b"data: " + text.encode() + b"\n\n"

    def _usage_chunk(self) -> bytes:
        usage = self._usage.usage or self._usage.reported
        if not self._include_usage or usage is None:
            return b""
        text = f'{self._head}[],"usage":{_dumps(usage_json(usage))}}}'
        return b"data: " + text.encode() + b"\n\n"

    def _chunk_head(self, message_id: object, model: object) -> str:
        """Every chunk's JSON up to the `choices` array's opening bracket."""
        fields = {
            "id": message_id if isinstance(message_id, str) else "",
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": model if isinstance(model, str) else "",
        }
        return _dumps(fields)[:-1] + ',"choices":'
