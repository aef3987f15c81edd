"""The mock provider's scripted failures and per-model scripting: `x-mock-fail` (a reset
before any byte, a cut after N stream events) down to what the HTTP layer writes, and
`x-mock-only-model` on every endpoint that names a model."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

import pytest

from extproc.dev.mock_provider.common import ApiError
from extproc.dev.mock_provider.http import RESET, Failure, HttpProtocol, Reply
from extproc.dev.mock_provider.parser import Request
from extproc.dev.mock_provider.recorder import Recorder, Stats
from extproc.dev.mock_provider.router import Router
from extproc.dev.mock_provider.script import DEFAULT, script_from

pytestmark = pytest.mark.usefixtures("vocab_dir")

MESSAGES = [{"role": "user", "content": "hi"}]
BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "gpt-4o", "messages": MESSAGES},
    "/v1/messages": {"model": "claude-sonnet-4-5", "messages": MESSAGES, "max_tokens": 50},
    "/v1/responses": {"model": "gpt-4o", "input": "hi"},
    "/v1/completions": {"model": "gpt-3.5-turbo-instruct", "prompt": "hi"},
    "/v1/embeddings": {"model": "text-embedding-3-small", "input": "hi"},
    "/v1/messages/count_tokens": {"model": "claude-sonnet-4-5", "messages": MESSAGES},
}


def request(
    path: str = "/v1/chat/completions",
    body: object = None,
    headers: list[tuple[str, str]] | None = None,
) -> Request:
    raw = json.dumps(BODIES[path] if body is None else body).encode()
    return Request("POST", path, "", "HTTP/1.1", headers or [], raw)


def handle(req: Request) -> Reply:
    reply = Router(stats=Stats(), recorder=Recorder(), require_key=None).handle(req)
    assert isinstance(reply, Reply)
    return reply


# --- x-mock-fail ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "failure"),
    [
        ("reset", RESET),
        (" RESET ", RESET),
        ("reset-after-chunks:0", Failure(after_events=0)),
        ("reset-after-chunks:3", Failure(after_events=3)),
        ("reset-after-chunks:1000000", Failure(after_events=1_000_000)),
    ],
)
def test_fail_header_values(value: str, failure: Failure) -> None:
    assert script_from(request(headers=[("x-mock-fail", value)])).failure == failure


@pytest.mark.parametrize(
    "value",
    [
        "",
        "rest",
        "reset-after-chunks",
        "reset-after-chunks:",
        "reset-after-chunks:-1",
        "reset-after-chunks:two",
        "reset-after-chunks:1000001",
        "reset-after-chunks:3x",
        "reset-after-chunks:٣",
    ],
)
def test_fail_header_typos_are_400(value: str) -> None:
    with pytest.raises(ApiError) as info:
        script_from(request(headers=[("x-mock-fail", value)]))
    assert info.value.status == 400 and "x-mock-fail" in info.value.message


def test_failure_rides_on_every_kind_of_answer() -> None:
    cut = ("x-mock-fail", "reset-after-chunks:2")
    plain = handle(request(headers=[cut]))
    streamed = handle(
        request(body={**BODIES["/v1/chat/completions"], "stream": True}, headers=[cut])
    )
    error = handle(request(headers=[cut, ("x-mock-status", "503")]))
    assert (plain.status, plain.stream is None) == (200, True)
    assert (streamed.status, streamed.stream is not None) == (200, True)
    assert error.status == 503
    assert {plain.failure, streamed.failure, error.failure} == {Failure(after_events=2)}
    assert handle(request()).failure is None


# --- x-mock-only-model ---------------------------------------------------------------------


@pytest.mark.parametrize("path", list(BODIES))
def test_only_model_scripts_the_named_model_on_every_endpoint(path: str) -> None:
    model = BODIES[path]["model"]
    scripted = [("x-mock-status", "503"), ("x-mock-only-model", model)]
    assert handle(request(path, headers=scripted)).status == 503
    other = [("x-mock-status", "503"), ("x-mock-only-model", model + "-other")]
    assert handle(request(path, headers=other)).status == 200


def test_only_model_other_model_is_served_as_unscripted() -> None:
    headers = [
        ("x-mock-only-model", "gpt-4o"),
        ("x-mock-fail", "reset"),
        ("x-mock-completion-tokens", "40"),
        ("x-mock-content-encoding", "gzip"),
    ]
    req = request("/v1/messages", headers=headers)
    assert script_from(req, model="claude-sonnet-4-5") is DEFAULT
    reply = handle(req)
    assert reply.failure is None
    assert ("content-encoding", "gzip") not in reply.headers
    assert json.loads(reply.body)["usage"]["output_tokens"] == 16  # the unscripted length
    scripted = script_from(req, model="gpt-4o")
    assert (scripted.failure, scripted.completion_tokens) == (RESET, 40)


def test_only_model_is_exact_and_needs_a_model() -> None:
    headers = [("x-mock-only-model", "gpt-4o"), ("x-mock-status", "500")]
    assert script_from(request(headers=headers), model="GPT-4O") is DEFAULT
    assert script_from(request(headers=headers), model=None) is DEFAULT
    assert script_from(request(headers=headers), model="gpt-4o").status == 500
    assert handle(request(body={"model": 4, "messages": MESSAGES}, headers=headers)).status == 400


@pytest.mark.parametrize("model", ["gpt-4o", "claude-sonnet-4-5"])
def test_only_model_still_validates_every_header(model: str) -> None:
    headers = [("x-mock-only-model", "gpt-4o"), ("x-mock-delay-ms", "soon")]
    with pytest.raises(ApiError) as info:
        script_from(request(headers=headers), model=model)
    assert "x-mock-delay-ms" in info.value.message
    with pytest.raises(ApiError):
        script_from(request(headers=[("x-mock-only-model", " ")]), model=model)


# --- the HTTP layer ------------------------------------------------------------------------


class FakeSocket:
    def __init__(self) -> None:
        self.options: list[tuple[int, int, bytes]] = []

    def setsockopt(self, level: int, option: int, value: bytes) -> None:
        self.options.append((level, option, value))


class FakeTransport(asyncio.Transport):
    """Records what the protocol writes and how it ends the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.closed = False
        self.aborted = False
        self.sock = FakeSocket()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not (self.closed or self.aborted), "written after the end"
        self.data += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default


def raw(path: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
    data = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", "host: mock", f"content-length: {len(data)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def serve(data: bytes) -> tuple[FakeTransport, Stats]:
    """Feed `data` to one connection and run the loop until its answer is finished."""

    async def run() -> tuple[FakeTransport, Stats]:
        stats = Stats()
        router = Router(stats=stats, recorder=Recorder(), require_key=None)
        protocol = HttpProtocol(app=router, stats=stats, live=set())
        transport = FakeTransport()
        protocol.connection_made(transport)
        protocol.data_received(data)
        others = asyncio.all_tasks() - {asyncio.current_task()}
        await asyncio.gather(*others)
        return transport, stats

    return asyncio.run(run())


def chunks(body: bytes) -> tuple[list[bytes], bool]:
    """The HTTP chunks of a chunked body and whether the terminating chunk came."""
    out: list[bytes] = []
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out, True
        out.append(rest[:size])
        assert rest[size : size + 2] == b"\r\n"
        body = rest[size + 2 :]
    return out, False


def test_reset_is_an_abortive_close_with_nothing_written() -> None:
    second = raw("/v1/chat/completions", BODIES["/v1/chat/completions"], {})
    first = raw("/v1/chat/completions", BODIES["/v1/chat/completions"], {"x-mock-fail": "reset"})
    transport, stats = serve(first + second)  # the pipelined second request dies with it
    assert transport.data == b""
    assert transport.aborted and not transport.closed
    linger = (socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert transport.sock.options == [linger]
    assert stats.connections_reset == 1


@pytest.mark.parametrize(("path", "cut"), [("/v1/chat/completions", 3), ("/v1/messages", 2)])
def test_cut_stream_sends_the_head_and_exactly_n_events(path: str, cut: int) -> None:
    body = {**BODIES[path], "stream": True}
    transport, stats = serve(raw(path, body, {"x-mock-fail": f"reset-after-chunks:{cut}"}))
    head, _, rest = bytes(transport.data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"transfer-encoding: chunked" in head
    events, terminated = chunks(rest)
    assert len(events) == cut and not terminated
    assert all(event.endswith(b"\n\n") for event in events)
    assert transport.closed and not transport.aborted
    assert (stats.streams_started, stats.streams_cut, stats.streams_completed) == (1, 1, 0)


def test_cut_beyond_the_last_event_still_withholds_the_end() -> None:
    path = "/v1/chat/completions"
    body = {**BODIES[path], "stream": True}
    whole, _ = serve(raw(path, body, {}))
    cut, _ = serve(raw(path, body, {"x-mock-fail": "reset-after-chunks:1000"}))
    all_events, terminated = chunks(bytes(whole.data).partition(b"\r\n\r\n")[2])
    cut_events, cut_terminated = chunks(bytes(cut.data).partition(b"\r\n\r\n")[2])
    assert terminated and not cut_terminated
    assert len(cut_events) == len(all_events) and cut_events[-1] == b"data: [DONE]\n\n"


def test_cut_plain_answer_sends_only_its_head() -> None:
    path = "/v1/chat/completions"
    transport, stats = serve(raw(path, BODIES[path], {"x-mock-fail": "reset-after-chunks:5"}))
    head, sep, rest = bytes(transport.data).partition(b"\r\n\r\n")
    assert sep and rest == b""
    assert b"content-length: " in head and b"content-length: 0\r\n" not in head + b"\r\n"
    assert transport.closed and stats.replies_cut == 1


def test_failure_applies_after_the_scripted_delay() -> None:
    path = "/v1/chat/completions"
    headers = {"x-mock-fail": "reset", "x-mock-delay-ms": "1"}
    transport, stats = serve(raw(path, BODIES[path], headers))
    assert transport.aborted and transport.data == b"" and stats.connections_reset == 1
