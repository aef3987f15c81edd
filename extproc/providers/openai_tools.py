"""Function definitions and output schemas as OpenAI shows them to the model, so that they are
counted as they are billed.

OpenAI does not send the JSON of `tools` / `functions` to the model: it renders them as a
TypeScript namespace in the system message. This module renders them the same way, following
the renderer measured against the API by hmarr/openai-chat-tokens (36 recorded request/usage
pairs, every one matched exactly) and OpenAI's own published renderer for gpt-oss
(openai/harmony: `// default:` comments, titles, examples, `oneOf`, type lists). The OpenAI
cookbook's tools example (`How_to_count_tokens_with_tiktoken`) comes out exact too: 105 prompt
tokens on gpt-4 and gpt-3.5-turbo, 101 on gpt-4o and gpt-4o-mini.

    namespace functions {

    // Get the current weather in a given location
    type get_current_weather = (_: {
    // The city and state, e.g. San Francisco, CA
    location: string,
    unit?: "celsius" | "fahrenheit",
    }) => any;

    } // namespace functions

Around it: `FUNCTIONS_OVERHEAD` tokens for the section, `SYSTEM_REUSE` fewer when the
conversation has a system message (the section joins it, and that message gains a newline),
and the forced choice (`tool_choice` / `function_call`) costs its name plus 4, "none" 1.

Error bound: exact on every recorded case; a schema construct no renderer shows (`$ref`,
`allOf`, a missing type) is counted as its compact JSON, which is longer than any rendering.
`response_format` JSON schemas are counted in OpenAI's published layout (harmony "Structured
output": `# Response Formats`, `## name`, `// description`, the compact schema) plus
`RESPONSE_FORMAT_OVERHEAD`; no recorded usage exists to check them against.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

FUNCTIONS_OVERHEAD = 9
SYSTEM_REUSE = 4
FORCED_CHOICE_OVERHEAD = 4
NONE_CHOICE_TOKENS = 1
RESPONSE_FORMAT_OVERHEAD = 4
_TOP_LEVEL_INDENT = 2  # descriptions of deeper properties are not shown (measured)


def compact(value: object) -> str:
    """Compact, unescaped JSON: the shortest faithful text of a value we cannot render."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def render_functions(functions: Sequence[Mapping[str, Any]]) -> str:
    """The namespace block for function definitions (each with a string `name`)."""
    lines = ["namespace functions {", ""]
    for function in functions:
        description = function.get("description")
        if isinstance(description, str) and description:
            lines.extend(f"// {line}" for line in description.splitlines() or [""])
        parameters = function.get("parameters")
        if isinstance(parameters, dict) and _has_properties(parameters):
            lines.append(f"type {function['name']} = (_: {{")
            lines.append(_properties(parameters, 0))
            lines.append("}) => any;")
        else:
            lines.append(f"type {function['name']} = () => any;")
        lines.append("")
    lines.append("} // namespace functions")
    return "\n".join(lines)


def _has_properties(schema: Mapping[str, Any]) -> bool:
    properties = schema.get("properties")
    return isinstance(properties, dict) and bool(properties)


def _properties(schema: Mapping[str, Any], indent: int) -> str:
    required = schema.get("required")
    required = required if isinstance(required, list) else []
    lines: list[str] = []
    for name, prop in schema["properties"].items():
        if not isinstance(prop, dict):
            lines.append(f"{name}?: {compact(prop)},")
            continue
        if indent < _TOP_LEVEL_INDENT:
            lines.extend(_comments(prop))
        mark = "" if name in required else "?"
        line = f"{name}{mark}: {_type(prop, indent)},"
        if "default" in prop:
            line += f" // default: {compact(prop['default'])}"
        lines.append(line)
    return "\n".join(" " * indent + line for line in lines)


def _comments(prop: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    title, description, examples = prop.get("title"), prop.get("description"), prop.get("examples")
    if isinstance(title, str) and title:
        lines += [f"// {title}", "//"]
    if isinstance(description, str) and description:
        lines.append(f"// {description}")
    if isinstance(examples, list) and examples:
        lines += ["// Examples:", *(f"// - {compact(example)}" for example in examples)]
    return lines


def _type(schema: object, indent: int) -> str:
    if not isinstance(schema, dict):
        return compact(schema)
    for key in ("anyOf", "oneOf"):
        variants = schema.get(key)
        if isinstance(variants, list) and variants:
            return " | ".join(_type(variant, indent) for variant in variants)
    kind = schema.get("type")
    if isinstance(kind, list) and kind:
        return " | ".join(_type({**schema, "type": k}, indent) for k in kind)
    enum = schema.get("enum")
    if isinstance(enum, list) and enum and kind in ("string", "number", "integer", None):
        return " | ".join(f'"{v}"' if kind == "string" else compact(v) for v in enum)
    simple = {"string": "string", "number": "number", "integer": "number"}
    simple |= {"boolean": "boolean", "null": "null"}
    if isinstance(kind, str) and kind in simple:
        return simple[kind]
    if kind == "object" and isinstance(schema.get("properties"), dict):
        return "\n".join(["{", _properties(schema, indent + 2), "}"])
    if kind == "array":
        items = schema.get("items")
        return f"{_type(items, indent)}[]" if items is not None else "any[]"
    if kind == "object":
        return "object"
    return compact(schema)  # $ref, allOf, no type: shown somehow, never shorter than this


def choice_tokens(choice: object) -> tuple[int, str | None]:
    """(fixed tokens, text to count) of `tool_choice` / `function_call`: a forced function
    costs its name plus 4, "none" 1, "auto" nothing; any other value is counted as JSON."""
    if choice is None or choice == "auto":
        return 0, None
    if choice == "none":
        return NONE_CHOICE_TOKENS, None
    if choice == "required":
        return FORCED_CHOICE_OVERHEAD, None
    if isinstance(choice, dict):
        function = choice.get("function")
        holder = function if isinstance(function, dict) else choice
        name = holder.get("name")
        if isinstance(name, str):
            return FORCED_CHOICE_OVERHEAD, name
    return 0, compact(choice)


def response_format_text(response_format: object) -> str | None:
    """The text a `json_schema` response format adds to the prompt (None for text and
    json_object, which add none); any other shape is counted as its JSON."""
    if not isinstance(response_format, dict):
        return None if response_format is None else compact(response_format)
    kind = response_format.get("type")
    if kind in ("text", "json_object"):
        return None
    spec = response_format.get("json_schema")
    if kind != "json_schema" or not isinstance(spec, dict):
        return compact(response_format)
    name = spec.get("name")
    lines = ["# Response Formats", "", f"## {name if isinstance(name, str) else 'response'}", ""]
    description = spec.get("description")
    if isinstance(description, str) and description:
        lines.append(f"// {description}")
    lines.append(compact(spec.get("schema", {})))
    return "\n".join(lines)
