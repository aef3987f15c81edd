"""The mock provider over real sockets, driven by the official SDKs and by raw HTTP/1.1.

Each server runs on port 0 in a background thread with its own event loop, so the (sync) SDKs
talk to it exactly as they would to the real API.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import anthropic
import openai
import pytest
import tiktoken

from extproc.dev.mock_provider import MockProvider
from extproc.dev.mock_provider.text import WORDS
from extproc.providers import tokens

T = TypeVar("T")
DEFAULT_VOCAB = Path(__file__).resolve().parents[2] / ".cache" / "tiktoken"
VOCAB = Path(os.environ.get("TOKENGATE_VOCAB_DIR", str(DEFAULT_VOCAB)))
KEY = "sk-mock-provider-key"
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say something."},
]


def ntok(text: str, encoding: str) -> int:
    return len(tiktoken.get_encoding(encoding).encode_ordinary(text))


class ServerThread:
    """A MockProvider on its own loop in a daemon thread."""

    def __init__(self, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.provider = MockProvider(**kwargs)
        self.port = self.call(self.provider.start())

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def tasks(self) -> int:
        async def count() -> int:
            return len(asyncio.all_tasks()) - 1

        return self.call(count())

    def close(self) -> None:
        self.call(self.provider.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    tokens.use_vocab_dir(VOCAB)
    srv = ServerThread()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def keyed() -> Iterator[ServerThread]:
    tokens.use_vocab_dir(VOCAB)
    srv = ServerThread(require_key=KEY)
    yield srv
    srv.close()


def oai(srv: ServerThread, **kwargs: Any) -> openai.OpenAI:
    base = f"http://127.0.0.1:{srv.port}/v1"
    return openai.OpenAI(base_url=base, api_key=kwargs.pop("api_key", KEY), max_retries=0, **kwargs)


def ant(srv: ServerThread, **kwargs: Any) -> anthropic.Anthropic:
    base = f"http://127.0.0.1:{srv.port}"
    key = kwargs.pop("api_key", KEY)
    return anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, **kwargs)


def get_json(srv: ServerThread, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    assert response.status == 200
    data = json.loads(response.read())
    conn.close()
    return data


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition (not a fixed sleep): returns as soon as it holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def openai_prompt_tokens(encoding: str) -> int:
    return sum(ntok(m["content"], encoding) for m in MESSAGES) + 3 * len(MESSAGES) + 3


# --- OpenAI SDK -----------------------------------------------------------------------------


def test_openai_sdk_plain_answer(server: ServerThread) -> None:
    client = oai(server)
    answer = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    content = answer.choices[0].message.content
    assert content is not None and all(word in WORDS for word in content.split(" "))
    assert answer.id.startswith("chatcmpl-") and answer.object == "chat.completion"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 16 == ntok(content, "o200k_base")
    assert answer.usage.prompt_tokens == openai_prompt_tokens("o200k_base")
    again = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert again.choices[0].message.content == content


def test_openai_sdk_stream_with_usage_and_length_limit(server: ServerThread) -> None:
    stream = oai(server).chat.completions.create(
        model="gpt-4",
        messages=MESSAGES,
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-mock-completion-tokens": "25", "x-mock-tokens-per-chunk": "4"},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    text = "".join(deltas)
    assert [ntok(d, "cl100k_base") for d in deltas] == [0, 4, 4, 2, 0]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == 10 == ntok(text, "cl100k_base")
    assert usage.prompt_tokens == openai_prompt_tokens("cl100k_base")


def test_openai_sdk_stream_without_include_usage_has_no_usage(server: ServerThread) -> None:
    chunks = list(
        oai(server).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    )
    assert all(c.usage is None and c.choices for c in chunks)
    assert ntok("".join(c.choices[0].delta.content or "" for c in chunks), "o200k_base") == 16


def test_openai_sdk_omit_usage(server: ServerThread) -> None:
    client = oai(server, default_headers={"x-mock-omit-usage": "1"})
    assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).usage is None
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.usage is None and c.choices for c in chunks)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (401, openai.AuthenticationError),
        (400, openai.BadRequestError),
    ],
)
def test_openai_sdk_scripted_errors(
    server: ServerThread, status: int, error: type[openai.APIStatusError]
) -> None:
    client = oai(server, default_headers={"x-mock-status": str(status)})
    with pytest.raises(error) as info:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    assert info.value.status_code == status
    body = info.value.body
    assert isinstance(body, dict) and "x-mock-status" in body["message"]


def test_openai_sdk_require_key(keyed: ServerThread) -> None:
    ok = oai(keyed).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert ok.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        oai(keyed, api_key="wrong").chat.completions.create(model="gpt-4o", messages=MESSAGES)
    extra = oai(keyed, default_headers={"x-api-key": KEY})
    with pytest.raises(openai.AuthenticationError):
        extra.chat.completions.create(model="gpt-4o", messages=MESSAGES)


# --- Anthropic SDK --------------------------------------------------------------------------


def anthropic_prompt_tokens() -> int:
    return ntok("Be brief.", "cl100k_base") + ntok("Say something.", "cl100k_base") + 3


def test_anthropic_sdk_plain_answer(server: ServerThread) -> None:
    message = ant(server).messages.create(
        model="claude-sonnet-4",
        max_tokens=6,
        system="Be brief.",
        messages=[{"role": "user", "content": "Say something."}],
    )
    assert message.id.startswith("msg_") and message.stop_reason == "max_tokens"
    block = message.content[0]
    assert block.type == "text"
    assert message.usage.output_tokens == 6 == ntok(block.text, "cl100k_base")
    assert message.usage.input_tokens == anthropic_prompt_tokens()


def test_anthropic_sdk_stream(server: ServerThread) -> None:
    client = ant(server, default_headers={"x-mock-completion-tokens": "9"})
    with client.messages.stream(
        model="claude-sonnet-4",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "Say something."}],
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds.count("content_block_delta") == 3
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.stop_reason == "end_turn"
    text = final.content[0].text if final.content[0].type == "text" else ""
    assert final.usage.output_tokens == 9 == ntok(text, "cl100k_base")
    assert final.usage.input_tokens == anthropic_prompt_tokens()


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, anthropic.RateLimitError),
        (529, anthropic.OverloadedError),
        (500, anthropic.InternalServerError),
    ],
)
def test_anthropic_sdk_scripted_errors(
    server: ServerThread, status: int, error: type[anthropic.APIStatusError]
) -> None:
    client = ant(server, default_headers={"x-mock-status": str(status)})
    with pytest.raises(error) as info:
        client.messages.create(
            model="claude-sonnet-4", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == status
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error"


def test_anthropic_sdk_require_key(keyed: ServerThread) -> None:
    """Anthropic routes take `x-api-key` only. anthropic 2.12 sends `api_key` as
    `Authorization: Bearer`, so the key goes in as a header here, as the gateway injects it."""
    messages: list[Any] = [{"role": "user", "content": "x"}]
    ok = ant(keyed, api_key=None, default_headers={"x-api-key": KEY}).messages.create(
        model="claude-sonnet-4", max_tokens=5, messages=messages
    )
    assert ok.usage.output_tokens == 5
    for client in (
        ant(keyed, api_key=None, default_headers={"x-api-key": "nope"}),
        ant(keyed),  # right key, but as a Bearer token
        ant(keyed, default_headers={"x-api-key": KEY}),  # two credential headers
    ):
        with pytest.raises(anthropic.AuthenticationError):
            client.messages.create(model="claude-sonnet-4", max_tokens=5, messages=messages)


# --- raw HTTP/1.1 ---------------------------------------------------------------------------


def post(
    conn: http.client.HTTPConnection, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    conn.request("POST", path, body=json.dumps(body).encode(), headers=headers or {})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_anthropic_requires_max_tokens(server: ServerThread) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    status, body = post(conn, "/v1/messages", {"model": "c", "messages": MESSAGES[1:]})
    conn.close()
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


def test_keep_alive_reuses_the_connection(server: ServerThread) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    body = {"model": "gpt-4o", "messages": MESSAGES}
    assert post(conn, "/v1/chat/completions", body)[0] == 200
    first = conn.sock
    assert post(conn, "/v1/chat/completions", body)[0] == 200
    assert conn.sock is first and first is not None
    conn.close()


def test_chunked_request_body_and_recorder_tags(server: ServerThread) -> None:
    raw = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": False}).encode()
    pieces = [raw[i : i + 7] for i in range(0, len(raw), 7)]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
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

    (record,) = get_json(server, "/_mock/requests?tag=chunked-1")
    assert record["body_bytes"] == len(raw) and record["model"] == "gpt-4o-mini"
    assert record["credentials"] == {
        "authorization": ["Bearer one", "Bearer two"],
        "api-key": ["three"],
    }
    assert [r["model"] for r in get_json(server, "/_mock/requests?tag=b")] == ["x"]
    assert get_json(server, "/_mock/requests?tag=absent") == []


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


def test_pipelined_requests_are_answered_in_order(server: ServerThread) -> None:
    raw = Raw(server.port)
    slow = raw_post("/v1/chat/completions", CHAT, "x-mock-delay-ms: 30\r\nx-request-tag: p1\r\n")
    fast = raw_post("/v1/messages", b"{}")
    raw.sock.sendall(slow + fast)
    first, second = raw.response(), None
    assert first.status == 200 and json.loads(first.read())["object"] == "chat.completion"
    second = raw.response()
    assert second.status == 400 and json.loads(second.read())["type"] == "error"
    raw.close()


def test_connection_close_and_malformed_request(server: ServerThread) -> None:
    raw = Raw(server.port)
    raw.sock.sendall(raw_post("/v1/chat/completions", CHAT, "Connection: close\r\n"))
    response = raw.response()
    assert response.status == 200 and response.getheader("connection") == "close"
    response.read()
    assert raw.sock.recv(1) == b""
    raw.close()

    raw = Raw(server.port)
    raw.sock.sendall(
        b"POST /v1/messages HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
    )
    response = raw.response()
    assert response.status == 400 and json.loads(response.read())["type"] == "error"
    assert raw.sock.recv(1) == b""
    raw.close()


def test_body_over_64_mib_is_refused(server: ServerThread) -> None:
    raw = Raw(server.port)
    raw.sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 67108865\r\n\r\n")
    response = raw.response()
    assert response.status == 413
    assert json.loads(response.read())["error"]["code"] == "request_too_large"
    raw.close()


def test_expect_100_continue(server: ServerThread) -> None:
    raw = Raw(server.port)
    head = raw_post("/v1/chat/completions", CHAT, "Expect: 100-continue\r\n")[: -len(CHAT)]
    raw.sock.sendall(head)
    assert raw.file.readline() == b"HTTP/1.1 100 Continue\r\n"
    assert raw.file.readline() == b"\r\n"
    raw.sock.sendall(CHAT)
    assert raw.response().status == 200
    raw.close()


def test_sse_is_chunked_and_delay_is_applied(server: ServerThread) -> None:
    raw = Raw(server.port)
    started = time.monotonic()
    body = json.dumps({"model": "gpt-4o", "messages": MESSAGES, "stream": True}).encode()
    raw.sock.sendall(raw_post("/v1/chat/completions", body, "x-mock-delay-ms: 50\r\n"))
    response = raw.response()
    assert time.monotonic() - started >= 0.05
    assert response.getheader("transfer-encoding") == "chunked"
    assert response.getheader("content-type", "").startswith("text/event-stream")
    assert response.read().endswith(b"data: [DONE]\n\n")
    raw.close()


def test_client_disconnect_mid_stream_is_counted_and_stops_the_task(server: ServerThread) -> None:
    before = get_json(server, "/_mock/stats")
    raw = Raw(server.port)
    body = json.dumps({"model": "gpt-4o", "messages": MESSAGES, "stream": True}).encode()
    headers = "x-mock-completion-tokens: 100000\r\nx-mock-chunk-delay-ms: 20\r\n"
    raw.sock.sendall(raw_post("/v1/chat/completions", body, headers))
    response = raw.response()
    assert response.status == 200
    assert response.read1(4096).startswith(b"data: ")
    raw.sock.shutdown(socket.SHUT_RDWR)
    raw.close()

    def aborted() -> bool:
        stats = get_json(server, "/_mock/stats")
        return bool(stats["streams_aborted"] == before["streams_aborted"] + 1)

    wait_until(aborted)
    wait_until(lambda: server.tasks() == 0)
    after = get_json(server, "/_mock/stats")
    assert after["streams_completed"] == before["streams_completed"]
    assert server.provider.stats.streams_aborted == after["streams_aborted"]


def test_health_endpoint(server: ServerThread) -> None:
    assert get_json(server, "/_mock/health") == {"status": "ok"}


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
