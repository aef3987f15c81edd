"""Anthropic Messages payloads shared by the provider's tests: a minimal request body, JSON as
the wire carries it, and a stream recorded as api.anthropic.com sends it."""

from __future__ import annotations

import json
from typing import Any

from extproc.providers.sse import Event


def messages(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    body.update(fields)
    return body


def compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def ev(name: str, payload: dict[str, Any]) -> Event:
    return Event(event=name, data=json.dumps(payload))


def block_delta(index: int, delta: dict[str, Any]) -> Event:
    return ev(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )


START_USAGE = {
    "input_tokens": 472,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 2048,
    "output_tokens": 1,
}
# A stream as api.anthropic.com sends it: thinking, then text, then a tool call.
RECORDED: list[Event] = [
    ev(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": START_USAGE,
            },
        },
    ),
    ev(
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": ""},
        },
    ),
    ev("ping", {"type": "ping"}),
    block_delta(0, {"type": "thinking_delta", "thinking": "The user wants"}),
    block_delta(0, {"type": "thinking_delta", "thinking": " a forecast."}),
    block_delta(0, {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h"}),
    ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ev(
        "content_block_start",
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    ),
    block_delta(1, {"type": "text_delta", "text": "Let me"}),
    block_delta(1, {"type": "text_delta", "text": " check the weather."}),
    ev("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ev(
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {
                "type": "tool_use",
                "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                "name": "get_weather",
                "input": {},
            },
        },
    ),
    block_delta(2, {"type": "input_json_delta", "partial_json": ""}),
    block_delta(2, {"type": "input_json_delta", "partial_json": '{"city": "Par'}),
    block_delta(2, {"type": "input_json_delta", "partial_json": 'is"}'}),
    ev("content_block_stop", {"type": "content_block_stop", "index": 2}),
    ev(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 89},
        },
    ),
    ev("message_stop", {"type": "message_stop"}),
]
