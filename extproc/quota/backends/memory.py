"""In-process quota store: the embedded default for one worker on one node, and the local
limiter a sidecar falls back to when Redis is away and its policy fails open.

Same semantics as the Redis backend (the shared backend suite holds both to it). Everything
runs on the event loop thread with no await between check and take, so a reserve is atomic
without a lock.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from extproc.policy.model import Algorithm, FailMode, Limit
from extproc.quota.limiter import decide, need_of, states
from extproc.quota.meters import Bucket, Calendar, Leases, Meter, new_meter
from extproc.quota.queue import TicketQueue, queue_keys, room
from extproc.quota.store import (
    Cost,
    Decision,
    LimitState,
    QuotaStore,
    Refusal,
    Reservation,
    Ticket,
)
from extproc.quota.windows import ScopedLimit

# A reservation nobody settles (a sidecar that crashed, a lost stream) ends after this long:
# its concurrency lease comes back, its cost stays charged as recorded (the estimate plus
# stream debits: the provider may have billed it). A stream's debits renew it; a settle that
# arrives later still replaces that by the true cost. (In a fleet, a dead sidecar's
# reservations end sooner, when its liveness runs out: see backends/redis_liveness.py.)
DEFAULT_LEASE_TTL_S = 600.0
EXPIRE_BATCH = 50
MAX_EXPIRED_REMEMBERED = 100_000


def _same_shape(meter: Meter, limit: Limit) -> bool:
    if isinstance(meter, Leases):
        return limit.algorithm is Algorithm.LEASE
    if isinstance(meter, Calendar):
        return limit.algorithm is Algorithm.CALENDAR and (
            meter.limit.period_s, meter.limit.months) == (limit.period_s, limit.months)  # fmt: skip
    kind = Algorithm.BUCKET if isinstance(meter, Bucket) else Algorithm.SLIDING
    return limit.algorithm is kind and meter.period_s == limit.period_s


class MemoryBackend(QuotaStore):
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
    ) -> None:
        self._clock = clock
        self._lease_ttl_s = lease_ttl_s
        self._meters: dict[str, Meter] = {}  # limit key -> its meter
        self._open: dict[str, tuple[Reservation, float]] = {}  # id -> (it, lease deadline)
        self._deadlines: list[tuple[float, str]] = []
        self._expired: dict[str, Reservation] = {}  # ended, awaiting a late settle
        self._unheld: dict[str, None] = {}  # settled without a reservation (see settle)
        self._queues: dict[str, TicketQueue] = {}  # a capacity's queue key -> its tickets

    def _meter(self, scoped: ScopedLimit) -> Meter:
        """The limit's meter, following the limit as it is now: a reload or an extra-quota
        override changes its amount (the count is kept), a changed algorithm or period
        starts a new meter — as the Redis script, which is told the amount every call."""
        limit = scoped.limit
        meter = self._meters.get(scoped.base_key)
        if meter is None or not _same_shape(meter, limit):
            meter = self._meters[scoped.base_key] = new_meter(limit, scoped.time_zone)
        elif meter.capacity != limit.amount:
            meter.capacity = limit.amount
            if isinstance(meter, Calendar):
                meter.limit = limit
        return meter

    async def reserve(
        self,
        request_id: str,
        limits: Sequence[ScopedLimit],
        cost: Cost,
        fail_mode: FailMode = FailMode.CLOSED,
        *,
        ticket: Ticket | None = None,
        keep: bool = True,
    ) -> Decision:
        now = self._clock()
        self._expire(now)
        meters = [self._meter(s) for s in limits]
        if request_id in self._unheld:  # settled (voided) before it ran: takes nothing
            held = Reservation(request_id, tuple(limits), tuple(0 for _ in limits), cost)
            return Decision(held, None, states(limits, meters, now))
        needs = [need_of(s, cost) for s in limits]
        refusal = decide(limits, meters, needs, now)
        ahead = -1
        if ticket is not None:
            queue = self._queue_of(limits)
            queue.prune(now)
            ahead, counted = queue.ahead(ticket), states(limits, meters, now)
            if refusal is not None or ahead >= room(counted, needs):
                queue.place(ticket, now)
                if refusal is not None:
                    return Decision(None, refusal, counted, ahead=ahead)
                behind = Refusal(limits[0], needs[0], counted[0].used, 0.0)
                return Decision(None, behind, counted, ahead=ahead, queued=True)
            queue.remove(ticket.member)
        if refusal is not None:
            return Decision(None, refusal, states(limits, meters, now))
        deadline = now + self._lease_ttl_s
        windows = []
        for meter, need in zip(meters, needs, strict=True):
            if isinstance(meter, Leases):
                assert keep, "a lease without its record would never be returned"
                meter.lease(request_id, deadline)
                windows.append(0)
            else:  # the window is recorded even for a zero need: a debit may fill it later
                windows.append(meter.take(need, now))
        reservation = Reservation(request_id, tuple(limits), tuple(windows), cost)
        if keep:
            self._hold(reservation, deadline)
        return Decision(reservation, None, states(limits, meters, now), ahead=ahead)

    async def debit(
        self, reservation: Reservation, extra: Cost, fail_mode: FailMode = FailMode.CLOSED
    ) -> Decision:
        now = self._clock()
        self._expire(now)
        limits = reservation.limits
        meters = [self._meter(s) for s in limits]
        needs = [
            0 if isinstance(m, Leases) else need_of(s, extra)
            for s, m in zip(limits, meters, strict=True)
        ]
        refusal = decide(limits, meters, needs, now)
        if refusal is not None:
            return Decision(None, refusal, states(limits, meters, now))
        for meter, need in zip(meters, needs, strict=True):
            if need and not isinstance(meter, Leases):
                meter.take(need, now)
        grown = replace(reservation, cost=reservation.cost + extra)
        expired = self._expired.get(reservation.request_id)
        if expired is not None:  # it still learns it, so that its late settle stays exact
            self._expired[reservation.request_id] = replace(expired, cost=expired.cost + extra)
        if reservation.request_id in self._open:
            deadline = now + self._lease_ttl_s
            self._hold(grown, deadline)
            for scoped in reservation.limits:
                meter = self._meter(scoped)
                if isinstance(meter, Leases):
                    meter.lease(reservation.request_id, deadline)
        return Decision(grown, None, states(limits, meters, now))

    def _hold(self, reservation: Reservation, deadline: float) -> None:
        self._open[reservation.request_id] = (reservation, deadline)
        heapq.heappush(self._deadlines, (deadline, reservation.request_id))

    async def settle(self, reservation: Reservation, actual: Cost) -> None:
        now = self._clock()
        self._expire(now)  # a settle after the lease expired must not count twice
        held = self._open.pop(reservation.request_id, None)
        if held is not None:
            self._correct(held[0], actual, now)
            return
        expired = self._expired.pop(reservation.request_id, None)
        if expired is not None:  # a late settle: the true cost replaces what was recorded
            self._correct(expired, actual, now)
            return
        # Settled already (settling twice must not count twice), or the void of a reserve
        # whose answer never came and which has not run: remembered, so that it takes
        # nothing if it still comes (as the Redis script's tombstone).
        self._remember(self._unheld, reservation.request_id, None)

    def _correct(self, reservation: Reservation, actual: Cost, now: float) -> None:
        for scoped, window in zip(reservation.limits, reservation.windows, strict=True):
            meter = self._meter(scoped)
            if isinstance(meter, Leases):
                meter.release(reservation.request_id)
                continue
            delta = need_of(scoped, actual) - need_of(scoped, reservation.cost)
            if delta:
                meter.give(window, delta, now)

    def _expire(self, now: float) -> None:
        """End expired reservations, at most `EXPIRE_BATCH` per call (as the Redis script
        does, so that a burst of expiries never stalls one decision): leases released, the
        cost kept as recorded (work that may have been billed is never refunded)."""
        ended = 0
        while self._deadlines and self._deadlines[0][0] <= now and ended < EXPIRE_BATCH:
            deadline, request_id = heapq.heappop(self._deadlines)
            held = self._open.get(request_id)
            if held is not None and held[1] == deadline:  # not renewed since
                ended += 1
                del self._open[request_id]
                self._correct(held[0], held[0].cost, now)  # no delta: the leases only
                self._remember_expired(held[0])

    def _remember_expired(self, reservation: Reservation) -> None:
        """Kept (bounded) so that a settle arriving after the lease ran out still replaces
        the recorded cost by the true one (a void: by nothing), as the Redis script keeps
        the marked record."""
        self._remember(self._expired, reservation.request_id, reservation)

    @staticmethod
    def _remember(memory: dict[str, Any], request_id: str, value: Any) -> None:
        memory[request_id] = value
        while len(memory) > MAX_EXPIRED_REMEMBERED:
            memory.pop(next(iter(memory)))

    def _queue_of(self, limits: Sequence[ScopedLimit]) -> TicketQueue:
        key = queue_keys(limits[0].scope)[0]
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = TicketQueue()
        return queue

    async def leave(self, limits: Sequence[ScopedLimit], member: str) -> None:
        if limits:
            self._queue_of(limits).remove(member)

    async def queue(self, limits: Sequence[ScopedLimit]) -> tuple[tuple[str, float], ...]:
        if not limits:
            return ()
        queue = self._queue_of(limits)
        queue.prune(self._clock())
        return queue.members()

    async def peek(self, limits: Sequence[ScopedLimit]) -> tuple[LimitState, ...]:
        now = self._clock()
        return states(limits, [self._meter(s) for s in limits], now)

    async def reset(self, limits: Sequence[ScopedLimit]) -> int:
        reset = 0
        for scoped in limits:
            if scoped.limit.period_s is not None and scoped.base_key in self._meters:
                del self._meters[scoped.base_key]
                reset += 1
        return reset

    def open_reservations(self) -> int:
        return len(self._open)

    async def aclose(self) -> None:
        self._open.clear()
