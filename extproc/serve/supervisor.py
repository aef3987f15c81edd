"""Supervision of the worker processes: a worker that dies is respawned in its slot while the
others keep serving; a slot that keeps dying is a crash loop, and then the pod must restart.

Why this shape:
- A death is seen at once (each process's sentinel is in the wait set, with the parent's own
  signals through a wake-up fd): the first respawn starts immediately, so the new worker
  serves within ~1 s of the death (it binds the same port with SO_REUSEPORT; the parent holds
  the port meanwhile so nothing else can take it).
- Backoff and the crash-loop limit are per slot, over a sliding window: a one-off crash
  (OOM kill, a native-library fault) costs one immediate respawn, a worker that cannot start
  (a configuration that only fails in a worker) is retried with doubling delays, and after
  `max_restarts` within `window_s` the parent gives up: health answers NOT_SERVING, the other
  workers drain, and the parent exits with CRASH_LOOP_EXIT so the kubelet restarts the pod.
- Before the fleet first serves, a death is not retried: a worker that cannot start at all
  fails `tokengate serve` straight away with the worker's exit code (2 for a configuration
  error), as one process would.
- SIGTERM/SIGINT: no respawn from then on (a slot in backoff stays empty), every worker
  drains, exit 0 if every worker that served exited cleanly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import connection
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from extproc.serve.fleet_status import FleetStatus

log = logging.getLogger(__name__)

CRASH_LOOP_EXIT = 3
# Workers are SIGKILLed when they have not drained this long after the grace period.
_DRAIN_SLACK_S = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartPolicy:
    max_restarts: int = 5
    window_s: float = 60.0
    backoff_s: float = 0.5
    backoff_max_s: float = 10.0
    # A respawned worker that does not serve by then is killed (and counted as a restart).
    start_timeout_s: float = 120.0

    @classmethod
    def from_settings(cls, settings: object) -> RestartPolicy:
        """`--max-restarts` / `--restart-window` when the settings carry them, else the
        defaults (5 within 60 s)."""
        default = cls()
        return cls(
            max_restarts=int(getattr(settings, "max_restarts", default.max_restarts)),
            window_s=float(getattr(settings, "restart_window_s", default.window_s)),
        )

    def delay(self, recent: int) -> float:
        """Seconds to wait before a respawn, given the restarts of this slot still inside the
        window: none for the first (a one-off crash is replaced at once), then doubling."""
        if recent <= 0:
            return 0.0
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** (recent - 1)))


def reason_of(exitcode: int | None, *, timed_out: bool) -> str:
    """The restart counter's label: how the previous worker ended (bounded: ~30 signals, 256
    exit codes)."""
    if timed_out:
        return "start_timeout"
    if exitcode is not None and exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal_{-exitcode}"
    return f"exit_{exitcode}"


# Starts worker `index`: its process and the parent's end of its ready pipe.
Spawn = Callable[[int], tuple[BaseProcess, Connection]]


@dataclass(slots=True, kw_only=True)
class _Slot:
    index: int
    process: BaseProcess | None = None
    ready: Connection | None = None
    serving: bool = False
    started_at: float = 0.0
    timed_out: bool = False
    # While in backoff: when to respawn, and why the last worker ended.
    due: float | None = None
    reason: str = ""
    ended_at: float | None = None
    restarts: deque[float] = field(default_factory=deque)


class Supervisor:
    """Runs the fleet until a signal or a crash loop; `run` returns the exit code."""

    def __init__(
        self,
        *,
        workers: int,
        spawn: Spawn,
        status: FleetStatus,
        policy: RestartPolicy,
        grace_s: float,
        on_started: Callable[[], None],
        on_ended: Callable[[int], None] = lambda pid: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._slots = [_Slot(index=i) for i in range(workers)]
        self._spawn = spawn
        self._status = status
        self._policy = policy
        self._grace_s = grace_s
        self._on_started = on_started
        self._on_ended = on_ended
        self._clock = clock
        self._started = False
        self._stopping = False
        self._verdict: int | None = None
        # Ends the loop's wait: the interpreter writes signal numbers here, stop() a byte.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)

    def run(self) -> int:
        """Must run on the main thread (it takes SIGTERM and SIGINT while it runs)."""
        stops = (signal.SIGTERM, signal.SIGINT)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in stops}
        old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        try:
            for slot in self._slots:
                self._start(slot)
            self._loop(self._wake_r)
            return self._drain()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._wake_r.close()
            self._wake_w.close()

    def stop(self) -> None:
        """What SIGTERM does, from any thread: no respawn from now on, every worker drains."""
        self._stopping = True
        with contextlib.suppress(OSError):  # closed: run() has returned already
            self._wake_w.send(b"\0")

    def _on_signal(self, _signum: int, _frame: object) -> None:
        self._stopping = True  # the loop sees it at once: the wake-up fd ends its wait

    def _loop(self, wake: socket.socket) -> None:
        while not self._stopping and self._verdict is None:
            now = self._clock()
            for slot in self._slots:
                if slot.due is not None and slot.due <= now:
                    self._respawn(slot, now)
                elif self._start_overdue(slot, now):
                    self._kill_slow_starter(slot)
            events: dict[Any, Callable[[], None]] = {wake: lambda: _drain_socket(wake)}
            deadlines: list[float] = []
            for slot in self._slots:
                proc = slot.process
                if proc is not None:
                    events[proc.sentinel] = _bind(self._ended, slot, proc)
                    if not slot.serving and slot.ready is not None:
                        events[slot.ready] = _bind(self._ready, slot, proc)
                    if not slot.serving and not slot.timed_out:
                        deadlines.append(slot.started_at + self._policy.start_timeout_s)
                elif slot.due is not None:
                    deadlines.append(slot.due)
            timeout = max(0.0, min(deadlines) - self._clock()) if deadlines else None
            for ready in connection.wait(list(events), timeout):
                events[ready]()

    def _start(self, slot: _Slot) -> None:
        slot.process, slot.ready = self._spawn(slot.index)
        slot.started_at = self._clock()
        slot.serving = slot.timed_out = False
        slot.due = None

    def _respawn(self, slot: _Slot, now: float) -> None:
        slot.restarts.append(now)
        self._status.restarted(slot.reason)
        self._start(slot)
        log.info("worker %d: respawned as pid %s", slot.index, slot.process and slot.process.pid)

    def _ready(self, slot: _Slot, proc: BaseProcess) -> None:
        if slot.process is not proc or slot.ready is None:
            return
        try:
            slot.ready.recv()
        except (EOFError, OSError):  # it died before serving; its sentinel will say so
            slot.ready.close()
            slot.ready = None
            return
        slot.serving = True
        if slot.ended_at is not None:
            log.info(
                "worker %d (pid %s) serving, %.2f s after the previous one ended",
                slot.index, proc.pid, self._clock() - slot.ended_at,
            )  # fmt: skip
            slot.ended_at = None
        self._count_serving()
        if not self._started and all(s.serving for s in self._slots):
            self._started = True
            self._status.started()
            self._on_started()

    def _ended(self, slot: _Slot, proc: BaseProcess) -> None:
        if slot.process is not proc:
            return
        proc.join()
        now = self._clock()
        reason = reason_of(proc.exitcode, timed_out=slot.timed_out)
        was_serving = slot.serving
        slot.process, slot.serving, slot.ended_at = None, False, now
        if slot.ready is not None:
            slot.ready.close()
            slot.ready = None
        if proc.pid is not None:
            self._on_ended(proc.pid)
        self._count_serving()
        if not self._started:
            log.error("worker %d (pid %s) ended (%s) before serving", slot.index, proc.pid, reason)
            code = proc.exitcode
            self._verdict = code if code is not None and code > 0 else 1
            return
        window_start = now - self._policy.window_s
        while slot.restarts and slot.restarts[0] < window_start:
            slot.restarts.popleft()
        recent = len(slot.restarts)
        if recent >= self._policy.max_restarts:
            log.error(
                "worker %d (pid %s) ended (%s): %d restarts within %.0f s, a crash loop; "
                "health is NOT_SERVING, the other workers drain and the server exits %d",
                slot.index, proc.pid, reason, recent, self._policy.window_s, CRASH_LOOP_EXIT,
            )  # fmt: skip
            self._verdict = CRASH_LOOP_EXIT
            return
        delay = self._policy.delay(recent)
        slot.due, slot.reason = now + delay, reason
        log.warning(
            "worker %d (pid %s) ended (%s)%s; respawning in %.1f s (restart %d of %d within "
            "%.0f s)",
            slot.index, proc.pid, reason, "" if was_serving else " before serving", delay,
            recent + 1, self._policy.max_restarts, self._policy.window_s,
        )  # fmt: skip

    def _start_overdue(self, slot: _Slot, now: float) -> bool:
        return (
            slot.process is not None
            and not slot.serving
            and not slot.timed_out
            and now - slot.started_at > self._policy.start_timeout_s
        )

    def _kill_slow_starter(self, slot: _Slot) -> None:
        assert slot.process is not None and slot.process.pid is not None
        log.error(
            "worker %d (pid %d) not serving after %.0f s; killing it",
            slot.index, slot.process.pid, self._policy.start_timeout_s,
        )  # fmt: skip
        slot.timed_out = True
        _signal(slot.process, signal.SIGKILL)

    def _count_serving(self) -> None:
        self._status.workers_serving(sum(s.serving for s in self._slots))

    def _drain(self) -> int:
        """Every live worker drains (SIGTERM), bounded by the grace period; the exit code."""
        self._status.give_up()
        live = [s for s in self._slots if s.process is not None]
        if self._stopping:
            log.info(
                "stopping: %d workers drain for up to %.0f s; none is respawned",
                len(live), self._grace_s,
            )  # fmt: skip
        for slot in live:
            assert slot.process is not None
            _signal(slot.process, signal.SIGTERM)
        deadline = self._clock() + self._grace_s + _DRAIN_SLACK_S
        clean = True
        for slot in live:
            proc, was_serving = slot.process, slot.serving
            assert proc is not None
            proc.join(max(0.0, deadline - self._clock()))
            if proc.is_alive():
                log.error("worker %d (pid %s) did not drain; killing it", slot.index, proc.pid)
                _signal(proc, signal.SIGKILL)
                proc.join()
            if was_serving and proc.exitcode != 0:
                clean = False
            if proc.pid is not None:
                self._on_ended(proc.pid)
        if self._verdict is not None:
            return self._verdict
        return 0 if clean else 1


def _bind(
    handler: Callable[[_Slot, BaseProcess], None], slot: _Slot, proc: BaseProcess
) -> Callable[[], None]:
    return lambda: handler(slot, proc)


def _signal(proc: BaseProcess, sig: signal.Signals) -> None:
    if proc.pid is not None and proc.exitcode is None:
        with contextlib.suppress(ProcessLookupError):  # already gone; join() reaps it
            os.kill(proc.pid, sig)


def _drain_socket(wake: socket.socket) -> None:
    """Signal bytes written by the interpreter's wake-up fd; the handler has set the flag."""
    try:
        while wake.recv(512, socket.MSG_DONTWAIT):
            pass
    except BlockingIOError:
        pass
