"""AnswerStream (what each chunk of a streamed answer means and what the client receives),
the OpenAI stream reader, and the quota store's mid-stream debits."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from extproc.errors import RateLimited
from extproc.gate.stream import AnswerStream, encode
from extproc.policy.model import Limit, Measure
from extproc.providers import openai as oa
from extproc.providers.sse import Event, SSEParser
from extproc.quota import Cost, MemoryBackend, Scope, ScopedLimit


def chunk_event(text: str | None = None, *, usage: dict[str, int] | None = None) -> bytes:
    choices = [] if text is None else [{"index": 0, "delta": {"content": text}}]
    body: dict[str, object] = {"object": "chat.completion.chunk", "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
DONE = b"data: [DONE]\n\n"


def stream(*, hide: bool = False) -> AnswerStream:
    return AnswerStream(
        provider=oa.PROVIDER, encoding="o200k_base", hide_usage_event=hide, started=0.0
    )


@pytest.fixture(autouse=True)
def _vocab(vocab_dir: Path) -> None:
    """Every test here counts tokens."""


def test_encode_round_trips_through_the_parser() -> None:
    events = [Event(None, "one"), Event("error", '{"a": 1}\nsecond line'), Event(None, "")]
    parsed = SSEParser().feed(b"".join(encode(e) for e in events))
    assert parsed == events  # `data:` with an empty value still dispatches (SSE spec)


def test_whole_events_pass_through_untouched_and_are_counted() -> None:
    answer = stream()
    data = chunk_event(" the quick") + chunk_event(" brown fox")
    step = answer.take(data, end_of_stream=False)
    assert step.forward is None
    assert step.tokens == 4


def test_a_split_event_is_held_back_until_complete() -> None:
    answer = stream()
    data = chunk_event(" hello") + chunk_event(" world")
    cut = len(chunk_event(" hello")) + 5
    first = answer.take(data[:cut], end_of_stream=False)
    assert (first.forward, first.tokens) == (chunk_event(" hello"), 1)
    second = answer.take(data[cut:], end_of_stream=False)
    assert (second.forward, second.tokens) == (chunk_event(" world"), 1)


def test_end_of_stream_flushes_an_unfinished_tail() -> None:
    answer = stream()
    answer.take(b'data: {"partial', end_of_stream=False)
    last = answer.take(b'": 1}', end_of_stream=True)
    assert last.forward == b'data: {"partial": 1}'


def test_the_usage_event_we_asked_for_is_hidden_but_read() -> None:
    answer = stream(hide=True)
    data = chunk_event(" hi") + chunk_event(usage=USAGE) + DONE
    step = answer.take(data, end_of_stream=True)
    assert step.forward is not None
    assert b"usage" not in step.forward
    assert step.forward.endswith(b"data: [DONE]\n\n") and b" hi" in step.forward
    assert answer.reader.usage == oa.PROVIDER.parse_usage({"usage": USAGE})


def test_usage_the_client_asked_for_is_kept() -> None:
    answer = stream(hide=False)
    data = chunk_event(usage=USAGE) + DONE
    assert answer.take(data, end_of_stream=True).forward is None
    assert answer.reader.usage is not None


def test_an_oversized_event_stops_governance_but_never_the_answer() -> None:
    answer = stream()
    huge = b"data: " + b"x" * (1 << 20) + b"\n\n"
    step = answer.take(huge, end_of_stream=False)
    assert (step.forward, step.tokens, answer.broken) == (None, 0, True)
    assert answer.take(chunk_event(" more"), end_of_stream=True) == type(step)(None, 0)


def test_pace_reports_the_first_token_delay_then_the_gap_per_token() -> None:
    answer = stream()
    assert answer.pace(0) is None  # a chunk without tokens has no timing
    first = answer.pace(3)
    assert first is not None and first.per_token_s is None
    assert first.first_token_s is not None and first.first_token_s > 0  # since started=0.0
    later = answer.pace(4)
    assert later is not None and later.first_token_s is None
    assert later.per_token_s is not None and later.per_token_s >= 0


@pytest.mark.parametrize(
    ("delta", "texts"),
    [
        ({"content": "a"}, ("a",)),
        ({"reasoning_content": "think"}, ("think",)),
        ({"tool_calls": [{"function": {"name": "f", "arguments": '{"x'}}]}, ("f", '{"x')),
        ({"role": "assistant", "content": ""}, ()),
        ({"tool_calls": "nonsense"}, ()),
    ],
)
def test_openai_reader_finds_generated_text(
    delta: dict[str, object], texts: tuple[str, ...]
) -> None:
    reader = oa.PROVIDER.stream_reader(hide_usage_event=False)
    data = json.dumps({"choices": [{"index": 0, "delta": delta}]})
    assert reader.read(Event(None, data)).texts == texts


@pytest.mark.parametrize("data", ["[DONE]", "{not json", "[1, 2]", '{"choices": 5}'])
def test_openai_reader_ignores_what_it_cannot_read(data: str) -> None:
    reader = oa.PROVIDER.stream_reader(hide_usage_event=True)
    meaning = reader.read(Event(None, data))
    assert (meaning.texts, meaning.hide, reader.usage) == ((), False, None)


def test_openai_stream_error_is_one_sse_event_with_the_error_body() -> None:
    raw = oa.PROVIDER.stream_error(RateLimited("budget 'tpm' gone", limit="tpm", retry_after=3))
    (event,) = SSEParser().feed(raw)
    assert json.loads(event.data)["error"]["message"] == "budget 'tpm' gone"


# -- debits -----------------------------------------------------------------------------

NS = Scope("team")
TPM = ScopedLimit(NS, Limit("tpm", Measure.TOKENS, 100, 60))
ONE = ScopedLimit(NS, Limit("one", Measure.CONCURRENT, 1, None))


class Clock:
    now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_debit_grows_the_reservation_all_or_nothing_without_a_second_lease() -> None:
    async def scenario() -> None:
        backend = MemoryBackend(clock=Clock())
        first = (await backend.reserve("a", [TPM, ONE], Cost(1, 30))).reservation
        assert first is not None
        grown = await backend.debit(first, Cost(tokens=50))
        assert grown.reservation is not None and grown.reservation.cost.tokens == 80
        assert [s.used for s in grown.states] == [80, 1]  # concurrency not taken again
        refused = await backend.debit(grown.reservation, Cost(tokens=21))
        assert refused.refusal is not None and refused.refusal.scoped == TPM
        await backend.settle(first, Cost(1, 60))  # settles against the grown cost
        probe = await backend.reserve("b", [TPM, ONE], Cost(1, 40))
        assert probe.allowed and [s.used for s in probe.states] == [100, 1]

    asyncio.run(scenario())


def test_debit_renews_the_lease_of_a_long_stream() -> None:
    async def scenario() -> None:
        clock = Clock()
        backend = MemoryBackend(clock=clock, lease_ttl_s=10)
        held = (await backend.reserve("a", [ONE], Cost(1, 0))).reservation
        assert held is not None
        clock.now += 8
        assert (await backend.debit(held, Cost(tokens=1))).allowed
        clock.now += 8  # 16 s after the reserve, 8 s after the renewal
        assert not (await backend.reserve("b", [ONE], Cost(1, 0))).allowed
        clock.now += 3
        assert (await backend.reserve("c", [ONE], Cost(1, 0))).allowed

    asyncio.run(scenario())
