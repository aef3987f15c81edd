"""`tokengate serve` as a real process on an ephemeral port, driven by a real gRPC client
playing Envoy's part of the ext_proc protocol."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.dev.stack import Child
from tests import envoy_messages as em

POLICY = f"""
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: solo, namespace: solo}}
spec:
  limits:
    - {{name: one-at-a-time, concurrent: 1}}
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: svc, namespace: solo}}
spec: {{sha256: {hashlib.sha256(b"tg-solo").hexdigest()}}}
"""
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def sidecar(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path
) -> Iterator[int]:
    """Served on each event loop `--event-loop` offers (uvloop is the default)."""
    root = tmp_path_factory.mktemp("sidecar")
    (root / "policies").mkdir()
    (root / "policies" / "solo.yaml").write_text(POLICY)
    cmd = [
        sys.executable,
        "-m",
        "extproc",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
        "--policy-dir",
        str(root / "policies"),
        "--vocab-dir",
        str(vocab_dir),
        "--event-loop",
        request.param,
    ]
    child = Child(
        "sidecar",
        cmd,
        log_dir=root,
        env={"OPENAI_API_KEY": "sk-up", "PATH": ""},
        ready_prefix="tokengate ready ",
    )
    port = json.loads(child.wait_ready())["ext_proc"]
    yield port
    assert child.stop() == 0, child.log_tail()


@pytest.fixture
def channel(sidecar: int) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{sidecar}") as chan:
        yield chan


def _governed_request(until: threading.Event | None = None) -> Iterator[Any]:
    yield em.as_request("request_headers", em.request_headers("tg-solo"))
    yield em.as_request("request_body", em.body(CHAT))
    if until is not None:
        until.wait(30)  # hold the stream open, as Envoy does while the upstream answers


def test_health_reports_serving(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_a_whole_request_flows_through_every_phase(channel: grpc.Channel) -> None:
    def messages() -> Iterator[Any]:
        yield from _governed_request()
        yield em.as_request("response_headers", em.response_headers(200))
        yield em.as_request("response_body", em.body(em.completion(7, 3)))

    replies = list(ep_grpc.ExternalProcessorStub(channel).Process(messages(), timeout=10))
    assert [r.WhichOneof("response") for r in replies] == [
        "request_headers",
        "request_body",
        "response_headers",
        "response_body",
    ]
    injected = em.set_headers(replies[0].request_headers.response.header_mutation)
    assert injected["authorization"] == "Bearer sk-up"


def test_cancelled_stream_gives_its_concurrency_lease_back(channel: grpc.Channel) -> None:
    stub = ep_grpc.ExternalProcessorStub(channel)
    hold = threading.Event()
    first = stub.Process(_governed_request(until=hold), timeout=30)
    assert next(first).WhichOneof("response") == "request_headers"
    assert next(first).WhichOneof("response") == "request_body"  # admitted, lease held
    refused = list(stub.Process(_governed_request(), timeout=10))[-1]
    assert refused.immediate_response.status.code == 429
    first.cancel()  # Envoy gives up on the stream (client disconnected)
    hold.set()
    assert _admitted_within(stub, seconds=10), "the lease of the cancelled stream leaked"


def _admitted_within(stub: Any, *, seconds: float) -> bool:
    """Settlement runs when the server notices the cancel; give it a bounded time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        reply = list(stub.Process(_governed_request(), timeout=10))[-1]
        if reply.WhichOneof("response") == "request_body":
            return True
    return False
