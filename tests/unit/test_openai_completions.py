"""OpenAI legacy Completions schema (`extproc.providers.openai_completions`): every prompt
form, the completion multiplier, the legacy default cap, usage, and `text_completion`
stream chunks (the usage chunk asked for on the client's behalf is hidden)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.dev.mock_provider.common import Completion
from extproc.dev.mock_provider.completions import CompletionsDialect
from extproc.errors import BadRequest, RateLimited
from extproc.providers._base import NOTHING, Usage
from extproc.providers.openai_completions import (
    LEGACY_DEFAULT_MAX_TOKENS,
    MAX_BATCH,
    PROVIDER,
    parse_completions_request,
)
from extproc.providers.sse import Event, SSEParser


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", **fields}


@pytest.mark.parametrize(
    ("prompt", "texts", "token_ids", "batch"),
    [
        ("Say hi", ("Say hi",), 0, 1),
        (["a", "b c", ""], ("a", "b c", ""), 0, 3),
        ([1, 2, 3], (), 3, 1),
        ([[1, 2], [3], [4, 5, 6]], (), 6, 3),
    ],
)
def test_every_prompt_form(
    prompt: object, texts: tuple[str, ...], token_ids: int, batch: int
) -> None:
    parsed = parse_completions_request(body(prompt=prompt, n=2))
    assert parsed.prompt_texts == texts
    assert parsed.framing_tokens == token_ids  # a token array counts as its length
    assert parsed.completion_multiplier == 2 * batch  # every prompt gets n completions


def test_defaults_the_legacy_cap_and_the_suffix() -> None:
    request = body(suffix=" end.")
    parsed = parse_completions_request(request)
    assert parsed.prompt_texts == ("Say hi", " end.")
    assert parsed.max_output_tokens == LEGACY_DEFAULT_MAX_TOKENS == 16  # the API's default
    assert (parsed.cap_field, parsed.stream, parsed.completion_multiplier) == (
        "max_tokens",
        False,
        1,
    )
    assert parsed.body_with(None) is None
    assert json.loads(parsed.body_with(9) or b"") == {**request, "max_tokens": 9}
    assert parse_completions_request(body(max_tokens=300)).max_output_tokens == 300


@pytest.mark.parametrize(
    ("fields", "multiplier"),
    [({"n": 3}, 3), ({"best_of": 5}, 5), ({"n": 2, "best_of": 4}, 4), ({"n": None}, 1)],
)
def test_best_of_completions_are_generated_and_billed(
    fields: dict[str, Any], multiplier: int
) -> None:
    assert parse_completions_request(body(**fields)).completion_multiplier == multiplier


def test_a_stream_asks_for_usage_and_hides_it_unless_the_client_asked() -> None:
    parsed = parse_completions_request(body(stream=True))
    assert parsed.rewrites == {"stream_options": {"include_usage": True}}
    assert parsed.hide_usage_event
    kept = parse_completions_request(body(stream=True, stream_options={"include_usage": True}))
    assert (kept.rewrites, kept.hide_usage_event) == ({}, False)
    merged = parse_completions_request(body(stream=True, stream_options={"x": 1}))
    assert merged.rewrites == {"stream_options": {"x": 1, "include_usage": True}}
    both = json.loads(parsed.body_with(5) or b"")
    assert (both["max_tokens"], both["stream_options"]) == (5, {"include_usage": True})


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": None}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": ["a", 1]}, "prompt"),
        ({"prompt": [1, -2]}, "prompt"),
        ({"prompt": [1, True]}, "prompt"),
        ({"prompt": [[1], []]}, "prompt"),
        ({"prompt": [[1], "a"]}, "prompt"),
        ({"prompt": ["x"] * (MAX_BATCH + 1)}, "prompt"),
        ({"suffix": 3}, "suffix"),
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"best_of": "2"}, "best_of"),
        ({"n": 3, "best_of": 2}, "best_of"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stream": 1}, "stream"),
        ({"stream": True, "stream_options": []}, "stream_options"),
        ({"model": None}, "model"),
    ],
)
def test_refusals_name_the_param(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_completions_request(body(**fields))
    assert refused.value.param == param


def test_usage_is_the_chat_schema() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    assert PROVIDER.parse_usage({"usage": usage}) == Usage(5, 7)
    assert PROVIDER.parse_usage({"usage": {"completion_tokens": 7}}) is None
    assert PROVIDER.parse_usage({}) is None


def mock_stream(*, choices: int = 1, send_usage: bool = True) -> bytes:
    words = [["the", "quick", "river"], ["went", "north"], ["one"]][:choices]
    c = Completion(
        id="cmpl-x", created=0, model="gpt-3.5-turbo-instruct", words=words[0],
        prompt_tokens=4, completion_tokens=sum(map(len, words)), truncated=False,
        others=tuple(words[1:]),
    )  # fmt: skip
    return b"".join(CompletionsDialect().stream_events(c, per_chunk=2, send_usage=send_usage))


def read_all(raw: bytes, cuts: list[int], *, hide: bool) -> tuple[list[str], bytes, Usage | None]:
    """Texts counted, the bytes the client would get (hidden events dropped), the usage."""
    parser, reader = SSEParser(), PROVIDER.stream_reader(hide_usage_event=hide)
    texts: list[str] = []
    kept: list[str] = []
    edges = [0, *sorted(c % (len(raw) + 1) for c in cuts), len(raw)]
    for start, end in itertools.pairwise(edges):
        for event in parser.feed(raw[start:end]):
            meaning = reader.read(event)
            texts.extend(meaning.texts)
            if not meaning.hide:
                kept.append(event.data)
    return texts, "\n".join(kept).encode(), reader.usage


@settings(max_examples=50, deadline=None)
@given(cuts=st.lists(st.integers(0, 5_000), max_size=6), hide=st.booleans())
def test_the_mock_stream_split_anywhere(cuts: list[int], hide: bool) -> None:
    texts, kept, usage = read_all(mock_stream(choices=3), cuts, hide=hide)
    assert texts == ["the quick", " river", "went north", "one"]
    assert usage == Usage(4, 6)
    assert (b'"usage":{' in kept) is not hide  # the usage chunk, dropped only when hidden
    assert kept.endswith(b"[DONE]")


def test_a_stream_without_usage_has_none_and_reported_follows_usage() -> None:
    reader = PROVIDER.stream_reader(hide_usage_event=True)
    for block in mock_stream(send_usage=False).split(b"\n\n")[:-1]:
        reader.read(Event(None, block.decode().removeprefix("data: ")))
    assert reader.usage is None and reader.reported is None


@pytest.mark.parametrize("data", ["nope", "[1]", '{"choices":[{"text":3}]}', "{" * 5000])
def test_malformed_chunks_mean_nothing(data: str) -> None:
    assert PROVIDER.stream_reader(hide_usage_event=True).read(Event(None, data)) == NOTHING


def test_a_usage_chunk_with_choices_is_never_hidden() -> None:
    reader = PROVIDER.stream_reader(hide_usage_event=True)
    usage = {"prompt_tokens": 1, "completion_tokens": 1}
    chunk = {"choices": [{"text": "hi", "index": 0}], "usage": usage}
    meaning = reader.read(Event(None, json.dumps(chunk)))
    assert (meaning.texts, meaning.hide, reader.usage) == (("hi",), False, Usage(1, 1))


def test_errors_are_openai_s_and_the_stream_error_is_a_data_event() -> None:
    error = RateLimited("Token budget 'tpm' exhausted", limit="tpm", retry_after=1)
    raw = PROVIDER.stream_error(error)
    assert raw.startswith(b"data: {") and raw.endswith(b"\n\n")
    assert json.loads(raw[6:])["error"]["message"] == error.message
    assert json.loads(PROVIDER.error_body(error))["error"]["code"] == "rate_limit_exceeded"
    assert PROVIDER.credential_value("sk") == "Bearer sk"
