"""Anthropic Messages requests served by OpenAI Chat Completions
(`extproc.providers.translate.messages_over_chat`): streams. Recorded-shape chunk streams
become Anthropic events in the real API's sequence, identical however the bytes are split;
the anthropic SDK's own accumulator builds the expected message from them, and tokengate's
Anthropic reader reports the backend's usage."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pydantic
import pytest
from openai.types.chat import ChatCompletionChunk

from extproc.providers._base import Usage
from extproc.providers.anthropic import PROVIDER as ANTHROPIC
from extproc.providers.openai import PROVIDER as OPENAI
from extproc.providers.sse import MAX_EVENT_BYTES, Event, SSEParser
from extproc.providers.translate import StreamTranslator
from extproc.providers.translate.messages_over_chat import TRANSLATION
from extproc.providers.translate.messages_over_chat import TRANSLATION as MESSAGES_OVER_CHAT

FIXTURES = Path(__file__).parent / "fixtures"
STREAMS = FIXTURES / "translate" / "messages_over_chat"
EVENTS = pydantic.TypeAdapter(anthropic.types.RawMessageStreamEvent)
START, DELTA, STOP = "content_block_start", "content_block_delta", "content_block_stop"
END = [("message_delta", None, 1), ("message_stop", None, 1)]


def recorded(name: str) -> bytes:
    if name == "openai_chat.sse":  # the plain-text recording the SSE parser's tests use
        return (FIXTURES / "sse" / name).read_bytes()
    return (STREAMS / name).read_bytes()


def translate(*chunks: bytes) -> bytes:
    stream: StreamTranslator = TRANSLATION.stream(include_usage=False)
    return b"".join(stream.feed(c) for c in chunks) + stream.close()


def events(raw: bytes) -> list[Event]:
    return SSEParser().feed(raw)


def runs(raw: bytes) -> list[tuple[str, int | None, int]]:
    """The event sequence as runs of (name, block index, how many in a row)."""
    out: list[tuple[str, int | None, int]] = []
    for event in events(raw):
        assert event.event is not None
        key = (event.event, json.loads(event.data).get("index"))
        if out and out[-1][:2] == key:
            out[-1] = (*key, out[-1][2] + 1)
        else:
            out.append((*key, 1))
    return out


def sdk_stream(raw: bytes) -> anthropic.types.Message:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=raw, headers={"content-type": "text/event-stream"})

    client = anthropic.Anthropic(
        api_key="k",
        base_url="http://gateway.test",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    with client.messages.stream(
        model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        return stream.get_final_message()


def usage_of(name: str) -> tuple[Usage | None, Usage | None]:
    """(backend's usage by tokengate's OpenAI reader, client's by its Anthropic reader)."""
    backend = OPENAI.stream_reader(hide_usage_event=False)
    for event in events(recorded(name)):
        backend.read(event)
    client = ANTHROPIC.stream_reader(hide_usage_event=False)
    for event in events(translate(recorded(name))):
        client.read(event)
    return backend.usage, client.usage


TOOLS_RUNS = [
    ("message_start", None, 1),
    (START, 0, 1), (DELTA, 0, 5), (STOP, 0, 1),
    (START, 1, 1), (DELTA, 1, 9), (STOP, 1, 1),
    (START, 2, 1), (DELTA, 2, 10), (STOP, 2, 1),
    *END,
]  # fmt: skip
TEXT_RUNS = [("message_start", None, 1), (START, 0, 1), (DELTA, 0, 6), (STOP, 0, 1), *END]
PLAIN_RUNS = [("message_start", None, 1), (START, 0, 1), (DELTA, 0, 14), (STOP, 0, 1), *END]
ERROR_RUNS = [("message_start", None, 1), (START, 0, 1), (DELTA, 0, 3), ("error", None, 1)]
CUT_RUNS = [("message_start", None, 1), (START, 0, 1), (DELTA, 0, 2), ("error", None, 1)]
FIXTURE_RUNS = {
    "tools.sse": TOOLS_RUNS,
    "max_tokens.sse": TEXT_RUNS,
    "openai_chat.sse": PLAIN_RUNS,
    "error.sse": ERROR_RUNS,
    "cut.sse": CUT_RUNS,
}


@pytest.mark.parametrize("name", FIXTURE_RUNS)
def test_event_sequence_and_shapes(name: str) -> None:
    for event in events(recorded(name)):
        if event.data != "[DONE]" and "error" not in json.loads(event.data):
            ChatCompletionChunk.model_validate_json(event.data)  # the recording is OpenAI's
    out = translate(recorded(name))
    assert runs(out) == FIXTURE_RUNS[name]
    for event in events(out):
        payload = json.loads(event.data)
        assert payload["type"] == event.event
        if event.event == "error":
            anthropic.types.ErrorResponse.model_validate(payload)
        else:
            EVENTS.validate_python(payload)


@pytest.mark.parametrize("name", FIXTURE_RUNS)
def test_every_split_gives_the_same_bytes(name: str) -> None:
    raw = recorded(name)
    whole = translate(raw)
    for cut in range(len(raw) + 1):
        assert translate(raw[:cut], raw[cut:]) == whole, cut
    rng = random.Random(20251129)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(raw)), 12))
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        assert translate(*pieces) == whole
    assert translate(*(raw[i : i + 1] for i in range(len(raw)))) == whole


def test_the_sdk_accumulates_text_and_parallel_tool_calls() -> None:
    message = sdk_stream(translate(recorded("tools.sse")))
    assert message.id == "chatcmpl-CJq8vR2mXoK4tYb7LnW3sQe9aZp1D"
    assert message.model == "gpt-4o-2024-08-06"
    assert [b.model_dump(exclude_none=True) for b in message.content] == [
        {"type": "text", "text": "I'll check both cities."},
        {
            "type": "tool_use",
            "id": "call_Vx1bK9wQm2LrT5nP8dYs3HfA",
            "name": "get_weather",
            "input": {"city": "Paris", "unit": "celsius"},
        },
        {
            "type": "tool_use",
            "id": "call_Jh4cN7pXe0GqW2zR6tUm9KsB",
            "name": "get_weather",
            "input": {"city": "Zürich", "unit": "celsius"},
        },
    ]
    assert message.stop_reason == "tool_use"
    assert message.stop_sequence is None
    assert message.usage.input_tokens == 1893 - 1536
    assert message.usage.cache_read_input_tokens == 1536
    assert message.usage.cache_creation_input_tokens == 0
    assert message.usage.output_tokens == 61


def test_the_sdk_sees_a_cut_by_length_as_max_tokens() -> None:
    message = sdk_stream(translate(recorded("max_tokens.sse")))
    assert [b.model_dump(exclude_none=True) for b in message.content] == [
        {"type": "text", "text": "Les glaciers des Alpes reculent de"}
    ]
    assert message.stop_reason == "max_tokens"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (152, 2048)
    assert message.usage.output_tokens == 6


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("error.sse", "The server had an error while processing your request. Sorry about that!"),
        ("cut.sse", "the backend's stream ended before it was complete"),
    ],
)
def test_the_sdk_raises_on_a_failed_or_cut_stream(name: str, text: str) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        sdk_stream(translate(recorded(name)))
    assert text in caught.value.message
    assert caught.value.body == {"type": "error", "error": {"type": "api_error", "message": text}}


@pytest.mark.parametrize("name", ["tools.sse", "max_tokens.sse", "openai_chat.sse"])
def test_tokengate_reads_the_backends_usage(name: str) -> None:
    backend, client = usage_of(name)
    assert backend is not None
    assert client is not None
    assert client.prompt_tokens == backend.prompt_tokens
    assert client.completion_tokens == backend.completion_tokens
    assert client.cached_prompt_tokens == backend.cached_prompt_tokens


def test_message_delta_waits_for_the_usage_chunk() -> None:
    raw = recorded("max_tokens.sse")
    usage_at = raw.index(b'"choices":[]')
    head = raw[: raw.rindex(b"data: ", 0, usage_at)]
    stream = TRANSLATION.stream(include_usage=True)
    before = stream.feed(head)
    assert b'"finish_reason":"length"' in head
    assert [e.event for e in events(before)][-2:] == [DELTA, STOP]
    after = stream.feed(raw[len(head) :])
    assert [e.event for e in events(after)] == ["message_delta", "message_stop"]
    assert stream.close() == b""


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    body = {
        "id": "chatcmpl-x",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return f"data: {json.dumps(body)}\n\n".encode()


USAGE = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}


def test_refusal_pieces_are_text() -> None:
    raw = translate(
        chunk({"role": "assistant", "refusal": "I can't"}),
        chunk({"refusal": " help."}),
        chunk({}, "stop", usage=USAGE),
    )
    message = sdk_stream(raw)
    assert [b.model_dump(exclude_none=True) for b in message.content] == [
        {"type": "text", "text": "I can't help."}
    ]
    assert message.stop_reason == "end_turn"


def test_a_tool_call_first_then_text_are_two_blocks_in_that_order() -> None:
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "f", "arguments": ""},
    }
    raw = translate(
        chunk({"role": "assistant", "content": None, "tool_calls": [call]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a": 1}'}}]}),
        chunk({"content": "done"}),
        chunk({}, "stop", usage=USAGE),
        b"data: [DONE]\n\n",
    )
    message = sdk_stream(raw)
    assert [b.type for b in message.content] == ["tool_use", "text"]
    assert message.content[0].model_dump()["input"] == {"a": 1}


def test_interleaved_arguments_go_to_their_own_block() -> None:
    first = {
        "index": 0,
        "id": "call_a",
        "type": "function",
        "function": {"name": "f", "arguments": '{"x"'},
    }
    second = {
        "index": 1,
        "id": "call_b",
        "type": "function",
        "function": {"name": "g", "arguments": "{}"},
    }
    raw = translate(
        chunk({"tool_calls": [first]}),
        chunk({"tool_calls": [second]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 2}"}}]}),
        chunk({}, "tool_calls", usage=USAGE),
    )
    inputs = [b.model_dump()["input"] for b in sdk_stream(raw).content]
    assert inputs == [{"x": 2}, {}]


def test_done_without_usage_ends_the_message_with_zero_counts() -> None:
    raw = translate(chunk({"content": "hi"}), chunk({}, "stop"), b"data: [DONE]\n\n")
    delta = [json.loads(e.data) for e in events(raw) if e.event == "message_delta"]
    assert delta == [
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {
                "input_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 0,
            },
        }
    ]


def test_nothing_follows_the_end() -> None:
    stream = TRANSLATION.stream(include_usage=True)
    stream.feed(chunk({"content": "hi"}, "stop", usage=USAGE))
    assert stream.feed(chunk({"content": "more"})) == b""
    assert stream.feed(b"data: [DONE]\n\n") == b""
    assert stream.close() == b""


def test_an_empty_stream_says_so() -> None:
    assert translate() == b""
    assert [e.event for e in events(translate(b"data: [DONE]\n\n"))] == ["error"]


def test_noise_is_ignored() -> None:
    quiet = translate(chunk({"content": "hi"}, "stop", usage=USAGE))
    noisy = translate(
        b": keep-alive\n\ndata: not json\n\ndata: [1, 2]\n\n",
        chunk({"content": "hi"}, "stop", usage=USAGE),
    )
    assert noisy == quiet


def test_an_event_too_large_to_read_ends_the_stream_with_an_error_event() -> None:
    stream = MESSAGES_OVER_CHAT.stream(include_usage=True)
    out = stream.feed(b"data: " + b"x" * (MAX_EVENT_BYTES + 10) + b"\n\n")
    assert out.startswith(b"event: error\n")
    assert stream.feed(b'data: {"choices": []}\n\n') == b""  # nothing after the error
