"""Incremental HTTP/1.1 request parser: bytes in, complete requests out, no I/O.

Kept apart from the socket code so the framing rules (Content-Length vs chunked, limits,
malformed input) are testable byte by byte. Requests that cannot be framed safely (both
Content-Length and Transfer-Encoding, conflicting lengths, bad chunk sizes) are refused rather
than guessed at: a mock that tolerated them would hide request-smuggling bugs in the gateway.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

MAX_BODY = 64 * 1024 * 1024
MAX_HEAD = 64 * 1024
_MAX_LINE = 4096

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
_VERSIONS = {b"HTTP/1.1": "HTTP/1.1", b"HTTP/1.0": "HTTP/1.0"}

_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _FAILED = range(7)


class HttpError(Exception):
    """A request that cannot be served; the connection is answered `status` and closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class Request:
    """One complete request. Header names are lower-cased; repeated headers are all kept.

    `target` is the request-target exactly as sent (path and query, `?` included), and
    `trailers` the fields after a chunked body: what reached the upstream, for the recorder.
    """

    method: str
    path: str
    query: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    keep_alive: bool = True
    trailers: list[tuple[str, str]] = field(default_factory=list)
    target: str = ""
    _first: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name, value in self.headers:
            self._first.setdefault(name, value)
        if not self.target:
            self.target = f"{self.path}?{self.query}" if self.query else self.path

    def header(self, name: str) -> str | None:
        """First value of header `name` (lower-case)."""
        return self._first.get(name)

    def header_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


class RequestParser:
    """Feed bytes with `feed`; take finished requests from `ready`.

    After a framing error `error` is set (and `failed_path`, when the head had parsed),
    `ready` keeps the requests completed before it (so pipelined requests are still answered in
    order) and further input is ignored.
    `expect_continue` is true while a request that sent `Expect: 100-continue` waits for body.
    """

    def __init__(self, *, max_body: int = MAX_BODY, max_head: int = MAX_HEAD) -> None:
        self._max_body = max_body
        self._max_head = max_head
        self._buf = bytearray()
        self._state = _HEAD
        self._head: Request | None = None
        self._body = bytearray()
        self._need = 0
        self._trailer_bytes = 0
        self._trailers: list[tuple[str, str]] = []
        self.ready: deque[Request] = deque()
        self.error: HttpError | None = None
        self.failed_path: str | None = None
        self.expect_continue = False

    def feed(self, data: bytes) -> None:
        if self._state == _FAILED:
            return
        self._buf += data
        try:
            while self._step():
                pass
        except HttpError as exc:
            self.error = exc
            self.failed_path = self._head.path if self._head is not None else None
            self._state = _FAILED
            self._buf.clear()
            self.expect_continue = False

    def _step(self) -> bool:
        """Advance the state machine once; False when more input is needed."""
        if self._state == _HEAD:
            return self._parse_head()
        if self._state == _BODY:
            return self._take_length_body()
        if self._state == _CHUNK_SIZE:
            return self._parse_chunk_size()
        if self._state == _CHUNK_DATA:
            return self._take_chunk_data()
        if self._state == _CHUNK_END:
            return self._take_chunk_end()
        if self._state == _TRAILERS:
            return self._parse_trailer()
        return False

    def _parse_head(self) -> bool:
        while self._buf.startswith(b"\r\n"):  # RFC 9112 §2.2: ignore CRLF before a request
            del self._buf[:2]
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > self._max_head:
                raise HttpError(431, "request header section too large")
            return False
        if end > self._max_head:
            raise HttpError(431, "request header section too large")
        head = bytes(self._buf[:end])
        del self._buf[: end + 4]
        request = _parse_head_block(head)
        self._frame_body(request)
        return True

    def _frame_body(self, request: Request) -> None:
        self._head = request
        te = request.header_all("transfer-encoding")
        lengths = request.header_all("content-length")
        if te:
            if lengths:
                raise HttpError(400, "both Content-Length and Transfer-Encoding")
            codings = [c.strip().lower() for c in ",".join(te).split(",")]
            if codings != ["chunked"]:
                raise HttpError(501, "unsupported transfer-encoding")
            self._state = _CHUNK_SIZE
        else:
            self._need = _content_length(lengths)
            if self._need > self._max_body:
                raise HttpError(413, "request body too large")
            self._state = _BODY
        expect = (request.header("expect") or "").lower()
        self.expect_continue = expect == "100-continue" and (bool(te) or self._need > 0)

    def _take_length_body(self) -> bool:
        if len(self._buf) < self._need:
            return False
        body = bytes(self._buf[: self._need])
        del self._buf[: self._need]
        self._finish(body)
        return True

    def _parse_chunk_size(self) -> bool:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > _MAX_LINE:
                raise HttpError(400, "chunk size line too long")
            return False
        size = bytes(self._buf[:end]).split(b";", 1)[0].strip(b" \t")
        del self._buf[: end + 2]
        if not _HEX.fullmatch(size):
            raise HttpError(400, "invalid chunk size")
        self._need = int(size, 16)
        if self._need == 0:
            self._state = _TRAILERS
            self._trailer_bytes = 0
            self._trailers = []
        elif len(self._body) + self._need > self._max_body:
            raise HttpError(413, "request body too large")
        else:
            self._state = _CHUNK_DATA
        return True

    def _take_chunk_data(self) -> bool:
        if not self._buf:
            return False
        take = min(self._need, len(self._buf))
        self._body += self._buf[:take]
        del self._buf[:take]
        self._need -= take
        if self._need == 0:
            self._state = _CHUNK_END
        return True

    def _take_chunk_end(self) -> bool:
        if len(self._buf) < 2:
            return False
        if self._buf[:2] != b"\r\n":
            raise HttpError(400, "chunk data not followed by CRLF")
        del self._buf[:2]
        self._state = _CHUNK_SIZE
        return True

    def _parse_trailer(self) -> bool:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > _MAX_LINE:
                raise HttpError(400, "trailer line too long")
            return False
        self._trailer_bytes += end + 2
        if self._trailer_bytes > self._max_head:
            raise HttpError(431, "trailer section too large")
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        if end:  # kept for the recorder: a credential must not ride in a trailer either
            self._trailers.append(_parse_field(line))
            return True
        assert self._head is not None
        self._head.trailers = self._trailers
        body = bytes(self._body)
        self._body.clear()
        self._finish(body)
        return True

    def _finish(self, body: bytes) -> None:
        assert self._head is not None
        self._head.body = body
        self.ready.append(self._head)
        self._head = None
        self._state = _HEAD
        self.expect_continue = False


def _parse_head_block(head: bytes) -> Request:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise HttpError(400, "malformed request line")
    version = _VERSIONS.get(parts[2])
    if version is None:
        if parts[2].startswith(b"HTTP/"):
            raise HttpError(505, "HTTP version not supported")
        raise HttpError(400, "malformed request line")
    target = parts[1].decode("latin-1")
    if not target.startswith("/"):
        raise HttpError(400, "request target must be in origin form")
    path, _, query = target.partition("?")
    headers = [_parse_field(line) for line in lines[1:]]
    method = parts[0].decode("ascii")
    request = Request(
        method=method, path=path, query=query, version=version, headers=headers, target=target
    )
    request.keep_alive = _keep_alive(request)
    return request


def _parse_field(line: bytes) -> tuple[str, str]:
    name, sep, value = line.partition(b":")
    if not sep or not _TOKEN.fullmatch(name):
        raise HttpError(400, "malformed header field")
    value = value.strip(b" \t")
    if _BAD_VALUE.search(value):
        raise HttpError(400, "invalid character in header value")
    return name.decode("ascii").lower(), value.decode("latin-1")


def _content_length(values: list[str]) -> int:
    if not values:
        return 0
    distinct = {v.strip() for value in values for v in value.split(",")}
    if len(distinct) != 1:
        raise HttpError(400, "conflicting Content-Length values")
    (value,) = distinct
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise HttpError(400, "invalid Content-Length")
    return int(value)


def _keep_alive(request: Request) -> bool:
    tokens = {t.strip().lower() for v in request.header_all("connection") for t in v.split(",")}
    if request.version == "HTTP/1.0":
        return False  # 1.0 clients get one response per connection; Envoy speaks 1.1
    return "close" not in tokens
