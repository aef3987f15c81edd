"""A real Envoy between a recording ext_proc server and a recording upstream, for measuring
what each side of the boundary sees (tests/integration/test_envoy_boundary.py).

Both recorders are deliberately dumb: the ext_proc server routes every request to the
`openai` cluster and decides nothing unless a request carries `x-probe` (see `ProbeExtProc`);
the upstream keeps the raw bytes of each request it received, so a path spelling, a header or
a trailer is seen exactly as Envoy sent it, not as a parser re-rendered it.
"""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

from extproc.dev.stack import envoy_admin_ready, envoy_binary, envoy_listener_port
from extproc.kube.envoy_config import LocalEnvoy, Upstream, render_local
from tests.waiting import wait_until

_Mode = processing_mode_pb2.ProcessingMode
_SIDECAR = struct_pb2.Struct()
_SIDECAR.update({"tokengate": {"reply": "sidecar"}})
# What the upstream answers: long enough for Envoy's compressor, JSON like a provider's.
ANSWER = json.dumps({"object": "chat.completion", "choices": [{"text": "ok " * 200}]}).encode()
SSE_EVENTS = [b'data: {"choices":[{"delta":{"content":"tok %d "}}]}\n\n' % i for i in range(50)]


def _headers(message: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for h in message.headers.headers:
        value = h.raw_value.decode() if h.raw_value else h.value
        out[h.key] = f"{out[h.key]},{value}" if h.key in out else value
    return out


def _immediate(status: int) -> ep.ProcessingResponse:
    body = json.dumps({"error": {"message": f"probe {status}", "type": "probe"}}).encode()
    return ep.ProcessingResponse(
        immediate_response=ep.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status), body=body, details="probe"
        ),
        dynamic_metadata=_SIDECAR,
    )


@dataclass
class Seen:
    """One ext_proc stream: the request headers, and the answer as the sidecar saw it."""

    request: dict[str, str]
    response: dict[str, str] = field(default_factory=dict)
    response_body: bytes = b""


class ProbeExtProc(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """Continue everything, routed to `openai`. `x-probe: <status>@headers` refuses in the
    header phase; `<status>@body` asks for the buffered body and refuses there;
    `read-answer` asks for the response headers and the streamed response body."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []

    def Process(self, request_iterator: Iterator[Any], context: Any) -> Iterator[Any]:
        seen: Seen | None = None
        for message in request_iterator:
            phase = message.WhichOneof("request")
            if phase == "request_headers":
                seen = Seen(request=_headers(message.request_headers))
                self.seen.append(seen)
                yield self._on_headers(seen.request.get("x-probe", ""))
            elif phase == "request_body":
                yield _immediate(int(seen.request["x-probe"].split("@")[0]) if seen else 500)
            elif phase == "response_headers" and seen is not None:
                seen.response = _headers(message.response_headers)
                yield ep.ProcessingResponse(response_headers=ep.HeadersResponse())
            elif phase == "response_body" and seen is not None:
                seen.response_body += message.response_body.body
                yield ep.ProcessingResponse(response_body=ep.BodyResponse())

    @staticmethod
    def _on_headers(probe: str) -> ep.ProcessingResponse:
        if probe.endswith("@headers"):
            return _immediate(int(probe.split("@", maxsplit=1)[0]))
        route = base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key="x-tokengate-upstream", raw_value=b"openai")
        )
        common = ep.CommonResponse(
            header_mutation=ep.HeaderMutation(set_headers=[route]), clear_route_cache=True
        )
        reply = ep.ProcessingResponse(request_headers=ep.HeadersResponse(response=common))
        if probe.endswith("@body"):
            reply.mode_override.CopyFrom(_Mode(request_body_mode=_Mode.BUFFERED))
        elif probe == "read-answer":
            reply.mode_override.CopyFrom(
                _Mode(response_header_mode=_Mode.SEND, response_body_mode=_Mode.STREAMED)
            )
        return reply


@dataclass
class Received:
    """One request as the upstream got it: raw head, parsed headers, body, trailers."""

    head: bytes
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]]

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


class RecordingUpstream:
    """HTTP/1.1 on a thread: records each request; answers JSON, or SSE for paths with `sse`."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            while (request := _read_request(reader)) is not None:
                self.received.append(request)
                conn.sendall(_answer(request))


def _read_request(reader: Any) -> Received | None:
    lines = []
    while (line := reader.readline()) not in (b"\r\n", b""):
        lines.append(line)
    if not lines:
        return None
    fields = [tuple(x.decode().rstrip("\r\n").split(":", 1)) for x in lines[1:]]
    headers = [(k.strip().lower(), v.strip()) for k, v in fields]
    by_name = dict(headers)
    body, trailers = b"", []
    if by_name.get("transfer-encoding") == "chunked":
        while size := int(reader.readline().split(b";")[0], 16):
            body += reader.read(size)
            reader.readline()
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, value = line.decode().rstrip("\r\n").split(":", 1)
            trailers.append((name.strip().lower(), value.strip()))
    else:
        body = reader.read(int(by_name.get("content-length", "0")))
    path = lines[0].decode().split(" ")[1]
    return Received(head=b"".join(lines), path=path, headers=headers, body=body, trailers=trailers)


def _answer(request: Received) -> bytes:
    if "not-http" in request.path:
        return b"NOT HTTP AT ALL\r\n\r\n"
    if "sse" in request.path:
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in SSE_EVENTS)
        return (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
        )
    body = gzip.compress(ANSWER) if "gzip-anyway" in request.path else ANSWER
    extra = b"content-encoding: gzip\r\n" if "gzip-anyway" in request.path else b""
    kind = b"application/json; charset=utf-8" if "charset" in request.path else b"application/json"
    return b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\n%scontent-length: %d\r\n\r\n%s" % (
        kind,
        extra,
        len(body),
        body,
    )


@dataclass
class Probe:
    ext_proc: ProbeExtProc
    upstream: RecordingUpstream
    port: int
    admin: str
    log: Path

    def upstream_saw(self, count: int) -> list[Received]:
        wait_until(lambda: len(self.upstream.received) >= count, seconds=10)
        return self.upstream.received


@contextmanager
def probe_envoy(
    tmp_path: Path, doctor: Callable[[dict[str, Any]], None] | None = None
) -> Iterator[Probe]:
    """Envoy as `render_local` renders it (then changed by `doctor`, to show what a setting
    is for), on an ephemeral port, its stderr (access log included) in `tmp_path/envoy.log`."""
    ext_proc = ProbeExtProc()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    ep_grpc.add_ExternalProcessorServicer_to_server(ext_proc, server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    upstream = RecordingUpstream()
    config = json.loads(render_local(
        LocalEnvoy(
            listen_port=0, admin_port=0, ext_proc_port=grpc_port,
            openai=Upstream.local(upstream.port), anthropic=Upstream.local(upstream.port),
        )
    ))  # fmt: skip
    if doctor is not None:
        doctor(config)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "envoy.yaml").write_text(json.dumps(config))
    admin_file, log = tmp_path / "admin.txt", tmp_path / "envoy.log"
    cmd = [envoy_binary(), "-c", str(tmp_path / "envoy.yaml"), "--use-dynamic-base-id",
           "--admin-address-path", str(admin_file), "--log-level", "warn"]  # fmt: skip
    with log.open("w") as sink:
        envoy = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_until(
            lambda: envoy.poll() is not None or envoy_admin_ready(admin_file) is not None,
            seconds=60,
        )
        assert envoy.poll() is None, log.read_text()
        admin = admin_file.read_text().strip()
        yield Probe(ext_proc, upstream, envoy_listener_port(admin, "llm"), admin, log)
    finally:
        envoy.terminate()
        envoy.wait(30)
        server.stop(None)
        upstream.close()
