"""Compressed answers, for tests of a gateway that must read every byte it governs.

Real providers (through their CDNs) compress when the client accepts it, and an upstream may
compress even when asked for `identity`. `x-mock-content-encoding` makes the mock do either:

    gzip | deflate   always, whatever `accept-encoding` says (the misbehaving upstream)
    auto             gzip only when the request's `accept-encoding` allows it (a CDN)
    identity         never (the default)

A plain answer is compressed whole. An SSE stream is one compressed stream flushed after every
event (Z_SYNC_FLUSH), so each HTTP chunk decompresses to exactly one event, as a streaming
server must do for the client to see events as they happen.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Generator

from extproc.dev.mock_provider.http import Reply

MODES = ("gzip", "deflate", "auto", "identity")
_WBITS = {"gzip": 31, "deflate": 15}  # deflate in HTTP is the zlib format (RFC 9110 §8.4.1.2)


def coding_for(mode: str | None, accept_encoding: str | None) -> str | None:
    """The content-coding to answer with (`gzip`/`deflate`), or None for identity."""
    if mode in _WBITS:
        return mode
    if mode == "auto" and _accepts_gzip(accept_encoding or ""):
        return "gzip"
    return None


def encode(reply: Reply, coding: str | None) -> Reply:
    """`reply` with its body or its event stream compressed by `coding` (None: unchanged)."""
    if coding is None:
        return reply
    headers = (*reply.headers, ("content-encoding", coding), ("vary", "accept-encoding"))
    if reply.stream is not None:
        return dataclasses.replace(reply, headers=headers, stream=_events(reply.stream, coding))
    return dataclasses.replace(reply, headers=headers, body=compress(reply.body, coding))


def compress(data: bytes, coding: str) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, _WBITS[coding])
    return packer.compress(data) + packer.flush()


def _events(events: Generator[bytes, None, None], coding: str) -> Generator[bytes, None, None]:
    """Each event compressed and flushed on its own; never an empty piece (an empty HTTP chunk
    would end the body). Closing this closes `events`, as the HTTP layer expects."""
    packer = zlib.compressobj(6, zlib.DEFLATED, _WBITS[coding])
    try:
        for event in events:
            piece = packer.compress(event) + packer.flush(zlib.Z_SYNC_FLUSH)
            if piece:
                yield piece
        yield packer.flush(zlib.Z_FINISH)
    finally:
        events.close()


def _accepts_gzip(header: str) -> bool:
    """Whether `accept-encoding` lists gzip (or `*`) with a non-zero q-value."""
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = params.strip().lower()
        if not q.startswith("q="):
            return True
        try:
            return float(q[2:]) > 0
        except ValueError:
            return False
    return False
