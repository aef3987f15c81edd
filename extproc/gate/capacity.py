"""A request's turn at a shared capacity (`policy.model.Capacity`): the second gate, after
its caller's own quota. The queue itself is the quota store's (`quota/queue.py`: one
sorted set per capacity, scored by deadline); this module decides, per request, whether
to go, wait, downgrade or be refused, and how long to sleep between asks.

The first ask is the whole cost when no queue forms: one reserve with a ticket, in the
same round trip as any other script call. A request that must wait gets its Envoy
message timeout extended (by the processor) and asks again when its turn is due: after
the limits' own retry-after when it is first in line, else after the time the requests
ahead of it need at the capacity's rate, at most `MAX_SLEEP_S` (so its place's hold is
renewed and its estimate corrected). Its estimated wait is (requests ahead + 1) x the time
one request takes at the capacity's tightest rate; when that would pass its class's
maximum it is refused at once, with Retry-After set to the estimate.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from extproc.errors import RateLimited
from extproc.gate.runtime import Runtime
from extproc.policy.model import Capacity, FailMode, Priority
from extproc.quota import Reservation, ScopedLimit
from extproc.quota.store import Cost, Decision, Ticket
from extproc.quota.windows import Scope
from extproc.telemetry.events import Event

CAPACITY_SCOPE = "cap:"  # a capacity's counters: never a namespace (those have no ':')
MAX_SLEEP_S = 0.5
MIN_SLEEP_S = 0.002
HOLD_S = 3.0  # a place outlives the longest sleep several times over
CONCURRENT_TURN_S = 1.0  # a lease's expected hold when a capacity has no rate to go by


_LIMITS: dict[int, tuple[Capacity, tuple[ScopedLimit, ...]]] = {}  # id -> (it, its limits)


def capacity_limits(capacity: Capacity) -> tuple[ScopedLimit, ...]:
    """The capacity's counters (built once per snapshot's Capacity, not per request)."""
    known = _LIMITS.get(id(capacity))
    if known is not None and known[0] is capacity:
        return known[1]
    if len(_LIMITS) > 1000:  # reloads replace capacities: forget the old ones
        _LIMITS.clear()
    scope = Scope(namespace=CAPACITY_SCOPE + capacity.name)
    limits = tuple(ScopedLimit(scope, limit) for limit in capacity.limits)
    _LIMITS[id(capacity)] = (capacity, limits)
    return limits


def turn_s(capacity: Capacity, cost: Cost) -> float:
    """How long one request of `cost` takes at the capacity's tightest rate."""
    longest = 0.0
    for limit in capacity.limits:
        need = cost.amount(limit.measure)
        if limit.period_s is None:
            longest = max(longest, CONCURRENT_TURN_S / max(1, limit.amount))
        elif need > 0:
            longest = max(longest, need * limit.period_s / max(1, limit.amount))
    return longest


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the first ask said: go (`reservation`), wait, downgrade or refuse (`error`)."""

    reservation: Reservation | None = None
    wait_s: float = 0.0  # the estimated wait when it must queue
    downgrade: bool = False
    error: RateLimited | None = None


class Turn:
    """One request's place at one capacity."""

    def __init__(
        self,
        rt: Runtime,
        capacity: Capacity,
        *,
        request_id: str,
        klass: Priority,
        cost: Cost,
        fail_mode: FailMode,
        may_downgrade: bool,
    ) -> None:
        self._rt = rt
        self.capacity = capacity
        self._limits = capacity_limits(capacity)
        self._id = request_id
        self.klass = klass
        self._cost = cost
        self._fail_mode = fail_mode
        self._may_downgrade = may_downgrade
        self.arrived = time.time()
        self.max_wait_s = capacity.max_wait_s[klass]
        # A class that is never queued holds a place for no time: one refused ask leaves none.
        self._ticket = Ticket(
            member=f"{klass.value}/{request_id}", score=self.arrived + self.max_wait_s,
            hold_s=HOLD_S if self.max_wait_s > 0 else 0.001,
        )  # fmt: skip
        self._placed = False  # its ticket is in the store's queue
        # Only a concurrency limit needs its reservation back at the end; rates are taken
        # and kept (as providers count a request when it arrives): nothing to settle.
        self.keeps = any(limit.period_s is None for limit in capacity.limits)
        self._labels = (capacity.name, klass.value)

    async def first(self) -> Verdict:
        """The first ask (this worker's slice of the capacity, else the store), and the
        shedding order applied to its estimate."""
        sliced = self._rt.store.shared and not self.keeps
        now = time.monotonic()
        if sliced and self._rt.slices.take(self.capacity.name, self._cost, now):
            self._rt.metrics.queue_wait.labels(*self._labels).observe(0.0)
            return Verdict(reservation=Reservation(self._id, (), (), self._cost))
        decision = await self._ask()
        if decision.reservation is not None:
            self._rt.metrics.queue_wait.labels(*self._labels).observe(0.0)
            if sliced:
                self._rt.slices.offer(self.capacity.name, self._limits, self._cost, decision, now)
            return Verdict(reservation=decision.reservation)
        self._placed = True  # a refused ask leaves a ticket (a never-queued one leaves it)
        wait = self._estimate(decision)
        verdict = self._shed(wait)
        if verdict is None and wait > self.max_wait_s:
            verdict = Verdict(error=self._refuse(wait, "its wait would pass its class's maximum"))
        if verdict is not None:
            await self.leave()
            return verdict
        return Verdict(wait_s=wait)

    def _shed(self, wait: float) -> Verdict | None:
        """Under overload, in order: background (never queued), batch past its threshold,
        standard to its cheaper model past its threshold; interactive waits."""
        capacity, klass = self.capacity, self.klass
        if klass is Priority.BACKGROUND and self.max_wait_s == 0:
            return Verdict(error=self._refuse(wait, "background requests are never queued"))
        batch_after = capacity.refuse_batch_after_s
        if klass is Priority.BATCH and batch_after is not None and wait > batch_after:
            return Verdict(error=self._refuse(wait, "batch requests are shed past this wait"))
        downgrade_after = capacity.downgrade_standard_after_s
        if (
            klass is Priority.STANDARD
            and downgrade_after is not None
            and wait > downgrade_after
            and self._may_downgrade
        ):
            self._event("downgraded", wait)
            return Verdict(wait_s=wait, downgrade=True)
        return None

    async def wait(self) -> Reservation:
        """Ask again until admitted; raises the 429 when its turn would come too late."""
        depth = self._rt.metrics.queue_depth.labels(*self._labels)
        depth.inc()
        try:
            while True:
                decision = await self._ask()
                if decision.reservation is not None:
                    self._placed = False
                    waited = time.time() - self.arrived
                    self._rt.metrics.queue_wait.labels(*self._labels).observe(waited)
                    return decision.reservation
                wait = self._estimate(decision)
                if time.time() + wait > self._ticket.score + MAX_SLEEP_S:
                    await self.leave()
                    raise self._refuse(wait, "its wait would pass its class's maximum")
                await asyncio.sleep(self._sleep_s(decision, wait))  # its turn's due time
        finally:
            depth.dec()

    @property
    def waiting(self) -> bool:
        """It holds a place in the queue (to leave when its client goes)."""
        return self._placed

    async def leave(self) -> None:
        """Out of the queue at once (its client left, or it gave up)."""
        if self._placed:
            self._placed = False
            await self._rt.store.leave(self._limits, self._ticket.member)

    def gone(self) -> None:
        """Its client left while it waited: counted; the place is left by `leave`."""
        self._rt.metrics.shed.labels(*self._labels, "gone").inc()

    async def _ask(self) -> Decision:
        return await self._rt.store.reserve(
            f"{self._id}:cap", self._limits, self._cost, self._fail_mode,
            ticket=self._ticket, keep=self.keeps,
        )  # fmt: skip

    def _estimate(self, decision: Decision) -> float:
        ahead = max(0, decision.ahead)
        refill = decision.refusal.retry_after if decision.refusal is not None else 0.0
        return max(refill, (ahead + 1) * turn_s(self.capacity, self._cost))

    def _sleep_s(self, decision: Decision, wait: float) -> float:
        if decision.ahead <= 0 and decision.refusal is not None and not decision.queued:
            due = decision.refusal.retry_after  # first in line: when the limits have room
        else:
            due = wait / (max(0, decision.ahead) + 1)  # when the one ahead should have gone
        return min(MAX_SLEEP_S, max(MIN_SLEEP_S, due))

    def _refuse(self, wait: float, why: str) -> RateLimited:
        self._rt.metrics.shed.labels(*self._labels, "refused").inc()
        self._event("refused", wait)
        return RateLimited(
            f"Capacity '{self.capacity.name}' is busy: {why} ({self.klass.value}, estimated "
            f"wait {wait:.1f} s, maximum {self.max_wait_s:.0f} s). Please try again later.",
            limit=f"capacity/{self.capacity.name}",
            retry_after=max(1.0, wait),
        )

    def _event(self, action: str, wait: float) -> None:
        message = (
            f"capacity {self.capacity.name}: {self.klass.value} {action} (estimated wait "
            f"{wait:.1f} s)"
        )
        self._rt.events.publish(Event(kind="shed", message=message, limit=self.klass.value))
        if action == "downgraded":
            self._rt.metrics.shed.labels(*self._labels, "downgraded").inc()
