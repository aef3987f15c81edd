"""`chat_over_messages.stream`: Anthropic Messages streams as OpenAI chunk streams.

Recorded-shape Anthropic streams (fixtures, each event checked against the anthropic SDK's
event types) are fed whole, byte by byte and at seeded random split points, with identical
output; the chunks are checked against the openai SDK's types, accumulated by its own
`ChatCompletionStreamState`, read by the gateway's OpenAI stream reader (the usage must be the
backend's), and consumed through the real SDK client, including an error mid-stream."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from anthropic.types import RawMessageStreamEvent
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk
from pydantic import TypeAdapter

from extproc.providers.anthropic import PROVIDER as ANTHROPIC
from extproc.providers.openai import PROVIDER as OPENAI
from extproc.providers.sse import MAX_EVENT_BYTES, SSEParser
from extproc.providers.translate.chat_over_messages import ChatOverMessages

HERE = Path(__file__).parent / "fixtures"
FIXTURES = HERE / "translate" / "chat_over_messages"
STREAMS = {
    "tools": (FIXTURES / "tools.sse").read_bytes(),
    "max_tokens": (FIXTURES / "max_tokens.sse").read_bytes(),
    "error": (FIXTURES / "error.sse").read_bytes(),
    "cut": (FIXTURES / "cut.sse").read_bytes(),
    "unicode": (HERE / "sse" / "anthropic_messages.sse").read_bytes(),
}
FIXED = ChatOverMessages(clock=lambda: 1_700_000_000.5)
DONE = b"data: [DONE]\n\n"
EVENT = TypeAdapter(RawMessageStreamEvent)


def run(raw: bytes, cuts: list[int], *, include_usage: bool) -> bytes:
    stream = FIXED.stream(include_usage=include_usage)
    edges = [0, *sorted(cuts), len(raw)]
    out = b"".join(stream.feed(raw[a:b]) for a, b in itertools.pairwise(edges))
    return out + stream.close()


def payloads(out: bytes) -> list[Any]:
    """The data of every event sent, JSON-decoded ([DONE] as the string)."""
    events = SSEParser().feed(out)
    assert all(e.event is None for e in events)  # OpenAI's chunks are unnamed events
    return [e.data if e.data == "[DONE]" else json.loads(e.data) for e in events]


def chunks(out: bytes) -> list[ChatCompletionChunk]:
    return [ChatCompletionChunk.model_validate(p) for p in payloads(out) if p != "[DONE]"]


def backend_usage(raw: bytes) -> Any:
    reader = ANTHROPIC.stream_reader(hide_usage_event=False)
    for event in SSEParser().feed(raw):
        reader.read(event)
    return reader.usage


@pytest.mark.parametrize("name", STREAMS)
def test_fixture_events_are_anthropic_s_own_event_types(name: str) -> None:
    for event in SSEParser().feed(STREAMS[name]):
        payload = json.loads(event.data)
        if payload["type"] not in ("ping", "error"):  # not RawMessageStreamEvents
            assert EVENT.validate_python(payload).type == event.event


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("name", STREAMS)
def test_output_is_the_same_however_the_bytes_are_split(name: str, include_usage: bool) -> None:
    raw = STREAMS[name]
    whole = run(raw, [], include_usage=include_usage)
    assert run(raw, list(range(1, len(raw))), include_usage=include_usage) == whole
    rng = random.Random(f"{name}-{include_usage}")
    for _ in range(40):
        cuts = rng.sample(range(1, len(raw)), rng.randint(1, 12))
        assert run(raw, cuts, include_usage=include_usage) == whole


@pytest.mark.parametrize("name", ["tools", "max_tokens", "unicode"])
def test_every_chunk_shares_id_created_and_model(name: str) -> None:
    sent = chunks(run(STREAMS[name], [], include_usage=True))
    first = SSEParser().feed(STREAMS[name])[0]
    message = json.loads(first.data)["message"]
    assert {(c.id, c.object, c.created, c.model) for c in sent} == {
        (message["id"], "chat.completion.chunk", 1_700_000_000, message["model"])
    }
    assert sent[0].choices[0].delta.model_dump(exclude_none=True) == {
        "role": "assistant",
        "content": "",
    }


def test_tool_calls_stream_as_openai_s_and_accumulate() -> None:
    out = run(STREAMS["tools"], [], include_usage=True)
    state = ChatCompletionStreamState()
    for chunk in chunks(out):
        state.handle_chunk(chunk)
    final = state.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "I'll check both cities at once."  # no thinking shown
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("toolu_01A09q90qw90lq917835lq9", "get_weather", {"city": "Paris", "unit": "celsius"}),
        ("toolu_01B7xKq2Ldmw8sWz3PnR4tYv", "get_weather", {"city": "Rome", "unit": "celsius"}),
    ]
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (35 + 1200 + 4096, 154)
    details = final.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens == 4096
    assert details.cache_write_tokens == 1200


@pytest.mark.parametrize("name", ["tools", "max_tokens", "unicode"])
def test_the_gateway_reads_the_backend_s_usage_from_the_translated_stream(name: str) -> None:
    reader = OPENAI.stream_reader(hide_usage_event=False)
    for event in SSEParser().feed(run(STREAMS[name], [], include_usage=True)):
        reader.read(event)
    backend = backend_usage(STREAMS[name])
    assert reader.usage is not None and backend is not None
    assert (reader.usage.prompt_tokens, reader.usage.completion_tokens) == (
        backend.prompt_tokens,
        backend.completion_tokens,
    )
    assert reader.usage.cached_prompt_tokens == backend.cached_prompt_tokens


@pytest.mark.parametrize("name", ["tools", "max_tokens", "unicode"])
def test_without_include_usage_no_chunk_has_usage(name: str) -> None:
    sent = payloads(run(STREAMS[name], [], include_usage=False))
    assert sent[-1] == "[DONE]"
    assert all("usage" not in p and p["choices"] for p in sent[:-1])


def test_a_stream_cut_by_max_tokens_on_the_wire() -> None:
    """The exact bytes, written by hand: the format OpenAI's own chunks have."""
    head = (
        '{"id":"msg_01Lk8VbQ4nM2xP7rT5yW3zAa","object":"chat.completion.chunk",'
        '"created":1700000000,"model":"claude-sonnet-4-5-20250929","choices":'
    )

    def chunk(delta: str, finish: str = "null") -> bytes:
        choice = f'{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}'
        return f'data: {head}[{choice}],"usage":null}}\n\n'.encode()

    usage = (
        '{"prompt_tokens":18,"completion_tokens":8,"total_tokens":26,'
        '"prompt_tokens_details":{"cached_tokens":0,"cache_write_tokens":0}}'
    )
    assert run(STREAMS["max_tokens"], [], include_usage=True) == b"".join(
        [
            chunk('{"role":"assistant","content":"","refusal":null}'),
            chunk('{"content":"Once upon"}'),
            chunk('{"content":" a time,"}'),
            chunk('{"content":" in a land"}'),
            chunk("{}", '"length"'),
            f'data: {head}[],"usage":{usage}}}\n\n'.encode(),
            DONE,
        ]
    )


def test_an_error_event_ends_the_stream_as_openai_s_error() -> None:
    out = run(STREAMS["error"], [], include_usage=True)
    sent = payloads(out)
    assert sent[-1] == {
        "error": {"message": "Overloaded", "type": "server_error", "param": None, "code": None}
    }
    assert DONE not in out and b"never shown" not in out
    assert [p["choices"][0]["delta"].get("content") for p in sent[:-1]] == ["", "Partial"]


def test_the_openai_sdk_raises_the_mid_stream_error() -> None:
    body = run(STREAMS["error"], [], include_usage=True)

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})

    client = openai.OpenAI(
        api_key="k",
        base_url="http://gateway.test/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    texts: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            texts.append(chunk.choices[0].delta.content or "")
    assert "".join(texts) == "Partial"
    assert (caught.value.message, caught.value.type) == ("Overloaded", "server_error")


def test_a_stream_the_backend_cut_short_ends_without_done_or_finish() -> None:
    stream = FIXED.stream(include_usage=True)
    out = stream.feed(STREAMS["cut"])
    assert stream.close() == b""
    sent = payloads(out)
    assert "[DONE]" not in sent
    assert [p["choices"][0]["finish_reason"] for p in sent] == [None, None]
    assert sent[-1]["choices"][0]["delta"] == {"content": "Half an ans"}


def test_an_event_too_large_to_buffer_ends_the_stream_with_an_error() -> None:
    stream = FIXED.stream(include_usage=False)
    opening = stream.feed(STREAMS["max_tokens"][:400].rpartition(b"\n\n")[0] + b"\n\n")
    assert payloads(opening)[0]["choices"][0]["delta"]["role"] == "assistant"
    huge = b"event: content_block_delta\ndata: " + b"x" * (MAX_EVENT_BYTES + 1)
    error = payloads(stream.feed(huge))
    assert error == [
        {
            "error": {
                "message": "The upstream provider's stream could not be read.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
    ]
    assert stream.feed(STREAMS["max_tokens"]) == b""
    assert stream.close() == b""


def test_unreadable_and_unknown_events_send_nothing() -> None:
    stream = FIXED.stream(include_usage=False)
    junk = (
        b"event: content_block_delta\ndata: {not json\n\n"
        b"data: [1, 2]\n\n"
        b'event: future_event\ndata: {"type": "future_event"}\n\n'
        b'data: {"type": "content_block_delta", "index": 5, "delta": '
        b'{"type": "input_json_delta", "partial_json": "{}"}}\n\n'
        b'data: {"type": "content_block_start", "index": 0, "content_block": '
        b'{"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}}\n\n'
    )
    assert stream.feed(junk) == b""


def test_the_sdk_accumulates_the_translated_stream_end_to_end() -> None:
    body = run(STREAMS["tools"], [], include_usage=True)

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})

    client = openai.OpenAI(
        api_key="k",
        base_url="http://gateway.test/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    state = ChatCompletionStreamState()
    for chunk in client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Weather in Paris and Rome?"}],
        stream=True,
        stream_options={"include_usage": True},
    ):
        state.handle_chunk(chunk)
    final = state.get_final_completion()
    assert final.id == "msg_01TpZ5xHqB9vKm3sJd7LwR2e"
    assert [c.function.name for c in final.choices[0].message.tool_calls or []] == [
        "get_weather",
        "get_weather",
    ]
    assert final.usage is not None and final.usage.total_tokens == 35 + 1200 + 4096 + 154


def test_an_event_of_no_known_type_is_skipped_not_a_crash() -> None:
    stream = ChatOverMessages(clock=lambda: 0.0).stream(include_usage=True)
    assert stream.feed(b'event: x\ndata: {"type": []}\n\n') == b""
