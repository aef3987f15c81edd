"""Quota backends, both alike (see quota_semantics.py), per algorithm: calendar windows
(rollover, days and months in a policy time zone, daylight saving), the token bucket, the
sliding window, and a clock that steps back."""

from __future__ import annotations

import pytest

from extproc.policy.model import Algorithm, Measure
from extproc.quota.store import Cost, QuotaStore
from tests.integration.quota_semantics import (
    ABS,
    T0,
    WINDOWED,
    BackendFactory,
    FakeClock,
    allowed,
    assert_refusal,
    berlin,
    counters,
    lim,
    probe,
    refused,
    resets,
    used,
)

# -- calendar windows ---------------------------------------------------------------------


def test_window_rollover_resets_counts_at_the_boundary(backend_factory: BackendFactory) -> None:
    clock = FakeClock(T0 + 10)
    tpm = lim("tpm", Measure.TOKENS, 100, 60)
    rph = lim("rph", Measure.REQUESTS, 10, 3600)
    limits = [tpm, rph]

    async def scenario(backend: QuotaStore) -> None:
        allowed(await backend.reserve("a", limits, Cost(requests=1, tokens=100)))
        clock.now = T0 + 59.75
        refusal = refused(await backend.reserve("b", limits, Cost(requests=1, tokens=1)))
        assert refusal.scoped == tpm
        assert refusal.retry_after == pytest.approx(0.25, abs=ABS)
        clock.now = T0 + 60  # the next minute: tokens reset, the hour keeps counting
        decision = await backend.reserve("c", limits, Cost(requests=1, tokens=100))
        allowed(decision)
        assert used(decision.states) == [100, 2]
        assert resets(decision.states) == pytest.approx([60.0, 2760.0], abs=ABS)  # -> 23:00

    backend_factory.run(clock, scenario)


def test_daily_budget_resets_at_midnight_in_the_policy_time_zone(
    backend_factory: BackendFactory,
) -> None:
    clock = FakeClock(berlin(2030, 6, 12, 23, 59) + 30)  # 21:59:30 UTC
    daily = lim("daily", Measure.TOKENS, 1000, 86400, time_zone="Europe/Berlin")
    utc_daily = lim("utc-daily", Measure.TOKENS, 2000, 86400)
    limits = [daily, utc_daily]

    async def scenario(backend: QuotaStore) -> None:
        decision = await backend.reserve("a", limits, Cost(tokens=1000))
        allowed(decision)
        assert resets(decision.states) == pytest.approx([30.0, 7230.0], abs=ABS)
        refusal = refused(await backend.reserve("b", limits, Cost(tokens=1)))
        assert refusal.scoped == daily
        assert refusal.retry_after == pytest.approx(30.0, abs=ABS)
        clock.now = berlin(2030, 6, 13)  # midnight in Berlin, 22:00 UTC
        decision = await backend.reserve("c", limits, Cost(tokens=1000))
        allowed(decision)
        assert used(decision.states) == [1000, 2000]
        assert resets(decision.states) == pytest.approx([86400.0, 7200.0], abs=ABS)

    backend_factory.run(clock, scenario)


@pytest.mark.parametrize(
    ("day", "hours"),
    [((2030, 3, 31), 23), ((2030, 10, 27), 25)],  # Berlin springs forward / falls back
)
def test_daily_budget_on_a_daylight_saving_day(
    backend_factory: BackendFactory, day: tuple[int, int, int], hours: int
) -> None:
    start = berlin(*day)
    end = start + hours * 3600
    clock = FakeClock(start + 1800)
    daily = lim("daily", Measure.TOKENS, 1000, 86400, time_zone="Europe/Berlin")

    async def scenario(backend: QuotaStore) -> None:
        decision = await backend.reserve("a", [daily], Cost(tokens=1000))
        await backend.settle(allowed(decision), Cost(tokens=1000))  # before it would expire
        assert resets(decision.states) == pytest.approx([hours * 3600 - 1800.0], abs=ABS)
        clock.now = end - 1
        refusal = refused(await backend.reserve("b", [daily], Cost(tokens=1)))
        assert refusal.retry_after == pytest.approx(1.0, abs=ABS)
        clock.now = end
        decision = await backend.reserve("c", [daily], Cost(tokens=1000))
        allowed(decision)
        assert resets(decision.states) == pytest.approx([86400.0], abs=ABS)

    backend_factory.run(clock, scenario)


def test_monthly_budget_resets_on_the_first(backend_factory: BackendFactory) -> None:
    clock = FakeClock(berlin(2030, 6, 12, 12))
    monthly = lim("monthly", Measure.USD, 1000, 30 * 86400, months=1, time_zone="Europe/Berlin")
    july = berlin(2030, 7, 1)

    async def scenario(backend: QuotaStore) -> None:
        decision = await backend.reserve("a", [monthly], Cost(usd_micros=1000))
        await backend.settle(allowed(decision), Cost(usd_micros=1000))  # before it would expire
        assert resets(decision.states) == pytest.approx([july - clock.now], abs=ABS)
        clock.now = july - 60
        refusal = refused(await backend.reserve("b", [monthly], Cost(usd_micros=1)))
        assert refusal.retry_after == pytest.approx(60.0, abs=ABS)
        clock.now = july
        decision = await backend.reserve("c", [monthly], Cost(usd_micros=1000))
        allowed(decision)
        assert resets(decision.states) == pytest.approx([31 * 86400.0], abs=ABS)

    backend_factory.run(clock, scenario)


# -- token bucket -------------------------------------------------------------------------


def test_bucket_allows_a_burst_up_to_the_limit_and_refills_continuously(
    backend_factory: BackendFactory,
) -> None:
    clock = FakeClock(T0)
    tpm = lim("tpm", Measure.TOKENS, 120, 60, Algorithm.BUCKET)  # 2 tokens a second

    async def scenario(backend: QuotaStore) -> None:
        decision = await backend.reserve("a", [tpm], Cost(tokens=120))
        allowed(decision)
        assert used(decision.states) == [120]
        assert resets(decision.states) == pytest.approx([60.0], abs=ABS)
        refusal = refused(await backend.reserve("b", [tpm], Cost(tokens=1)))
        assert_refusal(refusal, used=120, retry_after=0.5)
        clock.now = T0 + 15
        states = await probe(backend, [tpm])
        assert used(states) == [90]
        assert resets(states) == pytest.approx([45.0], abs=ABS)
        allowed(await backend.reserve("c", [tpm], Cost(tokens=30)))
        clock.now = T0 + 20
        refusal = refused(await backend.reserve("d", [tpm], Cost(tokens=11)))
        assert_refusal(refusal, used=110, retry_after=0.5)
        allowed(await backend.reserve("e", [tpm], Cost(tokens=10)))

    backend_factory.run(clock, scenario)


def test_bucket_never_holds_more_than_its_capacity(backend_factory: BackendFactory) -> None:
    clock = FakeClock(T0)
    tpm = lim("tpm", Measure.TOKENS, 120, 60, Algorithm.BUCKET)

    async def scenario(backend: QuotaStore) -> None:
        allowed(await backend.reserve("a", [tpm], Cost(tokens=120)))
        clock.now = T0 + 3600
        assert refused(await backend.reserve("b", [tpm], Cost(tokens=121))).never_fits
        allowed(await backend.reserve("c", [tpm], Cost(tokens=120)))

    backend_factory.run(clock, scenario)


def test_bucket_settle_above_the_reservation_goes_into_debt_that_refill_repays(
    backend_factory: BackendFactory,
) -> None:
    clock = FakeClock(T0)
    tpm = lim("tpm", Measure.TOKENS, 120, 60, Algorithm.BUCKET)

    async def scenario(backend: QuotaStore) -> None:
        reservation = allowed(await backend.reserve("a", [tpm], Cost(tokens=60)))
        await backend.settle(reservation, Cost(tokens=150))  # 30 below empty
        states = await probe(backend, [tpm])
        assert used(states) == [150]
        assert resets(states) == pytest.approx([75.0], abs=ABS)
        refusal = refused(await backend.reserve("b", [tpm], Cost(tokens=1)))
        assert_refusal(refusal, used=150, retry_after=15.5)
        clock.now = T0 + 15  # the debt is repaid, nothing available yet
        refusal = refused(await backend.reserve("c", [tpm], Cost(tokens=1)))
        assert_refusal(refusal, used=120, retry_after=0.5)
        clock.now = T0 + 20
        allowed(await backend.reserve("d", [tpm], Cost(tokens=10)))

    backend_factory.run(clock, scenario)


# -- sliding window -----------------------------------------------------------------------


def test_sliding_window_weighs_the_previous_window(backend_factory: BackendFactory) -> None:
    clock = FakeClock(T0 + 30)
    tpm = lim("tpm", Measure.TOKENS, 100, 60, Algorithm.SLIDING)

    async def scenario(backend: QuotaStore) -> None:
        decision = await backend.reserve("a", [tpm], Cost(tokens=100))
        allowed(decision)
        assert (used(decision.states), resets(decision.states)) == ([100], [30.0])
        # Full in this window: wait for the next one, then for 1 % of this one to decay.
        refusal = refused(await backend.reserve("b", [tpm], Cost(tokens=1)))
        assert_refusal(refusal, used=100, retry_after=30.6)
        clock.now = T0 + 60  # next window, the previous one at full weight
        refusal = refused(await backend.reserve("c", [tpm], Cost(tokens=1)))
        assert_refusal(refusal, used=100, retry_after=0.6)
        clock.now = T0 + 90  # halfway: the previous window weighs 1/2
        assert await counters(backend, [tpm]) == {"tpm": 50}
        decision = await backend.reserve("d", [tpm], Cost(tokens=50))
        allowed(decision)
        assert (used(decision.states), resets(decision.states)) == ([100], [30.0])
        refusal = refused(await backend.reserve("e", [tpm], Cost(tokens=1)))
        assert refusal.retry_after == pytest.approx(0.6, abs=ABS)
        clock.now = T0 + 120  # the first window is gone, d's weighs 1
        assert await counters(backend, [tpm]) == {"tpm": 50}
        allowed(await backend.reserve("f", [tpm], Cost(tokens=50)))
        refusal = refused(await backend.reserve("g", [tpm], Cost(tokens=1)))
        assert refusal.retry_after == pytest.approx(1.2, abs=ABS)

    backend_factory.run(clock, scenario)


def test_sliding_window_refuses_the_boundary_burst_of_a_fixed_window(
    backend_factory: BackendFactory,
) -> None:
    clock = FakeClock(T0 + 59)
    sliding = lim("sliding", Measure.TOKENS, 100, 60, Algorithm.SLIDING)
    fixed = lim("fixed", Measure.TOKENS, 100, 60)

    async def scenario(backend: QuotaStore) -> None:
        allowed(await backend.reserve("a", [sliding, fixed], Cost(tokens=100)))
        clock.now = T0 + 60
        allowed(await backend.reserve("b", [fixed], Cost(tokens=100)))  # a fixed window would
        refusal = refused(await backend.reserve("c", [sliding], Cost(tokens=100)))
        assert refusal.retry_after == pytest.approx(60.0, abs=ABS)
        refusal = refused(await backend.reserve("d", [sliding], Cost(tokens=1)))
        assert refusal.retry_after == pytest.approx(0.6, abs=ABS)

    backend_factory.run(clock, scenario)


def test_sliding_retry_after_when_the_current_window_is_the_obstacle(
    backend_factory: BackendFactory,
) -> None:
    clock = FakeClock(T0 + 10)
    tpm = lim("tpm", Measure.TOKENS, 100, 60, Algorithm.SLIDING)

    async def scenario(backend: QuotaStore) -> None:
        allowed(await backend.reserve("a", [tpm], Cost(tokens=80)))
        refusal = refused(await backend.reserve("b", [tpm], Cost(tokens=30)))
        assert refusal.retry_after == pytest.approx(57.5, abs=ABS)
        clock.now = T0 + 67.4
        refused(await backend.reserve("c", [tpm], Cost(tokens=30)))
        clock.now = T0 + 67.5  # 80 * (1 - 7.5 / 60) + 30 == 100
        allowed(await backend.reserve("d", [tpm], Cost(tokens=30)))

    backend_factory.run(clock, scenario)


def test_sliding_window_weights_the_previous_window_by_its_overlap(
    backend_factory: BackendFactory,
) -> None:
    """100 at second 59; at second 90 the previous window still overlaps the last minute by
    half, so it counts 50: 50 more fit, 51 do not. (An estimate: it assumes the previous
    window's requests were spread evenly — README "Writing quotas".)"""
    clock = FakeClock(T0 + 59)
    tpm = lim("tpm", Measure.TOKENS, 100, 60, Algorithm.SLIDING)

    async def scenario(backend: QuotaStore) -> None:
        allowed(await backend.reserve("a", [tpm], Cost(tokens=100)))
        clock.now = T0 + 90
        refused(await backend.reserve("b", [tpm], Cost(tokens=51)))
        allowed(await backend.reserve("c", [tpm], Cost(tokens=50)))

    backend_factory.run(clock, scenario)


# -- the clock stepping back --------------------------------------------------------------


@pytest.mark.parametrize("algorithm", WINDOWED)
def test_clock_stepping_back_does_not_reopen_a_window(
    backend_factory: BackendFactory, algorithm: Algorithm
) -> None:
    """A clock stepping back across a window boundary keeps counting in the newer window."""
    clock = FakeClock(T0 + 61)  # one second into the next minute
    rpm = lim("rpm", Measure.REQUESTS, 2, 60, algorithm)

    async def scenario(backend: QuotaStore) -> None:
        allowed(await backend.reserve("a", [rpm], Cost(requests=2)))
        clock.now = T0 + 59  # NTP steps the clock back into the previous minute
        refused(await backend.reserve("b", [rpm], Cost(requests=1)))
        assert await counters(backend, [rpm]) == {"rpm": 2}

    backend_factory.run(clock, scenario)


def test_bucket_does_not_refill_time_it_already_counted(backend_factory: BackendFactory) -> None:
    """A take during a clock step back must not move the bucket's timestamp back (which
    would refill [T0+90, T0+100] a second time)."""
    clock = FakeClock(T0 + 100)
    tpm = lim("tpm", Measure.TOKENS, 60, 60, Algorithm.BUCKET)  # one token a second

    async def scenario(backend: QuotaStore) -> None:
        allowed(await backend.reserve("a", [tpm], Cost(tokens=30)))
        clock.now = T0 + 90
        allowed(await backend.reserve("b", [tpm], Cost(tokens=30)))
        clock.now = T0 + 100
        assert await counters(backend, [tpm]) == {"tpm": 60}
        refused(await backend.reserve("c", [tpm], Cost(tokens=1)))

    backend_factory.run(clock, scenario)
