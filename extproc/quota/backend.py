"""The quota backend interface and the values that cross it.

A backend stores counters; it does not know policies. The processor asks it to *reserve* an
estimated cost against every limit that applies to a caller (all or nothing), to *debit*
more while a stream runs, and to *settle* once at the end, replacing what was reserved by the
true cost. Settling is idempotent per request id, so a retried settle never double-counts.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from extproc.policy.model import Measure
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
class Decision:
    reservation: Reservation | None
    refusal: Refusal | None
    states: tuple[LimitState, ...]

    @property
    def allowed(self) -> bool:
        return self.reservation is not None


class QuotaBackend(abc.ABC):
    """Counters for limits. Implementations: `MemoryBackend` (one process) and Redis."""

    @abc.abstractmethod
    async def reserve(self, request_id: str, limits: Sequence[ScopedLimit], cost: Cost) -> Decision:
        """Atomically check every limit and, only if all allow it, take `cost` from each."""

    @abc.abstractmethod
    async def debit(self, reservation: Reservation, extra: Cost) -> Decision:
        """Take `extra` more from every windowed limit of a running request (a stream that
        outgrew its reservation), all or nothing. Allowed: the returned reservation holds
        the grown cost and its lease is renewed. Concurrency leases are not taken again."""

    @abc.abstractmethod
    async def settle(self, reservation: Reservation, actual: Cost) -> None:
        """Replace the reserved cost by `actual` and return concurrency leases. Idempotent."""

    async def release(self, reservation: Reservation) -> None:
        """Give everything back but the request itself (the upstream refused or failed)."""
        await self.settle(reservation, Cost(requests=reservation.cost.requests))

    @abc.abstractmethod
    async def peek(self, limits: Sequence[ScopedLimit]) -> tuple[LimitState, ...]:
        """The limits' counters now, changing nothing (the control API's usage view)."""

    @abc.abstractmethod
    async def reset(self, limits: Sequence[ScopedLimit]) -> int:
        """Forget the counters of `limits` (concurrency leases of requests in flight stay);
        returns how many were reset."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...
