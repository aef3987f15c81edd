"""An Anthropic Messages request body as an OpenAI Chat Completions one (top-level fields)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from extproc.errors import BadRequest
from extproc.providers.translate import Untranslatable
from extproc.providers.translate.messages_over_chat.content import (
    chat_messages,
    only,
    system_message,
)

# OpenAI Chat Completions takes at most this many stop sequences.
MAX_STOP_SEQUENCES = 4

# Fields translated below. `cache_control` (automatic prompt caching) is a hint that changes
# nothing generated: accepted and dropped, like the blocks' own.
_TRANSLATED = frozenset(
    (
        "model",
        "max_tokens",
        "messages",
        "system",
        "temperature",
        "top_p",
        "stop_sequences",
        "stream",
        "tools",
        "tool_choice",
        "metadata",
        "service_tier",
        "thinking",
        "cache_control",
    )
)
# Known Anthropic fields with no Chat Completions counterpart, and why (anything else unknown
# is refused too, by name).
_REFUSED = {
    "top_k": "OpenAI Chat Completions has no top_k sampling",
    "container": "containers are Anthropic's code execution environment",
    "mcp_servers": "MCP connectors run inside Anthropic's API",
    "context_management": "context editing runs inside Anthropic's API",
    "output_config": "Anthropic's output settings (format, effort) are not translated",
}
_TOOL_KEYS = frozenset(
    ("type", "name", "description", "input_schema", "strict", "cache_control",
     "eager_input_streaming")
)  # fmt: skip
_CHOICE_KEYS = {
    "auto": frozenset(("type", "disable_parallel_tool_use")),
    "any": frozenset(("type", "disable_parallel_tool_use")),
    "tool": frozenset(("type", "name", "disable_parallel_tool_use")),
    "none": frozenset(("type",)),
}
_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


def chat_request(body: Mapping[str, Any], *, model: str, default_max_tokens: int) -> dict[str, Any]:
    """The Chat Completions request for `model`; `Untranslatable` names what cannot be."""
    for field, why in _REFUSED.items():
        if body.get(field) is not None:
            raise Untranslatable(f"'{field}' cannot be served here: {why}", param=field)
    only(body, _TRANSLATED, "")
    _refuse_thinking(body.get("thinking"))
    tier = body.get("service_tier")
    if tier is not None and tier != "auto":
        raise Untranslatable(
            f"'service_tier' {tier!r} cannot be expressed on OpenAI Chat Completions",
            param="service_tier",
        )
    messages = chat_messages(body.get("messages"))
    system = system_message(body.get("system"))
    out: dict[str, Any] = {
        "model": model,
        "messages": [system, *messages] if system else messages,
        "max_completion_tokens": body.get("max_tokens") or default_max_tokens,
    }
    for field in ("temperature", "top_p"):
        if body.get(field) is not None:
            out[field] = body[field]
    stop = _stop(body.get("stop_sequences"))
    if stop:
        out["stop"] = stop
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # the usage must come back
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
    _tool_choice(body.get("tool_choice"), out)
    user = _user_id(body.get("metadata"))
    if user is not None:
        out["user"] = user
    return out


def _refuse_thinking(thinking: object) -> None:
    if thinking is None:
        return
    if isinstance(thinking, dict) and thinking.get("type") == "disabled":
        return
    raise Untranslatable(
        "'thinking' cannot be served here: OpenAI Chat Completions returns no reasoning to "
        "show, and its budget cannot be expressed",
        param="thinking",
    )


def _stop(sequences: object) -> list[str] | None:
    if sequences is None:
        return None
    if not isinstance(sequences, list) or not all(isinstance(s, str) for s in sequences):
        raise BadRequest("'stop_sequences' must be an array of strings", param="stop_sequences")
    if len(sequences) > MAX_STOP_SEQUENCES:
        raise Untranslatable(
            f"'stop_sequences' has {len(sequences)} entries; OpenAI Chat Completions takes at "
            f"most {MAX_STOP_SEQUENCES}",
            param="stop_sequences",
        )
    return sequences


def _tools(tools: object) -> list[dict[str, Any]]:
    """Custom tools as function tools; server and Anthropic-defined tools are refused."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise BadRequest("'tools' must be an array", param="tools")
    out = []
    for k, tool in enumerate(tools):
        at = f"tools[{k}]"
        if not isinstance(tool, dict):
            raise BadRequest(f"'{at}' must be an object", param=at)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise Untranslatable(
                f"'{at}' is the {kind!r} tool, which runs on Anthropic's side (or needs its "
                "definition); OpenAI Chat Completions takes function tools only",
                param=f"{at}.type",
            )
        only(tool, _TOOL_KEYS, at)
        function: dict[str, Any] = {"name": tool.get("name")}
        if tool.get("description") is not None:
            function["description"] = tool["description"]
        function["parameters"] = tool.get("input_schema")
        if tool.get("strict") is not None:
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: object, out: dict[str, Any]) -> None:
    """auto / any / tool / none as auto / required / the named function / none;
    `disable_parallel_tool_use` as `parallel_tool_calls: false`. Written only with tools:
    OpenAI refuses either without them, and Anthropic's auto or none then mean nothing."""
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or kind not in _CHOICE_KEYS:
        raise BadRequest(
            "'tool_choice.type' must be one of 'auto', 'any', 'tool', 'none'",
            param="tool_choice",
        )
    only(choice, _CHOICE_KEYS[kind], "tool_choice")
    if "tools" not in out:
        if kind in ("auto", "none"):
            return
        raise BadRequest(f"'tool_choice' {kind!r} needs 'tools'", param="tool_choice")
    if kind == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    else:
        out["tool_choice"] = _CHOICES[kind]
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False


def _user_id(metadata: object) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise BadRequest("'metadata' must be an object", param="metadata")
    only(metadata, frozenset(("user_id",)), "metadata")
    user = metadata.get("user_id")
    if user is not None and not isinstance(user, str):
        raise BadRequest("'metadata.user_id' must be a string", param="metadata.user_id")
    return user
