"""OpenAI Chat Completions answers and errors as Anthropic Messages ones (and the pieces the
stream translation shares: stop reasons, usage, tool input, error types)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from extproc.providers.anthropic import ERROR_TYPES

# OpenAI finish_reason -> Anthropic stop_reason. OpenAI reports a stop sequence as "stop"
# without naming it, so such an answer says "end_turn" (stop_sequence stays null).
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
DEFAULT_STOP_REASON = "end_turn"
# OpenAI's error `type` in a stream (no HTTP status there) -> Anthropic's; others: api_error.
STREAM_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "rate_limit_error": "rate_limit_error",
    "rate_limit_exceeded": "rate_limit_error",
    "insufficient_quota": "rate_limit_error",
    "tokens": "rate_limit_error",
    "requests": "rate_limit_error",
    "server_error": "api_error",
}
# Bounds on what an upstream error may put in front of the client.
MAX_ERROR_MESSAGE = 2000
MAX_EXCERPT = 80
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")


def message(body: Mapping[str, Any]) -> dict[str, Any]:
    """A ChatCompletion as an Anthropic Message (choices[0]; the request never asks for n>1).
    The id is the backend's `chatcmpl-…` one, kept so logs on both sides match. A malformed
    answer never raises: what is missing or of the wrong type reads as absent (no choice: an
    empty content; no usage: zero counts)."""
    choices = body.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    choice = choice if isinstance(choice, dict) else {}
    reply = choice.get("message")
    reply = reply if isinstance(reply, dict) else {}
    content: list[dict[str, Any]] = []
    for field in ("content", "refusal"):  # a refusal is what the model said: shown as text
        text = reply.get(field)
        if isinstance(text, str) and text:
            content.append({"type": "text", "text": text})
    calls = reply.get("tool_calls")
    for k, call in enumerate(calls if isinstance(calls, list) else ()):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(call, dict) and isinstance(function, dict):
            block = tool_use(call.get("id"), function.get("name"), k)
            content.append({**block, "input": tool_input(function.get("arguments"))})
    return {
        "id": body.get("id"),
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": usage(body.get("usage")),
    }


def tool_use(call_id: object, name: object, position: int) -> dict[str, Any]:
    """A tool_use block with an empty input; a missing id or name reads as `call_<n>` / ""."""
    return {
        "type": "tool_use",
        "id": call_id if isinstance(call_id, str) and call_id else f"call_{position}",
        "name": name if isinstance(name, str) else "",
        "input": {},
    }


def stop_reason(finish_reason: object) -> str:
    found = STOP_REASONS.get(finish_reason) if isinstance(finish_reason, str) else None
    return found or DEFAULT_STOP_REASON


def tool_input(arguments: object) -> dict[str, Any]:
    """A tool call's JSON arguments as the tool_use `input` object. No arguments is `{}`;
    arguments that are not a JSON object are kept readable as `{"_raw": "<as sent>"}`."""
    if arguments is None or arguments == "":
        return {}
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else arguments
    except (ValueError, RecursionError):
        value = None
    return value if isinstance(value, dict) else {"_raw": arguments}


def usage(value: object) -> dict[str, int]:
    """OpenAI's prompt tokens include the cached ones; Anthropic's input_tokens do not. No
    cache writes are reported by OpenAI. Missing or malformed counts are 0."""
    found = value if isinstance(value, dict) else {}
    details = found.get("prompt_tokens_details")
    prompt = _count(found.get("prompt_tokens"))
    cached = min(prompt, _count(details.get("cached_tokens") if isinstance(details, dict) else 0))
    return {
        "input_tokens": prompt - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": _count(found.get("completion_tokens")),
    }


def error(status: int, body: bytes) -> tuple[int, bytes]:
    """OpenAI's `{"error": {...}}` as Anthropic's `{"type": "error", ...}`, same status; the
    type chosen by status as Anthropic's errors page does. A body that is not OpenAI's error
    JSON gives a generic message with at most a short, printable excerpt of it."""
    text = openai_error_message(body)
    if text is None:
        excerpt = _UNPRINTABLE.sub(" ", body[: MAX_EXCERPT * 4].decode("utf-8", "replace"))
        excerpt = " ".join(excerpt.split())
        if len(excerpt) > MAX_EXCERPT:
            excerpt = excerpt[: MAX_EXCERPT - 3] + "..."
        text = f"the backend answered HTTP {status}" + (f": {excerpt}" if excerpt else "")
    return status, error_body(error_type(status), text)


def error_type(status: int) -> str:
    """Anthropic's documented type for the status; else api_error for a 5xx and
    invalid_request_error for the rest (the errors page: "may also be used for other 4XX")."""
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def openai_error_message(body: bytes | Mapping[str, Any]) -> str | None:
    """The `error.message` of an OpenAI error (bytes or decoded), bounded; None if absent."""
    if isinstance(body, bytes):
        try:
            body = json.loads(body)
        except (ValueError, RecursionError):
            return None
    found = body.get("error") if isinstance(body, Mapping) else None
    text = found.get("message") if isinstance(found, dict) else None
    if not isinstance(text, str) or not text:
        return None
    return text if len(text) <= MAX_ERROR_MESSAGE else text[: MAX_ERROR_MESSAGE - 3] + "..."


def error_body(kind: str, text: str) -> bytes:
    return dumps({"type": "error", "error": {"type": kind, "message": text}}).encode()


def dumps(value: object) -> str:
    """Compact, unescaped JSON, as Anthropic sends it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _count(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return 0
