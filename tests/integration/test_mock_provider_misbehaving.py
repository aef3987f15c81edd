"""The mock provider as a recording, misbehaving upstream, on a real socket: compressed
answers the official SDKs decode (plain and streamed), a gzip stream whose every HTTP chunk
decodes to one event on arrival, and a record of exactly what arrived (raw target, trailers,
every header) with counts per path."""

from __future__ import annotations

import json
import socket
import zlib
from typing import Any

import pytest

from tests.integration.mock_server import MESSAGES, ServerThread, ant, get_json, oai

GZIP = {"x-mock-content-encoding": "gzip"}


def test_openai_sdk_reads_gzip_answers_plain_and_streamed(mock: ServerThread) -> None:
    client = oai(mock, default_headers={"accept-encoding": "identity", **GZIP})
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert raw.headers["content-encoding"] == "gzip"  # though identity was asked for
    completion = raw.parse()
    assert completion.usage is not None and completion.choices[0].message.content
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-mock-completion-tokens": "30"},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 30
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 30


def test_anthropic_sdk_reads_a_gzip_stream(mock: ServerThread) -> None:
    client = ant(mock, default_headers=GZIP)
    with client.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=MESSAGES[1:],
        extra_headers={"x-mock-completion-tokens": "25"},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert len(text.split()) == 25 == final.usage.output_tokens


def _read_chunks(sock: socket.socket) -> tuple[bytes, list[bytes]]:
    """The response head and its HTTP chunks as framed on the wire (ends at the 0 chunk)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    chunks: list[bytes] = []
    while True:
        while b"\r\n" not in rest:
            rest += sock.recv(65536)
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        while len(rest) < size + 2:
            rest += sock.recv(65536)
        if size == 0:
            return head, chunks
        chunks.append(rest[:size])
        rest = rest[size + 2 :]


def test_gzip_stream_chunks_each_decode_to_one_event(mock: ServerThread) -> None:
    body = json.dumps({"model": "gpt-4o", "messages": MESSAGES, "stream": True}).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\naccept-encoding: identity\r\n"
        b"x-mock-content-encoding: gzip\r\nx-mock-completion-tokens: 12\r\n"
        b"content-length: %d\r\n\r\n%b" % (len(body), body)
    )
    with socket.create_connection(("127.0.0.1", mock.port), timeout=10) as sock:
        sock.sendall(request)
        head, chunks = _read_chunks(sock)
    assert b"\r\ncontent-encoding: gzip\r\n" in head
    assert b"text/event-stream" in head
    unpack = zlib.decompressobj(31)
    events = [unpack.decompress(chunk) for chunk in chunks]
    assert events[-1] == b"" and unpack.eof
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in events[:-1])
    assert all(e.count(b"\n\n") == 1 for e in events[:-1])
    assert events[-2] == b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    ("accept", "encoded"),
    [("gzip;q=0.5, br", True), ("identity", False), ("br", False), (None, True)],
    ids=["gzip", "identity", "br-only", "sdk-default"],
)
def test_auto_compresses_only_when_the_client_accepts_it(
    mock: ServerThread, accept: str | None, encoded: bool
) -> None:
    """None: what the SDK sends by itself (`gzip, deflate`), which is why a gateway must ask
    its upstream for identity explicitly."""
    headers = {"x-mock-content-encoding": "auto"}
    if accept is not None:
        headers["accept-encoding"] = accept
    client = oai(mock, default_headers=headers)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert ("content-encoding" in raw.headers) is encoded
    assert raw.parse().choices[0].message.content


def test_record_shows_target_trailers_and_every_header(mock: ServerThread) -> None:
    body = json.dumps({"model": "gpt-4o", "messages": MESSAGES}).encode()
    request = (
        b"POST /v1/chat/completions?api_key=sk-q&x=1 HTTP/1.1\r\nhost: x\r\n"
        b"x-request-tag: misbehaving-1\r\nAuthorization: Bearer one\r\nCookie: s=1\r\n"
        b"Transfer-Encoding: chunked\r\ntrailer: x-api-key\r\n\r\n"
        b"%x\r\n%b\r\n0\r\nx-api-key: sk-trailer\r\n\r\n"
        b"GET /v1/files HTTP/1.1\r\nhost: x\r\nx-request-tag: misbehaving-1\r\n\r\n"
    ) % (len(body), body)
    with socket.create_connection(("127.0.0.1", mock.port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while received.count(b"HTTP/1.1 200") < 2 or not received.endswith(b"}"):
            received += sock.recv(65536)
    chat, files = get_json(mock, "/_mock/requests?tag=misbehaving-1")
    assert chat["target"] == "/v1/chat/completions?api_key=sk-q&x=1"
    assert chat["trailers"] == [["x-api-key", "sk-trailer"]]
    assert chat["credentials"] == {"authorization": ["Bearer one"], "cookie": ["s=1"]}
    assert ["trailer", "x-api-key"] in chat["headers"]
    assert json.loads(chat["body"]) == json.loads(body)
    assert (files["method"], files["target"], files["body_bytes"]) == ("GET", "/v1/files", 0)
    counts: dict[str, Any] = get_json(mock, "/_mock/counts?tag=misbehaving-1")
    assert counts == {"total": 2, "paths": {"/v1/chat/completions": 1, "/v1/files": 1}}
