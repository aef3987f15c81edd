"""HTTP/1.1 server on asyncio.Protocol: keep-alive, chunked bodies, SSE streams, backpressure.

Envoy is the client in practice, so the server does what an HTTP/1.1 upstream must and no
more: requests on a connection are answered strictly in order (a pipelined request waits and
reading pauses), plain answers carry Content-Length and are written straight from
`data_received` without a task (the fast path benchmarks exercise), delayed or streamed answers
run in one task per connection, and a client that goes away cancels that task, which closes the
event generator, so nothing keeps producing for a dead socket.

A reply can also fail on purpose (`Failure`, scripted by `x-mock-fail`), the way upstreams fail
under a gateway's retries: a reset before any response byte is a real TCP RST (SO_LINGER 0,
then abort), so the peer sees ECONNRESET, not an answer; a cut after the head and N stream
events is a close (FIN) once those bytes are flushed, with the body unfinished (no terminating
chunk, or fewer bytes than Content-Length), which an HTTP/1.1 client can only read as a broken
response. The cut is a FIN and not a RST because a RST may discard the very bytes just written.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from email.utils import formatdate
from functools import lru_cache
from http import HTTPStatus
from itertools import islice
from typing import Protocol

from extproc.dev.mock_provider.parser import HttpError, Request, RequestParser
from extproc.dev.mock_provider.recorder import Stats

log = logging.getLogger(__name__)

_YIELD_EVERY = 8  # undelayed streams still let other connections run every few chunks
_EXTRA_REASONS = {529: "Site Overloaded"}


@dataclass(frozen=True, slots=True)
class Failure:
    """How a reply fails on purpose. `after_events` None: reset the connection instead of
    answering. A number: send the head and that many stream events (a plain answer: the head
    only), then close with the body unfinished."""

    after_events: int | None = None


RESET = Failure()


@dataclass(slots=True)
class Reply:
    """A response. `stream` (SSE events, one HTTP chunk each) replaces `body` when set;
    `failure` makes it fail after `delay` instead of completing."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json"
    delay: float = 0.0
    stream: Generator[bytes, None, None] | None = None
    chunk_delay: float = 0.0
    failure: Failure | None = None

    @property
    def immediate(self) -> bool:
        """Writable at once from `data_received`: no delay, no stream, no failure."""
        return self.delay <= 0 and self.stream is None and self.failure is None


Deferred = Callable[[], Awaitable[Reply]]
"""A reply that needs the event loop to compute (e.g. counting a huge prompt off-thread)."""


class App(Protocol):
    def handle(self, request: Request) -> Reply | Deferred: ...

    def http_error(self, path: str | None, error: HttpError) -> Reply: ...


class _ClientGone(Exception):
    pass


class HttpServer:
    """Owns the listening socket and every live connection, so `close` leaves nothing running."""

    def __init__(self, *, app: App, stats: Stats) -> None:
        self._app = app
        self._stats = stats
        self._live: set[HttpProtocol] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpProtocol(app=self._app, stats=self._stats, live=self._live),
            host,
            port,
            backlog=1024,
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        tasks = [t for p in list(self._live) if (t := p.abort()) is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, *, app: App, stats: Stats, live: set[HttpProtocol]) -> None:
        self._app = app
        self._stats = stats
        self._live = live
        self._parser = RequestParser()
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        self._drained: asyncio.Future[None] | None = None
        self._eof = False
        self._done = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._live.add(self)

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)
        self._pump()

    def eof_received(self) -> bool:
        """Half-close: answer what was already asked, then close (True keeps writing open)."""
        self._eof = True
        self._pump()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._done = True
        self._live.discard(self)
        if self._task is not None:
            self._task.cancel()
        self._wake_writer()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_writer()

    def abort(self) -> asyncio.Task[None] | None:
        """Drop the connection now (server shutdown); returns the task to wait for, if any."""
        task = self._task
        if task is not None:
            task.cancel()
        if self._transport is not None:
            self._transport.abort()
        return task

    # request sequencing

    def _pump(self) -> None:
        """Serve queued requests in order until one needs a task; then handle errors/EOF."""
        parser = self._parser
        while self._task is None and not self._done and parser.ready:
            self._serve(parser.ready.popleft())
        if self._done or self._transport is None:
            return
        if self._task is not None:
            if parser.ready:
                self._transport.pause_reading()
            return
        if parser.error is not None:
            self._write(self._app.http_error(parser.failed_path, parser.error), close=True)
        elif parser.expect_continue:
            parser.expect_continue = False
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        elif self._eof:
            self._close()

    def _serve(self, request: Request) -> None:
        close = not request.keep_alive
        try:
            result = self._app.handle(request)
        except Exception:  # a handler bug must cost one 500, not the connection
            log.exception("mock provider handler failed for %s %s", request.method, request.path)
            result = self._app.http_error(request.path, HttpError(500, "internal error"))
        if isinstance(result, Reply) and result.immediate:
            self._write(result, close=close)
            return
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._serve_later(request, result, close))
        self._task.add_done_callback(self._task_done)

    async def _serve_later(self, request: Request, result: Reply | Deferred, close: bool) -> None:
        reply = result if isinstance(result, Reply) else await self._resolve(request, result)
        if reply.delay > 0:
            await asyncio.sleep(reply.delay)
        if reply.failure == RESET:
            self._reset()
        elif reply.stream is None:
            self._write(reply, close=close)
        else:
            await self._stream(reply, request.version == "HTTP/1.1", close)

    async def _resolve(self, request: Request, deferred: Deferred) -> Reply:
        try:
            return await deferred()
        except Exception:  # same contract as the synchronous path: one 500, not a hang
            log.exception("mock provider handler failed for %s %s", request.method, request.path)
            return self._app.http_error(request.path, HttpError(500, "internal error"))

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._task = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("mock provider connection failed", exc_info=exc)
            self._close()
        elif not self._done and self._transport is not None:
            self._transport.resume_reading()
            self._pump()

    # writing

    def _write(self, reply: Reply, *, close: bool) -> None:
        assert self._transport is not None
        head = _head(reply, length=len(reply.body), chunked=False, close=close)
        if reply.failure is not None:  # the head promises a body that never comes
            self._transport.write(head)
            self._stats.replies_cut += 1
            self._close()
            return
        self._transport.write(head + reply.body)
        if close:
            self._close()

    async def _stream(self, reply: Reply, chunked: bool, close: bool) -> None:
        """Write SSE events as HTTP chunks (close-delimited for HTTP/1.0 clients)."""
        assert self._transport is not None and reply.stream is not None
        transport, events = self._transport, reply.stream
        transport.write(_head(reply, length=None, chunked=chunked, close=close or not chunked))
        self._stats.streams_started += 1
        cut = None if reply.failure is None else reply.failure.after_events
        try:
            for index, event in enumerate(islice(events, cut)):
                if index and reply.chunk_delay > 0:
                    await asyncio.sleep(reply.chunk_delay)
                elif index % _YIELD_EVERY == _YIELD_EVERY - 1:
                    await asyncio.sleep(0)
                if self._done or transport.is_closing():
                    raise _ClientGone
                transport.write(b"%x\r\n%b\r\n" % (len(event), event) if chunked else event)
                if self._paused:
                    await self._drain()
            if reply.failure is not None:
                self._stats.streams_cut += 1
                self._close()
                return
            if chunked:
                transport.write(b"0\r\n\r\n")
        except (asyncio.CancelledError, _ClientGone) as exc:
            self._stats.streams_aborted += 1
            if isinstance(exc, asyncio.CancelledError):
                raise
            self._close()
            return
        finally:
            events.close()
        self._stats.streams_completed += 1
        if close or not chunked:
            self._close()

    async def _drain(self) -> None:
        if not self._paused or self._done:
            return
        self._drained = asyncio.get_running_loop().create_future()
        await self._drained

    def _wake_writer(self) -> None:
        waiter, self._drained = self._drained, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _close(self) -> None:
        """Graceful: what was written is flushed, then FIN."""
        self._done = True
        if self._transport is not None:
            self._transport.close()

    def _reset(self) -> None:
        """Abortive: SO_LINGER 0 makes the kernel answer the close with RST, not FIN."""
        self._done = True
        self._stats.connections_reset += 1
        if self._transport is None:
            return
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._transport.abort()


def _head(reply: Reply, *, length: int | None, chunked: bool, close: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {reply.status} {_reason(reply.status)}",
        f"date: {_http_date()}",
        "server: tokengate-mock",
        f"content-type: {reply.content_type}",
    ]
    if length is not None:
        lines.append(f"content-length: {length}")
    elif chunked:
        lines.append("transfer-encoding: chunked")
    if reply.stream is not None:
        lines.append("cache-control: no-cache")
    lines.extend(f"{name}: {value}" for name, value in reply.headers)
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@lru_cache(maxsize=64)
def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return _EXTRA_REASONS.get(status, "Unknown")


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The Date header, formatted once per second (it is on every response)."""
    global _date_cache  # noqa: PLW0603 - one-entry cache of a pure function of the clock
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]
