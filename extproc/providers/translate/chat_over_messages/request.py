"""An OpenAI chat request's top-level fields and tools as an Anthropic Messages request."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from extproc.errors import BadRequest
from extproc.providers._base import optional_bool, optional_token_count
from extproc.providers.translate import Untranslatable
from extproc.providers.translate.chat_over_messages import messages

# Fields translated below.
_TRANSLATED = frozenset((
    "model", "messages", "max_completion_tokens", "max_tokens", "temperature", "top_p", "stop",
    "stream", "tools", "tool_choice", "parallel_tool_calls", "user", "safety_identifier",
))  # fmt: skip
# Fields accepted and not sent: they change nothing the model generates. `stream_options`
# only asks for the usage chunk (Anthropic always reports usage; the stream translator adds
# the chunk); `store` and `metadata` keep a copy at OpenAI (none is kept); the prompt-cache
# fields steer OpenAI's cache (Anthropic caches what `cache_control` marks; nothing is).
DROPPED = frozenset((
    "stream_options", "store", "metadata", "prompt_cache_key", "prompt_cache_retention",
    "prompt_cache_options",
))  # fmt: skip


def _never(value: object) -> bool:
    return False


def _zero(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 0


# Fields Anthropic cannot express: accepted (and not sent) only at the value that asks for
# nothing (null always is), refused otherwise with the reason.
NEUTRAL: dict[str, tuple[Callable[[object], bool], str]] = {
    "n": (lambda v: v == 1 and not isinstance(v, bool), "generates one answer per request"),
    "logprobs": (lambda v: v is False, "returns no log probabilities"),
    "top_logprobs": (_zero, "returns no log probabilities"),
    "logit_bias": (lambda v: v == {}, "has no token biases"),
    "presence_penalty": (_zero, "has no presence penalty"),
    "frequency_penalty": (_zero, "has no frequency penalty"),
    "seed": (_never, "has no sampling seed"),
    "response_format": (
        lambda v: v == {"type": "text"},
        "has no JSON mode, and its structured outputs are not translated",
    ),
    "audio": (_never, "generates no audio"),
    "modalities": (lambda v: v == ["text"], "generates text only"),
    "prediction": (_never, "has no predicted outputs"),
    "reasoning_effort": (lambda v: v == "none", "has no equivalent of reasoning effort"),
    "verbosity": (_never, "has no verbosity setting"),
    "web_search_options": (_never, "has no translated web search"),
    "service_tier": (lambda v: v in ("auto", "default"), "has no such service tier"),
    "moderation": (_never, "has no moderation setting"),
    "functions": (_never, "is not given legacy functions; use 'tools'"),
    "function_call": (_never, "is not given legacy functions; use 'tool_choice'"),
}
_TOOL_FIELDS = frozenset(("type", "function", "name", "description", "parameters", "strict"))
ANTHROPIC_MAX_TEMPERATURE = 1.0
# Anthropic's default temperature and top_p, as OpenAI's: sent, they would change nothing but
# make the request fail on the models that no longer take sampling parameters (Claude Opus
# 4.7 and later answer 400 "`temperature` is deprecated for this model").
SAMPLING_DEFAULT = 1
MAX_LISTED = 8  # unknown fields named in one refusal


def translate(body: Mapping[str, Any], *, model: str, default_max_tokens: int) -> dict[str, Any]:
    _refuse_untranslatable(body)
    fields = dict(body)  # the shared validators take a dict
    cap = optional_token_count(fields, "max_completion_tokens")
    if cap is None:
        cap = optional_token_count(fields, "max_tokens")
    system, turns = messages.translate(body.get("messages"))
    out: dict[str, Any] = {
        "model": model,
        "max_tokens": default_max_tokens if cap is None else cap,
    }
    if system:
        out["system"] = system
    out["messages"] = turns
    temperature = _number(body, "temperature", 0.0, 2.0)
    if temperature is not None and temperature > ANTHROPIC_MAX_TEMPERATURE:
        raise Untranslatable(
            "Anthropic Messages takes a temperature between 0 and 1", param="temperature"
        )
    for field, value in (("temperature", temperature), ("top_p", _number(body, "top_p", 0, 1))):
        if value is not None and value != SAMPLING_DEFAULT:
            out[field] = value
    stop = _stop(body.get("stop"))
    if stop:
        out["stop_sequences"] = stop
    if optional_bool(fields, "stream"):
        out["stream"] = True
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
    choice = _tool_choice(body, has_tools=bool(tools))
    if choice is not None:
        out["tool_choice"] = choice
    user = _user(body)
    if user is not None:
        out["metadata"] = {"user_id": user}
    return out


def _refuse_untranslatable(body: Mapping[str, Any]) -> None:
    unknown = sorted(
        str(k)[:64] for k, v in body.items()
        if k not in _TRANSLATED and k not in DROPPED and k not in NEUTRAL and v is not None
    )  # fmt: skip
    if unknown:
        listed = ", ".join(f"'{name}'" for name in unknown[:MAX_LISTED])
        more = f" and {len(unknown) - MAX_LISTED} more" if len(unknown) > MAX_LISTED else ""
        raise Untranslatable(
            f"fields Anthropic Messages cannot be given: {listed}{more}", param=unknown[0]
        )
    for field, (neutral, reason) in NEUTRAL.items():
        value = body.get(field)
        if value is not None and not neutral(value):
            raise Untranslatable(f"'{field}': Anthropic Messages {reason}", param=field)


def _number(body: Mapping[str, Any], field: str, low: float, high: float) -> float | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise BadRequest(f"'{field}' must be a number between {low:g} and {high:g}", param=field)
    return value


def _stop(stop: object) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise BadRequest("'stop' must be a string or an array of strings", param="stop")


def _tools(tools: object) -> list[dict[str, Any]]:
    """Function tools: name, description, parameters as `input_schema` (no parameters: an
    object without properties), `strict: true` as Anthropic's strict tool use (a model without
    it refuses the request itself)."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise BadRequest("'tools' must be an array", param="tools")
    out: list[dict[str, Any]] = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise BadRequest(f"'{where}' must be an object", param=where)
        if tool.get("type") != "function":
            raise Untranslatable(
                "only function tools can be translated to Anthropic Messages",
                param=f"{where}.type",
            )
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequest(f"'{where}.function.name' must be a string", param=where)
        fields = (*tool.items(), *function.items())
        extra = sorted(str(f)[:64] for f, v in fields if f not in _TOOL_FIELDS and v is not None)
        if extra:
            raise Untranslatable(f"'{where}': '{extra[0]}' cannot be translated", param=where)
        entry: dict[str, Any] = {"name": function["name"]}
        description = function.get("description")
        if isinstance(description, str) and description:
            entry["description"] = description
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise BadRequest(f"'{where}.function.parameters' must be an object", param=where)
        entry["input_schema"] = parameters or {"type": "object", "properties": {}}
        if function.get("strict") is True:
            entry["strict"] = True
        out.append(entry)
    return out


def _tool_choice(body: Mapping[str, Any], *, has_tools: bool) -> dict[str, Any] | None:
    """auto / none / required / a named function as Anthropic's auto / none / any / tool;
    `parallel_tool_calls: false` as `disable_parallel_tool_use`. Without tools there is nothing
    to choose: auto and none say nothing, a forced choice is an error (as at OpenAI)."""
    choice = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise BadRequest("'parallel_tool_calls' must be a boolean", param="parallel_tool_calls")
    if choice is None or choice == "auto":
        out: dict[str, Any] = {"type": "auto"}
    elif choice == "none":
        out = {"type": "none"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise BadRequest("'tool_choice.function.name' must be a string", param="tool_choice")
        out = {"type": "tool", "name": name}
    elif isinstance(choice, dict):
        raise Untranslatable(
            "only auto, none, required and a named function can be translated",
            param="tool_choice",
        )
    else:
        raise BadRequest("'tool_choice' is not a valid choice", param="tool_choice")
    if not has_tools:
        if out["type"] in ("auto", "none"):
            return None
        raise BadRequest("'tool_choice' needs 'tools'", param="tool_choice")
    if parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    elif choice is None:
        return None  # Anthropic's default with tools is auto, as OpenAI's
    return out


def _user(body: Mapping[str, Any]) -> str | None:
    """`safety_identifier` (or the older `user`): an end user's id for abuse detection, which is
    what Anthropic's `metadata.user_id` is."""
    ids = {f: body.get(f) for f in ("safety_identifier", "user") if body.get(f) is not None}
    for field, value in ids.items():
        if not isinstance(value, str):
            raise BadRequest(f"'{field}' must be a string", param=field)
    if len(set(ids.values())) > 1:
        raise Untranslatable(
            "Anthropic Messages takes one user id: 'user' and 'safety_identifier' differ",
            param="user",
        )
    return next(iter(ids.values()), None) or None
