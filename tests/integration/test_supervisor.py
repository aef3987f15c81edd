"""The supervisor with real child processes (tests/integration/fake_workers.py) standing in
for workers: respawn, backoff, the crash-loop limit, start timeouts, health as the kubelet
sees it and a stop during a backoff. The real `tokengate serve` is in test_worker_respawn."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import pytest

from extproc.serve.fleet_status import FleetStatus
from extproc.serve.settings import Address
from extproc.serve.supervisor import CRASH_LOOP_EXIT, RestartPolicy, Supervisor
from tests.integration import fake_workers
from tests.waiting import wait_until
from tests.worker_fleet import NOT_SERVING, SERVING, HealthWatch, health_status

FAST = RestartPolicy(max_restarts=2, window_s=60.0, backoff_s=0.05, backoff_max_s=0.05)


class Fleet:
    """A supervisor whose slot `i` plays `scripts[i]` in turn (the last one repeats)."""

    def __init__(self, scripts: dict[int, list[str]], policy: RestartPolicy) -> None:
        self.scripts = scripts
        self.spawned: list[tuple[int, BaseProcess]] = []
        self.ended: list[int] = []
        self.on_started: Callable[[], None] = lambda: None
        self.on_ended: Callable[[int], None] = lambda pid: None
        self.status = FleetStatus(health_address=Address("127.0.0.1", 0))
        self.supervisor = Supervisor(
            workers=len(scripts), spawn=self._spawn, status=self.status, policy=policy,
            grace_s=5.0, on_started=self._started, on_ended=self._ended,
        )  # fmt: skip

    def _spawn(self, index: int) -> tuple[BaseProcess, Connection]:
        script = self.scripts[index]
        behaviour = script.pop(0) if len(script) > 1 else script[0]
        context = multiprocessing.get_context("spawn")
        ready_r, ready_w = context.Pipe(duplex=False)
        proc = context.Process(target=fake_workers.run, args=(behaviour, ready_w))
        proc.start()
        ready_w.close()
        self.spawned.append((index, proc))
        return proc, ready_r

    def _started(self) -> None:
        self.on_started()

    def _ended(self, pid: int) -> None:
        self.ended.append(pid)
        self.on_ended(pid)

    def first(self, index: int) -> BaseProcess:
        return next(proc for i, proc in self.spawned if i == index)

    def close(self) -> None:
        self.status.close()
        for _, proc in self.spawned:
            assert not proc.is_alive(), f"pid {proc.pid} outlived its supervisor"


@pytest.fixture
def fleets() -> Iterator[list[Fleet]]:
    made: list[Fleet] = []
    yield made
    for fleet in made:
        fleet.close()


def _kill(proc: BaseProcess) -> None:
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)


def test_a_slot_that_keeps_dying_is_a_crash_loop_that_ends_in_not_serving(
    fleets: list[Fleet],
) -> None:
    """Slot 1 is killed, then cannot start again; slot 0 serves throughout, so health stays
    SERVING during the respawns and turns NOT_SERVING only when the limit is reached."""
    fleet = Fleet({0: ["serve"], 1: ["serve", "die"]}, FAST)
    fleets.append(fleet)
    assert fleet.status.health_port is not None
    watch = HealthWatch(fleet.status.health_port)
    fleet.on_started = lambda: _kill(fleet.first(1))
    assert fleet.supervisor.run() == CRASH_LOOP_EXIT
    assert fleet.status.restarts() == {"SIGKILL": 1, "exit_7": 1}
    assert [i for i, _ in fleet.spawned] == [0, 1, 1, 1]  # the limit: 2 restarts, no third
    assert fleet.first(0).exitcode == 0  # the healthy worker was drained, not killed
    assert health_status(fleet.status.health_port) == NOT_SERVING
    fleet.status.close()
    assert watch.changes() == [NOT_SERVING, SERVING, NOT_SERVING]


def test_a_worker_that_cannot_start_at_all_fails_the_server_with_its_exit_code(
    fleets: list[Fleet],
) -> None:
    fleet = Fleet({0: ["serve"], 1: ["die"]}, FAST)
    fleets.append(fleet)
    assert fleet.supervisor.run() == 7
    assert fleet.status.restarts() == {}
    assert len(fleet.spawned) == 2


def test_a_stop_during_a_backoff_respawns_nothing_and_exits_0(fleets: list[Fleet]) -> None:
    """Slot 1 dies again right after its first respawn and waits out a 60 s backoff; the stop
    arrives then: the other worker drains, nothing is respawned, exit 0 at once."""
    slow = RestartPolicy(max_restarts=5, backoff_s=60.0, backoff_max_s=60.0)
    fleet = Fleet({0: ["serve"], 1: ["serve", "die"]}, slow)
    fleets.append(fleet)
    fleet.on_started = lambda: _kill(fleet.first(1))
    fleet.on_ended = lambda pid: fleet.supervisor.stop() if len(fleet.ended) == 2 else None
    began = time.monotonic()
    assert fleet.supervisor.run() == 0
    assert time.monotonic() - began < 30
    assert [i for i, _ in fleet.spawned] == [0, 1, 1]
    assert fleet.first(0).exitcode == 0


def test_a_worker_that_never_serves_is_killed_and_replaced(fleets: list[Fleet]) -> None:
    policy = RestartPolicy(max_restarts=5, backoff_s=0.05, start_timeout_s=0.5)
    fleet = Fleet({0: ["serve", "hang", "serve"]}, policy)
    fleets.append(fleet)
    port = fleet.status.health_port
    assert port is not None
    fleet.on_started = lambda: _kill(fleet.first(0))

    def stop_once_serving_again() -> None:
        try:
            wait_until(lambda: len(fleet.spawned) == 3 and health_status(port) == SERVING)
        finally:
            fleet.supervisor.stop()  # the assertions below tell what was reached

    stopper = threading.Thread(target=stop_once_serving_again)
    stopper.start()
    assert fleet.supervisor.run() == 0
    stopper.join()
    assert fleet.status.restarts() == {"SIGKILL": 1, "start_timeout": 1}
