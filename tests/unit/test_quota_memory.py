"""What only the in-process store has: its default lease TTL and its view of open
reservations. Everything both backends share (reserve, debit, settle, release, expiry, the
algorithms) is in the shared suite, tests/integration/test_quota_*.py (helpers in
quota_semantics.py), run against both."""

from __future__ import annotations

import asyncio

from extproc.policy.model import Limit, Measure
from extproc.quota.backends.memory import DEFAULT_LEASE_TTL_S, MemoryBackend
from extproc.quota.store import Cost, Reservation
from extproc.quota.windows import Scope, ScopedLimit

T0 = 1_907_532_780.0  # 2030-06-12 22:13:00 UTC
NS = Scope("team-a")
DAILY = ScopedLimit(NS, Limit("daily", Measure.TOKENS, 1000, 86400))
INFLIGHT = ScopedLimit(NS, Limit("inflight", Measure.CONCURRENT, 5, None))


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def reserve(backend: MemoryBackend, request_id: str) -> Reservation:
    decision = await backend.reserve(request_id, [DAILY, INFLIGHT], Cost(requests=1, tokens=10))
    assert decision.reservation is not None
    return decision.reservation


def test_default_lease_ttl() -> None:
    assert DEFAULT_LEASE_TTL_S == 600.0


def test_open_reservations_until_settled_released_or_expired() -> None:
    clock = FakeClock(T0)

    async def scenario() -> None:
        backend = MemoryBackend(clock=clock, lease_ttl_s=30)
        a, b = await reserve(backend, "a"), await reserve(backend, "b")
        clock.now = T0 + 10
        c = await reserve(backend, "c")
        await reserve(backend, "d")
        assert backend.open_reservations() == 4
        await backend.settle(a, Cost(requests=1, tokens=5))
        await backend.release(b)
        await backend.settle(a, Cost(requests=1, tokens=5))
        assert backend.open_reservations() == 2
        clock.now = T0 + 35
        grown = await backend.debit(c, Cost(tokens=1))  # renews c until T0 + 65
        assert grown.reservation is not None
        clock.now = T0 + 40  # d's deadline has passed; the next call notices
        await backend.settle(grown.reservation, Cost(requests=1, tokens=11))
        assert backend.open_reservations() == 0

    asyncio.run(scenario())


def test_expired_reservations_are_ended_fifty_per_decision() -> None:
    """A mass expiry never stalls one decision: fifty per call, the next call the rest."""
    clock = FakeClock(T0)

    async def scenario() -> None:
        backend = MemoryBackend(clock=clock, lease_ttl_s=30)
        for n in range(60):
            assert (await backend.reserve(f"r{n}", [DAILY], Cost(1, 10))).allowed
        clock.now = T0 + 30
        await backend.peek([DAILY])  # reads only: ends nothing
        assert backend.open_reservations() == 60
        await backend.reserve("x", [DAILY], Cost(1, 10))
        assert backend.open_reservations() == 60 - 50 + 1
        await backend.reserve("y", [DAILY], Cost(1, 10))
        assert backend.open_reservations() == 2

    asyncio.run(scenario())


def test_aclose_forgets_open_reservations() -> None:
    async def scenario() -> None:
        backend = MemoryBackend(clock=FakeClock(T0))
        await reserve(backend, "a")
        assert backend.open_reservations() == 1
        await backend.aclose()
        assert backend.open_reservations() == 0

    asyncio.run(scenario())
