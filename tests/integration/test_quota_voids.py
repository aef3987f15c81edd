"""Quota backends, both alike (see quota_semantics.py): a void — the settle of nothing a
sidecar sends for a reserve whose answer never reached it, so that was never forwarded —
gives back all that reserve took, whenever it lands: before the reservation ended, after it
expired (charged as recorded meanwhile), or before the reserve itself ran (it sat in a
socket while Redis was frozen), in which case the reserve takes nothing."""

from __future__ import annotations

from extproc.policy.model import Measure
from extproc.quota.store import Cost, QuotaStore, Reservation
from tests.integration.quota_semantics import (
    T0,
    BackendFactory,
    FakeClock,
    allowed,
    counters,
    lim,
)

RPD = lim("rpd", Measure.REQUESTS, 10, 86400)
DAILY = lim("daily", Measure.TOKENS, 1000, 86400)
INFLIGHT = lim("inflight", Measure.CONCURRENT, 1, None)
LIMITS = [RPD, DAILY, INFLIGHT]
NOTHING = {"rpd": 0, "daily": 0, "inflight": 0}


def test_a_void_gives_back_all_the_reserve_took(backend_factory: BackendFactory) -> None:
    async def scenario(backend: QuotaStore) -> None:
        a = allowed(await backend.reserve("a", LIMITS, Cost(requests=1, tokens=100)))
        await backend.settle(a, Cost())
        assert await counters(backend, LIMITS) == NOTHING

    backend_factory.run(FakeClock(T0), scenario, lease_ttl_s=30)


def test_a_void_after_expiry_gives_everything_back(backend_factory: BackendFactory) -> None:
    clock = FakeClock(T0)

    async def scenario(backend: QuotaStore) -> None:
        a = allowed(await backend.reserve("a", LIMITS, Cost(requests=1, tokens=100)))
        clock.now = T0 + 30  # expired: the lease is back, the cost stays
        assert await counters(backend, LIMITS) == {"rpd": 1, "daily": 100, "inflight": 0}
        await backend.settle(a, Cost())
        assert await counters(backend, LIMITS) == NOTHING

    backend_factory.run(clock, scenario, lease_ttl_s=30)


def test_a_reserve_that_runs_after_its_void_takes_nothing(
    backend_factory: BackendFactory,
) -> None:
    """The void overtook its reserve: the reserve then finds the void's mark and takes
    nothing (its answer goes nowhere), and nothing is left held until a lease runs out."""

    async def scenario(backend: QuotaStore) -> None:
        void = Reservation("late", tuple(LIMITS), (), Cost(), origin="shared")
        await backend.settle(void, Cost())
        assert await counters(backend, LIMITS) == NOTHING
        await backend.reserve("late", LIMITS, Cost(requests=1, tokens=100))
        assert await counters(backend, LIMITS) == NOTHING
        allowed(await backend.reserve("next", LIMITS, Cost(requests=1, tokens=5)))
        assert await counters(backend, LIMITS) == {"rpd": 1, "daily": 5, "inflight": 1}

    backend_factory.run(FakeClock(T0), scenario, lease_ttl_s=30)


def test_a_retried_settle_counts_once_and_stays_settled(backend_factory: BackendFactory) -> None:
    async def scenario(backend: QuotaStore) -> None:
        a = allowed(await backend.reserve("a", LIMITS, Cost(requests=1, tokens=100)))
        for _ in range(3):
            await backend.settle(a, Cost(requests=1, tokens=40))
        assert await counters(backend, LIMITS) == {"rpd": 1, "daily": 40, "inflight": 0}
        grown = await backend.debit(a, Cost(tokens=10))  # a late chunk is still counted
        assert grown.allowed
        assert await counters(backend, LIMITS) == {"rpd": 1, "daily": 50, "inflight": 0}

    backend_factory.run(FakeClock(T0), scenario, lease_ttl_s=30)
