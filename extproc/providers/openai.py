"""OpenAI wire schema: Chat Completions requests, usage, and `{"error": {...}}` bodies."""

from __future__ import annotations

import json
from typing import Any, TypeGuard

from extproc.errors import BadRequest, ClientError
from extproc.providers._base import (
    ParsedRequest,
    Usage,
    optional_bool,
    optional_token_count,
    require_model,
)

# OpenAI's documented framing: every message costs 3 tokens beyond its content (plus 1 for a
# `name`), and every reply is primed with 3 more.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
# A flat estimate per image part (OpenAI's low-detail price); the provider's usage settles.
TOKENS_PER_IMAGE = 85


class OpenAIProvider:
    name = "openai"
    credential_header = "authorization"

    def credential_value(self, key: str) -> str:
        return f"Bearer {key}"

    def parse_usage(self, body: dict[str, Any]) -> Usage | None:
        usage = body.get("usage")
        if not isinstance(usage, dict):
            return None
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens", 0)
        if not _count(prompt) or not _count(completion):
            return None  # untrustworthy usage: settle on our own estimate instead
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
        return Usage(prompt, completion, cached if _count(cached) else 0)

    def error_body(self, error: ClientError) -> bytes:
        payload = {
            "error": {
                "message": error.message,
                "type": error.error_type,
                "param": error.param,
                "code": error.code,
            }
        }
        return json.dumps(payload).encode()


PROVIDER = OpenAIProvider()


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_chat_request(body: dict[str, Any]) -> ParsedRequest:
    """`POST /v1/chat/completions`."""
    model = require_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", param="messages")
    texts: list[str] = []
    framing = REPLY_PRIMING_TOKENS
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"'messages[{index}]' must be an object", param="messages")
        framing += TOKENS_PER_MESSAGE + (TOKENS_PER_NAME if "name" in message else 0)
        framing += _collect_message(message, texts)
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        texts.append(json.dumps(tools, separators=(",", ":")))
    max_completion = optional_token_count(body, "max_completion_tokens")
    max_tokens = optional_token_count(body, "max_tokens")
    return ParsedRequest(
        model=model,
        stream=optional_bool(body, "stream"),
        max_output_tokens=max_completion if max_completion is not None else max_tokens,
        prompt_texts=tuple(texts),
        framing_tokens=framing,
    )


def _collect_message(message: dict[str, Any], texts: list[str]) -> int:
    """Append the message's countable text to `texts`; return its fixed-estimate tokens."""
    extra = 0
    content = message.get("content")
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            text = part.get("text")
            if isinstance(text, str):
                texts.append(text)
            elif part.get("type") in ("image_url", "input_image"):
                extra += TOKENS_PER_IMAGE
    name = message.get("name")
    if isinstance(name, str):
        texts.append(name)
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise BadRequest("'tool_calls' must be an array", param="messages")
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            texts.extend(
                v for v in (function.get("name"), function.get("arguments")) if isinstance(v, str)
            )
    return extra
