"""OpenAI wire schema: Chat Completions requests, usage, and `{"error": {...}}` bodies."""

from __future__ import annotations

import json
from typing import Any, TypeGuard

from extproc.errors import BadRequest, ClientError, InvariantError
from extproc.providers._base import (
    NOTHING,
    EventMeaning,
    ParsedRequest,
    Usage,
    optional_bool,
    optional_token_count,
    require_model,
)
from extproc.providers.openai_prompt import chat_prompt
from extproc.providers.sse import Event

MAX_CHOICES = 128  # OpenAI's own bound on `n`


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
        return Usage(
            prompt, completion,
            cached_prompt_tokens=_detail(usage, "prompt_tokens_details", "cached_tokens"),
            reasoning_tokens=_detail(usage, "completion_tokens_details", "reasoning_tokens"),
        )  # fmt: skip

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

    def stream_reader(self, *, hide_usage_event: bool) -> ChatStreamReader:
        return ChatStreamReader(hide_usage_event=hide_usage_event)

    def stream_error(self, error: ClientError) -> bytes:
        # The SDK raises openai.APIError carrying this message on a data event with `error`.
        return b"data: " + self.error_body(error) + b"\n\n"


class ChunkStreamReader:
    """OpenAI's chunk streams (chat and legacy completions): `data: {json}` events ending
    in `data: [DONE]`, usage in the last chunk only when asked for — and then hidden from a
    client that did not ask. Subclasses say where a chunk's generated text is."""

    def __init__(self, *, hide_usage_event: bool) -> None:
        self._hide_usage_event = hide_usage_event
        self.usage: Usage | None = None

    @property
    def reported(self) -> Usage | None:
        """OpenAI reports usage once, in the last chunk: nothing before it."""
        return self.usage

    def read(self, event: Event) -> EventMeaning:
        if event.data == "[DONE]":
            return NOTHING
        try:
            chunk = json.loads(event.data)
        except (ValueError, RecursionError):
            return NOTHING  # never break a user's stream over our own parsing
        if not isinstance(chunk, dict):
            return NOTHING
        choices = chunk.get("choices")
        texts = self.texts(choices if isinstance(choices, list) else [])
        if isinstance(chunk.get("usage"), dict):
            self.usage = PROVIDER.parse_usage(chunk)
            if self._hide_usage_event and not choices:
                return EventMeaning(texts, hide=True)
        return EventMeaning(texts) if texts else NOTHING

    def texts(self, choices: list[Any]) -> tuple[str, ...]:
        """The generated text in one chunk's `choices`."""
        raise InvariantError(f"{type(self).__name__} does not say where its text is")


class ChatStreamReader(ChunkStreamReader):
    """`chat.completion.chunk` events: each choice's delta (content, reasoning, refusal,
    tool calls)."""

    def texts(self, choices: list[Any]) -> tuple[str, ...]:
        texts: list[str] = []
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict):
                _delta_texts(delta, texts)
        return tuple(texts)


def _delta_texts(delta: dict[str, Any], texts: list[str]) -> None:
    for field in ("content", "reasoning_content", "reasoning", "refusal"):
        value = delta.get(field)
        if isinstance(value, str) and value:
            texts.append(value)
    calls = delta.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                for field in ("name", "arguments"):
                    value = function.get(field)
                    if isinstance(value, str) and value:
                        texts.append(value)


PROVIDER = OpenAIProvider()


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _detail(usage: dict[str, Any], group: str, field: str) -> int:
    """A count inside `usage[group]`, 0 when absent or malformed (details never lower the
    totals, so a bad one is safe to ignore)."""
    details = usage.get(group)
    value = details.get(field, 0) if isinstance(details, dict) else 0
    return value if _count(value) else 0


def optional_choices(body: dict[str, Any], field: str) -> int:
    """`n` / `best_of`: how many completions one request generates (each may reach the cap)."""
    value = body.get(field)
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CHOICES:
        raise BadRequest(f"'{field}' must be an integer between 1 and {MAX_CHOICES}", param=field)
    return value


def parse_chat_request(body: dict[str, Any]) -> ParsedRequest:
    """`POST /v1/chat/completions`: every billed prompt part counted (`openai_prompt`)."""
    model = require_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", param="messages")
    prompt = chat_prompt(body, model)
    max_completion = optional_token_count(body, "max_completion_tokens")
    max_tokens = optional_token_count(body, "max_tokens")
    stream = optional_bool(body, "stream")
    rewrites = _ask_for_usage(body) if stream else {}
    return ParsedRequest(
        model=model,
        stream=stream,
        max_output_tokens=max_completion if max_completion is not None else max_tokens,
        prompt_texts=tuple(prompt.texts),
        framing_tokens=prompt.fixed,
        rewrites=rewrites,
        hide_usage_event=bool(rewrites),
        # The field the client used; else the one every current chat model accepts
        # (reasoning models refuse `max_tokens`).
        cap_field="max_tokens"
        if max_tokens is not None and max_completion is None
        else "max_completion_tokens",
        completion_multiplier=optional_choices(body, "n"),
        body=body,
    )


def _ask_for_usage(body: dict[str, Any]) -> dict[str, Any]:
    """A stream only reports usage when asked; ask on the client's behalf (and hide the
    extra event from it), so that every stream settles on the provider's own count."""
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    if options is not None and options.get("include_usage") is True:
        return {}
    return {"stream_options": {**(options or {}), "include_usage": True}}
