"""Looking at a running `tokengate serve` fleet from outside, as an operator would: which
processes are its workers, which of them listen on the ext_proc port, what health and
/metrics say. Linux /proc only (the tests' platform)."""

from __future__ import annotations

import os
import threading
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.waiting import wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_LISTEN, _ESTABLISHED = "0A", "01"  # TCP states in /proc/net/tcp


def children(pid: int) -> set[int]:
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for tid in tasks:
        try:
            found.update(
                int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
            )
        except FileNotFoundError:
            continue
    return found


def worker_pids(parent: int) -> set[int]:
    """The supervisor's workers: the children of its fork server (its other child is
    multiprocessing's resource tracker)."""
    workers: set[int] = set()
    for pid in children(parent):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"multiprocessing.forkserver" in cmdline:
            workers.update(children(pid))
    return workers


def _sockets(port: int, state: str) -> dict[str, int]:
    """Inode ("socket:[N]") -> remote port of every TCP socket on local `port` in `state`."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found[f"socket:[{fields[9]}]"] = int(fields[2].rsplit(":", 1)[1], 16)
    return found


def _holders(inodes: dict[str, int], candidates: set[int]) -> dict[int, set[int]]:
    held: dict[int, set[int]] = {}
    for pid in candidates:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except (FileNotFoundError, PermissionError):
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except FileNotFoundError:
                continue
            if target in inodes:
                held.setdefault(pid, set()).add(inodes[target])
    return held


def listening_pids(port: int, candidates: set[int]) -> set[int]:
    """Which of `candidates` hold a listening TCP socket on `port` (SO_REUSEPORT: several)."""
    return set(_holders(_sockets(port, _LISTEN), candidates))


def connections(port: int, candidates: set[int]) -> dict[int, set[int]]:
    """Which of `candidates` serve which client connections (by the client's port) on
    `port`: the kernel's choice among SO_REUSEPORT listeners, seen from outside."""
    return _holders(_sockets(port, _ESTABLISHED), candidates)


def health_status(port: int, *, timeout: float = 2.0) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=timeout
        )
        status: int = reply.status
        return status


def metric(port: int, name: str, **labels: str) -> float:
    """One sample from /metrics (0 when absent: a labelled counter appears at its first
    increment)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


class HealthWatch:
    """Every status the health port announces, in order, as a kubelet-side watcher sees it."""

    def __init__(self, port: int) -> None:
        self.statuses: list[int] = []
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self._stream = health_pb2_grpc.HealthStub(self._channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=60
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        wait_until(lambda: bool(self.statuses), seconds=10)

    def _read(self) -> None:
        try:
            for reply in self._stream:
                self.statuses.append(reply.status)
        except grpc.RpcError:
            pass  # the server stopped: the stream ends

    def changes(self) -> list[int]:
        self._thread.join(10)
        self._channel.close()
        return [s for i, s in enumerate(self.statuses) if i == 0 or s != self.statuses[i - 1]]
