"""The prompt of an OpenAI chat request, counted as OpenAI bills it.

Messages follow the cookbook rule ("How to count tokens with tiktoken"): every message costs
`TOKENS_PER_MESSAGE` plus the tokens of its role and content, a `name` one more than its
text, and the reply is primed with `REPLY_PRIMING_TOKENS`. Measured refinements
(hmarr/openai-chat-tokens): a legacy `function` message costs 2 fewer, an assistant
`function_call` (and each `tool_calls` entry) its name and arguments plus 3. Tools, legacy
`functions`, the forced choice and `response_format` are rendered as `openai_tools` explains.

Content parts, with the error bound of each:
- text, refusal: tokenized exactly;
- image_url / input_image: `images.openai_image_tokens`, exact when a data URL gives the size,
  the worst case for the model and detail otherwise (a URL is never fetched);
- input_audio: `audio.audio_tokens`, from the clip's duration (see there);
- file / input_file: a PDF by its pages (`documents`), a text file as its text, a file the
  gateway cannot see (a file id) as `documents.UNSEEN_PAGES` pages; the filename as text;
- anything else, and unknown message fields: their compact JSON (`PromptParts.unknown`).
A tool message's `tool_call_id` is counted as text (a few tokens high: the model sees the
function's name, not the id).
"""

from __future__ import annotations

from typing import Any, TypeGuard

from extproc.errors import BadRequest
from extproc.providers import audio, documents, images
from extproc.providers.base64_view import data_url_payload
from extproc.providers.openai_tools import (
    FUNCTIONS_OVERHEAD,
    RESPONSE_FORMAT_OVERHEAD,
    SYSTEM_REUSE,
    choice_tokens,
    render_functions,
    response_format_text,
)
from extproc.providers.prompt_parts import PromptParts

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
FUNCTION_ROLE_DISCOUNT = 2
TOKENS_PER_CALL = 3
_SYSTEM_ROLES = ("system", "developer")
# Message fields counted below (or carrying no prompt text): any other field is unknown.
_MESSAGE_FIELDS = frozenset(
    ("role", "content", "name", "tool_calls", "tool_call_id", "function_call", "refusal")
)
_TEXT_PARTS = frozenset(("text", "input_text", "output_text"))


def chat_prompt(body: dict[str, Any], model: str) -> PromptParts:
    """Everything a chat request puts before the model (the body's `messages` is a list)."""
    parts = PromptParts(fixed=REPLY_PRIMING_TOKENS)
    functions, other_tools = _function_definitions(body)
    padded = not functions  # with functions, the first system message gains a newline
    for index, message in enumerate(body["messages"]):
        if not isinstance(message, dict):
            raise BadRequest(f"'messages[{index}]' must be an object", param="messages")
        pad = not padded and message.get("role") in _SYSTEM_ROLES
        padded |= pad
        _message(parts, message, model, pad_system=pad)
    if functions:  # `padded` now says whether a system message was there to join
        parts.text(render_functions(functions))
        parts.add(FUNCTIONS_OVERHEAD - (SYSTEM_REUSE if padded else 0))
    for tool in other_tools:
        parts.unknown(tool)
    for field in ("tool_choice", "function_call"):
        fixed, text = choice_tokens(body.get(field))
        parts.add(fixed)
        parts.text(text)
    schema = response_format_text(body.get("response_format"))
    if schema is not None:
        parts.text(schema)
        parts.add(RESPONSE_FORMAT_OVERHEAD)
    return parts


def _function_definitions(body: dict[str, Any]) -> tuple[list[dict[str, Any]], list[object]]:
    """Function definitions from `tools` and legacy `functions` (both rendered the same way),
    and the tools that are not functions (counted as JSON)."""
    functions: list[dict[str, Any]] = []
    others: list[object] = []
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(tool, dict) and tool.get("type") == "function" and _nameable(function):
            functions.append(function)
        else:
            others.append(tool)
    legacy = body.get("functions")
    for function in legacy if isinstance(legacy, list) else []:
        (functions if _nameable(function) else others).append(function)
    return functions, others


def _nameable(function: object) -> TypeGuard[dict[str, Any]]:
    return isinstance(function, dict) and isinstance(function.get("name"), str)


def _message(parts: PromptParts, message: dict[str, Any], model: str, *, pad_system: bool) -> None:
    role = message.get("role")
    parts.add(TOKENS_PER_MESSAGE)
    parts.text(role)
    content = message.get("content")
    if pad_system:
        content = _padded(content)
    if isinstance(content, str):
        parts.text(content)
    elif isinstance(content, list):
        for part in content:
            content_part(parts, part, model)
    elif content is not None:
        parts.unknown(content)
    name = message.get("name")
    if isinstance(name, str) and name:
        parts.text(name)
        parts.add(TOKENS_PER_NAME)
    if role == "function":
        parts.add(-FUNCTION_ROLE_DISCOUNT)
    parts.text(message.get("refusal"))
    parts.text(message.get("tool_call_id"))
    _calls(parts, message)
    for key, value in message.items():
        if key not in _MESSAGE_FIELDS:
            parts.unknown(value)


def _padded(content: object) -> object:
    if isinstance(content, str):
        return content + "\n"
    if isinstance(content, list) and content and isinstance(content[-1], dict):
        last = content[-1]
        if isinstance(last.get("text"), str):
            return [*content[:-1], {**last, "text": last["text"] + "\n"}]
    return content


def _calls(parts: PromptParts, message: dict[str, Any]) -> None:
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise BadRequest("'tool_calls' must be an array", param="messages")
    call = message.get("function_call")
    functions = [c.get("function") if isinstance(c, dict) else None for c in calls]
    for function in [*functions, call] if call is not None else functions:
        if isinstance(function, dict):
            parts.text(function.get("name"))
            parts.text(function.get("arguments"))
            parts.add(TOKENS_PER_CALL)
        elif function is not None:
            parts.unknown(function)


def content_part(parts: PromptParts, part: object, model: str) -> None:
    """One content part of a message (chat or Responses API shapes)."""
    if isinstance(part, str):
        parts.text(part)
        return
    if not isinstance(part, dict):
        parts.unknown(part)
        return
    kind = part.get("type")
    if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
        parts.text(part["text"])
    elif kind == "refusal" and isinstance(part.get("refusal"), str):
        parts.text(part["refusal"])
    elif kind in ("image_url", "input_image"):
        parts.add(_image(part, model))
    elif kind == "input_audio" and isinstance(part.get("input_audio"), dict):
        clip = part["input_audio"]
        data = clip.get("data")
        parts.add(audio.audio_tokens(data if isinstance(data, str) else "", clip.get("format")))
    elif kind in ("file", "input_file"):
        file = part.get("file") if kind == "file" else part
        _file(parts, file if isinstance(file, dict) else {}, model)
    else:
        parts.unknown(part)


def _image(part: dict[str, Any], model: str) -> int:
    """Chat: {"image_url": {"url", "detail"}}; Responses: {"image_url": "...", "detail"}."""
    image = part.get("image_url")
    detail = part.get("detail")
    if isinstance(image, dict):
        detail = image.get("detail", detail)
        image = image.get("url")
    size = images.url_image_size(image) if isinstance(image, str) else None
    return images.openai_image_tokens(model, detail=detail, size=size)


def _file(parts: PromptParts, file: dict[str, Any], model: str) -> None:
    parts.text(file.get("filename"))
    data = file.get("file_data")
    if not isinstance(data, str) or not data:  # a file id or URL: not in the request
        pages = documents.UNSEEN_PAGES
    else:
        media, payload = data_url_payload(data) or ("", data)
        if media.startswith("text/"):
            parts.text(documents.base64_text(payload))
            return
        if not documents.is_pdf(media, payload):
            parts.add(documents.binary_file_tokens(payload))
            return
        pages = documents.base64_pdf_pages(payload)
    page_image = images.openai_image_tokens(model, detail="high", size=None)
    parts.add(documents.pdf_tokens(pages, page_image_tokens=page_image))
