"""The TypeScript rendering of function definitions (`extproc.providers.openai_tools`) beyond
the recorded cases: the constructs OpenAI's published gpt-oss renderer shows (defaults,
titles, examples, oneOf, type lists), and the fallback for schemas no renderer shows, which
must never be shorter than the schema's JSON."""

from __future__ import annotations

from typing import Any

from extproc.providers.openai_tools import (
    choice_tokens,
    compact,
    render_functions,
    response_format_text,
)


def body_of(parameters: dict[str, Any], description: str | None = None) -> str:
    function: dict[str, Any] = {"name": "f", "parameters": parameters}
    if description is not None:
        function["description"] = description
    rendered = render_functions([function])
    head, tail = "namespace functions {\n\n", "\n\n} // namespace functions"
    assert rendered.startswith(head) and rendered.endswith(tail)
    return rendered[len(head) : -len(tail)]


def obj(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


def test_the_measured_layout() -> None:
    schema = obj(
        city={"type": "string", "description": "City"},
        days={"type": "integer", "enum": [1, 3, 7]},
        nested=obj(deep={"type": "boolean", "description": "not shown at depth 2"}),
        tags={"type": "array", "items": {"type": "string"}},
        any_list={"type": "array"},
    )
    schema["required"] = ["city"]
    assert body_of(schema, "Forecast.\nTwo lines.") == (
        "// Forecast.\n// Two lines.\n"
        "type f = (_: {\n"
        "// City\n"
        "city: string,\n"
        "days?: 1 | 3 | 7,\n"
        "nested?: {\n  deep?: boolean,\n},\n"
        "tags?: string[],\n"
        "any_list?: any[],\n"
        "}) => any;"
    )


def test_published_gpt_oss_constructs() -> None:
    schema = obj(
        unit={"type": "string", "enum": ["c", "f"], "default": "c", "title": "Unit"},
        when={"type": ["string", "null"], "examples": ["today"]},
        shape={"oneOf": [{"type": "string"}, {"type": "number"}]},
        code={"enum": ["A", 2]},
    )
    assert body_of(schema) == (
        "type f = (_: {\n"
        '// Unit\n//\nunit?: "c" | "f", // default: "c"\n'
        '// Examples:\n// - "today"\nwhen?: string | null,\n'
        "shape?: string | number,\n"
        'code?: "A" | 2,\n'
        "}) => any;"
    )


def test_unrenderable_schemas_are_counted_as_their_json() -> None:
    ref = {"$ref": "#/$defs/Address"}
    both = {"allOf": [{"type": "string"}, {"minLength": 2}]}
    assert body_of(obj(home=ref, name=both, odd="text", free={"type": "object"})) == (
        "type f = (_: {\n"
        f"home?: {compact(ref)},\n"
        f"name?: {compact(both)},\n"
        'odd?: "text",\n'
        "free?: object,\n"
        "}) => any;"
    )


def test_functions_without_parameters() -> None:
    assert body_of({"type": "object", "properties": {}}) == "type f = () => any;"
    assert render_functions([{"name": "g"}]).count("type g = () => any;") == 1


def test_choice_and_response_format_edge_cases() -> None:
    assert choice_tokens(None) == (0, None)
    assert choice_tokens({"name": 5}) == (0, '{"name":5}')
    assert choice_tokens(7) == (0, "7")
    assert response_format_text("json") == '"json"'
    assert response_format_text({"type": "json_schema", "json_schema": "x"}) == compact(
        {"type": "json_schema", "json_schema": "x"}
    )
    unnamed = response_format_text({"type": "json_schema", "json_schema": {"schema": {}}})
    assert unnamed == "# Response Formats\n\n## response\n\n{}"
