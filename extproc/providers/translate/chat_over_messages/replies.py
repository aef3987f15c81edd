"""Anthropic answers as OpenAI's: a Message as a `chat.completion`, the finish reason, the usage,
and errors (whole answers and mid-stream events) as `{"error": {...}}`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from extproc.providers._base import Usage
from extproc.providers.anthropic import PROVIDER as ANTHROPIC

# Anthropic `stop_reason` -> OpenAI `finish_reason`. `pause_turn` only ends a turn of
# Anthropic's server tools (never requested here), so it is an ordinary stop; a context window
# that filled up cut the answer as `max_tokens` does. Anything else (null, a reason added
# later) is a plain stop.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
}

# Anthropic's error types and their statuses (https://docs.anthropic.com/en/api/errors); a
# mid-stream `error` event has only the type.
ANTHROPIC_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
OVERLOADED = 529  # Anthropic's own status; OpenAI clients know 503 for it (and retry it)
# OpenAI `error.type` and `error.code` by status. Where OpenAI's own answer is known it is
# copied (500/503 `server_error` with a null code; 429 code `rate_limit_exceeded`; a missing
# model `model_not_found`: the backend path is fixed, so a 404 is the model); where OpenAI's
# type names something Anthropic does not say (429's `tokens` / `requests`), the gateway's own
# type for that status on OpenAI routes (`extproc.errors`) is used, so a client sees one
# vocabulary whether the gateway or the backend refused.
ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    402: ("insufficient_quota", "insufficient_quota"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}
MAX_MESSAGE_CHARS = 2_000  # an upstream message longer than this is cut (it is echoed)


def completion(body: Mapping[str, Any], *, created: int) -> dict[str, Any]:
    """An Anthropic Message as an OpenAI `chat.completion`. Text blocks are joined with no
    separator (they are consecutive pieces of one answer, as the streamed deltas are);
    thinking and any block a translated request cannot cause (server tools) are not shown.
    A malformed answer is translated as far as it goes, never refused (it is not the client's
    fault): no content list is no content, a missing id or model is "", unreadable usage is
    left out, an unknown stop reason is "stop"."""
    content = body.get("content")
    if not isinstance(content, list):
        content = []
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            arguments = json.dumps(block.get("input", {}), ensure_ascii=False)
            calls.append(tool_call(block.get("id"), block.get("name"), arguments))
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    answer = {
        "id": _string(body.get("id")),
        "object": "chat.completion",
        "created": created,
        "model": _string(body.get("model")),
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason(body.get("stop_reason")),
            }
        ],
    }
    usage = ANTHROPIC.parse_usage({"usage": body.get("usage")})
    if usage is not None:
        answer["usage"] = usage_json(usage)
    return answer


def finish_reason(stop_reason: object) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def tool_call(call_id: object, name: object, arguments: str) -> dict[str, Any]:
    function = {"name": _string(name), "arguments": arguments}
    return {"id": _string(call_id), "type": "function", "function": function}


def usage_json(usage: Usage) -> dict[str, Any]:
    """OpenAI's usage object: prompt tokens include cache reads and writes (Anthropic's
    `input_tokens` excludes both), reads are `cached_tokens`, writes `cache_write_tokens`."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total,
        "prompt_tokens_details": {
            "cached_tokens": usage.cached_prompt_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
    }


def error(status: int, body: bytes) -> tuple[int, bytes]:
    """An Anthropic error answer as OpenAI's. Status 529 becomes 503, others are kept. The
    message is Anthropic's own; a body that is not Anthropic's error JSON (a proxy's HTML page,
    garbage) is never echoed: it may name internal hosts, so the message only gives the status
    and the body's size."""
    message = _error_message(body)
    if message is None:
        message = f"The upstream provider answered HTTP {status} ({len(body)} bytes, not JSON)."
    sent = 503 if status == OVERLOADED else status
    return sent, error_json(sent, message)


def error_event(payload: Mapping[str, Any]) -> bytes:
    """An Anthropic stream `error` event's payload as the OpenAI stream error line: the openai
    SDK raises `APIError` with this message on a data event whose JSON has an `error` key."""
    message = _error_message_of(payload)
    error = payload.get("error")
    kind = error.get("type") if isinstance(error, dict) else None
    status = ANTHROPIC_STATUS.get(kind, 500) if isinstance(kind, str) else 500
    if message is None:
        message = "The upstream provider reported an error mid-stream."
    return error_line(503 if status == OVERLOADED else status, message)


def error_line(status: int, message: str) -> bytes:
    """One OpenAI stream error event (`OpenAIProvider.stream_error`'s form)."""
    return b"data: " + error_json(status, message) + b"\n\n"


def error_json(status: int, message: str) -> bytes:
    """`{"error": {"message", "type", "param", "code"}}` as the gateway's own OpenAI errors
    (`OpenAIProvider.error_body`) render it."""
    kind, code = ERROR_KINDS.get(
        status, ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    )
    payload = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return json.dumps(payload, ensure_ascii=False).encode()


def _error_message(body: bytes) -> str | None:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return _error_message_of(payload) if isinstance(payload, dict) else None


def _error_message_of(payload: Mapping[str, Any]) -> str | None:
    error = payload.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message:
        return None
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "…"


def _string(value: object) -> str:
    return value if isinstance(value, str) else ""
