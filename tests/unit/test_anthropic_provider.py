"""Anthropic wire schema (`extproc.providers.anthropic`): Messages requests, usage, errors and
the stream reader, checked against the mock provider's own counting and the real SDK."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic._streaming import SSEDecoder

from extproc.dev.mock_provider.anthropic import AnthropicDialect
from extproc.dev.mock_provider.common import Completion
from extproc.errors import (
    BadRequest,
    ClientError,
    InternalFailure,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from extproc.providers import anthropic as anthropic_module
from extproc.providers._base import (
    MAX_OUTPUT_TOKENS,
    NOTHING,
    EventMeaning,
    ParsedRequest,
    Provider,
    StreamReader,
    Usage,
)
from extproc.providers.anthropic import (
    PROVIDER,
    TOKENS_PER_IMAGE,
    TOKENS_PER_MESSAGE,
    parse_messages_request,
)
from extproc.providers.sse import Event
from extproc.providers.tokens import count, encoding_name_for

MOCK = AnthropicDialect()


def messages(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    body.update(fields)
    return body


def compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_constants_and_protocol_conformance() -> None:
    assert (TOKENS_PER_MESSAGE, TOKENS_PER_IMAGE) == (3, 1600)
    provider: Provider = PROVIDER  # checked by mypy: the module offers the whole protocol
    reader: StreamReader = PROVIDER.stream_reader(hide_usage_event=False)
    assert provider.name == "anthropic"
    assert reader.usage is None


def test_credentials() -> None:
    assert PROVIDER.credential_header == "x-api-key"
    assert PROVIDER.credential_value("sk-ant-test") == "sk-ant-test"


# -- parse_messages_request: valid bodies ----------------------------------------------


def test_minimal_request() -> None:
    assert parse_messages_request(messages()) == ParsedRequest(
        model="claude-sonnet-4-6",
        stream=False,
        max_output_tokens=1024,
        prompt_texts=("Hi",),
        framing_tokens=3,
        rewritten_body=None,
        hide_usage_event=False,
    )


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
    assert parsed.framing_tokens == 3 + TOKENS_PER_IMAGE


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
    assert parsed.prompt_texts == ("What is in these pictures?", "Be precise.")
    assert parsed.framing_tokens == 3 + 2 * TOKENS_PER_IMAGE


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
    assert parsed.framing_tokens == 3 * 3 + TOKENS_PER_IMAGE


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


@pytest.mark.parametrize("tools", [[], "x", None, {"name": "t"}])
def test_empty_or_invalid_tools_add_nothing(tools: object) -> None:
    assert parse_messages_request(messages(tools=tools)).prompt_texts == ("Hi",)


@pytest.mark.parametrize("content", [None, 5, {"type": "text", "text": "x"}])
def test_content_of_unexpected_shape_counts_nothing(content: object) -> None:
    """The provider rejects these itself, at no cost: nothing to reserve, nothing to crash on."""
    parsed = parse_messages_request(messages(messages=[{"role": "user", "content": content}]))
    assert (parsed.prompt_texts, parsed.framing_tokens) == ((), 3)


def test_deeply_nested_tool_results_do_not_crash() -> None:
    content: list[Any] = [{"type": "text", "text": "leaf"}]
    for _ in range(300):
        content = [{"type": "tool_result", "tool_use_id": "t", "content": content}]
    parsed = parse_messages_request(messages(messages=[{"role": "user", "content": content}]))
    assert parsed.prompt_texts == ("leaf",)


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
    assert ours.prompt_texts == mock.texts
    assert ours_total == mock.prompt_tokens(encoding)
    assert ours_total > ours.framing_tokens


# -- parse_usage ------------------------------------------------------------------------


def test_parse_usage_includes_cache_tokens_in_the_prompt() -> None:
    body = {
        "id": "msg_1",
        "type": "message",
        "usage": {
            "input_tokens": 20,
            "cache_creation_input_tokens": 1000,
            "cache_read_input_tokens": 3000,
            "output_tokens": 42,
            "service_tier": "standard",
        },
    }
    usage = PROVIDER.parse_usage(body)
    assert usage == Usage(prompt_tokens=4020, completion_tokens=42, cached_prompt_tokens=3000)
    assert usage is not None
    assert usage.total == 4062


@pytest.mark.parametrize(
    "usage",
    [
        {"input_tokens": 8, "output_tokens": 2},
        {
            "input_tokens": 8,
            "output_tokens": 2,
            "cache_creation_input_tokens": None,
            "cache_read_input_tokens": None,
        },
    ],
)
def test_parse_usage_absent_or_null_cache_fields_are_zero(usage: dict[str, Any]) -> None:
    assert PROVIDER.parse_usage({"usage": usage}) == Usage(8, 2, 0)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"usage": None},
        {"usage": "lots"},
        {"usage": [8, 2]},
        {"usage": {}},
        {"usage": {"output_tokens": 2}},
        {"usage": {"input_tokens": 8}},
        {"usage": {"input_tokens": "8", "output_tokens": 2}},
        {"usage": {"input_tokens": 8.0, "output_tokens": 2}},
        {"usage": {"input_tokens": True, "output_tokens": 2}},
        {"usage": {"input_tokens": -8, "output_tokens": 2}},
        {"usage": {"input_tokens": 8, "output_tokens": None}},
        {"usage": {"input_tokens": 8, "output_tokens": -1}},
        {"usage": {"input_tokens": 8, "output_tokens": 2, "cache_read_input_tokens": -5}},
        {"usage": {"input_tokens": 8, "output_tokens": 2, "cache_creation_input_tokens": "9"}},
        {"usage": {"input_tokens": 8, "output_tokens": 2, "cache_read_input_tokens": False}},
    ],
)
def test_parse_usage_missing_or_untrustworthy(body: dict[str, Any]) -> None:
    assert PROVIDER.parse_usage(body) is None


# -- error_body / stream_error ----------------------------------------------------------


class NotFound(ClientError):
    status = 404


class Overloaded(ClientError):
    status = 529


class Teapot(ClientError):
    status = 418


class BadGateway(ClientError):
    status = 502


@pytest.mark.parametrize(
    ("error", "error_type"),
    [
        (BadRequest("'model' is too long", param="model"), "invalid_request_error"),
        (Unauthenticated("missing gateway key"), "authentication_error"),
        (PermissionDenied("model not allowed"), "permission_error"),
        (NotFound("no such route"), "not_found_error"),
        (PayloadTooLarge("body too large"), "request_too_large"),
        (RateLimited("limit 'tpm' reached", limit="tpm", retry_after=3), "rate_limit_error"),
        (InternalFailure("The gateway failed."), "api_error"),
        (Unavailable("quota store unavailable"), "overloaded_error"),
        (Overloaded("overloaded"), "overloaded_error"),
        (Teapot("odd"), "invalid_request_error"),
        (BadGateway("odd"), "api_error"),
    ],
)
def test_error_body_shape_per_status(error: ClientError, error_type: str) -> None:
    body = PROVIDER.error_body(error)
    assert isinstance(body, bytes)
    assert json.loads(body) == {
        "type": "error",
        "error": {"type": error_type, "message": error.message},
    }


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 413, 429, 500, 529])
def test_error_types_agree_with_the_mock_provider(status: int) -> None:
    error = type("E", (ClientError,), {"status": status})("m")
    assert json.loads(PROVIDER.error_body(error)) == json.loads(MOCK.error_body(status, "m"))


def test_error_body_keeps_unicode() -> None:
    body = PROVIDER.error_body(BadRequest('model "ünïcode" is unknown'))
    assert 'model \\"ünïcode\\" is unknown'.encode() in body


def test_stream_error_is_one_complete_sse_event() -> None:
    error = RateLimited("Token budget\nexhausted", limit="tpm", retry_after=2)
    raw = PROVIDER.stream_error(error)
    assert raw == (
        b'event: error\ndata: {"type":"error","error":{"type":"rate_limit_error",'
        b'"message":"Token budget\\nexhausted"}}\n\n'
    )
    decoded = list(SSEDecoder().iter_bytes(iter([raw])))
    assert [(e.event, e.json()) for e in decoded] == [
        ("error", json.loads(PROVIDER.error_body(error)))
    ]


def sse(event: str, payload: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {compact(payload)}\n\n".encode()


def test_anthropic_sdk_raises_on_stream_error_mid_stream() -> None:
    """The real SDK, fed through an in-memory transport, raises with our type and message."""
    stream_body = (
        b"".join(sse(e.event or "", json.loads(e.data)) for e in RECORDED[:5])
        + PROVIDER.stream_error(RateLimited("Token budget exhausted", limit="tpm", retry_after=2))
        + b"".join(sse(e.event or "", json.loads(e.data)) for e in RECORDED[5:7])
    )
    seen_requests: list[ParsedRequest] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen_requests.append(parse_messages_request(json.loads(request.content)))
        headers = {"content-type": "text/event-stream"}
        return httpx2.Response(200, content=stream_body, headers=headers)

    transport = httpx2.MockTransport(handler)
    client = anthropic.Anthropic(
        api_key="k", base_url="http://gateway.test", http_client=httpx2.Client(transport=transport)
    )
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        for event in client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=64,
            system="Be brief.",
            messages=[{"role": "user", "content": "Hello"}],
            stream=True,
        ):
            if event.type == "content_block_delta" and event.delta.type == "thinking_delta":
                texts.append(event.delta.thinking)
    assert texts == ["The user wants", " a forecast."]  # the events before the cut arrived
    assert caught.value.type == "rate_limit_error"
    assert caught.value.api_message == "Token budget exhausted"
    assert [(p.prompt_texts, p.stream, p.max_output_tokens) for p in seen_requests] == [
        (("Be brief.", "Hello"), True, 64)
    ]


# -- stream reader ----------------------------------------------------------------------


def ev(name: str, payload: dict[str, Any]) -> Event:
    return Event(event=name, data=json.dumps(payload))


def block_delta(index: int, delta: dict[str, Any]) -> Event:
    return ev(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )


START_USAGE = {
    "input_tokens": 472,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 2048,
    "output_tokens": 1,
}
# A stream as api.anthropic.com sends it: thinking, then text, then a tool call.
RECORDED: list[Event] = [
    ev(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": START_USAGE,
            },
        },
    ),
    ev(
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": ""},
        },
    ),
    ev("ping", {"type": "ping"}),
    block_delta(0, {"type": "thinking_delta", "thinking": "The user wants"}),
    block_delta(0, {"type": "thinking_delta", "thinking": " a forecast."}),
    block_delta(0, {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h"}),
    ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ev(
        "content_block_start",
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    ),
    block_delta(1, {"type": "text_delta", "text": "Let me"}),
    block_delta(1, {"type": "text_delta", "text": " check the weather."}),
    ev("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ev(
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {
                "type": "tool_use",
                "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                "name": "get_weather",
                "input": {},
            },
        },
    ),
    block_delta(2, {"type": "input_json_delta", "partial_json": ""}),
    block_delta(2, {"type": "input_json_delta", "partial_json": '{"city": "Par'}),
    block_delta(2, {"type": "input_json_delta", "partial_json": 'is"}'}),
    ev("content_block_stop", {"type": "content_block_stop", "index": 2}),
    ev(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 89},
        },
    ),
    ev("message_stop", {"type": "message_stop"}),
]
EXPECTED_TEXTS: list[tuple[str, ...]] = [
    (),
    (),
    (),
    ("The user wants",),
    (" a forecast.",),
    (),
    (),
    (),
    ("Let me",),
    (" check the weather.",),
    (),
    ("get_weather",),
    (),
    ('{"city": "Par',),
    ('is"}',),
    (),
    (),
    (),
]


def test_recorded_stream_texts_per_event_and_final_usage() -> None:
    reader = PROVIDER.stream_reader(hide_usage_event=False)
    meanings = []
    for event in RECORDED:
        if event.event == "message_delta":
            assert reader.usage is None  # message_start alone is not the whole usage
        meanings.append(reader.read(event))
    assert [m.texts for m in meanings] == EXPECTED_TEXTS
    assert not any(m.hide for m in meanings)
    assert reader.usage == Usage(
        prompt_tokens=472 + 2048, completion_tokens=89, cached_prompt_tokens=2048
    )


def test_hide_usage_event_has_nothing_to_hide() -> None:
    reader = PROVIDER.stream_reader(hide_usage_event=True)
    assert not any(reader.read(event).hide for event in RECORDED)
    assert reader.usage is not None


def test_message_delta_repeating_input_tokens_takes_the_max() -> None:
    reader = PROVIDER.stream_reader(hide_usage_event=False)
    reader.read(RECORDED[0])
    usage = {"input_tokens": 500, "cache_read_input_tokens": 2048, "output_tokens": 120}
    reader.read(ev("message_delta", {"type": "message_delta", "delta": {}, "usage": usage}))
    assert reader.usage == Usage(500 + 2048, 120, 2048)
    # a later, smaller repetition never lowers a count
    reader.read(ev("message_delta", {"type": "message_delta", "usage": {"output_tokens": 3}}))
    assert reader.usage == Usage(500 + 2048, 120, 2048)


def test_usage_needs_both_message_start_and_message_delta() -> None:
    only_delta = PROVIDER.stream_reader(hide_usage_event=False)
    only_delta.read(RECORDED[-3])
    assert only_delta.usage is None
    only_start = PROVIDER.stream_reader(hide_usage_event=False)
    only_start.read(RECORDED[0])
    assert only_start.usage is None


@pytest.mark.parametrize(
    "event",
    [
        Event("content_block_delta", '{"type":"content_block_delta","delta":{"type":"text_de'),
        Event("content_block_delta", ""),
        Event("content_block_delta", "[" * 100_000 + "]" * 100_000),
        Event("content_block_delta", '"just a string"'),
        Event("content_block_delta", "null"),
        Event("content_block_delta", b'{"type": "\xff"}'.decode("latin-1")),
        block_delta(0, {"type": "text_delta", "text": 5}),
        block_delta(0, {"type": "text_delta"}),
        block_delta(0, {"type": "text_delta", "text": ""}),
        block_delta(0, {"type": ["text_delta"], "text": "x"}),
        ev("content_block_delta", {"type": "content_block_delta", "delta": "text"}),
        ev("content_block_start", {"type": "content_block_start", "content_block": None}),
        ev(
            "content_block_start",
            {"type": "content_block_start", "content_block": {"type": "image"}},
        ),
        ev("message_start", {"type": "message_start", "message": "hello"}),
        ev("some_future_event", {"type": "some_future_event", "text": "x"}),
        ev("error", {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}),
        Event("ping", "not json at all"),
        Event("message_stop", "{"),
    ],
)
def test_malformed_or_uncounted_events_mean_nothing(event: Event) -> None:
    reader = PROVIDER.stream_reader(hide_usage_event=False)
    assert reader.read(event) == NOTHING
    assert reader.usage is None


@pytest.mark.parametrize(
    "start_usage",
    [
        None,
        "many",
        {"output_tokens": 1},
        {"input_tokens": "472", "output_tokens": 1},
        {"input_tokens": -1, "output_tokens": 1},
        {"input_tokens": 472, "cache_read_input_tokens": True},
    ],
)
def test_untrustworthy_start_usage_gives_no_usage(start_usage: object) -> None:
    reader = PROVIDER.stream_reader(hide_usage_event=False)
    start = {"type": "message_start", "message": {"usage": start_usage}}
    assert reader.read(ev("message_start", start)) == NOTHING
    reader.read(RECORDED[-3])
    assert reader.usage is None


@pytest.mark.parametrize("delta_usage", [None, {}, {"output_tokens": "89"}, {"output_tokens": -1}])
def test_untrustworthy_delta_usage_gives_no_usage(delta_usage: object) -> None:
    reader = PROVIDER.stream_reader(hide_usage_event=False)
    reader.read(RECORDED[0])
    reader.read(ev("message_delta", {"type": "message_delta", "usage": delta_usage}))
    assert reader.usage is None


def test_reader_over_the_mock_providers_own_stream() -> None:
    """The mock's event bytes, split into events by hand: every word counted, usage exact."""
    words = ["the", "quick", "river", "went", "north"]
    completion = Completion(
        id="msg_01x",
        created=0,
        model="claude-sonnet-4-6",
        words=words,
        prompt_tokens=17,
        completion_tokens=len(words),
        truncated=False,
    )
    raw = b"".join(MOCK.stream_events(completion, per_chunk=2, send_usage=True)).decode()
    reader = PROVIDER.stream_reader(hide_usage_event=False)
    texts: list[str] = []
    for block in raw.split("\n\n")[:-1]:
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        meaning = reader.read(Event(event=fields["event"], data=fields["data"]))
        assert isinstance(meaning, EventMeaning)
        texts.extend(meaning.texts)
    assert "".join(texts) == " ".join(words)
    assert texts == ["the quick", " river went", " north"]
    assert reader.usage == Usage(17, 5, 0)


def test_each_event_is_parsed_at_most_once_and_empty_ones_not_at_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reader runs per streamed event: one `json.loads` at most, none for ping/stop."""
    calls: list[str] = []

    def counting_loads(data: str) -> Any:
        calls.append(data)
        return json.loads(data)

    counting_json = SimpleNamespace(loads=counting_loads, dumps=json.dumps)
    monkeypatch.setattr(anthropic_module, "json", counting_json)
    reader = PROVIDER.stream_reader(hide_usage_event=False)
    for event in RECORDED:
        reader.read(event)
    skipped = {"ping", "content_block_stop", "message_stop"}
    assert calls == [e.data for e in RECORDED if e.event not in skipped]
