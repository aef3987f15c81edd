"""Unit tests of the mock provider's answers: the answer text and its token counts, and the
OpenAI and Anthropic wire formats (prompt counts, bodies, stream events, error bodies). Its
HTTP parser and its router have their own files.

Token counts are checked against tiktoken directly (not through the mock's own helpers), so a
wrong word list or a wrong prompt formula fails here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.dev.mock_provider.anthropic import AnthropicDialect
from extproc.dev.mock_provider.common import ApiError, Completion, ParsedRequest
from extproc.dev.mock_provider.openai import OpenAIDialect
from extproc.dev.mock_provider.text import (
    WORDS,
    answer_words,
    chunk_texts,
    plan_length,
    seed_for,
)
from tests.token_counts import ntok

ENCODINGS = ("cl100k_base", "o200k_base")
pytestmark = pytest.mark.usefixtures("vocab_dir")


# --- text generation --------------------------------------------------------------------


def test_every_word_is_one_token_in_both_encodings_with_and_without_space() -> None:
    bad = [
        (word, enc, form)
        for word in WORDS
        for enc in ENCODINGS
        for form in (word, " " + word)
        if ntok(form, enc) != 1
    ]
    assert bad == []


def test_word_list_is_lowercase_ascii_unique_and_large() -> None:
    assert all(w.isascii() and w.isalpha() and w.islower() for w in WORDS)
    assert len(set(WORDS)) == len(WORDS)
    assert len(WORDS) >= 256


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**64 - 1), n=st.integers(0, 300), per_chunk=st.integers(1, 7))
def test_answer_is_n_tokens_and_every_chunk_counts_alone(seed: int, n: int, per_chunk: int) -> None:
    words = answer_words(seed, n)
    text = " ".join(words)
    pieces = list(chunk_texts(words, per_chunk))
    assert "".join(pieces) == text
    for enc in ENCODINGS:
        assert ntok(text, enc) == n
        assert [ntok(p, enc) for p in pieces] == [
            len(words[i : i + per_chunk]) for i in range(0, n, per_chunk)
        ]


def test_answers_are_deterministic_per_body_and_differ_between_bodies() -> None:
    a = answer_words(seed_for(b'{"model":"gpt-4o"}'), 16)
    assert a == answer_words(seed_for(b'{"model":"gpt-4o"}'), 16)
    assert a != answer_words(seed_for(b'{"model":"gpt-4o-mini"}'), 16)
    # Pinned: a change in seeding or selection would silently change every recorded answer.
    assert seed_for(b"hello") == 12085107955937391741
    assert answer_words(seed_for(b"hello"), 6) == ["areas", "way", "that", "far", "reason", "no"]
    assert answer_words(seed_for(b"hello"), 3) == ["areas", "way", "that"]


@pytest.mark.parametrize(
    ("requested", "max_tokens", "expected"),
    [
        (None, None, (16, False)),
        (None, 16, (16, False)),
        (None, 5, (5, True)),
        (40, None, (40, False)),
        (40, 100, (40, False)),
        (40, 10, (10, True)),
        (0, 10, (0, False)),
    ],
)
def test_plan_length(
    requested: int | None, max_tokens: int | None, expected: tuple[int, bool]
) -> None:
    assert plan_length(requested=requested, max_tokens=max_tokens) == expected


# --- OpenAI ---------------------------------------------------------------------------------


def completion(*, words: int = 7, truncated: bool = False, model: str = "gpt-4o") -> Completion:
    chosen = answer_words(1234, words)
    return Completion(
        id="chatcmpl-x",
        created=1700000000,
        model=model,
        words=chosen,
        prompt_tokens=11,
        completion_tokens=words,
        truncated=truncated,
    )


def sse_data(events: Iterator[bytes]) -> list[str]:
    """The `data:` payloads, checking every event is one complete `...\\n\\n` block."""
    out: list[str] = []
    for event in events:
        text = event.decode()
        assert text.endswith("\n\n") and "\n\n" not in text[:-2]
        out.extend(line[6:] for line in text.splitlines() if line.startswith("data: "))
    return out


def test_openai_prompt_tokens_formula() -> None:
    payload = {
        "model": "gpt-4",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Hello world"}, {"type": "x"}]},
            {"role": "assistant", "content": None},
        ],
    }
    parsed = OpenAIDialect().parse(payload)
    expected = ntok("You are terse.", "cl100k_base") + ntok("Hello world", "cl100k_base")
    roles = sum(ntok(role, "cl100k_base") for role in ("system", "user", "assistant"))
    assert parsed.prompt_tokens("cl100k_base") == expected + roles + 3 * 3 + 3  # as billed
    assert (parsed.model, parsed.stream, parsed.max_tokens) == ("gpt-4", False, None)


def test_openai_max_completion_tokens_wins_and_include_usage_read() -> None:
    parsed = OpenAIDialect().parse(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 50,
            "max_completion_tokens": 7,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    assert (parsed.max_tokens, parsed.stream, parsed.include_usage) == (7, True, True)


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"messages": [{"role": "user", "content": "x"}]},
        {"model": "m"},
        {"model": "m", "messages": []},
        {"model": "m", "messages": ["hi"]},
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"},
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"},
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "stream_options": {"include_usage": True},
        },
    ],
)
def test_openai_rejects_invalid_bodies(payload: object) -> None:
    with pytest.raises(ApiError) as info:
        OpenAIDialect().parse(payload)
    assert info.value.status == 400


def test_openai_completion_body_matches_the_real_wire_format() -> None:
    c = completion(words=5, truncated=True)
    body = json.loads(OpenAIDialect().completion_body(c, omit_usage=False))
    assert body["id"] == "chatcmpl-x" and body["object"] == "chat.completion"
    assert body["created"] == 1700000000 and body["model"] == "gpt-4o"
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    assert choice["message"]["role"] == "assistant" and choice["message"]["refusal"] is None
    assert choice["message"]["content"] == c.text
    assert body["usage"]["prompt_tokens"] == 11 and body["usage"]["completion_tokens"] == 5
    assert body["usage"]["total_tokens"] == 16
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    omitted = json.loads(OpenAIDialect().completion_body(completion(), omit_usage=True))
    assert "usage" not in omitted and omitted["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("send_usage", [True, False])
def test_openai_stream_events(send_usage: bool) -> None:
    c = completion(words=7)
    data = sse_data(OpenAIDialect().stream_events(c, per_chunk=3, send_usage=send_usage))
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(ch["object"] == "chat.completion.chunk" and ch["id"] == c.id for ch in chunks)
    assert all(("usage" in ch) == send_usage for ch in chunks)
    first = chunks[0]["choices"][0]
    assert first["delta"] == {"role": "assistant", "content": "", "refusal": None}
    content = [ch["choices"][0]["delta"]["content"] for ch in chunks[1:4]]
    assert "".join(content) == c.text
    assert [ntok(piece, "o200k_base") for piece in content] == [3, 3, 1]
    final = chunks[4]["choices"][0]
    assert final["delta"] == {} and final["finish_reason"] == "stop"
    if send_usage:
        assert len(chunks) == 6 and chunks[5]["choices"] == []
        assert chunks[5]["usage"]["completion_tokens"] == 7
        assert all(ch["usage"] is None for ch in chunks[:5])
    else:
        assert len(chunks) == 5


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (400, "invalid_request_error", None),
        (401, "invalid_request_error", "invalid_api_key"),
        (429, "requests", "rate_limit_exceeded"),
        (500, "server_error", None),
        (418, "invalid_request_error", None),
    ],
)
def test_openai_error_body(status: int, kind: str, code: str | None) -> None:
    body = json.loads(OpenAIDialect().error_body(status, "nope"))
    assert body == {"error": {"message": "nope", "type": kind, "param": None, "code": code}}


# --- Anthropic ------------------------------------------------------------------------------


def test_anthropic_prompt_tokens_formula() -> None:
    payload = {
        "model": "claude-sonnet-4",
        "max_tokens": 20,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": "Hello there"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]},
        ],
    }
    parsed = AnthropicDialect().parse(payload)
    enc = "cl100k_base"
    expected = ntok("Be brief.", enc) + ntok("Hello there", enc) + ntok("Hi", enc) + 2 * 3
    assert parsed.prompt_tokens(enc) == expected
    assert parsed.max_tokens == 20 and parsed.include_usage


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"model": "c", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": "c", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}, ""),
        ({"model": "c", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, ""),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
    ],
)
def test_anthropic_rejects_invalid_bodies(payload: object, message: str) -> None:
    with pytest.raises(ApiError) as info:
        AnthropicDialect().parse(payload)
    assert info.value.status == 400 and message in info.value.message


def test_anthropic_completion_body_matches_the_real_wire_format() -> None:
    c = completion(words=4, truncated=True, model="claude-sonnet-4")
    body = json.loads(AnthropicDialect().completion_body(c, omit_usage=False))
    assert body == {
        "id": c.id,
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4",
        "content": [{"type": "text", "text": c.text}],
        "stop_reason": "max_tokens",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 11,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 4,
        },
    }
    omitted = json.loads(AnthropicDialect().completion_body(completion(), omit_usage=True))
    assert "usage" not in omitted and omitted["stop_reason"] == "end_turn"


def anthropic_events(c: Completion, send_usage: bool) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for event in AnthropicDialect().stream_events(c, per_chunk=2, send_usage=send_usage):
        name_line, data_line, *rest = event.decode().split("\n")
        assert rest == ["", ""] and name_line.startswith("event: ")
        payload = json.loads(data_line.removeprefix("data: "))
        assert payload["type"] == name_line[7:]
        out.append((name_line[7:], payload))
    return out


def test_anthropic_stream_events() -> None:
    c = completion(words=5, model="claude-sonnet-4")
    events = anthropic_events(c, send_usage=True)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == 11 and start["usage"]["output_tokens"] == 1
    deltas = [p["delta"] for n, p in events if n == "content_block_delta"]
    assert all(d["type"] == "text_delta" for d in deltas)
    assert "".join(d["text"] for d in deltas) == c.text
    message_delta = events[-2][1]
    assert message_delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert message_delta["usage"] == {"output_tokens": 5}


def test_anthropic_stream_without_usage_never_sends_usage() -> None:
    events = anthropic_events(completion(words=3), send_usage=False)
    assert all("usage" not in p and "usage" not in p.get("message", {}) for _, p in events)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
        (503, "api_error"),
    ],
)
def test_anthropic_error_body(status: int, kind: str) -> None:
    body = json.loads(AnthropicDialect().error_body(status, "nope"))
    assert body == {"type": "error", "error": {"type": kind, "message": "nope"}}


def test_parsed_request_counts_with_overhead() -> None:
    parsed = ParsedRequest(
        model="m", stream=False, max_tokens=None, include_usage=False, texts=("a b",), overhead=5
    )
    assert parsed.prompt_tokens("o200k_base") == ntok("a b", "o200k_base") + 5
