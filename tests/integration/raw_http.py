"""Hand-made HTTP requests for what clients libraries will not send: odd path spellings
exactly as typed, request trailers (HTTP/1.1 chunked and HTTP/2), reused connections.

The HTTP/2 side is the smallest client that can send trailers: literal HPACK fields without
Huffman coding or indexing (RFC 7541 §6.2.2), and it reads frames only far enough to see
the response end; the upstream recorder says what Envoy forwarded.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class Http1:
    """One HTTP/1.1 connection, reused for as long as Envoy keeps it open."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._reader = self.sock.makefile("rb")

    def close(self) -> None:
        self._reader.close()
        self.sock.close()

    def send(self, raw: bytes) -> Response:
        """Raises ConnectionError when Envoy has closed the connection."""
        self.sock.sendall(raw)
        return self.read()

    def read(self) -> Response:
        status_line = self._reader.readline()
        if not status_line:
            raise ConnectionError("closed by Envoy before a response")
        headers: dict[str, str] = {}
        while (line := self._reader.readline()) not in (b"\r\n", b""):
            name, value = line.decode().rstrip("\r\n").split(":", 1)
            headers[name.strip().lower()] = value.strip()
        body = b""
        if headers.get("transfer-encoding") == "chunked":
            while size := int(self._reader.readline().split(b";")[0], 16):
                body += self._reader.read(size)
                self._reader.readline()
            self._reader.readline()
        else:
            body = self._reader.read(int(headers.get("content-length", "0")))
        return Response(int(status_line.split()[1]), headers, body)


def request(
    method: str, path: str, *, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: gateway", f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked_with_trailers(path: str, body: bytes, trailers: dict[str, str]) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nhost: gateway\r\ntransfer-encoding: chunked\r\n"
    head += f"trailer: {', '.join(trailers)}\r\n\r\n"
    tail = "".join(f"{k}: {v}\r\n" for k, v in trailers.items())
    return head.encode() + b"%x\r\n%s\r\n0\r\n" % (len(body), body) + tail.encode() + b"\r\n"


def _int(value: int, prefix_bits: int, flags: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([flags | value])
    out, value = bytearray([flags | limit]), value - limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _hpack(fields: list[tuple[str, str]]) -> bytes:
    out = b""
    for name, value in fields:
        out += b"\x00" + _int(len(name), 7) + name.encode() + _int(len(value), 7) + value.encode()
    return out


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    header = struct.pack(">I", len(payload))[1:] + bytes([kind, flags])
    return header + struct.pack(">I", stream) + payload


_DATA, _HEADERS, _SETTINGS, _GOAWAY, _RST = 0x0, 0x1, 0x4, 0x7, 0x3
_END_STREAM, _END_HEADERS, _ACK = 0x1, 0x4, 0x1


def h2_post_with_trailers(
    port: int, path: str, body: bytes, trailers: list[tuple[str, str]]
) -> int:
    """POST over h2c (prior knowledge) with trailers; returns the response's frame count
    on stream 1 once it ended (END_STREAM or RST_STREAM), the upstream records the rest."""
    head = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "gw")]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + _frame(_SETTINGS, 0, 0, b"")
            + _frame(_HEADERS, _END_HEADERS, 1, _hpack(head))
            + _frame(_DATA, 0, 1, body)
            + _frame(_HEADERS, _END_HEADERS | _END_STREAM, 1, _hpack(trailers))
        )
        reader, seen = sock.makefile("rb"), 0
        while header := reader.read(9):
            length = int.from_bytes(header[:3], "big")
            kind, flags, stream = header[3], header[4], int.from_bytes(header[5:], "big")
            reader.read(length)
            if kind == _SETTINGS and not flags & _ACK:
                sock.sendall(_frame(_SETTINGS, _ACK, 0, b""))
            if stream == 1:
                seen += 1
                if kind == _RST or flags & _END_STREAM:
                    return seen
            if kind == _GOAWAY:
                return seen
        return seen
