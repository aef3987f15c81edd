"""The mock provider over raw HTTP/1.1 on a real socket: keep-alive, chunked and pipelined
requests, malformed and oversized ones, `Expect: 100-continue`, SSE framing, a client that
leaves mid-stream; and `run()`, the process entry point, end to end."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

from tests.integration.mock_server import (
    MESSAGES,
    VOCAB,
    ServerThread,
    get_json,
    openai_prompt_tokens,
)
from tests.waiting import wait_until

# --- raw HTTP/1.1 ---------------------------------------------------------------------------


def post(
    conn: http.client.HTTPConnection, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    conn.request("POST", path, body=json.dumps(body).encode(), headers=headers or {})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_anthropic_requires_max_tokens(mock: ServerThread) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=10)
    status, body = post(conn, "/v1/messages", {"model": "c", "messages": MESSAGES[1:]})
    conn.close()
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


def test_keep_alive_reuses_the_connection(mock: ServerThread) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=10)
    body = {"model": "gpt-4o", "messages": MESSAGES}
    assert post(conn, "/v1/chat/completions", body)[0] == 200
    first = conn.sock
    assert post(conn, "/v1/chat/completions", body)[0] == 200
    assert conn.sock is first and first is not None
    conn.close()


def test_chunked_request_body_and_recorder_tags(mock: ServerThread) -> None:
    raw = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": False}).encode()
    pieces = [raw[i : i + 7] for i in range(0, len(raw), 7)]
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=10)
    conn.putrequest("POST", "/v1/chat/completions")
    for name, value in [
        ("Transfer-Encoding", "chunked"),
        ("x-request-tag", "chunked-1"),
        ("Authorization", "Bearer one"),
        ("Authorization", "Bearer two"),
        ("api-key", "three"),
    ]:
        conn.putheader(name, value)
    conn.endheaders(message_body=iter(pieces), encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 200
    answer = json.loads(response.read())
    assert answer["usage"]["prompt_tokens"] == openai_prompt_tokens("o200k_base")
    post(conn, "/v1/chat/completions", {"model": "x", "messages": MESSAGES}, {"x-request-tag": "b"})
    conn.close()

    (record,) = get_json(mock, "/_mock/requests?tag=chunked-1")
    assert record["body_bytes"] == len(raw) and record["model"] == "gpt-4o-mini"
    assert record["credentials"] == {
        "authorization": ["Bearer one", "Bearer two"],
        "api-key": ["three"],
    }
    assert [r["model"] for r in get_json(mock, "/_mock/requests?tag=b")] == ["x"]
    assert get_json(mock, "/_mock/requests?tag=absent") == []


class _Unclosable:
    """The shared reader as HTTPResponse sees it: closing one response must not close it."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def close(self) -> None:
        pass


class Raw:
    """A raw socket with one buffered reader, so pipelined responses are read in order."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file: BinaryIO = self.sock.makefile("rb")

    def makefile(self, *_: Any, **__: Any) -> _Unclosable:
        return _Unclosable(self.file)

    def response(self) -> http.client.HTTPResponse:
        response = http.client.HTTPResponse(self)  # type: ignore[arg-type]
        response.begin()
        return response

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def raw_post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


CHAT = json.dumps({"model": "gpt-4o", "messages": MESSAGES}).encode()


def test_pipelined_requests_are_answered_in_order(mock: ServerThread) -> None:
    raw = Raw(mock.port)
    slow = raw_post("/v1/chat/completions", CHAT, "x-mock-delay-ms: 30\r\nx-request-tag: p1\r\n")
    fast = raw_post("/v1/messages", b"{}")
    raw.sock.sendall(slow + fast)
    first, second = raw.response(), None
    assert first.status == 200 and json.loads(first.read())["object"] == "chat.completion"
    second = raw.response()
    assert second.status == 400 and json.loads(second.read())["type"] == "error"
    raw.close()


def test_connection_close_and_malformed_request(mock: ServerThread) -> None:
    raw = Raw(mock.port)
    raw.sock.sendall(raw_post("/v1/chat/completions", CHAT, "Connection: close\r\n"))
    response = raw.response()
    assert response.status == 200 and response.getheader("connection") == "close"
    response.read()
    assert raw.sock.recv(1) == b""
    raw.close()

    raw = Raw(mock.port)
    raw.sock.sendall(
        b"POST /v1/messages HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
    )
    response = raw.response()
    assert response.status == 400 and json.loads(response.read())["type"] == "error"
    assert raw.sock.recv(1) == b""
    raw.close()


def test_body_over_64_mib_is_refused(mock: ServerThread) -> None:
    raw = Raw(mock.port)
    raw.sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 67108865\r\n\r\n")
    response = raw.response()
    assert response.status == 413
    assert json.loads(response.read())["error"]["code"] == "request_too_large"
    raw.close()


def test_expect_100_continue(mock: ServerThread) -> None:
    raw = Raw(mock.port)
    head = raw_post("/v1/chat/completions", CHAT, "Expect: 100-continue\r\n")[: -len(CHAT)]
    raw.sock.sendall(head)
    assert raw.file.readline() == b"HTTP/1.1 100 Continue\r\n"
    assert raw.file.readline() == b"\r\n"
    raw.sock.sendall(CHAT)
    assert raw.response().status == 200
    raw.close()


def test_sse_is_chunked_and_delay_is_applied(mock: ServerThread) -> None:
    raw = Raw(mock.port)
    started = time.monotonic()
    body = json.dumps({"model": "gpt-4o", "messages": MESSAGES, "stream": True}).encode()
    raw.sock.sendall(raw_post("/v1/chat/completions", body, "x-mock-delay-ms: 50\r\n"))
    response = raw.response()
    assert time.monotonic() - started >= 0.05
    assert response.getheader("transfer-encoding") == "chunked"
    assert response.getheader("content-type", "").startswith("text/event-stream")
    assert response.read().endswith(b"data: [DONE]\n\n")
    raw.close()


def test_client_disconnect_mid_stream_is_counted_and_stops_the_task(mock: ServerThread) -> None:
    before = get_json(mock, "/_mock/stats")
    raw = Raw(mock.port)
    body = json.dumps({"model": "gpt-4o", "messages": MESSAGES, "stream": True}).encode()
    headers = "x-mock-completion-tokens: 100000\r\nx-mock-chunk-delay-ms: 20\r\n"
    raw.sock.sendall(raw_post("/v1/chat/completions", body, headers))
    response = raw.response()
    assert response.status == 200
    assert response.read1(4096).startswith(b"data: ")
    raw.sock.shutdown(socket.SHUT_RDWR)
    raw.close()

    def aborted() -> bool:
        stats = get_json(mock, "/_mock/stats")
        return bool(stats["streams_aborted"] == before["streams_aborted"] + 1)

    wait_until(aborted)
    wait_until(lambda: mock.tasks() == 0)
    after = get_json(mock, "/_mock/stats")
    assert after["streams_completed"] == before["streams_completed"]
    assert mock.provider.stats.streams_aborted == after["streams_aborted"]


def test_health_endpoint(mock: ServerThread) -> None:
    assert get_json(mock, "/_mock/health") == {"status": "ok"}


# --- run() ----------------------------------------------------------------------------------


def test_run_prints_ready_line_writes_port_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    code = (
        "from pathlib import Path; from extproc.providers import tokens; "
        "from extproc.dev.mock_provider import run; "
        f"tokens.use_vocab_dir(Path({str(VOCAB)!r})); "
        f"run(port=0, port_file=Path({str(port_file)!r}))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        port = int(port_file.read_text())
        assert line == f"mock-provider listening on http://127.0.0.1:{port}"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/_mock/health")
        assert conn.getresponse().status == 200
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
