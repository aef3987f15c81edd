"""`tokengate serve` as a real process tree (supervisor, fork server, workers) driven by real
gRPC clients playing Envoy: a killed worker is replaced on the same port while the other
keeps answering; a worker that cannot start again ends in NOT_SERVING and a non-zero exit;
SIGTERM during a backoff exits cleanly."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from extproc.dev.stack import Child, port_is_free
from extproc.serve.supervisor import CRASH_LOOP_EXIT
from tests import envoy_messages as em
from tests.redis_server import RedisServer
from tests.waiting import wait_until
from tests.worker_fleet import (
    NOT_SERVING,
    SERVING,
    HealthWatch,
    children,
    connections,
    health_status,
    listening_pids,
    metric,
    worker_pids,
)

KEY = "tg-load"
POLICY = f"""
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: load, namespace: load}}
spec:
  limits:
    - {{name: rpm, requests: 1000000, per: 1m}}
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: svc, namespace: load}}
spec: {{sha256: {hashlib.sha256(KEY.encode()).hexdigest()}}}
"""
BROKEN = "apiVersion: tokengate.dev/v1\nkind: QuotaPolicy\nmetadata: {name: x\n"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
PHASES = ["request_headers", "request_body", "response_headers", "response_body"]
RESPAWN_TARGET_S = 2.0


@dataclass
class Sidecar:
    child: Child
    ready: dict[str, Any]
    policies: Path

    @property
    def parent(self) -> int:
        return self.child.proc.pid

    def workers(self) -> set[int]:
        return worker_pids(self.parent)

    def log(self) -> str:
        return self.child.log_path.read_text()

    def wait_exit(self, seconds: float) -> int:
        wait_until(lambda: self.child.proc.poll() is not None, seconds=seconds, detail=self.log)
        return self.child.proc.wait()


@pytest.fixture
def sidecars(tmp_path: Path, vocab_dir: Path) -> Iterator[Any]:
    started: list[Sidecar] = []

    def start(*extra: str) -> Sidecar:
        root = tmp_path / f"sidecar{len(started)}"
        (root / "policies").mkdir(parents=True)
        (root / "policies" / "load.yaml").write_text(POLICY)
        cmd = [sys.executable, "-m", "extproc", "serve", "--listen", "127.0.0.1:0",
               "--metrics-listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0",
               "--control-listen", "off", "--policy-dir", str(root / "policies"),
               "--vocab-dir", str(vocab_dir), *extra]  # fmt: skip
        env = {"OPENAI_API_KEY": "sk-up", "PATH": os.environ.get("PATH", "")}
        child = Child("sidecar", cmd, log_dir=root, env=env, ready_prefix="tokengate ready ")
        sidecar = Sidecar(child, json.loads(child.wait_ready()), root / "policies")
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in started:
        sidecar.child.stop()


def _channel(port: int) -> grpc.Channel:
    """Its own TCP connection (gRPC would otherwise share one between channels), as each of
    Envoy's worker threads holds its own."""
    return grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    )


def _whole_request(channel: grpc.Channel) -> bool:
    def messages() -> Iterator[Any]:
        yield em.as_request("request_headers", em.request_headers(KEY))
        yield em.as_request("request_body", em.body(CHAT))
        yield em.as_request("response_headers", em.response_headers(200))
        yield em.as_request("response_body", em.body(em.completion(7, 3)))

    try:
        stub = ep_grpc.ExternalProcessorStub(channel)
        replies = list(stub.Process(messages(), timeout=10, wait_for_ready=True))
    except grpc.RpcError:
        return False
    return [r.WhichOneof("response") for r in replies] == PHASES


def _failures(client: Client, victim: int, killed_at: float) -> str:
    """Which connection failed, and when against the kill (the repr of the outcomes is
    cut before it reaches them)."""
    late = [round(at - killed_at, 3) for at, ok in client.outcomes if not ok]
    side = "victim" if client.owner == victim else "survivor"
    return f"{side} {client.owner}: {len(client.outcomes)} requests, failed at {late} s"


def _connect_to(port: int, workers: set[int], owner: int | None = None) -> tuple[grpc.Channel, int]:
    """A new connection, and which worker the kernel gave it to (optionally: retried until
    it is `owner`)."""
    for _ in range(40):
        before = set().union(*connections(port, workers).values())
        channel = _channel(port)
        grpc.channel_ready_future(channel).result(timeout=10)
        new = {pid for pid, peers in connections(port, workers).items() if peers - before}
        if len(new) == 1 and (owner is None or owner in new):
            return channel, new.pop()
        channel.close()
    raise AssertionError(f"no connection landed on {owner or 'a single worker'} in 40 tries")


@dataclass
class Client:
    """One Envoy-like connection sending whole requests back to back."""

    channel: grpc.Channel
    owner: int
    outcomes: list[tuple[float, bool]] = field(default_factory=list)  # (finished at, ok)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            ok = _whole_request(self.channel)
            self.outcomes.append((time.monotonic(), ok))

    def after(self, moment: float) -> list[bool]:
        return [ok for at, ok in self.outcomes if at > moment]


def test_a_killed_worker_is_replaced_while_the_other_keeps_answering(
    sidecars: Any, server: RedisServer
) -> None:
    sidecar = sidecars("--workers", "2", "--quota-store", server.url)
    port = sidecar.ready["ext_proc"]
    workers = sidecar.workers()
    assert len(workers) == 2 and listening_pids(port, workers) == workers
    clients: list[Client] = []
    for _ in range(40):  # until both workers hold connections (the kernel hashes them)
        if {c.owner for c in clients} == workers and len(clients) >= 4:
            break
        clients.append(Client(*_connect_to(port, workers)))
    assert {c.owner for c in clients} == workers
    victim = clients[0].owner
    stop = threading.Event()
    threads = [threading.Thread(target=c.run, args=(stop,)) for c in clients]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: all(len(c.outcomes) >= 3 for c in clients), detail=sidecar.log)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        def replaced() -> bool:
            now = sidecar.workers() - {victim}
            return len(now) == 2 and listening_pids(port, now) == now

        wait_until(replaced, seconds=10, detail=sidecar.log)
        respawn_s = time.monotonic() - killed_at
        wait_until(lambda: all(sum(c.after(killed_at)) >= 5 for c in clients), detail=sidecar.log)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert respawn_s < RESPAWN_TARGET_S, f"respawned in {respawn_s:.2f} s"
    for client in clients:
        failed_at = [at - killed_at for at, ok in client.outcomes if not ok]
        # The survivor's connections never noticed. The victim's lost the request in flight
        # and, at most, the one its channel sent on reconnecting while the dead worker's
        # SO_REUSEPORT listener was still being torn down (seen in CI: failures at 9 and
        # 12 ms, once in ~10 runs): both at the kill, never later.
        if client.owner != victim:
            assert not failed_at, _failures(client, victim, killed_at)
        else:
            assert len(failed_at) <= 2, _failures(client, victim, killed_at)
            assert all(at < 0.5 for at in failed_at), _failures(client, victim, killed_at)
    (newcomer,) = sidecar.workers() - workers
    channel, _ = _connect_to(port, sidecar.workers(), owner=newcomer)
    assert _whole_request(channel), "the respawned worker does not answer"
    channel.close()
    for client in clients:
        client.channel.close()
    assert (
        metric(sidecar.ready["metrics"], "tokengate_worker_restarts_total", reason="SIGKILL") == 1
    )
    assert metric(sidecar.ready["metrics"], "tokengate_workers_serving") == 2
    assert health_status(sidecar.ready["health"]) == SERVING
    assert sidecar.child.stop() == 0  # SIGTERM: every worker drains ...
    assert sidecar.log().count("respawned as") == 1  # ... and none is respawned
    assert not sidecar.workers()


def test_a_worker_that_cannot_start_again_ends_in_not_serving_and_a_non_zero_exit(
    sidecars: Any,
) -> None:
    """The single worker of the in-process store is killed after its policy was broken: each
    respawn fails on the policy (exit 2), with growing delays, until the limit."""
    sidecar = sidecars()
    watch = HealthWatch(sidecar.ready["health"])
    (sidecar.policies / "broken.yaml").write_text(BROKEN)
    (worker,) = sidecar.workers()
    os.kill(worker, signal.SIGKILL)
    metrics_port = sidecar.ready["metrics"]
    wait_until(
        lambda: metric(metrics_port, "tokengate_worker_restarts_total", reason="exit_2") >= 1,
        detail=sidecar.log,
    )
    assert sidecar.wait_exit(60) == CRASH_LOOP_EXIT
    assert "a crash loop" in sidecar.log()
    assert watch.changes() == [SERVING, NOT_SERVING]


def test_sigterm_during_a_backoff_exits_cleanly(sidecars: Any, server: RedisServer) -> None:
    """One of two workers cannot start again and waits out a 2 s backoff; SIGTERM then
    drains the other one and exits 0 without another respawn."""
    sidecar = sidecars("--workers", "2", "--quota-store", server.url)
    (sidecar.policies / "broken.yaml").write_text(BROKEN)
    workers = sidecar.workers()
    os.kill(min(workers), signal.SIGKILL)
    wait_until(lambda: "respawning in 2.0 s" in sidecar.log(), seconds=30, detail=sidecar.log)
    sidecar.child.proc.send_signal(signal.SIGTERM)
    assert sidecar.wait_exit(20) == 0
    log = sidecar.log()
    assert "respawned as" not in log[log.index("stopping:") :]
    assert not sidecar.workers() and not any(os.path.exists(f"/proc/{pid}") for pid in workers)


def test_workers_do_not_outlive_a_killed_supervisor(sidecars: Any) -> None:
    """SIGKILL of the parent (its container's PID 1 elsewhere): no orphan keeps the port;
    each worker drains as on SIGTERM and the fork server follows."""
    sidecar = sidecars()
    port = sidecar.ready["ext_proc"]
    tree = children(sidecar.parent) | sidecar.workers()
    assert len(tree) == 3  # resource tracker, fork server, one worker
    sidecar.child.proc.kill()
    sidecar.child.proc.wait()
    wait_until(lambda: not any(_running(pid) for pid in tree), detail=sidecar.log)
    wait_until(lambda: "shutting down: draining" in sidecar.log(), detail=sidecar.log)
    assert port_is_free(port)


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for its reaper."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
