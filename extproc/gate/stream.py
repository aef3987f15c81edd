"""One streamed (SSE) answer, chunk by chunk: parse, count, and shape what the client gets.

Pure CPU, no I/O: the processor asks this object what a chunk means, decides with the quota
store whether the stream may go on, and tells it what was delivered.

What the client receives is always whole events: the incomplete tail of a chunk is held
back and sent with the next one, so that a stream can be cut at any chunk with a clean
provider-format error event (a half-sent event followed by our error would make the SDK fail
on JSON instead of raising the error). Chunks that already end on an event boundary — the
usual case — pass through untouched.

Debit rule (bounded store traffic): a stream first spends its own reservation (prompt +
expected completion). Past it, each time the count outgrows what it holds it asks the store
for `DEBIT_BATCH_TOKENS` more (or the shortfall if larger), and when a batch no longer fits,
for exactly the shortfall. So a stream needs no store traffic while within its reservation,
at most one round trip per batch beyond it, and is cut only when not even the tokens of the
current chunk fit: the tokens delivered never exceed the budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from extproc.providers import Provider, tokens
from extproc.providers.sse import Event, SSEError, SSEParser

DEBIT_BATCH_TOKENS = 64


@dataclass(frozen=True, slots=True)
class Chunk:
    """What one response chunk means: the bytes to send instead (None: send it as it is)
    and the tokens it delivers."""

    forward: bytes | None
    tokens: int


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
        prompt_tokens: int,
        reserved_tokens: int,
        started: float,
    ) -> None:
        self._parser = SSEParser()
        self.reader = provider.stream_reader(hide_usage_event=hide_usage_event)
        self._encoding = encoding
        self._held = b""
        self.prompt_tokens = prompt_tokens
        self.granted = reserved_tokens  # tokens this stream holds in the store
        self.completion = 0  # tokens delivered to the client
        self.broken = False  # not SSE we can read: forwarded untouched, counted no further
        self.started = started  # perf_counter() when the request was admitted
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.previous_token_at: float | None = None

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

    def shortfall(self, more: int) -> int:
        """Tokens this stream must still get from the store to deliver `more`."""
        return self.prompt_tokens + self.completion + more - self.granted

    def delivered(self, count: int) -> None:
        if count:
            now = time.perf_counter()
            if self.first_token_at is None:
                self.first_token_at = now
            self.previous_token_at, self.last_token_at = self.last_token_at, now
        self.completion += count

    @property
    def used_tokens(self) -> int:
        return self.prompt_tokens + self.completion
