"""Every billed part of an OpenAI chat prompt counted (`extproc.providers.openai_prompt`):
system and developer messages in every form, tools and legacy functions, the forced choice,
response_format schemas, images, audio, files, refusals and parts we do not know. The
"covers what the provider bills" tests back the issue's overshoot cases for legacy functions,
images, documents and response_format with published numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from extproc.providers.openai import parse_chat_request
from extproc.providers.openai_tools import compact, render_functions
from extproc.providers.tokens import count, encoding_name_for
from tests.unit import media

WEATHER = {
    "name": "get_current_weather",
    "description": "Get the current weather in a given location",
    "parameters": {
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "The city and state"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["location"],
    },
}


def chat(*messages: dict[str, Any], model: str = "gpt-4o", **fields: Any) -> dict[str, Any]:
    body = {"model": model, "messages": list(messages) or [{"role": "user", "content": "Hi"}]}
    return body | fields


def tokens(body: dict[str, Any]) -> int:
    """What the gateway reserves for the prompt: counted texts plus fixed estimates."""
    parsed = parse_chat_request(body)
    encoding = encoding_name_for(parsed.model)
    return sum(count(text, encoding) for text in parsed.prompt_texts) + parsed.framing_tokens


def user(*parts: object) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


# -- system and developer messages ---------------------------------------------------------


@pytest.mark.parametrize("role", ["system", "developer"])
def test_system_prompts_in_every_form_are_counted_alike(vocab_dir: Path, role: str) -> None:
    text = "You are terse. Answer in French."
    as_string = chat({"role": role, "content": text}, {"role": "user", "content": "Hi"})
    as_parts = chat(
        {"role": role, "content": [{"type": "text", "text": text}]},
        {"role": "user", "content": "Hi"},
    )
    assert (
        tokens(as_string) == tokens(as_parts) == tokens(chat()) + 3 + 1 + count(text, "o200k_base")
    )


def test_with_functions_the_first_system_message_gains_a_newline() -> None:
    system = {"role": "system", "content": [{"type": "text", "text": "Rules"}]}
    parsed = parse_chat_request(chat(system, system, functions=[WEATHER]))
    assert parsed.prompt_texts[:4] == ("system", "Rules\n", "system", "Rules")


# -- tools and legacy functions --------------------------------------------------------------


def test_legacy_functions_are_counted_like_tools(vocab_dir: Path) -> None:
    """The issue measured 1,032 reserved for `functions` vs 7,358 for the same `tools`."""
    bare = tokens(chat())
    as_tools = tokens(chat(tools=[{"type": "function", "function": WEATHER}]))
    as_functions = tokens(chat(functions=[WEATHER]))
    assert as_tools == as_functions > bare + count(render_functions([WEATHER]), "o200k_base")


def test_functions_cover_the_recorded_bill(vocab_dir: Path) -> None:
    """hmarr/openai-chat-tokens, validated against the API: 106 prompt tokens billed for a
    nested recipe schema sent as legacy functions (before: the schema was not counted)."""
    recipe = {
        "name": "get_recipe",
        "parameters": {
            "type": "object",
            "required": ["ingredients", "instructions", "time_to_cook"],
            "properties": {
                "ingredients": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "unit", "amount"],
                        "properties": {
                            "name": {"type": "string"},
                            "unit": {
                                "enum": ["grams", "ml", "cups", "pieces", "teaspoons"],
                                "type": "string",
                            },
                            "amount": {"type": "number"},
                        },
                    },
                },
                "instructions": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Steps to prepare the recipe (no numbering)",
                },
                "time_to_cook": {
                    "type": "number",
                    "description": "Total time to prepare the recipe in minutes",
                },
            },
        },
    }
    body = chat({"role": "user", "content": "hello"}, model="gpt-3.5-turbo", functions=[recipe])
    assert tokens(body) == 106


def test_tools_that_are_not_functions_are_counted_as_json() -> None:
    custom = {"type": "custom", "custom": {"name": "sql", "format": {"type": "grammar"}}}
    parsed = parse_chat_request(chat(tools=[custom, {"type": "function", "function": "x"}]))
    assert parsed.prompt_texts[2:] == (
        compact(custom),
        compact({"type": "function", "function": "x"}),
    )


@pytest.mark.parametrize(
    ("field", "choice", "fixed", "text"),
    [
        ("tool_choice", "auto", 0, None),
        ("tool_choice", "none", 1, None),
        ("tool_choice", "required", 4, None),
        ("tool_choice", {"type": "function", "function": {"name": "get_current_weather"}}, 4,
         "get_current_weather"),
        ("function_call", {"name": "get_current_weather"}, 4, "get_current_weather"),
        ("function_call", "none", 1, None),
        ("tool_choice", {"type": "allowed_tools", "mode": "auto"}, 0,
         '{"type":"allowed_tools","mode":"auto"}'),
    ],
)  # fmt: skip
def test_the_forced_choice_is_counted(
    field: str, choice: object, fixed: int, text: str | None
) -> None:
    plain = parse_chat_request(chat(functions=[WEATHER]))
    chosen = parse_chat_request(chat(functions=[WEATHER]) | {field: choice})
    assert chosen.framing_tokens - plain.framing_tokens == fixed
    assert chosen.prompt_texts[len(plain.prompt_texts) :] == ((text,) if text else ())


# -- response_format -------------------------------------------------------------------------


def test_a_json_schema_response_format_is_counted_in_full(vocab_dir: Path) -> None:
    """No published bill exists for schemas; the reservation holds the whole schema in
    OpenAI's published layout (harmony "Structured output") plus 4 tokens of framing."""
    schema = {
        "type": "object",
        "properties": {"steps": {"type": "array", "items": {"type": "string"}}},
        "required": ["steps"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "plan", "description": "A plan",
                                                  "schema": schema, "strict": True}}  # fmt: skip
    parsed = parse_chat_request(chat(response_format=fmt))
    assert parsed.prompt_texts[-1] == (
        "# Response Formats\n\n## plan\n\n// A plan\n" + compact(schema)
    )
    assert tokens(chat(response_format=fmt)) >= tokens(chat()) + count(
        compact(schema), "o200k_base"
    )


@pytest.mark.parametrize("fmt", [{"type": "text"}, {"type": "json_object"}, None])
def test_formats_without_a_schema_add_nothing(fmt: object) -> None:
    parsed = parse_chat_request(chat(response_format=fmt))
    assert (parsed.prompt_texts, parsed.framing_tokens) == (("user", "Hi"), 6)


# -- images ----------------------------------------------------------------------------------


def image(url: str, detail: str | None = None) -> dict[str, Any]:
    spec = {"url": url} | ({"detail": detail} if detail else {})
    return {"type": "image_url", "image_url": spec}


@pytest.mark.parametrize(
    ("size", "detail", "billed"),
    [((1024, 1024), "high", 765), ((2048, 4096), "auto", 1105), ((4096, 8192), "low", 85)],
)
def test_images_cover_the_published_prices(size: tuple[int, int], detail: str, billed: int) -> None:
    """OpenAI's worked examples (1024 x 1024 high: 765; 2048 x 4096 high: 1105; low: 85)."""
    url = media.data_url("image/png", media.png(*size))
    with_image = parse_chat_request(chat(user(image(url, detail))))
    assert with_image.framing_tokens - parse_chat_request(chat(user())).framing_tokens == billed


def test_an_image_url_reserves_the_worst_case_for_its_detail() -> None:
    remote = parse_chat_request(chat(user(image("https://example.com/a.png")))).framing_tokens
    low = parse_chat_request(chat(user(image("https://example.com/a.png", "low")))).framing_tokens
    assert (remote - 6, low - 6) == (1445, 85)  # before: a flat 85 for every image
    mini = parse_chat_request(chat(user(image("https://x/a.png")), model="gpt-4o-mini"))
    assert mini.framing_tokens - 6 == 2833 + 8 * 5667


def test_responses_style_image_parts_are_counted_too() -> None:
    url = media.data_url("image/jpeg", media.jpeg(512, 512))
    part = {"type": "input_image", "image_url": url, "detail": "high"}
    assert parse_chat_request(chat(user(part))).framing_tokens - 6 == 85 + 170


# -- audio, files, refusals, unknown fields ------------------------------------------------


def test_input_audio_is_counted_by_duration() -> None:
    clip = {
        "type": "input_audio",
        "input_audio": {"data": media.b64(media.wav(4.2)), "format": "wav"},
    }
    assert parse_chat_request(chat(user(clip))).framing_tokens - 6 == 42


def test_a_pdf_file_covers_the_published_bill() -> None:
    """Pages x (1,500 text + the largest page image); Anthropic documents a 3-page PDF at about
    7,000 tokens, OpenAI bills text plus an image per page the same way."""
    pdf = media.data_url("application/pdf", media.pdf(3))
    part = {"type": "file", "file": {"filename": "q3.pdf", "file_data": pdf}}
    parsed = parse_chat_request(chat(user(part)))
    assert parsed.prompt_texts == ("user", "q3.pdf")
    assert parsed.framing_tokens - 6 == 3 * (1500 + 1445) >= 7000


def test_other_files() -> None:
    text = {"type": "file", "file": {"file_data": media.data_url("text/csv", b"a,b\n1,2\n")}}
    by_id = {"type": "file", "file": {"file_id": "file-abc"}}
    docx = {"type": "input_file", "file_data": media.b64(b"PK\x03\x04" + b"\0" * 996)}
    assert parse_chat_request(chat(user(text))).prompt_texts == ("user", "a,b\n1,2\n")
    assert parse_chat_request(chat(user(by_id))).framing_tokens - 6 == 3 * (1500 + 1445)
    assert parse_chat_request(chat(user(docx))).framing_tokens - 6 == 500  # 1,000 bytes / 2


def test_refusals_and_unknown_message_fields_are_counted() -> None:
    message = {
        "role": "assistant",
        "content": [{"type": "refusal", "refusal": "I can't."}],
        "refusal": "No.",
        "audio": {"id": "audio_1"},
    }
    parsed = parse_chat_request(chat(message))
    assert parsed.prompt_texts == ("assistant", "I can't.", "No.", '{"id":"audio_1"}')


def test_function_messages_cost_two_less_and_content_of_other_shapes_is_json() -> None:
    fn = parse_chat_request(chat({"role": "function", "name": "f", "content": "{}"}))
    assert fn.framing_tokens == 3 + 3 + 1 - 2
    odd = parse_chat_request(chat({"role": "user", "content": {"text": "x"}}))
    assert odd.prompt_texts == ("user", '{"text":"x"}')


def test_nothing_new_is_refused() -> None:
    body = chat(
        user({"type": "video_url", "video_url": {"url": "https://x/v.mp4"}}, 7, None),
        {"role": "critic", "content": "fine", "weight": 0.5},
        tools=[{"type": "web_search_preview"}],
        response_format={"type": "grammar", "grammar": "root ::= x"},
    )
    parsed = parse_chat_request(body)
    assert json.loads(parsed.prompt_texts[1])["type"] == "video_url"
    assert (
        "critic" in parsed.prompt_texts and '{"type":"web_search_preview"}' in parsed.prompt_texts
    )
