"""One streamed (SSE) answer, chunk by chunk: parse, count, and shape what the client gets.

Pure CPU, no I/O: the processor asks this object what a chunk means; the stream's budget
(`budget.StreamBudget`) decides with the quota store whether it may be delivered.

What the client receives is always whole events: the incomplete tail of a chunk is held
back and sent with the next one, so that a stream can be cut at any chunk with a clean
provider-format error event (a half-sent event followed by our error would make the SDK fail
on JSON instead of raising the error). Chunks that already end on an event boundary — the
usual case — pass through untouched.

How far a stream may run is the budget's rule (`budget.py`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from extproc.providers import Provider, tokens
from extproc.providers.sse import Event, SSEError, SSEParser


@dataclass(frozen=True, slots=True)
class Chunk:
    """What one response chunk means: the bytes to send instead (None: send it as it is)
    and the tokens it delivers."""

    forward: bytes | None
    tokens: int


@dataclass(frozen=True, slots=True)
class Pace:
    """When a chunk's tokens arrived, for the latency histograms: the first token's delay
    after admission, or the gap since the previous tokens spread over these ones."""

    first_token_s: float | None = None
    per_token_s: float | None = None


def encode(event: Event) -> bytes:
    lines = [] if event.event is None else [f"event: {event.event}"]
    lines.extend(f"data: {line}" for line in event.data.split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


class AnswerStream:
    def __init__(
        self,
        *,
        provider: Provider,
        encoding: str,
        hide_usage_event: bool,
        started: float,
    ) -> None:
        self._parser = SSEParser()
        self.reader = provider.stream_reader(hide_usage_event=hide_usage_event)
        self._encoding = encoding
        self._held = b""
        self.broken = False  # not SSE we can read: forwarded untouched, counted no further
        self._last_token_at = started  # perf_counter(): admission, then the latest tokens
        self._seen_tokens = False
        self._first_token_at = started  # when the first tokens arrived (once seen)
        self._after_first = 0  # tokens that arrived after the first chunk of them

    def take(self, chunk: bytes, *, end_of_stream: bool) -> Chunk:
        if self.broken:
            return Chunk(None, 0)
        data = self._held + chunk if self._held else chunk
        try:
            events = self._parser.feed(chunk)
        except SSEError:  # an event over the size cap: give up reading, never block the answer
            self.broken, self._held = True, b""
            return Chunk(None if data is chunk else data, 0)
        texts: list[str] = []
        kept: list[Event] = []
        for event in events:
            meaning = self.reader.read(event)
            texts.extend(meaning.texts)
            if not meaning.hide:
                kept.append(event)
        tail = len(data) - self._parser.pending  # where the incomplete last event starts
        if len(kept) == len(events):
            forward = data if end_of_stream else data[:tail]
        else:  # re-encode the whole events we keep; the hidden one is dropped
            forward = b"".join(encode(e) for e in kept) + (data[tail:] if end_of_stream else b"")
        self._held = b"" if end_of_stream else data[tail:]
        count = tokens.count("".join(texts), self._encoding) if texts else 0
        return Chunk(None if forward is chunk else forward, count)

    def pace(self, count: int) -> Pace | None:
        """Note that `count` tokens were delivered now; their timing (None for no tokens)."""
        if not count:
            return None
        now = time.perf_counter()
        gap, self._last_token_at = now - self._last_token_at, now
        if not self._seen_tokens:
            self._seen_tokens = True
            self._first_token_at = now
            return Pace(first_token_s=gap)
        self._after_first += count
        return Pace(per_token_s=gap / count)

    def time_per_output_token(self) -> float | None:
        """The answer's decode pace (gen_ai.server.time_per_output_token): the time from its
        first tokens to its last, per token after the first ones; None without any."""
        if not self._after_first:
            return None
        return (self._last_token_at - self._first_token_at) / self._after_first
