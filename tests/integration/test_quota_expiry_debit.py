"""Quota backends, both alike (see quota_semantics.py): a reservation nobody settles expires,
releasing its concurrency lease but staying charged as recorded (the provider may have
billed it), and its owner's late settle still makes it exact; a debit grows a
reservation mid-stream, all or nothing, renews its lease, and still counts what was
delivered after it ended."""

from __future__ import annotations

import pytest

from extproc.policy.model import Algorithm, Measure
from extproc.quota.store import Cost, QuotaStore
from tests.integration.quota_semantics import (
    T0,
    WINDOWED,
    BackendFactory,
    FakeClock,
    allowed,
    counters,
    lim,
    refused,
)

# -- expiry -------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", WINDOWED)
def test_expired_reservation_releases_its_lease_and_stays_charged_with_its_debits(
    backend_factory: BackendFactory, algorithm: Algorithm
) -> None:
    clock = FakeClock(T0)
    rpd = lim("rpd", Measure.REQUESTS, 10, 86400, algorithm)
    daily = lim("daily", Measure.TOKENS, 1000, 86400, algorithm)
    inflight = lim("inflight", Measure.CONCURRENT, 1, None)
    limits = [rpd, daily, inflight]

    async def scenario(backend: QuotaStore) -> None:
        a = allowed(await backend.reserve("a", limits, Cost(requests=1, tokens=100)))
        clock.now = T0 + 10
        a = allowed(await backend.debit(a, Cost(tokens=20)))  # a stream: renewed to T0 + 40
        clock.now = T0 + 39.9
        assert refused(await backend.reserve("b", limits, Cost(1, 5))).scoped == inflight
        clock.now = T0 + 40  # the deadline: the lease comes back, the 120 tokens stay
        b = allowed(await backend.reserve("b", limits, Cost(requests=1, tokens=5)))
        assert await counters(backend, limits) == {"rpd": 2, "daily": 125, "inflight": 1}
        # ... and its late settle (after an outage) charges its true cost, returns no
        # second lease, and only once.
        await backend.settle(a, Cost(requests=1, tokens=10))
        assert await counters(backend, limits) == {"rpd": 2, "daily": 15, "inflight": 1}
        await backend.settle(a, Cost(requests=1, tokens=10))
        assert await counters(backend, limits) == {"rpd": 2, "daily": 15, "inflight": 1}
        refused(await backend.reserve("c", limits, Cost(requests=1, tokens=5)))
        await backend.settle(b, Cost(requests=1, tokens=5))
        allowed(await backend.reserve("c", limits, Cost(requests=1, tokens=5)))

    backend_factory.run(clock, scenario, lease_ttl_s=30)


def test_settled_reservation_is_not_expired_again(backend_factory: BackendFactory) -> None:
    clock = FakeClock(T0)
    daily = lim("daily", Measure.TOKENS, 1000, 86400)
    inflight = lim("inflight", Measure.CONCURRENT, 2, None)
    limits = [daily, inflight]

    async def scenario(backend: QuotaStore) -> None:
        a = allowed(await backend.reserve("a", limits, Cost(tokens=100)))
        await backend.settle(a, Cost(tokens=40))
        clock.now = T0 + 20
        allowed(await backend.reserve("b", limits, Cost(tokens=1)))
        clock.now = T0 + 31  # a's old deadline passes: nothing must be given back twice
        assert await counters(backend, limits) == {"daily": 41, "inflight": 1}

    backend_factory.run(clock, scenario, lease_ttl_s=30)


def test_sixty_expiring_together_keep_their_cost_and_free_their_leases(
    backend_factory: BackendFactory,
) -> None:
    """A crashed sidecar's reservations expire together: every lease comes back at once,
    every token stays charged. (Their records are ended fifty per decision, so that a mass
    expiry never stalls one Redis script: see test_quota_memory and test_redis_liveness.)"""
    clock = FakeClock(T0)
    daily = lim("daily", Measure.TOKENS, 10_000, 86400)
    inflight = lim("inflight", Measure.CONCURRENT, 100, None)
    limits = [daily, inflight]

    async def scenario(backend: QuotaStore) -> None:
        for n in range(60):
            allowed(await backend.reserve(f"r{n}", limits, Cost(requests=1, tokens=10)))
        assert await counters(backend, limits) == {"daily": 600, "inflight": 60}
        clock.now = T0 + 30
        assert await counters(backend, limits) == {"daily": 600, "inflight": 0}

    backend_factory.run(clock, scenario, lease_ttl_s=30)


# -- debit --------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", WINDOWED)
def test_debit_grows_the_reservation_without_a_second_lease(
    backend_factory: BackendFactory, algorithm: Algorithm
) -> None:
    tpm = lim("tpm", Measure.TOKENS, 100, 60, algorithm)
    daily = lim("daily", Measure.TOKENS, 1000, 86400)
    inflight = lim("inflight", Measure.CONCURRENT, 1, None)
    limits = [tpm, daily, inflight]

    async def scenario(backend: QuotaStore) -> None:
        reservation = allowed(await backend.reserve("a", limits, Cost(requests=1, tokens=40)))
        grown = allowed(await backend.debit(reservation, Cost(tokens=30)))
        assert (grown.request_id, grown.limits, grown.cost) == ("a", tuple(limits), Cost(1, 70))
        assert await counters(backend, limits) == {"tpm": 70, "daily": 70, "inflight": 1}
        await backend.settle(grown, Cost(requests=1, tokens=50))
        assert await counters(backend, limits) == {"tpm": 50, "daily": 50, "inflight": 0}

    backend_factory.run(FakeClock(T0 + 1), scenario)


def test_debit_is_all_or_nothing(backend_factory: BackendFactory) -> None:
    tpm = lim("tpm", Measure.TOKENS, 100, 60)
    daily = lim("daily", Measure.TOKENS, 80, 86400)
    inflight = lim("inflight", Measure.CONCURRENT, 1, None)
    limits = [tpm, daily, inflight]

    async def scenario(backend: QuotaStore) -> None:
        reservation = allowed(await backend.reserve("a", limits, Cost(requests=1, tokens=40)))
        refusal = refused(await backend.debit(reservation, Cost(tokens=50)))
        assert refusal.scoped == daily
        assert (refusal.needed, refusal.used) == (50, 40)
        assert await counters(backend, limits) == {"tpm": 40, "daily": 40, "inflight": 1}
        grown = allowed(await backend.debit(reservation, Cost(tokens=40)))
        assert grown.cost == Cost(1, 80)
        assert await counters(backend, limits) == {"tpm": 80, "daily": 80, "inflight": 1}

    backend_factory.run(FakeClock(T0 + 1), scenario)


def test_debit_renews_the_lease(backend_factory: BackendFactory) -> None:
    clock = FakeClock(T0)
    daily = lim("daily", Measure.TOKENS, 1000, 86400)
    inflight = lim("inflight", Measure.CONCURRENT, 1, None)
    limits = [daily, inflight]

    async def scenario(backend: QuotaStore) -> None:
        reservation = allowed(await backend.reserve("a", limits, Cost(requests=1, tokens=40)))
        clock.now = T0 + 20
        allowed(await backend.debit(reservation, Cost(tokens=10)))
        clock.now = T0 + 40  # past the first deadline, before the renewed one
        assert await counters(backend, limits) == {"daily": 50, "inflight": 1}
        assert refused(await backend.reserve("b", limits, Cost(1, 1))).scoped == inflight
        clock.now = T0 + 50  # the renewed deadline: the lease comes back, the cost stays
        assert await counters(backend, limits) == {"daily": 50, "inflight": 0}
        allowed(await backend.reserve("b", limits, Cost(1, 1)))

    backend_factory.run(clock, scenario, lease_ttl_s=30)


@pytest.mark.parametrize("ending", ["settled", "expired"])
def test_debit_after_the_reservation_ended_still_counts_what_is_delivered(
    backend_factory: BackendFactory, ending: str
) -> None:
    clock = FakeClock(T0 + 1)
    tpm = lim("tpm", Measure.TOKENS, 100, 60)
    inflight = lim("inflight", Measure.CONCURRENT, 1, None)
    limits = [tpm, inflight]

    async def scenario(backend: QuotaStore) -> None:
        reservation = allowed(await backend.reserve("a", limits, Cost(requests=1, tokens=40)))
        if ending == "settled":
            await backend.settle(reservation, Cost(requests=1, tokens=40))
        else:
            clock.now += 30  # expired: its lease comes back, its 40 tokens stay charged
        grown = allowed(await backend.debit(reservation, Cost(tokens=10)))
        assert grown.cost == Cost(1, 50)
        # counted, and no lease comes back to life
        assert await counters(backend, limits) == {"tpm": 50, "inflight": 0}
        await backend.settle(grown, Cost(requests=1, tokens=5))
        # settled: nothing left to settle; expired: the late settle makes it exact
        after = 50 if ending == "settled" else 5
        assert await counters(backend, limits) == {"tpm": after, "inflight": 0}
        assert refused(await backend.debit(grown, Cost(tokens=100))).scoped == tpm

    backend_factory.run(clock, scenario, lease_ttl_s=30)
