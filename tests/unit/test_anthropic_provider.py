"""Anthropic wire schema (`extproc.providers.anthropic`), the request side: the provider's
constants and credential, Messages requests parsed and counted (valid and invalid bodies),
and agreement with the mock provider's own prompt count. Usage and errors, and the stream
reader, have their own files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from extproc.dev.mock_provider.anthropic import AnthropicDialect
from extproc.errors import BadRequest
from extproc.providers._base import MAX_OUTPUT_TOKENS, ParsedRequest, Provider, StreamReader
from extproc.providers.anthropic import PROVIDER, TOKENS_PER_MESSAGE, parse_messages_request
from extproc.providers.tokens import count, encoding_name_for
from tests.unit.anthropic_wire import compact, messages

MOCK = AnthropicDialect()
# claude-sonnet-4-6 reads images up to 1568 px / 784 x 1568 px: an image of unknown size
# (URL, unreadable data) costs that maximum, 784 * 1568 / 750 rounded up.
MAX_IMAGE = 1640


def test_constants_and_protocol_conformance() -> None:
    assert TOKENS_PER_MESSAGE == 3
    provider: Provider = PROVIDER  # checked by mypy: the module offers the whole protocol
    reader: StreamReader = PROVIDER.stream_reader(hide_usage_event=False)
    assert provider.name == "anthropic"
    assert reader.usage is None


def test_credentials() -> None:
    assert PROVIDER.credential_header == "x-api-key"
    assert PROVIDER.credential_value("sk-ant-test") == "sk-ant-test"


# -- parse_messages_request: valid bodies ----------------------------------------------


def test_minimal_request() -> None:
    body = messages()
    assert parse_messages_request(body) == ParsedRequest(
        model="claude-sonnet-4-6",
        stream=False,
        max_output_tokens=1024,
        prompt_texts=("Hi",),
        framing_tokens=3,
        hide_usage_event=False,
        cap_field="max_tokens",
        body=body,
    )
    assert parse_messages_request(body).body_with(None) is None  # forwarded untouched


def test_system_string_and_conversation() -> None:
    body = messages(
        system="Be brief.",
        messages=[
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": "Bye"},
        ],
    )
    parsed = parse_messages_request(body)
    assert parsed.prompt_texts == ("Be brief.", "Hello", "Hi!", "Bye")
    assert parsed.framing_tokens == 3 * 3


def test_system_as_blocks() -> None:
    system = [
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "Long cached context", "cache_control": {"type": "ephemeral"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/x.png"}},
        "garbage",
    ]
    parsed = parse_messages_request(messages(system=system))
    assert parsed.prompt_texts == ("You are terse.", "Long cached context", "Hi")
    assert parsed.framing_tokens == 3 + MAX_IMAGE


def test_text_and_image_blocks() -> None:
    content = [
        {"type": "text", "text": "What is in these pictures?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {"type": "text", "text": "Be precise."},
        {"type": "text", "text": 42},
        "not a block",
        {"type": "thinking", "thinking": "earlier reasoning", "signature": "sig"},
    ]
    parsed = parse_messages_request(messages(messages=[{"role": "user", "content": content}]))
    assert parsed.prompt_texts == (
        "What is in these pictures?",
        "Be precise.",
        '{"type":"text","text":42}',  # not a valid text block: counted as JSON, not refused
        "earlier reasoning",  # thinking blocks are input too
    )
    assert parsed.framing_tokens == 3 + 2 * MAX_IMAGE  # "AA" is no image: its size is unknown


def test_tool_use_and_tool_result_blocks() -> None:
    tool_input = {"city": "Zürich", "unit": "celsius"}
    body = messages(
        messages=[
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me check."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": tool_input,
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [
                            {"type": "text", "text": "radar:"},
                            {"type": "image", "source": {"type": "base64", "data": "AA"}},
                        ],
                    },
                    {"type": "tool_result", "tool_use_id": "toolu_3"},  # no content
                ],
            },
        ]
    )
    parsed = parse_messages_request(body)
    assert parsed.prompt_texts == (
        "Weather?",
        "Let me check.",
        "get_weather",
        '{"city":"Zürich","unit":"celsius"}',  # compact and unescaped, as counted
        "18C",
        "radar:",
    )
    assert parsed.framing_tokens == 3 * 3 + MAX_IMAGE


def test_tool_use_without_input_counts_empty_object() -> None:
    content = [{"type": "tool_use", "id": "t", "name": "now"}]
    parsed = parse_messages_request(messages(messages=[{"role": "assistant", "content": content}]))
    assert parsed.prompt_texts == ("now", "{}")


def test_tools_are_counted_as_compact_json_last() -> None:
    tools = [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    parsed = parse_messages_request(messages(system="S", tools=tools))
    assert parsed.prompt_texts == ("S", "Hi", compact(tools))
    assert parsed.prompt_texts[2].startswith('[{"name":"get_weather","description":')
    # plus the tool-use system prompt Anthropic adds (documented: 346 tokens at tool_choice auto)
    assert parsed.framing_tokens == 3 + 346


@pytest.mark.parametrize("tools", [[], "x", None, {"name": "t"}])
def test_empty_or_invalid_tools_add_nothing(tools: object) -> None:
    assert parse_messages_request(messages(tools=tools)).prompt_texts == ("Hi",)


@pytest.mark.parametrize("content", [None, 5, {"type": "text", "text": "x"}])
def test_content_of_unexpected_shape_counts_nothing(content: object) -> None:
    """The provider rejects these itself, at no cost: nothing to reserve, nothing to crash on."""
    parsed = parse_messages_request(messages(messages=[{"role": "user", "content": content}]))
    assert (parsed.prompt_texts, parsed.framing_tokens) == ((), 3)


def test_deeply_nested_tool_results_do_not_crash() -> None:
    """Past 32 levels the rest is counted as its JSON, without recursing further."""
    content: list[Any] = [{"type": "text", "text": "leaf"}]
    for _ in range(300):
        content = [{"type": "tool_result", "tool_use_id": "t", "content": content}]
    parsed = parse_messages_request(messages(messages=[{"role": "user", "content": content}]))
    [nested] = parsed.prompt_texts
    assert nested.count('"type":"tool_result"') == 300 - 33
    assert nested.endswith('[{"type":"text","text":"leaf"}]' + "}]" * (300 - 33))


@pytest.mark.parametrize("value", [1, 4096, MAX_OUTPUT_TOKENS])
def test_max_tokens_bounds_accepted(value: int) -> None:
    assert parse_messages_request(messages(max_tokens=value)).max_output_tokens == value


@pytest.mark.parametrize(("value", "expected"), [(True, True), (False, False), (None, False)])
def test_stream_flag(value: bool | None, expected: bool) -> None:
    assert parse_messages_request(messages(stream=value)).stream is expected


# -- parse_messages_request: invalid bodies --------------------------------------------


def without(field: str) -> dict[str, Any]:
    body = messages()
    del body[field]
    return body


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        (without("model"), "model", "'model' is required"),
        (messages(model=""), "model", "'model' is required"),
        (messages(model=7), "model", "'model' is required"),
        (messages(model="m" * 257), "model", "'model' is too long"),
        (without("max_tokens"), "max_tokens", "'max_tokens' is required"),
        (messages(max_tokens=None), "max_tokens", "'max_tokens' is required"),
        (messages(max_tokens=True), "max_tokens", "'max_tokens' must be an integer"),
        (messages(max_tokens=10.0), "max_tokens", "'max_tokens' must be an integer"),
        (messages(max_tokens="10"), "max_tokens", "'max_tokens' must be an integer"),
        (messages(max_tokens=0), "max_tokens", "between 1 and 1000000, got 0"),
        (messages(max_tokens=-1), "max_tokens", "between 1 and 1000000, got -1"),
        (messages(max_tokens=1_000_001), "max_tokens", "between 1 and 1000000, got 1000001"),
        (without("messages"), "messages", "'messages' must be a non-empty array"),
        (messages(messages=[]), "messages", "'messages' must be a non-empty array"),
        (messages(messages="hello"), "messages", "'messages' must be a non-empty array"),
        (messages(messages={"role": "user"}), "messages", "'messages' must be a non-empty array"),
        (messages(messages=["hello"]), "messages", "'messages[0]' must be an object"),
        (
            messages(messages=[{"role": "user", "content": "x"}, 5]),
            "messages",
            "'messages[1]' must be an object",
        ),
        (
            messages(messages=[{"content": "x"}]),
            "messages",
            "'messages[0].role' must be 'user' or 'assistant'",
        ),
        (
            messages(messages=[{"role": "system", "content": "x"}]),
            "messages",
            "'messages[0].role' must be 'user' or 'assistant'",
        ),
        (
            messages(messages=[{"role": "user", "content": "x"}, {"role": ["user"]}]),
            "messages",
            "'messages[1].role' must be 'user' or 'assistant'",
        ),
        (messages(stream="true"), "stream", "'stream' must be a boolean"),
        (messages(stream=1), "stream", "'stream' must be a boolean"),
    ],
)
def test_bad_request_names_the_param(body: dict[str, Any], param: str, message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_messages_request(body)
    assert caught.value.param == param
    assert message in caught.value.message
    assert caught.value.status == 400


# -- agreement with the mock provider's own prompt count -------------------------------


@pytest.mark.parametrize(
    "body",
    [
        messages(),
        messages(system="You are a helpful assistant.", max_tokens=5),
        messages(
            model="claude-3-5-haiku-latest",
            system=[{"type": "text", "text": "Rules:"}, {"type": "text", "text": "be kind"}],
            messages=[
                {"role": "user", "content": "Tell me about the weather in Zürich 🌦"},
                {"role": "assistant", "content": [{"type": "text", "text": "It is mild."}]},
                {"role": "user", "content": [{"type": "text", "text": "And tomorrow?\n\n"}]},
            ],
        ),
        messages(system="", messages=[{"role": "user", "content": "x " * 5000}]),
    ],
)
def test_prompt_tokens_equal_the_mock_providers_count(
    vocab_dir: Path, body: dict[str, Any]
) -> None:
    ours = parse_messages_request(body)
    mock = MOCK.parse(body)
    encoding = encoding_name_for(ours.model)
    ours_total = sum(count(t, encoding) for t in ours.prompt_texts) + ours.framing_tokens
    assert ours.prompt_texts == tuple(t for t in mock.texts if t)  # empty text counts 0
    assert ours_total == mock.prompt_tokens(encoding)
    assert ours_total > ours.framing_tokens
