"""Anthropic wire schema (`extproc.providers.anthropic`), the stream reader: the text each
event carries, the usage assembled from `message_start` and `message_delta`, malformed or
untrustworthy events meaning nothing, and at most one JSON parse per event."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from extproc.dev.mock_provider.anthropic import AnthropicDialect
from extproc.dev.mock_provider.common import Completion
from extproc.providers import anthropic as anthropic_module
from extproc.providers._base import NOTHING, EventMeaning, Usage
from extproc.providers.anthropic import PROVIDER
from extproc.providers.sse import Event
from tests.unit.anthropic_wire import RECORDED, block_delta, ev

MOCK = AnthropicDialect()
# The texts the reader finds in each event of RECORDED, in order.
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
