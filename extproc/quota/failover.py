"""The quota store the processor talks to: Redis when there is one, with a circuit breaker
and each policy's fail mode when it is away; the in-process store otherwise.

Fail modes (per policy, `spec.failMode`):
- `closed`: while the shared store is unreachable the request is refused with a
  provider-format 503 naming the cause;
- `open`: a local in-process limiter keeps enforcing the same limits, per sidecar.

Bounded delay: Redis calls time out after `redis.DEFAULT_TIMEOUT_S` (250 ms) of time the
event loop could run (`deadline.py`): a call that is late only because this process got no
CPU (a busy node, CFS throttling) is not a store failure. Past its wall cap (2 s) such a call
raises `LoopStarved`: that one request gets its fail mode (fail-closed: a 503 saying the
gateway is overloaded), and the breaker stays shut. The first store failure opens the
breaker; from then on requests skip Redis entirely except one probe per
`probe_interval_s` (1 s), whose success closes the breaker again — Redis coming back is
noticed without a restart, and an outage costs at most one timeout per probe interval
instead of one per request (no retry storm). Every transition is logged and counted.

Calls to the shared store wait for one of `max_in_flight` slots. redis-py fails a call
outright once its pool is used up (100 connections by default): a burst of 1,000 streams on
one worker reached that, and the errors opened the breaker for every caller (`make bench`).
A slot wait has no timeout of its own: each call in flight ends within the store timeout,
and once the breaker is open the waiters fall straight to their fail mode, so the bounded
delay holds while a healthy store serves a burst in full.

Settlements never get lost: one that cannot reach Redis, or whose caller was cancelled
mid-call, is queued and replayed once the store answers again (settling is idempotent per
request id, so a replay never counts twice). A reserve whose answer never came is voided
the same way, since Redis may have run it (see `_void`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace

from extproc.errors import QuotaStoreError, Unavailable
from extproc.policy.model import FailMode
from extproc.quota.backends.memory import MemoryBackend
from extproc.quota.deadline import LoopStarved
from extproc.quota.store import (
    DEFAULT_MAX_IN_FLIGHT,
    Cost,
    Decision,
    LimitState,
    QuotaStore,
    Reservation,
    Ticket,
)
from extproc.quota.windows import ScopedLimit
from extproc.telemetry.events import Event, EventBus
from extproc.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

LOCAL = "local"
SHARED = "shared"
MAX_QUEUED_SETTLEMENTS = 100_000
# What a fail-closed caller is told when no decision came: the store's fault, or this
# process's (its event loop starved past the wall cap, see deadline.py).
UNREACHABLE = (
    "The quota store is unreachable and this namespace's policy fails closed; "
    "the request was not forwarded. Retry shortly."
)
OVERLOADED = (
    "The gateway is overloaded and could not reach a quota decision in time; "
    "the request was not forwarded. Retry shortly."
)


class FailoverStore(QuotaStore):
    def __init__(
        self,
        *,
        local: MemoryBackend,
        shared: QuotaStore | None,
        metrics: Metrics,
        probe_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        events: EventBus | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        """`max_in_flight` must not exceed the connections the shared client may open."""
        self._local = local
        self._slots = asyncio.Semaphore(max_in_flight)
        self._events = events
        self._shared = shared
        self._metrics = metrics
        self._probe_interval_s = probe_interval_s
        self._clock = clock
        self._up = True
        self._next_probe = 0.0
        self._queued: deque[tuple[Reservation, Cost]] = deque(maxlen=MAX_QUEUED_SETTLEMENTS)
        self._replaying: asyncio.Task[None] | None = None
        metrics.store_up.set(1)

    @property
    def up(self) -> bool:
        return self._up

    def _try_shared(self) -> bool:
        """Whether this call may use the shared store (always when up; one probe per
        interval when down)."""
        if self._shared is None:
            return False
        if self._up:
            return True
        now = self._clock()
        if now < self._next_probe:
            return False
        self._next_probe = now + self._probe_interval_s
        return True

    def _mark(self, up: bool, cause: str = "") -> None:
        if up == self._up:
            return
        self._up = up
        self._metrics.store_up.set(1 if up else 0)
        self._metrics.store_transitions.labels("up" if up else "down").inc()
        if up:
            message = "quota store reachable again; back to shared enforcement"
            log.warning(message)
            self._start_replay()
        else:
            self._next_probe = self._clock() + self._probe_interval_s
            message = f"quota store unreachable ({cause}); applying each policy's fail mode"
            log.error(message)
        if self._events is not None:
            self._events.publish(Event("store_up" if up else "store_down", message))

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
        if self._shared is None:
            return await self._local.reserve(request_id, limits, cost, ticket=ticket, keep=keep)
        refusal = UNREACHABLE
        async with self._slots:
            if self._try_shared():
                try:
                    decision = await self._shared.reserve(
                        request_id, limits, cost, ticket=ticket, keep=keep
                    )
                except LoopStarved as exc:
                    self._starved(exc)
                    refusal = OVERLOADED
                    self._void(request_id, limits)
                except QuotaStoreError as exc:
                    self._mark(False, str(exc))
                    self._void(request_id, limits)
                except asyncio.CancelledError:  # the client left; the stream was cancelled
                    self._void(request_id, limits)
                    raise
                else:
                    self._mark(True)
                    return _tagged(decision, SHARED)
        decision = await self._fallback(
            request_id, limits, cost, fail_mode, refusal=refusal, ticket=ticket, keep=keep
        )
        return _tagged(decision, LOCAL)

    def _starved(self, exc: LoopStarved) -> None:
        """This process, not the store, was too slow: logged, the breaker left alone."""
        log.warning("quota store call given up, the event loop was starved: %s", exc)
        if self._events is not None:
            self._events.publish(Event("loop_starved", str(exc)))

    def _void(self, request_id: str, limits: Sequence[ScopedLimit]) -> None:
        """A reserve whose answer never came may still have been run by Redis (it timed out,
        or the caller was cancelled, after the command left). Left alone, it would hold its
        concurrency lease and tokens until the lease expires (10 minutes by default): one Redis
        stall of a few seconds locked every `concurrent: 1` caller out for that long. So a
        settle of nothing goes into the settlement queue: it gives back all that reserve took,
        or finds no record and does nothing. It goes out after the reserve did (while the
        store is down, only once it answers again); should it still reach Redis first, on
        another connection, it finds no record and the lease expires as before."""
        void = Reservation(request_id, tuple(limits), (), Cost(), origin=SHARED)
        self._queue(void, Cost())

    async def _fallback(
        self,
        request_id: str,
        limits: Sequence[ScopedLimit],
        cost: Cost,
        fail_mode: FailMode,
        *,
        refusal: str = UNREACHABLE,
        ticket: Ticket | None = None,
        keep: bool = True,
    ) -> Decision:
        """`refusal`: what a fail-closed caller is told. A ticket queues in this sidecar's
        own queue meanwhile (the fleet-wide order is the shared store's)."""
        self._metrics.fail_mode_decisions.labels(fail_mode.value).inc()
        if fail_mode is FailMode.CLOSED:
            raise Unavailable(refusal)
        return await self._local.reserve(request_id, limits, cost, ticket=ticket, keep=keep)

    async def debit(
        self, reservation: Reservation, extra: Cost, fail_mode: FailMode = FailMode.CLOSED
    ) -> Decision:
        if reservation.origin != SHARED or self._shared is None:
            return await self._local.debit(reservation, extra)
        refusal = "The quota store became unreachable mid-stream."
        async with self._slots:
            if self._try_shared():
                try:
                    return _tagged(await self._shared.debit(reservation, extra), SHARED)
                except LoopStarved as exc:
                    self._starved(exc)
                    refusal = "The gateway is overloaded and could not reach a quota decision."
                except QuotaStoreError as exc:
                    self._mark(False, str(exc))
        self._metrics.fail_mode_decisions.labels(fail_mode.value).inc()
        if fail_mode is FailMode.CLOSED:
            raise Unavailable(refusal)
        return await self._local.debit(reservation, extra)

    async def settle(self, reservation: Reservation, actual: Cost) -> None:
        if reservation.origin != SHARED or self._shared is None:
            await self._local.settle(reservation, actual)
            return
        async with self._slots:
            if self._try_shared():
                try:
                    await self._shared.settle(reservation, actual)
                except LoopStarved as exc:
                    self._starved(exc)
                except QuotaStoreError as exc:
                    self._mark(False, str(exc))
                except asyncio.CancelledError:  # it may not have landed: settle it again
                    self._queue(reservation, actual)
                    raise
                else:
                    self._mark(True)
                    return
        self._queue(reservation, actual)

    def _queue(self, reservation: Reservation, actual: Cost) -> None:
        """Settle later, in order; while the store is up, as soon as the replay task runs.
        Safe to call from a cancelled task: it never waits."""
        self._queued.append((reservation, actual))
        self._metrics.settlements_queued.set(len(self._queued))
        if self._up:
            self._start_replay()

    @property
    def shared(self) -> bool:
        return self._shared is not None

    async def leave(self, limits: Sequence[ScopedLimit], member: str) -> None:
        """Out of both queues (it may have queued locally while the shared store was away);
        a shared store that cannot be told lets the ticket's hold run out instead."""
        await self._local.leave(limits, member)
        if self._shared is not None and self._up:
            try:
                await self._shared.leave(limits, member)
            except QuotaStoreError as exc:
                log.warning("queue ticket left to expire: %s", exc)

    async def queue(self, limits: Sequence[ScopedLimit]) -> tuple[tuple[str, float], ...]:
        """The shared queue, else (or while it is away) this sidecar's own."""
        if self._shared is not None and self._up:
            try:
                return await self._shared.queue(limits)
            except QuotaStoreError as exc:
                self._mark(False, str(exc))
        return await self._local.queue(limits)

    async def peek(self, limits: Sequence[ScopedLimit]) -> tuple[LimitState, ...]:
        """Counters for the control API: the shared store's, else (or while it is away)
        this sidecar's local ones."""
        if self._shared is not None and self._up:
            async with self._slots:
                try:
                    return await self._shared.peek(limits)
                except LoopStarved as exc:
                    self._starved(exc)
                except QuotaStoreError as exc:
                    self._mark(False, str(exc))
        return await self._local.peek(limits)

    async def reset(self, limits: Sequence[ScopedLimit]) -> int:
        reset = await self._local.reset(limits)
        if self._shared is not None:
            reset = await self._shared.reset(limits)
        return reset

    def _start_replay(self) -> None:
        if self._queued and (self._replaying is None or self._replaying.done()):
            self._replaying = asyncio.get_running_loop().create_task(self._replay())

    async def _replay(self) -> None:
        assert self._shared is not None
        while self._queued:
            reservation, actual = self._queued[0]
            try:
                async with self._slots:
                    await self._shared.settle(reservation, actual)
            except LoopStarved as exc:  # not the store's fault: try it again
                self._starved(exc)
                continue
            except QuotaStoreError as exc:
                self._mark(False, str(exc))
                return
            self._queued.popleft()
            self._metrics.settlements_queued.set(len(self._queued))

    async def aclose(self) -> None:
        if self._up and self._queued:
            await self._replay()
        if self._shared is not None:
            await self._shared.aclose()
        await self._local.aclose()


def _tagged(decision: Decision, origin: str) -> Decision:
    if decision.reservation is None:
        return decision
    return replace(decision, reservation=replace(decision.reservation, origin=origin))
