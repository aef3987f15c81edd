"""The quota store interface (`QuotaStore`) and the values that cross it.

Three classes implement it with identical signatures: `backends.memory.MemoryBackend` (one
process), `backends.redis.RedisBackend` (the fleet) and `failover.FailoverStore` (Redis with
a breaker, falling back to the in-process store per each policy's fail mode) — the one the
data path holds. A store keeps counters; it does not know policies. The processor asks it
to *reserve* an estimated cost against every limit that applies to a caller (all or
nothing), to *debit* more while a stream runs, and to *settle* once at the end, replacing
what was reserved by the true cost. Settling is idempotent per request id, so a retried
settle never double-counts.

How a reservation ends (work that may have been billed is never refunded):
- its owner settles it: the true cost replaces the reservation; leases come back;
- its owner voids it (a settle of nothing: the reserve's answer never reached the sidecar,
  so the request was not forwarded): all it took comes back; a void that overtakes its
  reserve makes that reserve take nothing;
- its owner never speaks again — the sidecar process died (its liveness in the shared store
  ran out: `--instance-ttl`, see backends/redis_liveness.py) or, last resort, its lease ran
  out (`--lease-ttl`): its leases come back, and it stays charged as recorded (the estimate
  plus any stream debits). A reservation in the store counts as forwarded: the reserve is
  the last step before forwarding, and one whose answer was lost is voided by its owner.
  Only a sidecar killed between Redis running a reserve and reading its answer (or with
  its void still queued) leaves an unforwarded request charged: at most one estimate per
  request in flight at that instant. Should the owner come back after all, its late settle
  or void still applies, exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from extproc.policy.model import FailMode, Measure
from extproc.quota.windows import ScopedLimit

# Shared-store calls one worker keeps in flight (`--store-connections`): the quota store
# queues past it (a semaphore, ~2 µs a call; BlockingConnectionPool costs ~11 µs) and the
# Redis client's pool is sized to fit it. See `failover.py`.
DEFAULT_MAX_IN_FLIGHT = 32


@dataclass(frozen=True, slots=True)
class Cost:
    requests: int = 0
    tokens: int = 0
    usd_micros: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.requests + other.requests,
            self.tokens + other.tokens,
            self.usd_micros + other.usd_micros,
        )

    def amount(self, measure: Measure) -> int:
        if measure is Measure.REQUESTS:
            return self.requests
        if measure is Measure.TOKENS:
            return self.tokens
        if measure is Measure.USD:
            return self.usd_micros
        return 0


@dataclass(frozen=True, slots=True)
class LimitState:
    """A limit's counter right after a decision; feeds the `x-ratelimit-*` headers."""

    scoped: ScopedLimit
    used: int
    reset_after: float  # seconds until the window ends; 0 for concurrency limits

    @property
    def remaining(self) -> int:
        return max(0, self.scoped.limit.amount - self.used)


@dataclass(frozen=True, slots=True)
class Refusal:
    scoped: ScopedLimit
    needed: int
    used: int
    retry_after: float

    @property
    def never_fits(self) -> bool:
        """The request alone is larger than the limit: waiting will not help."""
        return self.needed > self.scoped.limit.amount


@dataclass(frozen=True, slots=True)
class Reservation:
    """What was taken, so that settle can put back exactly the difference."""

    request_id: str
    limits: tuple[ScopedLimit, ...]
    windows: tuple[int, ...]  # the window each limit counted it in (0: no windows)
    cost: Cost
    origin: str = ""  # which store holds it, when there are two (see failover.py)


@dataclass(frozen=True, slots=True)
class Ticket:
    """A request's place in a shared capacity's queue (see `queue.py`)."""

    member: str  # "<class>/<request id>": `ctl queue` reads the class back
    score: float  # its deadline (unix seconds): arrival + its class's longest wait
    hold_s: float  # how long the place is kept without another call from its holder


@dataclass(frozen=True, slots=True)
class Decision:
    reservation: Reservation | None
    refusal: Refusal | None
    states: tuple[LimitState, ...]
    # With a ticket: the tickets ahead of it when decided (-1: no queue was consulted), and
    # whether it was refused only because they go first (the limits had room for it alone).
    ahead: int = -1
    queued: bool = False

    @property
    def allowed(self) -> bool:
        return self.reservation is not None


class QuotaStore(Protocol):
    """Counters for limits. `fail_mode` is what the caller's policy wants when the store
    cannot decide (see `failover`); a backend on its own has no other store to fall back to
    and either decides or raises `QuotaStoreError`, so only `FailoverStore` reads it.
    Backends subclass this Protocol to inherit `release` and have their signatures checked."""

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
        """Atomically check every limit and, only if all allow it, take `cost` from each.
        With a `ticket` (a shared capacity's queue, `queue.py`), only if the limits also
        have room for every ticket ahead of it; refused, the ticket takes or keeps its
        place; allowed, it leaves the queue. `keep` False: take without keeping a record
        (nothing is settled later; windowed limits only: a lease needs its record)."""
        ...

    async def leave(self, limits: Sequence[ScopedLimit], member: str) -> None:
        """Take a ticket out of the queue of `limits`' capacity (its request gave up)."""
        ...

    async def queue(self, limits: Sequence[ScopedLimit]) -> tuple[tuple[str, float], ...]:
        """The tickets waiting for `limits`' capacity, first first: (member, score)."""
        ...

    async def debit(
        self, reservation: Reservation, extra: Cost, fail_mode: FailMode = FailMode.CLOSED
    ) -> Decision:
        """Take `extra` more from every windowed limit of a running request (a stream that
        outgrew its reservation), all or nothing. Allowed: the returned reservation holds
        the grown cost and its lease is renewed. Concurrency leases are not taken again."""
        ...

    async def settle(self, reservation: Reservation, actual: Cost) -> None:
        """Replace the reserved cost by `actual` and return concurrency leases. Idempotent."""
        ...

    async def release(self, reservation: Reservation) -> None:
        """Give everything back but the request itself (the upstream refused or failed)."""
        await self.settle(reservation, Cost(requests=reservation.cost.requests))

    async def peek(self, limits: Sequence[ScopedLimit]) -> tuple[LimitState, ...]:
        """The limits' counters now, changing nothing (the control API's usage view)."""
        ...

    async def reset(self, limits: Sequence[ScopedLimit]) -> int:
        """Forget the counters of `limits` (concurrency leases of requests in flight stay);
        returns how many were reset."""
        ...

    async def aclose(self) -> None: ...
