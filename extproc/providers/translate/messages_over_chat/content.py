"""Anthropic `messages` (and `system`) as OpenAI Chat Completions messages, block by block.

`where` arguments are the block's path in the client's request (`messages[2].content[0]`), so
a refusal names the exact place. A field whose value is null is treated as absent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from extproc.errors import BadRequest
from extproc.providers.translate import Untranslatable

# The tool_result `is_error` flag has no field on an OpenAI tool message: the content says it
# instead, so an agent loop keeps going and the model still knows the call failed.
TOOL_ERROR_MARK = "[tool error]"
# What stands before a document's own part when it has a title or context.
DOCUMENT_TITLE, DOCUMENT_CONTEXT = "Document title: ", "Document context: "
# The name of a PDF in OpenAI's `file` part (the API wants one with `file_data`).
PDF_FILENAME = "document.pdf"
# Thinking from earlier turns: dropped (see the package docstring for why).
_HIDDEN_REASONING = frozenset(("thinking", "redacted_thinking"))

_TEXT_KEYS = frozenset(("type", "text", "cache_control", "citations"))
_IMAGE_KEYS = frozenset(("type", "source", "cache_control"))
_DOCUMENT_KEYS = frozenset(("type", "source", "title", "context", "citations", "cache_control"))
_TOOL_USE_KEYS = frozenset(("type", "id", "name", "input", "cache_control"))
_TOOL_RESULT_KEYS = frozenset(("type", "tool_use_id", "content", "is_error", "cache_control"))
_MESSAGE_KEYS = frozenset(("role", "content"))


def system_message(system: object) -> dict[str, Any] | None:
    """`system` (a string or text blocks) as the first message; None when there is none."""
    if system is None or system in ("", []):
        return None
    if isinstance(system, str):
        return {"role": "system", "content": system}
    blocks = _blocks(system, "system")
    texts = [_text(block, f"system[{j}]") for j, block in enumerate(blocks)]
    return {"role": "system", "content": _text_content(texts)}


def chat_messages(messages: object) -> list[dict[str, Any]]:
    """Every Anthropic message as one or more chat messages, in order."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", param="messages")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"'{where}' must be an object", param=where)
        only(message, _MESSAGE_KEYS, where)
        role, content = message.get("role"), message.get("content")
        if role == "user":
            out.extend(_user(content, where))
        elif role == "assistant":
            out.append(_assistant(content, where))
        else:
            raise BadRequest(f"'{where}.role' must be 'user' or 'assistant'", param=where)
    if messages[-1].get("role") == "assistant":
        where = f"messages[{len(messages) - 1}]"
        raise Untranslatable(
            f"'{where}' is a final assistant message (a prefill Claude would continue); OpenAI "
            "Chat Completions answers it with a new message instead, so it cannot be served",
            param=where,
        )
    return out


def only(value: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    """Default deny: a field we do not know how to express is refused, all of them named."""
    unknown = sorted(k for k, v in value.items() if k not in allowed and v is not None)
    if unknown:
        names = ", ".join(f"'{k}'" for k in unknown)
        param = f"{where}.{unknown[0]}" if where else unknown[0]
        place = f" in '{where}'" if where else ""
        raise Untranslatable(
            f"{names}{place} cannot be expressed on OpenAI Chat Completions", param=param
        )


def _user(content: object, where: str) -> list[dict[str, Any]]:
    """A user turn: its tool results as `tool` messages first (in order), then the rest."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(_blocks(content, f"{where}.content")):
        at = f"{where}.content[{j}]"
        if block.get("type") == "tool_result":
            tools.append(_tool_result(block, at))
        else:
            parts.extend(_user_part(block, at))
    if parts or not tools:
        tools.append({"role": "user", "content": parts})
    return tools


def _assistant(content: object, where: str) -> dict[str, Any]:
    """Text blocks in order as the content, tool_use blocks as `tool_calls` after it."""
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(_blocks(content, f"{where}.content")):
        at = f"{where}.content[{j}]"
        kind = block.get("type")
        if kind == "text":
            texts.append(_text(block, at))
        elif kind == "tool_use":
            calls.append(_tool_call(block, at))
        elif kind not in _HIDDEN_REASONING:
            raise _block_refused(kind, at)
    message: dict[str, Any] = {"role": "assistant"}
    message["content"] = _text_content(texts) if texts else (None if calls else "")
    if calls:
        message["tool_calls"] = calls
    return message


def _user_part(block: dict[str, Any], at: str) -> list[dict[str, Any]]:
    kind = block.get("type")
    if kind == "text":
        return [{"type": "text", "text": _text(block, at)}]
    if kind == "image":
        return [_image(block, at)]
    if kind == "document":
        return _document(block, at)
    raise _block_refused(kind, at)


def _text(block: dict[str, Any], at: str) -> str:
    if block.get("type") != "text":
        raise _block_refused(block.get("type"), at)
    only(block, _TEXT_KEYS, at)
    if block.get("citations"):  # citations of an earlier answer: its documents' positions
        raise Untranslatable(
            f"'{at}.citations' cannot be expressed on OpenAI Chat Completions",
            param=f"{at}.citations",
        )
    text = block.get("text")
    if not isinstance(text, str):
        raise BadRequest(f"'{at}.text' must be a string", param=f"{at}.text")
    return text


def _image(block: dict[str, Any], at: str) -> dict[str, Any]:
    only(block, _IMAGE_KEYS, at)
    source = _source(block, at)
    kind = source.get("type")
    if kind == "base64":
        media_type, data = _string(source, "media_type", at), _string(source, "data", at)
        return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{data}"}}
    if kind == "url":
        return {"type": "image_url", "image_url": {"url": _string(source, "url", at)}}
    raise _source_refused(kind, at)


def _document(block: dict[str, Any], at: str) -> list[dict[str, Any]]:
    """A PDF as a `file` part; a text or content document as its text (and images); title and
    context, when given, as one text part right before it."""
    only(block, _DOCUMENT_KEYS, at)
    citations = block.get("citations")
    if isinstance(citations, dict) and citations.get("enabled"):
        raise Untranslatable(
            f"'{at}.citations' cannot be expressed on OpenAI Chat Completions (it has no "
            "citations of documents)",
            param=f"{at}.citations",
        )
    parts: list[dict[str, Any]] = []
    label = [
        f"{prefix}{block[key]}"
        for key, prefix in (("title", DOCUMENT_TITLE), ("context", DOCUMENT_CONTEXT))
        if isinstance(block.get(key), str) and block[key]
    ]
    if label:
        parts.append({"type": "text", "text": "\n".join(label)})
    source = _source(block, at)
    kind = source.get("type")
    if kind == "base64":
        media_type, data = _string(source, "media_type", at), _string(source, "data", at)
        if media_type != "application/pdf":
            raise Untranslatable(
                f"'{at}.source.media_type' {media_type!r}: OpenAI Chat Completions takes PDF "
                "files only",
                param=f"{at}.source.media_type",
            )
        file = {"filename": PDF_FILENAME, "file_data": f"data:application/pdf;base64,{data}"}
        parts.append({"type": "file", "file": file})
    elif kind == "text":
        parts.append({"type": "text", "text": _string(source, "data", at)})
    elif kind == "content":
        content = source.get("content")
        if isinstance(content, str):
            parts.append({"type": "text", "text": content})
        else:
            for j, inner in enumerate(_blocks(content, f"{at}.source.content")):
                inner_at = f"{at}.source.content[{j}]"
                if inner.get("type") not in ("text", "image"):
                    raise _block_refused(inner.get("type"), inner_at)
                parts.extend(_user_part(inner, inner_at))
    else:
        raise _source_refused(kind, at)
    return parts


def _tool_result(block: dict[str, Any], at: str) -> dict[str, Any]:
    only(block, _TOOL_RESULT_KEYS, at)
    call_id = _string(block, "tool_use_id", at)
    content = block.get("content")
    if content is None or isinstance(content, str):
        text = content or ""
    else:
        texts = []
        for j, inner in enumerate(_blocks(content, f"{at}.content")):
            inner_at = f"{at}.content[{j}]"
            if inner.get("type") == "image":
                raise Untranslatable(
                    f"'{inner_at}' is an image inside a tool_result; OpenAI tool messages "
                    "carry text only",
                    param=inner_at,
                )
            texts.append(_text(inner, inner_at))
        text = "\n".join(texts)
    if block.get("is_error"):
        text = f"{TOOL_ERROR_MARK} {text}" if text else TOOL_ERROR_MARK
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _tool_call(block: dict[str, Any], at: str) -> dict[str, Any]:
    only(block, _TOOL_USE_KEYS, at)
    arguments = block.get("input", {})
    if not isinstance(arguments, dict):
        raise BadRequest(f"'{at}.input' must be an object", param=f"{at}.input")
    return {
        "id": _string(block, "id", at),
        "type": "function",
        "function": {
            "name": _string(block, "name", at),
            "arguments": json.dumps(arguments, separators=(",", ":"), ensure_ascii=False),
        },
    }


def _text_content(texts: list[str]) -> str | list[dict[str, str]]:
    """One text as a string; several as text parts (no separator invented between them)."""
    return texts[0] if len(texts) == 1 else [{"type": "text", "text": t} for t in texts]


def _blocks(value: object, where: str) -> Iterable[dict[str, Any]]:
    if not isinstance(value, list):
        raise BadRequest(f"'{where}' must be a string or an array of blocks", param=where)
    for j, block in enumerate(value):
        if not isinstance(block, dict):
            raise BadRequest(f"'{where}[{j}]' must be an object", param=f"{where}[{j}]")
    return value


def _source(block: dict[str, Any], at: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise BadRequest(f"'{at}.source' must be an object", param=f"{at}.source")
    return source


def _string(value: dict[str, Any], key: str, at: str) -> str:
    found = value.get(key)
    if not isinstance(found, str):
        raise BadRequest(f"'{at}' needs a string '{key}'", param=f"{at}.{key}")
    return found


def _block_refused(kind: object, at: str) -> Untranslatable:
    return Untranslatable(
        f"'{at}' is a {kind!r} block, which OpenAI Chat Completions cannot take here", param=at
    )


def _source_refused(kind: object, at: str) -> Untranslatable:
    return Untranslatable(
        f"'{at}.source' of type {kind!r} cannot be expressed on OpenAI Chat Completions",
        param=f"{at}.source",
    )
