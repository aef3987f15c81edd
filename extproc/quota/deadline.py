"""Quota-store deadlines that tell an unreachable store from a starved event loop.

A call to Redis has a deadline (`--store-timeout`, 250 ms). Measured on a 2-core machine
with a busy neighbour (and the same happens under CFS throttling in a pod): the process
got no CPU for a few hundred milliseconds, Redis had long answered, the answer sat in the
socket, and the timeout fired anyway. asyncio runs the expired timer in the same loop
iteration that finds the answer readable, before the waiting task resumes, so the call was
cancelled with its answer in hand, the breaker opened, and fail-closed namespaces got 503
"quota store is unreachable" from a healthy store.

The rule: a call's deadline counts only the time the event loop was able to run. A monitor
task (`LoopLag`) ticks every `tick_s` and records how late each tick woke; when a deadline
comes due, the time the loop was starved since the call began is subtracted, and if the
call has not yet had `timeout_s` of running time the deadline moves out by the difference.
So a slow local process never counts as a store failure. Two bounds keep the delay finite:
- `timeout_s` of running time: the store is unreachable (`StoreTimeout`): the breaker opens
  and each policy's fail mode applies, as before;
- `wall_cap_s` (`STARVED_WALL_FACTOR` x `timeout_s`, 2 s by default) of wall time, the loop
  starved most of it: `LoopStarved`. The fail mode applies to that one call (a fail-closed
  policy refuses it as overloaded, not as an unreachable store) and the breaker stays shut.
Without a running monitor nothing counts as starved: the deadline is a plain timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType

from extproc.errors import QuotaStoreError

# How often the monitor wakes (cost: ~50 wake-ups a second, ~0.1 % of a core), and how late
# a wake-up may be before it counts as starvation (timer and scheduler jitter).
TICK_S = 0.02
JITTER_S = 0.005
# A call starved for this many timeouts of wall time gives up (bounded delay per request).
STARVED_WALL_FACTOR = 8
_HISTORY = 512  # starved ticks remembered: far more than one wall cap's worth


class StoreTimeout(QuotaStoreError):
    """The store did not answer within the call's running time: it is slow or unreachable."""


class LoopStarved(QuotaStoreError):
    """No answer within the wall cap, but the event loop was starved for most of it: this
    process is overloaded; the store is not known to have failed."""


class LoopLag:
    """Measures how long the event loop could not run, from a task that should wake every
    `tick_s`. `clock` is the loop's clock (`loop.time`, monotonic) unless a test injects one."""

    def __init__(
        self, *, tick_s: float = TICK_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._tick_s = tick_s
        self._clock = clock
        self._last = 0.0
        self._starved: deque[tuple[float, float]] = deque(maxlen=_HISTORY)  # (woke, late by)
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def ensure_running(self) -> None:
        """Start the monitor on the running loop (a no-op once it runs)."""
        if self.running:
            return
        self._last = self._clock()
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="loop-lag")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            self.observe(self._clock())

    def observe(self, now: float) -> None:
        """One tick of the monitor, woken at `now`."""
        late = now - self._last - self._tick_s
        if late > JITTER_S:
            self._starved.append((now, late))
        self._last = now

    def starved(self, since: float, now: float) -> float:
        """Seconds of [since, now] the loop could not run: the late ticks recorded since, plus
        the gap still open (the caller may itself be the first to run after a stall). None
        while the monitor does not run: its last tick would be stale."""
        if not self.running:
            return 0.0
        total = 0.0
        for woke, late in reversed(self._starved):
            if woke <= since:
                break
            total += min(late, woke - since)
        open_gap = now - self._last - self._tick_s
        if open_gap > JITTER_S:
            total += min(open_gap, now - since)
        return min(total, now - since)

    def deadline(self, timeout_s: float, *, wall_cap_s: float | None = None) -> Deadline:
        """`async with lag.deadline(t):` bounds the block as the module docstring says."""
        cap = STARVED_WALL_FACTOR * timeout_s if wall_cap_s is None else wall_cap_s
        return Deadline(lag=self, timeout_s=timeout_s, wall_cap_s=max(cap, timeout_s))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class Deadline:
    """The timeout of one store call, moved out by the time the loop was starved. Cancels
    the task it guards, as `asyncio.timeout` does, and raises `StoreTimeout` or
    `LoopStarved` in its place; a cancellation from elsewhere propagates untouched."""

    __slots__ = (
        "_expired",
        "_handle",
        "_lag",
        "_loop",
        "_start",
        "_task",
        "_timeout_s",
        "_wall_cap_s",
    )  # fmt: skip

    def __init__(self, *, lag: LoopLag, timeout_s: float, wall_cap_s: float) -> None:
        self._lag = lag
        self._timeout_s = timeout_s
        self._wall_cap_s = wall_cap_s
        self._expired: type[QuotaStoreError] | None = None

    async def __aenter__(self) -> Deadline:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._start = self._loop.time()
        self._handle = self._loop.call_at(self._start + self._timeout_s, self._check)
        return self

    def _check(self) -> None:
        now = self._loop.time()
        elapsed = now - self._start
        running = elapsed - self._lag.starved(self._start, now)
        if running >= self._timeout_s - 1e-6:
            self._expire(StoreTimeout)
        elif elapsed >= self._wall_cap_s - 1e-6:
            self._expire(LoopStarved)
        else:  # starved: give the call the running time it has not had, up to the cap
            later = min(now + self._timeout_s - running, self._start + self._wall_cap_s)
            self._handle = self._loop.call_at(later, self._check)

    def _expire(self, error: type[QuotaStoreError]) -> None:
        self._expired = error
        self._task.cancel()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._handle.cancel()
        if self._expired is None:
            return
        if kind is not asyncio.CancelledError:
            # The call finished anyway (asyncio.wait_for, inside redis-py, swallows a
            # cancellation whose inner task is done): keep its answer, withdraw ours.
            self._task.uncancel()
            return
        if self._task.uncancel() > 0:  # cancelled from elsewhere as well: that wins
            return
        elapsed = self._loop.time() - self._start
        raise self._expired(
            f"no answer from the quota store within {self._timeout_s:g}s "
            f"({elapsed:.2f}s elapsed, the event loop starved for "
            f"{self._lag.starved(self._start, self._loop.time()):.2f}s of it)"
        ) from exc
