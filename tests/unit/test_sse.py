"""The incremental SSE parser: spec examples, recorded streams split anywhere, random streams."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.errors import TokengateError
from extproc.providers.sse import MAX_EVENT_BYTES, Event, SSEError, SSEParser

FIXTURES = Path(__file__).parent / "fixtures" / "sse"
BOM = b"\xef\xbb\xbf"


class Reference:
    """A slow byte-at-a-time reading of the WHATWG algorithm, independent of the parser.

    After reading a whole stream, `events[:dispatched[k]]` and `pending[k]` are what reading
    only its first k bytes gives: the events dispatched, and the number of bytes after the
    end of the last blank line (a CRLF ending a blank line ends after its LF).
    """

    def __init__(self, stream: bytes) -> None:
        self.events: list[Event] = []
        self.dispatched = [0]
        self.pending = [0]
        data_buf, event_type = "", ""
        line = bytearray()
        last_end = 0
        prev_cr = False
        for idx, byte in enumerate(stream):
            if idx < 3 and stream.startswith(BOM):
                pass
            elif byte == 0x0A and prev_cr:  # second half of CRLF
                prev_cr = False
                if last_end == idx:
                    last_end = idx + 1
            elif byte not in (0x0A, 0x0D):
                prev_cr = False
                line.append(byte)
            else:
                prev_cr = byte == 0x0D
                text = line.decode("utf-8", "replace")
                line.clear()
                if text == "":
                    last_end = idx + 1
                    if data_buf:
                        self.events.append(Event(event_type or None, data_buf[:-1]))
                    data_buf, event_type = "", ""
                elif not text.startswith(":"):
                    name, _, value = text.partition(":")
                    value = value.removeprefix(" ")
                    if name == "data":
                        data_buf += value + "\n"
                    elif name == "event":
                        event_type = value
            self.dispatched.append(len(self.events))
            self.pending.append(idx + 1 - last_end)


def parse(*chunks: bytes) -> list[Event]:
    parser = SSEParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


def split_at(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(stream)]
    return [stream[a:b] for a, b in pairwise(bounds)]


# -- examples ----------------------------------------------------------------------------


def test_single_event() -> None:
    parser = SSEParser()
    assert parser.feed(b'data: {"a":1}\n\n') == [Event(None, '{"a":1}')]
    assert parser.pending == 0


def test_multiple_events_in_one_chunk() -> None:
    assert parse(b"data: 1\n\ndata: 2\n\ndata: 3\n\n") == [
        Event(None, "1"),
        Event(None, "2"),
        Event(None, "3"),
    ]


def test_multi_line_data_is_joined_with_lf() -> None:
    assert parse(b"data: a\ndata: b\ndata:\ndata: c\n\n") == [Event(None, "a\nb\n\nc")]


def test_event_name_applies_to_one_block_only() -> None:
    assert parse(b"event: ping\ndata: x\n\ndata: y\n\nevent: a\nevent: b\ndata: z\n\n") == [
        Event("ping", "x"),
        Event(None, "y"),
        Event("b", "z"),
    ]


def test_event_name_is_reset_by_a_block_without_data() -> None:
    assert parse(b"event: lost\n\ndata: x\n\n") == [Event(None, "x")]


def test_empty_event_name_means_none() -> None:
    assert parse(b"event:\ndata: x\n\n") == [Event(None, "x")]


def test_comments_are_ignored() -> None:
    parser = SSEParser()
    assert parser.feed(b": keep-alive\n\n") == []
    assert parser.pending == 0
    assert parser.feed(b"data: a\n:comment inside\ndata: b\n\n") == [Event(None, "a\nb")]


@pytest.mark.parametrize("eol", [b"\r\n", b"\r", b"\n"])
def test_line_endings(eol: bytes) -> None:
    stream = eol.join([b"event: e", b"data: a", b"data: b", b"", b"data: c", b"", b""])
    assert parse(stream) == [Event("e", "a\nb"), Event(None, "c")]


def test_mixed_line_endings() -> None:
    assert parse(b"data: a\rdata: b\r\ndata: c\n\r\n") == [Event(None, "a\nb\nc")]


def test_crlf_is_one_terminator_not_a_blank_line() -> None:
    # "\r\n" must not be read as CR (end of line) followed by LF (a blank line).
    assert parse(b"data: a\r\ndata: b\r\n\r\n") == [Event(None, "a\nb")]


def test_bom_is_skipped_only_at_stream_start() -> None:
    assert parse(BOM + b"data: x\n\n") == [Event(None, "x")]
    assert parse(b"\xef", b"\xbb", b"\xbfdata: x\n\n") == [Event(None, "x")]
    # A second BOM is part of the field name, which then matches nothing.
    assert parse(BOM + BOM + b"data: x\n\n") == []
    assert parse(b"data: x\n\n" + BOM + b"data: y\n\n") == [Event(None, "x")]


def test_field_without_colon_has_empty_value() -> None:
    assert parse(b"data\n\n") == [Event(None, "")]
    assert parse(b"event\ndata: x\n\n") == [Event(None, "x")]


def test_id_retry_and_unknown_fields_are_ignored() -> None:
    assert parse(b"id: 7\nretry: 10\nfoo: bar\ndata: x\nid\n\n") == [Event(None, "x")]
    assert parse(b"id: 7\nretry: 10\n\n") == []


def test_blank_line_without_data_dispatches_nothing_but_ends_the_block() -> None:
    parser = SSEParser()
    assert parser.feed(b"\n\n\nevent: x\n\n") == []
    assert parser.pending == 0


def test_only_one_leading_space_is_removed() -> None:
    assert parse(b"data:  two\n\n") == [Event(None, " two")]
    assert parse(b"data:none\n\n") == [Event(None, "none")]
    assert parse(b"data: trailing \n\n") == [Event(None, "trailing ")]
    assert parse(b"data:\tx\n\n") == [Event(None, "\tx")]
    assert parse(b"event:  spaced\ndata: x\n\n") == [Event(" spaced", "x")]


def test_data_without_value_is_an_empty_event() -> None:
    assert parse(b"data:\n\n") == [Event(None, "")]
    assert parse(b"data: \n\n") == [Event(None, "")]


def test_utf8_split_inside_a_character() -> None:
    stream = "data: café 👋\n\n".encode()
    cut = stream.index(b"\xf0") + 2
    assert parse(stream[:cut], stream[cut:]) == [Event(None, "café 👋")]


def test_invalid_utf8_is_replaced() -> None:
    assert parse(b"data: a\xffb\n\n") == [Event(None, "a\ufffdb")]


# -- pending -----------------------------------------------------------------------------


def test_pending_counts_the_unfinished_block_across_chunks() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: 1\n\ndata: 2") == [Event(None, "1")]
    assert parser.pending == len(b"data: 2")
    assert parser.feed(b"\n") == []
    assert parser.pending == len(b"data: 2\n")
    assert parser.feed(b"\ndata") == [Event(None, "2")]
    assert parser.pending == 4


def test_pending_when_a_blank_line_cr_ends_a_chunk() -> None:
    # The CR of the blank line completes the block: nothing is pending, and the LF of the
    # CRLF that follows in the next chunk is swallowed: neither pending nor a blank line.
    parser = SSEParser()
    assert parser.feed(b"data: a\r\n\r") == [Event(None, "a")]
    assert parser.pending == 0
    assert parser.feed(b"\n") == []
    assert parser.pending == 0
    assert parser.feed(b"\ndata: b\r\n\r\n") == [Event(None, "b")]
    assert parser.pending == 0


def test_pending_when_a_data_line_cr_ends_a_chunk() -> None:
    # The CR ends a non-blank line: it and its LF belong to the unfinished block.
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.pending == 8
    assert parser.feed(b"\n") == []
    assert parser.pending == 9
    assert parser.feed(b"\r") == [Event(None, "a")]
    assert parser.pending == 0


def test_pending_counts_a_leading_bom() -> None:
    parser = SSEParser()
    assert parser.feed(BOM[:2]) == []
    assert parser.pending == 2
    assert parser.feed(BOM[2:] + b"data") == []
    assert parser.pending == 7


def test_empty_chunks_change_nothing() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"") == []
    assert parser.pending == 8
    assert parser.feed(b"\n\n") == [Event(None, "a")]


# -- bounds ------------------------------------------------------------------------------


def test_oversized_event_in_small_chunks_raises_and_breaks_the_parser() -> None:
    parser = SSEParser()
    line = b"data: " + b"x" * 1017 + b"\n"  # 1 KiB
    for _ in range(MAX_EVENT_BYTES // len(line)):  # exactly at the limit: still fine
        assert parser.feed(line) == []
    assert parser.pending == MAX_EVENT_BYTES
    with pytest.raises(SSEError, match="larger than 1048576 bytes") as info:
        parser.feed(b"d")
    assert isinstance(info.value, TokengateError)
    with pytest.raises(SSEError):
        parser.feed(b"\n\n")


def test_oversized_line_without_terminator_raises() -> None:
    parser = SSEParser()
    with pytest.raises(SSEError):
        for _ in range(MAX_EVENT_BYTES // 4096 + 2):
            parser.feed(b"y" * 4096)


def test_oversized_event_in_one_chunk_raises() -> None:
    big = b"data: " + b"z" * MAX_EVENT_BYTES + b"\r\n\r\n"
    with pytest.raises(SSEError):
        SSEParser().feed(b"data: ok\n\n" + big)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
@pytest.mark.parametrize("step", [65536, 2 * MAX_EVENT_BYTES])
def test_event_exactly_at_the_limit_is_accepted(eol: bytes, step: int) -> None:
    value = "z" * (MAX_EVENT_BYTES - 6 - len(eol))
    stream = b"data: " + value.encode() + eol + eol  # block = MAX bytes, then a blank line
    parser = SSEParser()
    events = [e for i in range(0, len(stream), step) for e in parser.feed(stream[i : i + step])]
    assert events == [Event(None, value)]
    assert parser.pending == 0


@pytest.mark.parametrize("eol", [b"\n", b"\r"])
def test_unfinished_block_may_reach_the_limit_but_not_exceed_it(eol: bytes) -> None:
    block = b"data: " + b"z" * (MAX_EVENT_BYTES - 6 - len(eol)) + eol
    parser = SSEParser()
    assert parser.feed(b"data: a" + eol + eol + block) == [Event(None, "a")]
    assert parser.pending == MAX_EVENT_BYTES
    with pytest.raises(SSEError):
        parser.feed(b"x")


# -- recorded streams split anywhere -----------------------------------------------------


def _fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


STREAMS = {
    "openai": _fixture("openai_chat.sse"),
    "anthropic": _fixture("anthropic_messages.sse"),
    "crlf": _fixture("crlf_keepalive.sse"),
    "cr": _fixture("crlf_keepalive.sse").replace(b"\r\n", b"\r"),
    "bom+openai": BOM + _fixture("openai_chat.sse"),
}


def test_fixture_openai() -> None:
    events = parse(STREAMS["openai"])
    assert events[-1] == Event(None, "[DONE]")
    chunks = [json.loads(e.data) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Bonjour ! Voilà un café ☕ et un emoji 👋 — 日本語 も。"
    assert chunks[-1]["usage"]["completion_tokens"] == 14


def test_fixture_anthropic() -> None:
    events = parse(STREAMS["anthropic"])
    assert [e.event for e in events][:4] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
    ]
    assert events[-1] == Event("message_stop", '{"type":"message_stop"}')
    assert all(json.loads(e.data)["type"] == e.event for e in events)


@pytest.mark.parametrize("name", ["crlf", "cr"])
def test_fixture_keepalive(name: str) -> None:
    assert parse(STREAMS[name]) == [
        Event("status", "queued"),
        Event(None, '{"type":"progress",\n "text":"naïve résumé"}'),
        Event("result", "line one\n\nline three"),
        Event("done", ""),
    ]


def check_any_split(stream: bytes, cuts: list[int]) -> None:
    """Split `stream` at `cuts`: same events as whole, `pending` right after every feed."""
    ref = Reference(stream)
    assert parse(stream) == ref.events
    parser = SSEParser()
    events: list[Event] = []
    fed = 0
    for chunk in split_at(stream, cuts):
        events += parser.feed(chunk)
        fed += len(chunk)
        assert events == ref.events[: ref.dispatched[fed]]
        assert parser.pending == ref.pending[fed]
    assert events == ref.events


@pytest.mark.parametrize("name", sorted(STREAMS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_recorded_stream_any_split(name: str, data: st.DataObject) -> None:
    stream = STREAMS[name]
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=25), label="cuts")
    check_any_split(stream, cuts)


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_recorded_stream_byte_by_byte(name: str) -> None:
    stream = STREAMS[name]
    check_any_split(stream, list(range(1, len(stream))))


# -- random streams round-trip ------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"))
_EOLS = st.sampled_from(["\n", "\r", "\r\n"])


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[Event]]:
    """An encoded stream of random events, comments, ignored fields and empty blocks."""
    lines: list[str] = []
    expected: list[Event] = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["event", "event", "comment", "empty", "ignored"]))
        if kind == "comment":
            lines.append(":" + draw(_TEXT))
            continue
        if kind == "ignored":
            lines.append(draw(st.sampled_from(["id", "retry", "x-other"])) + ": " + draw(_TEXT))
            continue
        name = draw(st.none() | _TEXT.filter(bool))
        if name is not None:
            lines.append("event: " + name)
        if kind == "event":
            data = draw(st.text(st.characters(codec="utf-8", exclude_characters="\r")))
            for part in data.split("\n"):
                spaced = part.startswith(" ") or draw(st.booleans())
                lines.append(("data: " if spaced else "data:") + part)
            expected.append(Event(name, data))
        lines.append("")
    prefix = "\ufeff" if draw(st.booleans()) else ""
    out: list[str] = [prefix]
    previous = ""
    for line in lines:
        eol = draw(_EOLS)
        if previous == "\r" and line == "" and eol == "\n":
            eol = "\r\n"  # CR then an empty LF line would read as one CRLF
        out += [line, eol]
        previous = eol
    return "".join(out).encode(), expected


@settings(max_examples=300, deadline=None)
@given(case=streams(), data=st.data())
def test_random_streams_round_trip(case: tuple[bytes, list[Event]], data: st.DataObject) -> None:
    stream, expected = case
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts")
    assert parse(*split_at(stream, cuts)) == expected
    check_any_split(stream, cuts)
