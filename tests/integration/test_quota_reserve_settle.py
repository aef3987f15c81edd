"""Quota backends, both alike (see quota_semantics.py): a reserve takes its cost from every
limit or from none and names the limit that frees up last; a settle corrects the reservation
to the true cost once, in the window it was counted in, and returns the lease."""

from __future__ import annotations

import pytest

from extproc.policy.model import Algorithm, Measure
from extproc.quota.meters import LEASE_RETRY_S
from extproc.quota.store import Cost, QuotaStore
from extproc.quota.windows import Scope
from tests.integration.quota_semantics import (
    ABS,
    T0,
    WINDOWED,
    BackendFactory,
    FakeClock,
    allowed,
    counters,
    lim,
    probe,
    refused,
    resets,
    used,
)

# -- reserve ------------------------------------------------------------------------------


def test_reserve_takes_cost_from_every_limit(backend_factory: BackendFactory) -> None:
    clock = FakeClock(T0 + 10)
    rpm = lim("rpm", Measure.REQUESTS, 5, 60)
    tpm = lim("tpm", Measure.TOKENS, 100, 60)
    inflight = lim("inflight", Measure.CONCURRENT, 3, None)
    limits = [rpm, tpm, inflight]

    async def scenario(backend: QuotaStore) -> None:
        decision = await backend.reserve("r1", limits, Cost(requests=1, tokens=40))
        reservation = allowed(decision)
        assert (reservation.request_id, reservation.limits, reservation.cost) == (
            "r1",
            (rpm, tpm, inflight),
            Cost(1, 40),
        )
        assert [s.scoped for s in decision.states] == limits
        assert used(decision.states) == [1, 40, 1]
        assert resets(decision.states) == pytest.approx([50.0, 50.0, 0.0], abs=ABS)
        assert [s.remaining for s in decision.states] == [4, 60, 2]
        assert await counters(backend, limits) == {"rpm": 1, "tpm": 40, "inflight": 1}

    backend_factory.run(clock, scenario)


def test_refused_reserve_changes_no_counter(backend_factory: BackendFactory) -> None:
    clock = FakeClock(T0 + 10)
    rpm = lim("rpm", Measure.REQUESTS, 2, 60)
    tpm = lim("tpm", Measure.TOKENS, 100, 60)
    inflight = lim("inflight", Measure.CONCURRENT, 2, None)
    limits = [rpm, tpm, inflight]

    async def scenario(backend: QuotaStore) -> None:
        allowed(await backend.reserve("a", limits, Cost(requests=1, tokens=60)))
        decision = await backend.reserve("b", limits, Cost(requests=1, tokens=50))
        refusal = refused(decision)
        assert refusal.scoped == tpm
        assert (refusal.needed, refusal.used) == (50, 60)
        assert refusal.retry_after == pytest.approx(50.0, abs=ABS)
        # states after a refusal report the counters as they are, untouched
        assert used(decision.states) == [1, 60, 1]
        # Had "b" taken its request or its lease, this exact fit would be refused.
        last = await backend.reserve("c", limits, Cost(requests=1, tokens=40))
        allowed(last)
        assert used(last.states) == [2, 100, 2]
        assert [s.remaining for s in last.states] == [0, 0, 0]

    backend_factory.run(clock, scenario)


def test_limits_of_different_scopes_count_separately(backend_factory: BackendFactory) -> None:
    clock = FakeClock(T0)
    ns_tpm = lim("tpm", Measure.TOKENS, 100, 60)
    key_tpm = lim("tpm", Measure.TOKENS, 100, 60, scope=Scope("team-a", "svc"))
    other_tpm = lim("tpm", Measure.TOKENS, 100, 60, scope=Scope("team-b"))

    async def scenario(backend: QuotaStore) -> None:
        allowed(await backend.reserve("a", [ns_tpm, key_tpm], Cost(tokens=30)))
        allowed(await backend.reserve("b", [ns_tpm], Cost(tokens=20)))
        assert used(await probe(backend, [ns_tpm, key_tpm, other_tpm])) == [50, 30, 0]

    backend_factory.run(clock, scenario)


def test_refusal_reports_the_limit_that_frees_up_last(backend_factory: BackendFactory) -> None:
    clock = FakeClock(T0 + 10)
    inflight = lim("inflight", Measure.CONCURRENT, 1, None)
    daily = lim("daily", Measure.TOKENS, 1, 86400)
    rpm = lim("rpm", Measure.REQUESTS, 1, 60)
    limits = [inflight, daily, rpm]

    async def scenario(backend: QuotaStore) -> None:
        allowed(await backend.reserve("a", limits, Cost(requests=1, tokens=1)))
        refusal = refused(await backend.reserve("b", limits, Cost(requests=1, tokens=1)))
        # inflight frees in 1 s (maybe), rpm in 50 s, the day ends in 1 h 46 min 50 s
        assert refusal.scoped == daily
        assert (refusal.needed, refusal.used) == (1, 1)
        assert refusal.retry_after == pytest.approx(6410.0, abs=ABS)

    backend_factory.run(clock, scenario)


@pytest.mark.parametrize("algorithm", WINDOWED)
def test_request_larger_than_the_limit_never_fits(
    backend_factory: BackendFactory, algorithm: Algorithm
) -> None:
    tpm = lim("tpm", Measure.TOKENS, 100, 60, algorithm)

    async def scenario(backend: QuotaStore) -> None:
        refusal = refused(await backend.reserve("a", [tpm], Cost(tokens=101)))
        assert refusal.never_fits
        assert (refusal.needed, refusal.used) == (101, 0)
        allowed(await backend.reserve("b", [tpm], Cost(tokens=100)))

    backend_factory.run(FakeClock(T0 + 10), scenario)


# -- settle -------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", WINDOWED)
def test_settle_lower_than_reserved_gives_back_the_difference(
    backend_factory: BackendFactory, algorithm: Algorithm
) -> None:
    tpm = lim("tpm", Measure.TOKENS, 100, 60, algorithm)

    async def scenario(backend: QuotaStore) -> None:
        reservation = allowed(await backend.reserve("a", [tpm], Cost(requests=1, tokens=80)))
        await backend.settle(reservation, Cost(requests=1, tokens=30))
        assert await counters(backend, [tpm]) == {"tpm": 30}
        refused(await backend.reserve("b", [tpm], Cost(tokens=71)))
        allowed(await backend.reserve("c", [tpm], Cost(tokens=70)))

    backend_factory.run(FakeClock(T0 + 1), scenario)


@pytest.mark.parametrize("algorithm", WINDOWED)
def test_settle_higher_than_reserved_charges_the_difference(
    backend_factory: BackendFactory, algorithm: Algorithm
) -> None:
    tpm = lim("tpm", Measure.TOKENS, 100, 60, algorithm)

    async def scenario(backend: QuotaStore) -> None:
        reservation = allowed(await backend.reserve("a", [tpm], Cost(tokens=50)))
        await backend.settle(reservation, Cost(tokens=90))
        assert await counters(backend, [tpm]) == {"tpm": 90}
        refused(await backend.reserve("b", [tpm], Cost(tokens=11)))
        allowed(await backend.reserve("c", [tpm], Cost(tokens=10)))

    backend_factory.run(FakeClock(T0 + 1), scenario)


@pytest.mark.parametrize("algorithm", WINDOWED)
def test_settle_may_overshoot_the_limit_and_then_refuses_everything(
    backend_factory: BackendFactory, algorithm: Algorithm
) -> None:
    tpm = lim("tpm", Measure.TOKENS, 100, 60, algorithm)

    async def scenario(backend: QuotaStore) -> None:
        reservation = allowed(await backend.reserve("a", [tpm], Cost(tokens=50)))
        await backend.settle(reservation, Cost(tokens=150))
        decision = await backend.reserve("b", [tpm], Cost(tokens=1))
        refused(decision)
        assert [(s.used, s.remaining) for s in decision.states] == [(150, 0)]

    backend_factory.run(FakeClock(T0 + 1), scenario)


@pytest.mark.parametrize("algorithm", WINDOWED)
def test_settle_twice_counts_once(backend_factory: BackendFactory, algorithm: Algorithm) -> None:
    tpm = lim("tpm", Measure.TOKENS, 100, 60, algorithm)
    inflight = lim("inflight", Measure.CONCURRENT, 2, None)
    limits = [tpm, inflight]

    async def scenario(backend: QuotaStore) -> None:
        a = allowed(await backend.reserve("a", limits, Cost(tokens=50)))
        allowed(await backend.reserve("b", limits, Cost(tokens=10)))
        await backend.settle(a, Cost(tokens=20))
        await backend.settle(a, Cost(tokens=20))
        await backend.settle(a, Cost(tokens=90))  # a different "actual" is ignored too
        assert await counters(backend, limits) == {"tpm": 30, "inflight": 1}
        # Only one lease came back: one more request fits, the next does not.
        allowed(await backend.reserve("c", limits, Cost(tokens=1)))
        assert refused(await backend.reserve("d", limits, Cost(tokens=1))).scoped == inflight

    backend_factory.run(FakeClock(T0 + 1), scenario)


@pytest.mark.parametrize("algorithm", WINDOWED)
def test_release_keeps_the_request_and_returns_tokens_and_lease(
    backend_factory: BackendFactory, algorithm: Algorithm
) -> None:
    rpm = lim("rpm", Measure.REQUESTS, 5, 60, algorithm)
    tpm = lim("tpm", Measure.TOKENS, 100, 60, algorithm)
    inflight = lim("inflight", Measure.CONCURRENT, 1, None)
    limits = [rpm, tpm, inflight]

    async def scenario(backend: QuotaStore) -> None:
        reservation = allowed(await backend.reserve("a", limits, Cost(requests=1, tokens=80)))
        await backend.release(reservation)
        assert await counters(backend, limits) == {"rpm": 1, "tpm": 0, "inflight": 0}
        await backend.release(reservation)  # idempotent as well
        await backend.settle(reservation, Cost(requests=1, tokens=80))
        assert await counters(backend, limits) == {"rpm": 1, "tpm": 0, "inflight": 0}

    backend_factory.run(FakeClock(T0 + 1), scenario)


def test_concurrency_lease_is_returned_on_settle(backend_factory: BackendFactory) -> None:
    inflight = lim("inflight", Measure.CONCURRENT, 1, None)

    async def scenario(backend: QuotaStore) -> None:
        a = allowed(await backend.reserve("a", [inflight], Cost(requests=1)))
        decision = await backend.reserve("b", [inflight], Cost(requests=1))
        refusal = refused(decision)
        assert refusal.scoped == inflight
        assert (refusal.needed, refusal.used) == (1, 1)
        assert refusal.retry_after == pytest.approx(LEASE_RETRY_S, abs=ABS)
        assert resets(decision.states) == [0.0]
        await backend.settle(a, Cost(requests=1))
        allowed(await backend.reserve("b", [inflight], Cost(requests=1)))

    backend_factory.run(FakeClock(T0 + 1), scenario)


def test_settle_after_the_window_ended_does_not_touch_the_new_window(
    backend_factory: BackendFactory,
) -> None:
    clock = FakeClock(T0 + 50)
    tpm = lim("tpm", Measure.TOKENS, 100, 60)

    async def scenario(backend: QuotaStore) -> None:
        a = allowed(await backend.reserve("a", [tpm], Cost(tokens=80)))
        b = allowed(await backend.reserve("b", [tpm], Cost(tokens=20)))
        clock.now = T0 + 70
        allowed(await backend.reserve("c", [tpm], Cost(tokens=30)))
        await backend.settle(a, Cost(tokens=10))  # would give back 70
        await backend.settle(b, Cost(tokens=200))  # would charge 180 more
        assert await counters(backend, [tpm]) == {"tpm": 30}
        allowed(await backend.reserve("d", [tpm], Cost(tokens=70)))

    backend_factory.run(clock, scenario)


def test_settle_late_before_anything_used_the_new_window(
    backend_factory: BackendFactory,
) -> None:
    clock = FakeClock(T0 + 50)
    tpm = lim("tpm", Measure.TOKENS, 100, 60)

    async def scenario(backend: QuotaStore) -> None:
        a = allowed(await backend.reserve("a", [tpm], Cost(tokens=80)))
        clock.now = T0 + 70
        await backend.settle(a, Cost(tokens=100))
        assert await counters(backend, [tpm]) == {"tpm": 0}
        allowed(await backend.reserve("b", [tpm], Cost(tokens=100)))

    backend_factory.run(clock, scenario)


def test_sliding_settle_corrects_only_the_window_it_was_counted_in(
    backend_factory: BackendFactory,
) -> None:
    clock = FakeClock(T0 + 50)
    tpm = lim("tpm", Measure.TOKENS, 100, 60, Algorithm.SLIDING)

    async def scenario(backend: QuotaStore) -> None:
        a = allowed(await backend.reserve("a", [tpm], Cost(tokens=60)))
        b = allowed(await backend.reserve("b", [tpm], Cost(tokens=20)))
        clock.now = T0 + 70  # next window: the first one weighs 5/6
        allowed(await backend.reserve("c", [tpm], Cost(tokens=30)))  # 80 * 5/6 + 30 fits
        await backend.settle(a, Cost(tokens=10))  # the previous window: 80 -> 30
        assert await counters(backend, [tpm]) == {"tpm": 55}  # 30 * 5/6 + 30
        clock.now = T0 + 130  # the first window is out of reach now
        await backend.settle(b, Cost(tokens=200))  # nothing left to correct
        assert await counters(backend, [tpm]) == {"tpm": 25}  # c's window weighs 5/6
        clock.now = T0 + 180
        assert await counters(backend, [tpm]) == {"tpm": 0}

    backend_factory.run(clock, scenario)


@pytest.mark.parametrize("algorithm", WINDOWED)
def test_settle_corrects_a_limit_that_reserved_nothing(
    backend_factory: BackendFactory, algorithm: Algorithm
) -> None:
    """A reservation of 0 tokens that a stream then debited: the settle still replaces what
    was counted (the debits) by the actual cost."""
    tpm = lim("tpm", Measure.TOKENS, 100, 60, algorithm)

    async def scenario(backend: QuotaStore) -> None:
        reservation = allowed(await backend.reserve("a", [tpm], Cost(requests=1)))
        grown = allowed(await backend.debit(reservation, Cost(tokens=50)))
        await backend.settle(grown, Cost(requests=1, tokens=20))
        assert await counters(backend, [tpm]) == {"tpm": 20}

    backend_factory.run(FakeClock(T0 + 1), scenario)


def test_a_zero_reserve_never_refuses_and_its_settle_charges_past_the_limit(
    backend_factory: BackendFactory,
) -> None:
    """How a pool key's budget is charged (gate/key_budgets.py): after the answer, whatever
    the counter says, so a key over its budget is counted, never refused after the fact."""
    clock = FakeClock(T0 + 10)
    pool = Scope(namespace="pool:openai-main", key_name="secondary")
    budget = [
        lim("daily", Measure.TOKENS, 100, 86400, scope=pool),
        lim("rph", Measure.REQUESTS, 1, 3600, Algorithm.SLIDING, scope=pool),
    ]

    async def scenario(backend: QuotaStore) -> None:
        for request_id, tokens in (("a:key", 80), ("b:key", 70)):
            held = allowed(await backend.reserve(request_id, budget, Cost()))
            await backend.settle(held, Cost(requests=1, tokens=tokens))
        assert await counters(backend, budget) == {"daily": 150, "rph": 2}
        states = await backend.peek(budget)
        assert [s.remaining for s in states] == [0, 0]

    backend_factory.run(clock, scenario)
