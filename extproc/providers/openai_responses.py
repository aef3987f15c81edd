"""OpenAI Responses API (`POST /v1/responses`): requests, usage and typed stream events.

What is counted as prompt, as chat counts it (`openai_prompt`, `openai_tools`): every
message — `instructions` (a developer message), a string `input` (a user message), each
message item — costs `TOKENS_PER_MESSAGE` plus its role and its content, whose parts are
counted by `openai_prompt.content_part` (text exactly; images by OpenAI's published rule;
PDFs by their pages; text files as text; audio by its duration; an unknown part as its JSON),
and the reply is primed with `REPLY_PRIMING_TOKENS`. Every other item (function and custom
tool calls and their outputs, reasoning summaries, hosted-tool calls, any item type added
later) costs `TOKENS_PER_MESSAGE` plus its strings, bookkeeping fields (ids, types,
statuses) left out and inline data estimated by size; an encrypted reasoning item its length
/ 4. Function `tools` are rendered as OpenAI shows them to the model, other tools counted as
their JSON, `tool_choice` and a `text.format` JSON schema as chat's `tool_choice` and
`response_format`.

Context the gateway cannot see. `previous_response_id`, `conversation`, a stored `prompt`
template, every `item_reference` item and hosted tools (web and file search, MCP, code
interpreter, …, whose results the provider feeds back in; once per request) each add
`UNSEEN_CONTEXT_TOKENS` (8,192) to the estimate; a file named by id or URL counts as
`documents.UNSEEN_PAGES` pages. The rule keeps a chained call from being admitted as if its
history were free without refusing every chain on a small budget; when the hidden part is
larger, the reservation is low by the difference, and the provider's `usage` (which counts
the whole context) settles the bill. `background: true` answers carry no usage (it is fetched
later from a stored-response route): they settle at the reservation, which the completion
cap the gateway writes bounds.

A stream is a sequence of typed events (`event: <type>` + `data: {"type": <type>, …}`):
only the `*.delta` events carry new generated text (`*.done` events and the final
`response.completed` repeat it, so they are never counted), a function or tool call's name
arrives in `response.output_item.added`, and usage arrives once, in the terminal
`response.completed`, `response.incomplete` or `response.failed`. Streams always report
usage, so requests are never rewritten and no event is hidden. The completion cap is
`max_output_tokens`, which bounds visible and reasoning tokens together (the API refuses a
value below 16).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from extproc.errors import BadRequest, ClientError
from extproc.providers._base import (
    NOTHING,
    EventMeaning,
    ParsedRequest,
    Usage,
    optional_bool,
    optional_token_count,
    require_model,
)
from extproc.providers.base64_view import data_url_payload
from extproc.providers.documents import binary_file_tokens
from extproc.providers.images import openai_image_tokens, url_image_size
from extproc.providers.openai import PROVIDER as OPENAI
from extproc.providers.openai import _count, _detail
from extproc.providers.openai_prompt import (
    REPLY_PRIMING_TOKENS,
    TOKENS_PER_MESSAGE,
    content_part,
)
from extproc.providers.openai_tools import (
    FUNCTIONS_OVERHEAD,
    RESPONSE_FORMAT_OVERHEAD,
    SYSTEM_REUSE,
    choice_tokens,
    render_functions,
    response_format_text,
)
from extproc.providers.prompt_parts import PromptParts
from extproc.providers.sse import Event

UNSEEN_CONTEXT_TOKENS = 8_192  # per piece of context the gateway cannot read (see above)

# Tools the provider runs itself: their results enter the context unseen by the gateway.
_CALLER_TOOLS = frozenset(("function", "custom"))
# Content part and item fields that hold text the model reads.
_TEXT_FIELDS = ("name", "text", "refusal", "arguments", "input", "output")
# Content part types `openai_prompt.content_part` prices (images, files, audio by their rule).
_PART_TYPES = frozenset(
    ("input_text", "output_text", "text", "refusal", "input_image", "input_file", "input_audio")
)
# Fields of an item that are bookkeeping, not prompt (never counted by the generic walk).
_SKIPPED_KEYS = frozenset(("id", "call_id", "type", "status", "role"))

# Stream events whose `delta` is generated text; everything else but the ones below is
# skipped without parsing its JSON (`response.created` echoes the whole request).
_DELTA_EVENTS = frozenset(
    (
        "response.output_text.delta",
        "response.refusal.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.mcp_call_arguments.delta",
        "response.code_interpreter_call_code.delta",
        "response.audio_transcript.delta",
    )
)
_ITEM_ADDED = "response.output_item.added"
_TERMINAL_EVENTS = frozenset(("response.completed", "response.incomplete", "response.failed"))
_READ_EVENTS = _DELTA_EVENTS | _TERMINAL_EVENTS | {_ITEM_ADDED}

# The API refuses a smaller `max_output_tokens`; a clamped cap never goes below it.
MIN_OUTPUT_TOKENS = 16


class ResponsesProvider:
    """OpenAI's errors and credential; the Responses API's usage and stream events."""

    name = OPENAI.name
    credential_header = OPENAI.credential_header

    def credential_value(self, key: str) -> str:
        return OPENAI.credential_value(key)

    def error_body(self, error: ClientError) -> bytes:
        return OPENAI.error_body(error)

    def parse_usage(self, body: dict[str, Any]) -> Usage | None:
        return usage_of(body.get("usage"))

    def stream_reader(self, *, hide_usage_event: bool) -> ResponsesStreamReader:
        """`hide_usage_event` has no effect: usage rides `response.completed`, which the
        client needs anyway, and is never asked for on its behalf."""
        return ResponsesStreamReader()

    def stream_error(self, error: ClientError) -> bytes:
        """An `error` event. The openai SDK's stream raises `APIError(message)` on any event
        whose data has an `error` object (openai/_streaming.py, `Stream.__stream__`); the
        top-level `code`/`message`/`param` make it a valid `ResponseErrorEvent` for clients
        that read events as typed objects instead."""
        fields = {"code": error.code, "message": error.message, "param": error.param}
        payload = {"type": "error", **fields, "error": {"type": error.error_type, **fields}}
        return f"event: error\ndata: {json.dumps(payload)}\n\n".encode()


PROVIDER = ResponsesProvider()


def usage_of(usage: object) -> Usage | None:
    """A Responses `usage` object; None when missing or untrustworthy. `input_tokens`
    includes cached (and cache-written) tokens, `output_tokens` the reasoning tokens."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    if not _count(prompt) or not _count(completion):
        return None
    return Usage(
        prompt, completion,
        cached_prompt_tokens=_detail(usage, "input_tokens_details", "cached_tokens"),
        cache_write_tokens=_detail(usage, "input_tokens_details", "cache_write_tokens"),
        reasoning_tokens=_detail(usage, "output_tokens_details", "reasoning_tokens"),
    )  # fmt: skip


class ResponsesStreamReader:
    """Generated text of each `*.delta` event, and the usage of the terminal event.

    Only the events in `_READ_EVENTS` are parsed, once each; anything malformed is NOTHING
    and never raises (our parsing must never break a user's stream).
    """

    __slots__ = ("usage",)

    def __init__(self) -> None:
        self.usage: Usage | None = None

    @property
    def reported(self) -> Usage | None:
        """The Responses API reports usage once, at the end: nothing before it."""
        return self.usage

    def read(self, event: Event) -> EventMeaning:
        name = event.event
        if name is not None and name not in _READ_EVENTS:
            return NOTHING
        try:
            data = json.loads(event.data)
        except (ValueError, RecursionError):
            return NOTHING
        if not isinstance(data, dict):
            return NOTHING
        kind = data.get("type") if name is None else name
        if kind in _DELTA_EVENTS:
            delta = data.get("delta")
            return EventMeaning(texts=(delta,)) if isinstance(delta, str) and delta else NOTHING
        if kind == _ITEM_ADDED:
            item = data.get("item")
            called = item.get("name") if isinstance(item, dict) else None
            return EventMeaning(texts=(called,)) if isinstance(called, str) and called else NOTHING
        if kind in _TERMINAL_EVENTS:
            response = data.get("response")
            if isinstance(response, dict):
                self.usage = usage_of(response.get("usage")) or self.usage
        return NOTHING


def parse_responses_request(body: dict[str, Any]) -> ParsedRequest:
    """`POST /v1/responses`."""
    model = require_model(body)
    prompt = _Prompt(model)
    for field, role in (("instructions", "developer"), ("input", "user")):
        value = body.get(field)
        if isinstance(value, str):
            prompt.message(role, value)
        elif isinstance(value, list):
            prompt.items(value, field)
        elif value is not None:
            raise BadRequest(f"'{field}' must be a string or an array of input items", param=field)
    _count_settings(body, prompt)
    return ParsedRequest(
        model=model,
        stream=optional_bool(body, "stream"),
        max_output_tokens=optional_token_count(body, "max_output_tokens"),
        prompt_texts=tuple(prompt.parts.texts),
        framing_tokens=prompt.parts.fixed,
        cap_field="max_output_tokens",
        min_cap=MIN_OUTPUT_TOKENS,
        body=body,
    )


def _count_settings(body: dict[str, Any], prompt: _Prompt) -> None:
    """Tools, tool choice, output schema and the context named by reference."""
    parts = prompt.parts
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise BadRequest("'tools' must be an array", param="tools")
    if tools:
        _count_tools(tools, parts, has_system=body.get("instructions") is not None)
    fixed, choice = choice_tokens(body.get("tool_choice"))
    parts.add(fixed)
    parts.text(choice)
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":  # as chat's, un-flattened
        spec = {k: v for k, v in fmt.items() if k in ("name", "description", "schema")}
        fmt = {"type": "json_schema", "json_schema": spec}
    schema = response_format_text(fmt)
    if schema is not None:
        parts.text(schema)
        parts.add(RESPONSE_FORMAT_OVERHEAD)
    for field in ("previous_response_id", "conversation"):
        reference = body.get(field)
        if reference is None:
            continue
        if not isinstance(reference, str | dict):
            raise BadRequest(f"'{field}' must be a string", param=field)
        parts.add(UNSEEN_CONTEXT_TOKENS)
    template = body.get("prompt")
    if isinstance(template, dict):
        parts.add(UNSEEN_CONTEXT_TOKENS)
        prompt.walk(template.get("variables"))


def _count_tools(tools: list[Any], parts: PromptParts, *, has_system: bool) -> None:
    """Function tools as OpenAI renders them to the model (`openai_tools`), any other tool
    as its JSON; a hosted tool's results are unseen context (once per request)."""
    functions: list[Mapping[str, Any]] = [tool for tool in tools if _is_function(tool)]
    if functions:
        parts.text(render_functions(functions))
        parts.add(FUNCTIONS_OVERHEAD - (SYSTEM_REUSE if has_system else 0))
    others = [tool for tool in tools if not _is_function(tool)]
    if others:
        parts.unknown(others)
    if any(isinstance(t, dict) and t.get("type") not in _CALLER_TOOLS for t in tools):
        parts.add(UNSEEN_CONTEXT_TOKENS)


def _is_function(tool: object) -> bool:
    return (
        isinstance(tool, dict)
        and tool.get("type") == "function"
        and isinstance(tool.get("name"), str)
    )


class _Prompt:
    """The countable text and fixed-estimate tokens of one request, collected in order."""

    def __init__(self, model: str) -> None:
        self.parts = PromptParts(fixed=REPLY_PRIMING_TOKENS)
        self._model = model

    def items(self, items: list[Any], field: str) -> None:
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise BadRequest(f"'{field}[{index}]' must be an object", param=field)
            self.item(item)

    def message(self, role: object, content: object) -> None:
        """A message costs as in chat: its framing, its role and its content."""
        self.parts.add(TOKENS_PER_MESSAGE)
        self.parts.text(role)
        if isinstance(content, list):
            for part in content:
                content_part(self.parts, part, self._model)
        else:
            self.content(content)

    def item(self, item: dict[str, Any]) -> None:
        kind = item.get("type")
        if kind in (None, "message"):
            self.message(item.get("role"), item.get("content"))
            return
        self.parts.add(TOKENS_PER_MESSAGE)
        if kind == "item_reference":
            self.parts.add(UNSEEN_CONTEXT_TOKENS)
        elif kind == "reasoning":
            self.walk(item.get("summary"))
            self.walk(item.get("content"))
            encrypted = item.get("encrypted_content")
            if isinstance(encrypted, str):  # the reasoning it stands for, ~4 chars a token
                self.parts.add(len(encrypted) // 4)
        else:  # calls, their outputs, and every other item: its text fields, then the rest
            for field in _TEXT_FIELDS:
                self.content(item.get(field))
            self.walk({k: v for k, v in item.items() if k not in _TEXT_FIELDS})

    def content(self, content: object) -> None:
        """A string, or a list whose content parts are counted as chat counts them
        (`openai_prompt.content_part`) and anything else by its strings."""
        if isinstance(content, str):
            self.parts.text(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") in _PART_TYPES:
                    content_part(self.parts, part, self._model)
                else:  # not a content part: its strings, inline data by size
                    self.walk(part)
        elif content is not None:
            self.walk(content)

    def walk(self, value: object) -> None:
        """Every string under `value` (but bookkeeping fields): the conservative count of
        an item this module does not know; inline data is estimated, not tokenised."""
        if isinstance(value, str):
            if value.startswith("data:"):
                self.parts.add(_data_url_tokens(self._model, value))
            else:
                self.parts.text(value)
        elif isinstance(value, list):
            for entry in value:
                self.walk(entry)
        elif isinstance(value, dict):
            for key, entry in value.items():
                if key not in _SKIPPED_KEYS:
                    self.walk(entry)


def _data_url_tokens(model: str, url: str) -> int:
    """A data URL where no part type says what it is: an image by its size, anything else
    by its bytes."""
    if url.startswith("data:image/"):
        return openai_image_tokens(model, detail=None, size=url_image_size(url))
    _, payload = data_url_payload(url) or ("", url)
    return binary_file_tokens(payload)
