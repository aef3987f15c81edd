"""The mock provider's scripted failures and per-key rate limits on a real socket, as a
gateway's failover and headroom tracking meet them: a reset is a TCP RST before any byte, a
mid-stream cut is N chunks then EOF with no terminating chunk, `x-mock-only-model` scripts one
backend of a failover pair and not the other, and `--key-rpm` answers with the providers'
headers, 429 and `retry-after`, per key, refilling as the (injected) clock moves."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

import pytest

from extproc.dev.mock_provider import KeyLimits
from extproc.providers import tokens
from tests.integration.mock_server import MESSAGES, VOCAB, ServerThread, get_json

CHAT = {"model": "gpt-4o", "messages": MESSAGES}
CLAUDE = {"model": "claude-sonnet-4-5", "messages": MESSAGES[1:], "max_tokens": 50}
T0 = 1_700_000_000.0


def raw_post(path: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
    data = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", "host: mock", f"content-length: {len(data)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def connect(srv: ServerThread) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.port), timeout=10)


def read_head(reader: BinaryIO) -> tuple[int, dict[str, str]]:
    status = int(reader.readline().split()[1])
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, value = line.decode().split(":", 1)
        headers[name.strip().lower()] = value.strip()
    return status, headers


def read_chunks(reader: BinaryIO) -> tuple[list[bytes], bool]:
    """Every HTTP chunk until the terminating one (True) or EOF (False)."""
    chunks: list[bytes] = []
    while size_line := reader.readline():
        size = int(size_line, 16)
        if size == 0:
            return chunks, True
        chunks.append(reader.read(size))
        assert reader.readline() == b"\r\n"
    return chunks, False


def stream(
    srv: ServerThread, path: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[int, list[bytes], bool]:
    """(status, SSE chunks, whether the body ended properly) of one streamed request."""
    with connect(srv) as sock, sock.makefile("rb") as reader:
        sock.sendall(raw_post(path, {**body, "stream": True}, headers))
        status, head = read_head(reader)
        assert head["transfer-encoding"] == "chunked"
        chunks, terminated = read_chunks(reader)
        if not terminated:
            assert reader.read() == b""  # EOF: nothing after the cut, not even a partial chunk
        return status, chunks, terminated


def assert_reset(
    srv: ServerThread, path: str, body: dict[str, Any], headers: dict[str, str]
) -> None:
    with connect(srv) as sock:
        sock.sendall(raw_post(path, body, headers))
        with pytest.raises(ConnectionResetError):  # a RST, not a FIN: nothing readable
            sock.recv(65536)


def post_json(
    srv: ServerThread, path: str, body: object, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
    response = conn.getresponse()
    answer = (response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    conn.close()
    return answer


# --- x-mock-fail, x-mock-only-model ---------------------------------------------------------


def test_reset_closes_the_connection_with_no_response_byte(mock: ServerThread) -> None:
    before = get_json(mock, "/_mock/stats")["connections_reset"]
    assert_reset(mock, "/v1/chat/completions", CHAT, {"x-mock-fail": "reset"})
    assert_reset(mock, "/v1/messages", CLAUDE, {"x-mock-fail": "reset", "x-mock-delay-ms": "5"})
    assert get_json(mock, "/_mock/stats")["connections_reset"] == before + 2
    assert post_json(mock, "/v1/chat/completions", CHAT, {})[0] == 200  # still serving


@pytest.mark.parametrize(
    ("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/messages", CLAUDE)]
)
@pytest.mark.parametrize("cut", [0, 1, 3])
def test_reset_after_chunks_sends_exactly_n_then_eof(
    mock: ServerThread, path: str, body: dict[str, Any], cut: int
) -> None:
    status, chunks, terminated = stream(
        mock, path, body, {"x-mock-fail": f"reset-after-chunks:{cut}"}
    )
    assert status == 200 and len(chunks) == cut and not terminated
    assert all(chunk.endswith(b"\n\n") for chunk in chunks)
    _, whole, whole_terminated = stream(mock, path, body, {})
    assert whole_terminated and len(whole) > cut  # the cut withheld real events


def test_only_model_fails_backend_a_and_serves_backend_b(mock: ServerThread) -> None:
    """One failover attempt pair: the same headers reach gpt-4o on the OpenAI API (A) and
    claude-sonnet-4-5 on the Anthropic API (B); only A fails."""
    headers = {"x-mock-only-model": "gpt-4o", "x-mock-fail": "reset"}
    assert_reset(mock, "/v1/chat/completions", CHAT, headers)
    status, _, body = post_json(mock, "/v1/messages", CLAUDE, headers)
    assert status == 200 and json.loads(body)["type"] == "message"

    headers = {"x-mock-only-model": "claude-sonnet-4-5", "x-mock-fail": "reset-after-chunks:2"}
    _, chunks, terminated = stream(mock, "/v1/messages", CLAUDE, headers)
    assert len(chunks) == 2 and not terminated
    _, chunks, terminated = stream(mock, "/v1/chat/completions", CHAT, headers)
    assert terminated and chunks[-1] == b"data: [DONE]\n\n"

    headers = {"x-mock-only-model": "gpt-4o", "x-mock-status": "503"}
    assert post_json(mock, "/v1/chat/completions", CHAT, headers)[0] == 503
    assert post_json(mock, "/v1/messages", CLAUDE, headers)[0] == 200
    typo = {"x-mock-only-model": "gpt-4o", "x-mock-fail": "rest"}
    assert post_json(mock, "/v1/messages", CLAUDE, typo)[0] == 400  # checked on B too


# --- per-key rate limits --------------------------------------------------------------------


class Clock:
    """Read on the server's loop thread, moved by the test: one float, no lock needed."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def limited() -> Iterator[tuple[ServerThread, Clock]]:
    tokens.use_vocab_dir(VOCAB)
    clock = Clock()
    srv = ServerThread(limits=KeyLimits(rpm=3), clock=clock)
    yield srv, clock
    srv.close()


def test_rpm_counts_down_per_key_refuses_the_fourth_and_refills(
    limited: tuple[ServerThread, Clock],
) -> None:
    srv, clock = limited
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    key_a = {"authorization": "Bearer sk-a"}
    answers = []
    for _ in range(4):
        conn.request("POST", "/v1/chat/completions", body=json.dumps(CHAT), headers=key_a)
        response = conn.getresponse()
        answers.append((response.status, response.headers, json.loads(response.read())))
    conn.close()
    assert [status for status, _, _ in answers] == [200, 200, 200, 429]
    remaining = [h["x-ratelimit-remaining-requests"] for _, h, _ in answers]
    assert remaining == ["2", "1", "0", "0"]
    assert {h["x-ratelimit-limit-requests"] for _, h, _ in answers} == {"3"}
    _, refused, error = answers[3]
    assert refused["retry-after"] == "20" and refused["x-ratelimit-reset-requests"] == "1m0s"
    assert error["error"]["code"] == "rate_limit_exceeded"

    status, other, _ = post_json(
        srv, "/v1/chat/completions", CHAT, {"authorization": "Bearer sk-b"}
    )
    assert (status, other["x-ratelimit-remaining-requests"]) == (200, "2")
    status, claude, _ = post_json(srv, "/v1/messages", CLAUDE, {"x-api-key": "sk-c"})
    assert status == 200 and claude["anthropic-ratelimit-requests-remaining"] == "2"
    assert claude["anthropic-ratelimit-requests-reset"] == "2023-11-14T22:13:40Z"

    clock.now += 19
    assert post_json(srv, "/v1/chat/completions", CHAT, key_a)[0] == 429
    clock.now += 1
    status, again, _ = post_json(srv, "/v1/chat/completions", CHAT, key_a)
    assert (status, again["x-ratelimit-remaining-requests"]) == (200, "0")


def test_cli_key_rpm_flag() -> None:
    command = [sys.executable, "-m", "extproc", "mock-provider", "--port", "0"]
    command += ["--vocab-dir", str(VOCAB), "--key-rpm", "3"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().strip().rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        statuses, remaining = [], []
        for _ in range(4):
            conn.request(
                "POST", "/v1/messages", body=json.dumps(CLAUDE), headers={"x-api-key": "k"}
            )
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
            remaining.append(response.headers["anthropic-ratelimit-requests-remaining"])
        conn.close()
        assert statuses == [200, 200, 200, 429] and remaining == ["2", "1", "0", "0"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    refused = subprocess.run(
        [*command[:-1], "-1"], capture_output=True, text=True, timeout=60, check=False
    )
    assert refused.returncode == 2 and "rate limits must be >= 0" in refused.stderr
