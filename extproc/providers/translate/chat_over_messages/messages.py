"""OpenAI chat `messages` as Anthropic's top-level `system` and alternating turns.

Every refusal names the field in the client's schema (`messages[2].content[0]`); the rules and
their reasons are in the package docstring.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from extproc.errors import BadRequest
from extproc.providers import documents
from extproc.providers.base64_view import Base64View, data_url_payload
from extproc.providers.translate import Untranslatable

Block = dict[str, Any]

_SYSTEM_ROLES = ("system", "developer")
# Message fields translated, per role; any other field with a value is refused.
_FIELDS = {
    "system": frozenset(("role", "content")),
    "developer": frozenset(("role", "content")),
    "user": frozenset(("role", "content")),
    "assistant": frozenset(("role", "content", "tool_calls", "refusal")),
    "tool": frozenset(("role", "content", "tool_call_id")),
}
# Message fields whose empty value says nothing (an assistant message passed back from a
# response carries `annotations: []`).
_EMPTY_OK = frozenset(("annotations", "name"))
# Part type -> its text field, for content that is text only; an assistant's refusal part is
# what it said.
_TEXT = {"text": "text"}
_ASSISTANT_TEXT = {"text": "text", "refusal": "refusal"}
ANTHROPIC_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
# The first bytes of each image type Anthropic reads: OpenAI reads the bytes whatever the data
# URL says, Anthropic refuses an image whose bytes contradict its media type.
_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def translate(messages: object) -> tuple[list[Block], list[dict[str, Any]]]:
    """(system text blocks, turns): leading system and developer messages become the system
    prompt, the rest alternating user / assistant turns (tool results in user turns,
    consecutive same-role turns merged, as Anthropic itself would merge them)."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", param="messages")
    system: list[Block] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise BadRequest(f"'{where}' must be an object", param=where)
        role = message.get("role")
        _check_fields(message, role, where)
        content = message.get("content")
        if role in _SYSTEM_ROLES:
            if turns:
                raise Untranslatable(
                    f"'{where}' is a {role} message after the conversation started; Anthropic "
                    "Messages takes system instructions only before the first turn, and moving "
                    "them there would change what they apply to",
                    param=f"{where}.role",
                )
            system.extend(_texts(content, f"{where}.content"))
            continue
        if role == "user":
            kind, blocks = "user", _user(content, f"{where}.content")
        elif role == "assistant":
            kind, blocks = "assistant", _assistant(message, where)
        else:  # "tool", the only other role _check_fields lets through
            kind, blocks = "user", [_tool_result(message, where)]
        if turns and turns[-1]["role"] == kind:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": kind, "content": blocks})
    if not turns:
        raise Untranslatable(
            "Anthropic Messages needs a user message; this conversation has only system messages",
            param="messages",
        )
    if turns[-1]["role"] == "assistant":
        raise Untranslatable(
            "the conversation ends with an assistant message: Anthropic Messages would "
            "continue that message instead of answering with a new one",
            param=f"messages[{len(messages) - 1}]",
        )
    return system, turns


def _check_fields(message: dict[str, Any], role: object, where: str) -> None:
    if role == "function":
        raise Untranslatable(
            "legacy 'function' messages cannot be translated; use 'tool' messages",
            param=f"{where}.role",
        )
    allowed = _FIELDS.get(role) if isinstance(role, str) else None
    if allowed is None:
        raise BadRequest(f"'{where}.role' is not a chat role", param=f"{where}.role")
    for field, value in message.items():
        if field in allowed or value is None or (field in _EMPTY_OK and not value):
            continue
        if field == "name":
            raise Untranslatable(
                "Anthropic Messages has no participant names; dropping 'name' would hide "
                "from the model who said what",
                param=f"{where}.name",
            )
        raise Untranslatable(
            f"'{_short(field)}' on a {role} message cannot be translated to Anthropic Messages",
            param=f"{where}.{_short(field)}",
        )


def _texts(content: object, where: str, parts: Mapping[str, str] = _TEXT) -> list[Block]:
    """Text-only content (system, assistant, tool): a string or text parts (and, on assistant
    messages, refusal parts: what the assistant said). Empty texts are left out: they say
    nothing, and Anthropic refuses empty text blocks."""
    if content is None:
        return []
    if isinstance(content, str):
        return [_text(content)] if content else []
    if not isinstance(content, list):
        raise BadRequest(f"'{where}' must be a string or an array of parts", param=where)
    blocks = [_text_part(part, f"{where}[{index}]", parts) for index, part in enumerate(content)]
    return [block for block in blocks if block is not None]


def _text_part(part: object, where: str, parts: Mapping[str, str]) -> Block | None:
    """One part of a kind in `parts` (part type -> its text field) as a text block; None when
    its text is empty."""
    kind = part.get("type") if isinstance(part, dict) else None
    field = parts.get(kind) if isinstance(kind, str) else None
    text = part.get(field) if field and isinstance(part, dict) else None
    if not isinstance(text, str):
        raise Untranslatable(f"'{where}' must be a text part here", param=where)
    return _text(text) if text else None


def _user(content: object, where: str) -> list[Block]:
    if not isinstance(content, list):
        return _texts(content, where)
    blocks: list[Block] = []
    for index, part in enumerate(content):
        at = f"{where}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(part, dict) or kind == "text":
            block = _text_part(part, at, _TEXT)
            if block is not None:
                blocks.append(block)
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), f"{at}.image_url"))
        elif kind == "file":
            blocks.append(_document(part.get("file"), f"{at}.file"))
        elif kind == "input_audio":
            raise Untranslatable("Anthropic Messages reads no audio", param=f"{at}.input_audio")
        else:
            raise Untranslatable(
                f"content part type '{_short(kind)}' cannot be translated to Anthropic Messages",
                param=f"{at}.type",
            )
    return blocks


def _image(image: object, where: str) -> Block:
    """`detail` is not translated: Anthropic has no such choice and sizes images itself."""
    url = image.get("url") if isinstance(image, dict) else None
    if not isinstance(image, dict) or not isinstance(url, str):
        raise BadRequest(f"'{where}.url' must be a string", param=f"{where}.url")
    _only(image, ("url", "detail"), where)
    if url.startswith("data:"):
        parsed = data_url_payload(url)
        if parsed is None:
            raise Untranslatable("only base64 data: URLs can be translated", param=f"{where}.url")
        declared, data = parsed
        media = _sniffed(data) or declared
        if media not in ANTHROPIC_IMAGE_TYPES:
            raise Untranslatable(
                f"image type '{_short(media)}': Anthropic reads JPEG, PNG, GIF and WebP",
                param=f"{where}.url",
            )
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    if url[:8].lower().startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise Untranslatable("an image URL must be http(s) or a data: URL", param=f"{where}.url")


def _sniffed(data: str) -> str | None:
    head = Base64View(data).read(0, 12)
    if not head:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return next((media for magic, media in _MAGIC if head.startswith(magic)), None)


def _document(file: object, where: str) -> Block:
    """A PDF given inline (`file_data`) as a base64 document block, its filename as the
    document's title (both are shown to the model). A file id names a file stored at OpenAI,
    which Anthropic cannot read; other file types have no faithful document form."""
    if not isinstance(file, dict):
        raise BadRequest(f"'{where}' must be an object", param=where)
    _only(file, ("file_data", "filename", "file_id"), where)
    if file.get("file_id") is not None:
        raise Untranslatable(
            "a file id names a file stored at OpenAI, which Anthropic cannot read; send the "
            "file as file_data",
            param=f"{where}.file_id",
        )
    data = file.get("file_data")
    if not isinstance(data, str) or not data:
        raise BadRequest(f"'{where}.file_data' must be a non-empty string", param=where)
    media, payload = data_url_payload(data) or ("", data)
    if not documents.is_pdf(media, payload):
        raise Untranslatable(
            "only PDF files can be translated to Anthropic documents", param=f"{where}.file_data"
        )
    block: Block = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": payload},
    }
    filename = file.get("filename")
    if isinstance(filename, str) and filename:
        block["title"] = filename
    return block


def _assistant(message: dict[str, Any], where: str) -> list[Block]:
    blocks = _texts(message.get("content"), f"{where}.content", _ASSISTANT_TEXT)
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        blocks.append(_text(refusal))
    calls = message.get("tool_calls")
    if calls is None:
        return blocks
    if not isinstance(calls, list):
        raise BadRequest(f"'{where}.tool_calls' must be an array", param=f"{where}.tool_calls")
    for index, call in enumerate(calls):
        blocks.append(_tool_use(call, f"{where}.tool_calls[{index}]"))
    return blocks


def _tool_use(call: object, where: str) -> Block:
    if not isinstance(call, dict):
        raise BadRequest(f"'{where}' must be an object", param=where)
    if call.get("type", "function") != "function":
        raise Untranslatable(
            f"tool call type '{_short(call.get('type'))}' cannot be translated; only function "
            "calls can",
            param=f"{where}.type",
        )
    _only(call, ("id", "type", "function"), where)
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise BadRequest(f"'{where}.function.name' must be a string", param=f"{where}.function")
    if not isinstance(call.get("id"), str):
        raise BadRequest(f"'{where}.id' must be a string", param=f"{where}.id")
    _only(function, ("name", "arguments"), f"{where}.function")
    arguments = _arguments(function.get("arguments"), f"{where}.function.arguments")
    return {"type": "tool_use", "id": call["id"], "name": function["name"], "input": arguments}


def _arguments(arguments: object, where: str) -> dict[str, Any]:
    """A call's arguments string as the JSON object Anthropic's `input` must be. An empty
    string is a call without arguments."""
    if arguments is None or arguments == "":
        return {}
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else None
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise Untranslatable(
            "tool call arguments must be a JSON object string to be translated to Anthropic "
            "tool_use input",
            param=where,
        )
    return value


def _tool_result(message: dict[str, Any], where: str) -> Block:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(f"'{where}.tool_call_id' must be a string", param=f"{where}.tool_call_id")
    block: Block = {"type": "tool_result", "tool_use_id": call_id}
    content = message.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    else:
        texts = _texts(content, f"{where}.content")
        if texts:
            block["content"] = texts
    return block


def _only(value: dict[str, Any], fields: tuple[str, ...], where: str) -> None:
    extra = sorted(k for k, v in value.items() if k not in fields and v is not None)
    if extra:
        name = _short(extra[0])
        raise Untranslatable(
            f"'{where}.{name}' cannot be translated to Anthropic Messages", param=f"{where}.{name}"
        )


def _text(text: str) -> Block:
    return {"type": "text", "text": text}


def _short(value: object) -> str:
    """A client-given name, bounded for an error message."""
    text = str(value)
    return text if len(text) <= 64 else text[:61] + "..."
