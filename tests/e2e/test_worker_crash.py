"""A sidecar worker SIGKILLed behind the real Envoy, as an operator (or the OOM killer) would:
clients lose only the requests of the moment it died, the worker is back on the same port
within 2 s, and the restart is counted on /metrics."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest

from extproc.dev.stack import LocalStack
from tests.e2e.conftest import make_stack
from tests.e2e.harness import client, metric_value
from tests.redis_server import RedisServer
from tests.waiting import wait_until
from tests.worker_fleet import connections, listening_pids, worker_pids

RESPAWN_TARGET_S = 2.0
CALLERS = 4
# Requests lost to a SIGKILL: those in flight on the worker, and those Envoy sent on a new
# connection in the few ms the dying process still had its listening socket (the kernel
# queues the connection there, then resets it). Measured: all within 0.05 s of the kill.
LOSS_WINDOW_S = 1.0


def _workers(stack: LocalStack) -> set[int]:
    return worker_pids(stack.children["sidecar"].proc.pid)


def _replaced(stack: LocalStack, victim: int, count: int) -> bool:
    now = _workers(stack) - {victim}
    return len(now) == count and listening_pids(stack.ports["ext_proc"], now) == now


def _chat(api: openai.OpenAI) -> None:
    api.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


@dataclass
class Caller:
    """One application thread calling through the gateway back to back."""

    api: openai.OpenAI
    # (finished at, HTTP status; 0: the connection broke before a status)
    outcomes: list[tuple[float, int]] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                _chat(self.api)
                status = 200
            except openai.APIStatusError as exc:
                status = exc.status_code
            except openai.APIError:
                status = 0
            self.outcomes.append((time.monotonic(), status))

    def after(self, moment: float) -> list[int]:
        return [status for at, status in self.outcomes if at > moment]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("worker-crash")
    redis = RedisServer(root).start()
    stack = make_stack(
        root, vocab_dir, extra_serve_args=("--quota-store", redis.url, "--workers", "2")
    )
    yield stack
    stack.stop()
    redis.stop()


def test_a_killed_worker_costs_only_the_requests_of_the_moment(fleet: LocalStack, tag: str) -> None:
    workers = _workers(fleet)
    callers = [Caller(client(fleet, "tg-e2e", tag)) for _ in range(CALLERS)]
    stop = threading.Event()
    threads = [threading.Thread(target=c.run, args=(stop,)) for c in callers]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: all(len(c.outcomes) >= 3 for c in callers))
        # The worker Envoy is talking to (Envoy keeps a connection per thread of its own).
        busy = connections(fleet.ports["ext_proc"], workers)
        victim = max(busy, key=lambda pid: len(busy[pid]))
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: _replaced(fleet, victim, 2), seconds=10)
        respawn_s = time.monotonic() - killed_at
        settled = killed_at + LOSS_WINDOW_S
        wait_until(lambda: all(c.after(settled).count(200) >= 5 for c in callers))
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert respawn_s < RESPAWN_TARGET_S, f"respawned in {respawn_s:.2f} s"
    for caller in callers:
        lost = [(at - killed_at, s) for at, s in caller.outcomes if s != 200]
        assert all(0 < late < LOSS_WINDOW_S for late, _ in lost), lost
        assert all(s == 0 or s >= 500 for _, s in lost), lost  # never a refusal or a 4xx
        assert set(caller.after(settled)) == {200}  # and every caller is served again
    assert metric_value(fleet, "tokengate_worker_restarts_total", reason="SIGKILL") == 1
    assert metric_value(fleet, "tokengate_workers_serving") == 2


def test_one_worker_on_the_in_process_store_comes_back_with_empty_counters(
    tmp_path: Path, vocab_dir: Path, tag: str
) -> None:
    """What the README says of `--workers 1`: the worker is respawned, but the in-process
    store's counters died with it, so a used-up budget starts again from zero."""
    stack = make_stack(tmp_path, vocab_dir)
    try:
        api = client(stack, "tg-tight-requests", tag)
        for _ in range(3):
            _chat(api)
        with pytest.raises(openai.RateLimitError):
            _chat(api)
        (victim,) = _workers(stack)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: _replaced(stack, victim, 1), seconds=RESPAWN_TARGET_S)
        _chat(api)  # admitted: the spent budget was forgotten
        assert metric_value(stack, "tokengate_worker_restarts_total", reason="SIGKILL") == 1
    finally:
        stack.stop()
