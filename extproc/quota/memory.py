"""In-process quota store: the embedded default for one worker on one node.

Same semantics as the Redis backend (the shared backend suite holds both to it). Everything
runs on the event loop thread with no await between check and debit, so a reserve is atomic
without a lock.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from extproc.policy.model import Measure
from extproc.quota.backend import Cost, Decision, QuotaBackend, Reservation
from extproc.quota.limiter import decide, need_of, states_after, window_of
from extproc.quota.windows import ScopedLimit

# A reservation nobody settles (a bug, a lost stream) gives its concurrency lease back after
# this long; token costs stay charged at the reserved estimate. A stream's debits renew it.
DEFAULT_LEASE_TTL_S = 600.0


class MemoryBackend(QuotaBackend):
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
    ) -> None:
        self._clock = clock
        self._lease_ttl_s = lease_ttl_s
        self._windows: dict[str, tuple[int, int]] = {}  # base key -> (window start, used)
        self._inflight: dict[str, int] = {}  # base key -> open leases
        self._open: dict[str, tuple[Reservation, float]] = {}  # id -> (it, lease deadline)
        self._deadlines: list[tuple[float, str]] = []

    def _window(self, scoped: ScopedLimit, now: float) -> int:
        """The window `now` falls in; never one older than the counter already holds, so a
        clock stepping back across a boundary cannot admit requests uncounted."""
        window = window_of(scoped, now)
        stored = self._windows.get(scoped.base_key)
        return window if stored is None else max(window, stored[0])

    def _used(self, scoped: ScopedLimit, window: int) -> int:
        if scoped.limit.measure is Measure.CONCURRENT:
            return self._inflight.get(scoped.base_key, 0)
        start, used = self._windows.get(scoped.base_key, (window, 0))
        return used if start == window else 0

    def _add(self, scoped: ScopedLimit, window: int, delta: int) -> None:
        key = scoped.base_key
        if scoped.limit.measure is Measure.CONCURRENT:
            self._inflight[key] = max(0, self._inflight.get(key, 0) + delta)
            return
        start, used = self._windows.get(key, (window, 0))
        if start == window:
            self._windows[key] = (window, max(0, used + delta))
        elif window > start:
            self._windows[key] = (window, max(0, delta))
        # else: the reservation's window is already over; nothing left to correct there.

    async def reserve(self, request_id: str, limits: Sequence[ScopedLimit], cost: Cost) -> Decision:
        now = self._clock()
        self._expire(now)
        windows = tuple(self._window(s, now) for s in limits)
        used = [self._used(s, w) for s, w in zip(limits, windows, strict=True)]
        refusal = decide(limits, used, cost, now)
        if refusal is not None:
            return Decision(None, refusal, states_after(limits, used, now))
        after = []
        for scoped, window, current in zip(limits, windows, used, strict=True):
            need = need_of(scoped, cost)
            if need:
                self._add(scoped, window, need)
            after.append(current + need)
        reservation = Reservation(request_id, tuple(limits), windows, cost)
        self._lease(reservation, now)
        return Decision(reservation, None, states_after(limits, after, now))

    async def debit(self, reservation: Reservation, extra: Cost) -> Decision:
        now = self._clock()
        self._expire(now)
        limits = [s for s in reservation.limits if s.limit.period_s is not None]
        windows = [self._window(s, now) for s in limits]
        used = [self._used(s, w) for s, w in zip(limits, windows, strict=True)]
        refusal = decide(limits, used, extra, now)
        if refusal is not None:
            return Decision(None, refusal, states_after(limits, used, now))
        after = []
        for scoped, window, current in zip(limits, windows, used, strict=True):
            need = need_of(scoped, extra)
            if need:
                self._add(scoped, window, need)
            after.append(current + need)
        grown = replace(reservation, cost=reservation.cost + extra)
        if reservation.request_id in self._open:
            self._lease(grown, now)
        return Decision(grown, None, states_after(limits, after, now))

    def _lease(self, reservation: Reservation, now: float) -> None:
        deadline = now + self._lease_ttl_s
        self._open[reservation.request_id] = (reservation, deadline)
        heapq.heappush(self._deadlines, (deadline, reservation.request_id))

    async def settle(self, reservation: Reservation, actual: Cost) -> None:
        self._expire(self._clock())  # a settle after the lease expired must not count twice
        held = self._open.pop(reservation.request_id, None)
        if held is None:
            return  # already settled (or expired): settling twice must not count twice
        self._apply_settlement(held[0], actual)

    def _apply_settlement(self, reservation: Reservation, actual: Cost) -> None:
        for scoped, window in zip(reservation.limits, reservation.windows, strict=True):
            if scoped.limit.measure is Measure.CONCURRENT:
                self._add(scoped, window, -1)
                continue
            delta = actual.amount(scoped.limit.measure) - reservation.cost.amount(
                scoped.limit.measure
            )
            if delta:
                self._add(scoped, window, delta)

    def _expire(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, request_id = heapq.heappop(self._deadlines)
            held = self._open.get(request_id)
            if held is not None and held[1] == deadline:  # not renewed since
                del self._open[request_id]
                self._apply_settlement(held[0], held[0].cost)

    def open_reservations(self) -> int:
        return len(self._open)

    async def aclose(self) -> None:
        self._open.clear()
