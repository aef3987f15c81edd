"""OpenAI Responses API schema (`extproc.providers.openai_responses`): request parsing and
prompt counting, usage, the typed stream events, and the mid-stream error the SDK raises."""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.dev.mock_provider.common import Completion
from extproc.dev.mock_provider.responses import ResponsesDialect
from extproc.errors import BadRequest, RateLimited
from extproc.providers._base import NOTHING, Usage
from extproc.providers.documents import binary_file_tokens
from extproc.providers.images import openai_image_tokens, url_image_size
from extproc.providers.openai_prompt import REPLY_PRIMING_TOKENS, content_part
from extproc.providers.openai_prompt import TOKENS_PER_MESSAGE as PER_ITEM
from extproc.providers.openai_responses import (
    PROVIDER,
    UNSEEN_CONTEXT_TOKENS,
    parse_responses_request,
)
from extproc.providers.openai_tools import (
    FUNCTIONS_OVERHEAD,
    RESPONSE_FORMAT_OVERHEAD,
    choice_tokens,
    compact,
    render_functions,
    response_format_text,
)
from extproc.providers.prompt_parts import PromptParts
from extproc.providers.sse import Event, SSEParser

BASE = REPLY_PRIMING_TOKENS


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", **fields}


def ev(kind: str, named: bool = True, **fields: Any) -> Event:
    return Event(kind if named else None, json.dumps({"type": kind, **fields}))


# -- requests ----------------------------------------------------------------------------


def test_string_input_and_instructions() -> None:
    request = body(input="Hello", instructions="Be brief.", max_output_tokens=64, stream=True)
    parsed = parse_responses_request(request)
    assert parsed.prompt_texts == ("developer", "Be brief.", "user", "Hello")  # roles too
    assert parsed.framing_tokens == BASE + 2 * PER_ITEM
    assert (parsed.model, parsed.stream, parsed.max_output_tokens) == ("gpt-4o", True, 64)
    assert (parsed.cap_field, parsed.completion_multiplier) == ("max_output_tokens", 1)
    assert (parsed.rewrites, parsed.hide_usage_event) == ({}, False)  # usage always streams
    assert parsed.body_with(None) is None
    assert json.loads(parsed.body_with(20) or b"") == {**request, "max_output_tokens": 20}


def test_item_list_messages_calls_outputs_and_reasoning() -> None:
    items: list[Any] = [
        {"role": "developer", "content": "Rules."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Q?"}]},
        {
            "type": "message",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "A.", "annotations": []},
                {"type": "refusal", "refusal": "No."},
            ],
        },
        {"type": "function_call", "call_id": "c1", "name": "get", "arguments": '{"a":1}'},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
        {"type": "custom_tool_call", "call_id": "c2", "name": "sh", "input": "ls"},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Hm"}]},
    ]
    parsed = parse_responses_request(body(input=items))
    assert parsed.prompt_texts == (
        "developer", "Rules.", "user", "Q?", "assistant", "A.", "No.",
        "get", '{"a":1}', "42", "sh", "ls", "Hm",
    )  # fmt: skip
    assert parsed.framing_tokens == BASE + len(items) * PER_ITEM


def test_function_call_output_as_content_parts() -> None:
    output = [{"type": "input_text", "text": "done"}, {"type": "input_image", "detail": "low"}]
    item = {"type": "function_call_output", "call_id": "c", "output": output}
    parsed = parse_responses_request(body(input=[item]))
    assert parsed.prompt_texts == ("done",)
    assert parsed.framing_tokens == BASE + PER_ITEM + 85  # gpt-4o, low detail


# A 1 x 1 PNG: its size is read from the header, so the exact tile count applies.
PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDw"
    "AChwGA60e6kgAAAABJRU5ErkJggg=="
)


@pytest.mark.parametrize(
    ("model", "url", "detail"),
    [
        ("gpt-4o", "https://x/y.png", "low"),
        ("gpt-4o", "https://x/y.png", "high"),
        ("gpt-4o", PNG, "high"),
        ("gpt-4o-mini", "https://x/y.png", None),
        ("gpt-4.1-nano", PNG, "auto"),
    ],
)
def test_images_by_the_published_rule(model: str, url: str, detail: str | None) -> None:
    part = {"type": "input_image", "image_url": url, "detail": detail}
    message = {"role": "user", "content": [part]}
    parsed = parse_responses_request({"model": model, "input": [message]})
    size = url_image_size(url)
    assert (size is None) == url.startswith("https")
    tokens = openai_image_tokens(model, detail=detail, size=size)
    assert parsed.framing_tokens == BASE + PER_ITEM + tokens
    assert parsed.prompt_texts == ("user",)


def test_content_parts_are_counted_as_chat_counts_them() -> None:
    """Files, audio and parts nobody knows go through chat's `content_part`, so both APIs
    price the same part the same."""
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Page >> endobj\n2 0 obj << /Type /Page >> endobj\n"
    parts: list[Any] = [
        {"type": "input_file", "filename": "a.pdf",
         "file_data": "data:application/pdf;base64," + base64.b64encode(pdf).decode()},
        {"type": "input_file", "filename": "notes.txt",
         "file_data": "data:text/plain;base64," + base64.b64encode(b"river " * 50).decode()},
        {"type": "input_file", "file_id": "file-1"},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "input_future", "payload": {"words": "new"}},
    ]  # fmt: skip
    parsed = parse_responses_request(body(input=[{"role": "user", "content": parts}]))
    expected = PromptParts()
    for part in parts:
        content_part(expected, part, "gpt-4o")
    assert parsed.prompt_texts == ("user", *expected.texts)
    assert parsed.framing_tokens == BASE + PER_ITEM + expected.fixed
    assert expected.fixed > 2 * 1500 and "river river" in "".join(expected.texts)


def test_unknown_items_and_parts_are_counted_by_their_strings() -> None:
    screenshot = "data:image/png;base64," + "B" * 4000
    items = [
        {"type": "computer_call_output", "call_id": "c", "output": {"image_url": screenshot}},
        {"type": "web_search_call", "id": "ws", "status": "completed", "action": {"query": "q"}},
        {"type": "shell_call_output", "output": [{"stdout": "ok", "blob": "data:x/y;base64,QUJD"}]},
        {"type": "reasoning", "summary": [], "encrypted_content": "E" * 400},
    ]
    parsed = parse_responses_request(body(input=items))
    assert parsed.prompt_texts == ("q", "ok")  # ids, types and statuses are not prompt
    unreadable = openai_image_tokens("gpt-4o", detail=None, size=None)
    inline = binary_file_tokens("QUJD")
    assert parsed.framing_tokens == BASE + 4 * PER_ITEM + unreadable + inline + 100


@pytest.mark.parametrize(
    "fields",
    [
        {"previous_response_id": "resp_1"},
        {"conversation": "conv_1"},
        {"conversation": {"id": "conv_1"}},
        {"prompt": {"id": "pmpt_1"}},
        {"input": [{"type": "item_reference", "id": "msg_1"}]},
        {"tools": [{"type": "web_search"}]},
    ],
)
def test_context_the_gateway_cannot_see_adds_the_documented_constant(
    fields: dict[str, Any],
) -> None:
    parsed = parse_responses_request(body(**fields))
    items = len(fields.get("input", []))
    tools = parsed.prompt_texts  # a hosted tool's own JSON is counted besides
    assert parsed.framing_tokens == BASE + items * PER_ITEM + UNSEEN_CONTEXT_TOKENS
    assert len(tools) == (1 if "tools" in fields else 0)


def test_prompt_template_variables_are_counted() -> None:
    template = {"id": "pmpt_1", "variables": {"city": "Paris", "pic": {"type": "input_text"}}}
    parsed = parse_responses_request(body(prompt=template))
    assert parsed.prompt_texts == ("Paris",)


def test_tools_tool_choice_and_output_schema_are_counted_as_chat_counts_them() -> None:
    function = {
        "type": "function",
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    custom = {"type": "custom", "name": "sh", "description": "Run a command"}
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    parsed = parse_responses_request(
        body(
            input="x",
            tools=[function, custom],
            tool_choice={"type": "function", "name": "get_weather"},
            text={"format": {"type": "json_schema", "name": "out", "schema": schema}},
        )
    )
    chat_format = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}
    assert parsed.prompt_texts == (
        "user",
        "x",
        render_functions([function]),
        compact([custom]),
        "get_weather",
        response_format_text(chat_format),
    )
    forced, _ = choice_tokens({"type": "function", "name": "get_weather"})
    expected = BASE + PER_ITEM + FUNCTIONS_OVERHEAD + forced + RESPONSE_FORMAT_OVERHEAD
    assert parsed.framing_tokens == expected  # caller-run tools: nothing unseen
    plain = parse_responses_request(body(input="x", text={"format": {"type": "text"}}))
    assert plain.prompt_texts == ("user", "x")
    with_system = parse_responses_request(body(input="x", instructions="s", tools=[function]))
    assert with_system.framing_tokens == BASE + 2 * PER_ITEM + FUNCTIONS_OVERHEAD - 4


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": ""}, "model"),
        ({"input": 5}, "input"),
        ({"input": ["hi"]}, "input"),
        ({"instructions": {"a": 1}}, "instructions"),
        ({"tools": {"type": "function"}}, "tools"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"max_output_tokens": "64"}, "max_output_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"previous_response_id": 7}, "previous_response_id"),
    ],
)
def test_refusals_name_the_param(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_responses_request(body(**{"input": "x", **fields}))
    assert refused.value.param == param


# -- usage --------------------------------------------------------------------------------

USAGE = {
    "input_tokens": 120,
    "input_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 7},
    "output_tokens": 50,
    "output_tokens_details": {"reasoning_tokens": 30},
    "total_tokens": 170,
}


def test_usage_with_cached_and_reasoning_tokens() -> None:
    assert PROVIDER.parse_usage({"usage": USAGE}) == Usage(
        120, 50, cached_prompt_tokens=100, cache_write_tokens=7, reasoning_tokens=30
    )
    bare = {"input_tokens": 3, "output_tokens": 4}
    assert PROVIDER.parse_usage({"usage": bare}) == Usage(3, 4)


@pytest.mark.parametrize(
    "usage",
    [None, {}, {"input_tokens": 3}, {"input_tokens": -1, "output_tokens": 2},
     {"input_tokens": "3", "output_tokens": 2}, {"prompt_tokens": 3, "completion_tokens": 2}],
)  # fmt: skip
def test_missing_or_untrustworthy_usage_is_none(usage: object) -> None:
    assert PROVIDER.parse_usage({"usage": usage}) is None


# -- stream -------------------------------------------------------------------------------


def mock_stream(words: list[str], *, reasoning: int = 0, truncated: bool = False) -> bytes:
    c = Completion(
        id="resp_" + "a" * 40, created=0, model="gpt-4o", words=words, prompt_tokens=9,
        completion_tokens=len(words) + reasoning, truncated=truncated,
        reasoning_tokens=reasoning, cached_tokens=4,
    )  # fmt: skip
    return b"".join(ResponsesDialect().stream_events(c, per_chunk=2, send_usage=True))


def read_all(raw: bytes, cuts: list[int]) -> tuple[list[str], Usage | None]:
    parser, reader = SSEParser(), PROVIDER.stream_reader(hide_usage_event=True)
    texts: list[str] = []
    edges = [0, *sorted(c % (len(raw) + 1) for c in cuts), len(raw)]
    for start, end in itertools.pairwise(edges):
        for event in parser.feed(raw[start:end]):
            meaning = reader.read(event)
            assert not meaning.hide
            texts.extend(meaning.texts)
    return texts, reader.usage


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_the_mock_stream_split_anywhere_counts_deltas_once(cuts: list[int]) -> None:
    words = ["the", "quick", "river", "went", "north"]
    texts, usage = read_all(mock_stream(words, reasoning=6), cuts)
    assert texts == ["the quick", " river went", " north"]  # no `.done` repeats
    assert usage == Usage(9, 11, cached_prompt_tokens=4, reasoning_tokens=6)


def test_an_incomplete_stream_reports_usage_in_response_incomplete() -> None:
    raw = mock_stream(["a", "b"], truncated=True)
    assert b"event: response.incomplete" in raw
    assert read_all(raw, [])[1] == Usage(9, 2, cached_prompt_tokens=4)


def test_tool_calls_reasoning_and_refusals_are_counted() -> None:
    reader = PROVIDER.stream_reader(hide_usage_event=False)
    call = {"type": "function_call", "id": "fc", "call_id": "c", "name": "lookup", "arguments": ""}
    events = [
        ev("response.created", response={"instructions": "never counted", "usage": None}),
        ev("response.reasoning_summary_text.delta", delta="Think"),
        ev("response.output_item.added", item=call),
        ev("response.function_call_arguments.delta", delta='{"q":'),
        ev("response.function_call_arguments.done", arguments='{"q":1}'),
        ev("response.output_item.done", item={**call, "arguments": '{"q":1}'}),
        ev("response.refusal.delta", named=False, delta="No"),
        ev("response.output_item.added", item={"type": "message", "content": []}),
    ]
    texts = [t for e in events for t in reader.read(e).texts]
    assert texts == ["Think", "lookup", '{"q":', "No"]
    assert reader.usage is None and reader.reported is None


def test_failed_response_usage_and_error_events() -> None:
    reader = PROVIDER.stream_reader(hide_usage_event=False)
    assert reader.read(ev("error", code="server_error", message="x")) == NOTHING
    failed = {"status": "failed", "usage": {"input_tokens": 5, "output_tokens": 1}}
    assert reader.read(ev("response.failed", response=failed)) == NOTHING
    assert reader.usage == reader.reported == Usage(5, 1)
    no_usage = {"status": "failed", "usage": None}
    reader.read(ev("response.failed", response=no_usage))
    assert reader.usage == Usage(5, 1)  # a later event without usage loses nothing


@pytest.mark.parametrize(
    "data",
    ["not json", "[1]", '{"type":"response.output_text.delta","delta":5}', "{" * 5000],
)
def test_malformed_events_mean_nothing(data: str) -> None:
    reader = PROVIDER.stream_reader(hide_usage_event=False)
    assert reader.read(Event("response.output_text.delta", data)) == NOTHING
    assert reader.read(Event(None, data)) == NOTHING


def test_events_without_text_or_usage_are_not_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """`response.created` echoes the whole request: it is skipped by name, unparsed."""
    calls: list[str] = []
    real = json.loads

    def counting_loads(data: str) -> Any:
        calls.append(data)
        return real(data)

    monkeypatch.setattr(json, "loads", counting_loads)
    reader = PROVIDER.stream_reader(hide_usage_event=False)
    for kind in ("response.created", "response.in_progress", "response.output_text.done"):
        reader.read(ev(kind, response={}))
    assert calls == []
    reader.read(ev("response.output_text.delta", delta="x"))
    assert len(calls) == 1


def test_the_openai_sdk_raises_the_stream_error_mid_stream() -> None:
    """The real SDK's `responses.create(stream=True)`, fed through an in-memory transport:
    the events before the cut arrive, then our error is raised with its message."""
    raw = mock_stream(["one", "two", "three", "four"])
    cut = raw.index(b"event: response.output_text.delta", raw.index(b"output_text.delta") + 1)
    error = RateLimited("Token budget 'tpm' exhausted", limit="tpm", retry_after=2)
    stream_body = raw[:cut] + PROVIDER.stream_error(error) + raw[cut:]

    def handler(request: httpx2.Request) -> httpx2.Response:
        headers = {"content-type": "text/event-stream"}
        return httpx2.Response(200, content=stream_body, headers=headers)

    client = openai.OpenAI(
        api_key="k",
        base_url="http://gateway.test/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    deltas: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for event in client.responses.create(model="gpt-4o", input="hi", stream=True):
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
    assert deltas == ["one two"]
    assert caught.value.message == "Token budget 'tpm' exhausted"
    assert (caught.value.code, caught.value.type) == ("rate_limit_exceeded", "rate_limit_error")
    event = json.loads(PROVIDER.stream_error(error).split(b"data: ", 1)[1])
    assert (event["type"], event["message"], event["code"]) == ("error", error.message, error.code)


def test_errors_and_credentials_are_openai_s() -> None:
    assert json.loads(PROVIDER.error_body(BadRequest("bad", param="input")))["error"] == {
        "message": "bad", "type": "invalid_request_error", "param": "input", "code": None,
    }  # fmt: skip
    assert PROVIDER.credential_header == "authorization"
    assert PROVIDER.credential_value("sk") == "Bearer sk"
