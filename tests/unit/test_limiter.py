"""The limiter's all-or-nothing decision over meters (`extproc.quota.limiter`): what each
limit needs of a cost, which refusal is reported, and the states a caller is told.
Every clock here is a plain number."""

from __future__ import annotations

import pytest

from extproc.policy.model import Algorithm, Limit, Measure
from extproc.quota.limiter import decide, need_of, states
from extproc.quota.meters import (
    LEASE_RETRY_S,
    Leases,
    Meter,
    new_meter,
)
from extproc.quota.store import Cost, LimitState, Refusal
from extproc.quota.windows import (
    ScopedLimit,
)
from tests.unit.quota_limits import DAILY, DAY, INFLIGHT, MINUTE, NOW, NS, RPM, TPM, T, scoped


def filled(limit: ScopedLimit, used: int, now: float = NOW) -> Meter:
    """A fresh meter of `limit` that has counted `used` at `now`."""
    meter = new_meter(limit.limit, limit.time_zone)
    if isinstance(meter, Leases):
        for n in range(used):
            meter.lease(f"r{n}", now + 600)
    elif used:
        meter.take(used, now)
    return meter


def decide_on(
    limits: list[ScopedLimit], used: list[int], cost: Cost, now: float = NOW
) -> Refusal | None:
    meters = [filled(s, u, now) for s, u in zip(limits, used, strict=True)]
    return decide(limits, meters, [need_of(s, cost) for s in limits], now)


def test_need_of() -> None:
    cost = Cost(requests=1, tokens=250, usd_micros=7)
    assert need_of(RPM, cost) == 1
    assert need_of(TPM, cost) == 250
    assert need_of(scoped("spend", Measure.USD, 10, DAY), cost) == 7
    assert need_of(INFLIGHT, cost) == 1
    assert need_of(INFLIGHT, Cost()) == 1


def test_decide_everything_fits() -> None:
    limits = [RPM, TPM, DAILY, INFLIGHT]
    assert decide_on(limits, [0, 0, 0, 0], Cost(requests=1, tokens=100)) is None


def test_decide_fits_exactly_at_the_limit() -> None:
    # 9 + 1 == 10 requests, 900 + 100 == 1000 tokens, 1 + 1 == 2 leases
    limits = [RPM, TPM, INFLIGHT]
    assert decide_on(limits, [9, 900, 1], Cost(requests=1, tokens=100)) is None


def test_decide_refusal_names_the_limit() -> None:
    refusal = decide_on([RPM, TPM, DAILY], [3, 950, 100], Cost(requests=1, tokens=100))
    assert refusal == Refusal(TPM, needed=100, used=950, retry_after=40.0)
    assert not refusal.never_fits


def test_decide_one_over_the_limit_refuses() -> None:
    refusal = decide_on([TPM], [901], Cost(tokens=100))
    assert refusal is not None
    assert (refusal.needed, refusal.used) == (100, 901)


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
def test_decide_reports_the_refusal_that_frees_up_last(order: tuple[int, int, int]) -> None:
    limits = [RPM, TPM, DAILY]
    used = [10, 1000, 5000]  # all three full
    refusal = decide_on([limits[i] for i in order], [used[i] for i in order], Cost(1, 1))
    assert refusal is not None
    assert refusal.scoped is DAILY
    assert refusal.retry_after == 6400.0


def test_decide_minute_limit_beats_concurrency_when_it_frees_later() -> None:
    refusal = decide_on([INFLIGHT, RPM], [2, 10], Cost(requests=1))
    assert refusal is not None
    assert refusal.scoped is RPM
    assert refusal.retry_after == 40.0


def test_decide_concurrency_needs_one_per_request() -> None:
    assert decide_on([INFLIGHT], [1], Cost()) is None
    refusal = decide_on([INFLIGHT], [2], Cost())
    assert refusal == Refusal(INFLIGHT, needed=1, used=2, retry_after=LEASE_RETRY_S)


def test_decide_skips_zero_need_measures() -> None:
    # A requests-only cost never trips a token limit, even an exhausted (overshot) one.
    assert decide_on([TPM, DAILY, RPM], [1500, 9999, 0], Cost(requests=1)) is None
    # And a tokens-only cost never trips a request limit.
    assert decide_on([RPM, TPM], [10, 0], Cost(tokens=5)) is None


def test_decide_never_fits_refusal() -> None:
    refusal = decide_on([TPM], [0], Cost(tokens=1001))
    assert refusal is not None
    assert refusal.never_fits
    assert decide_on([TPM], [0], Cost(tokens=1000)) is None


def test_decide_asks_each_algorithm_for_its_own_retry_after() -> None:
    bucket = ScopedLimit(NS, Limit("tpm", Measure.TOKENS, 120, MINUTE, Algorithm.BUCKET))
    sliding = ScopedLimit(NS, Limit("rpm", Measure.REQUESTS, 100, MINUTE, Algorithm.SLIDING))
    meters = [filled(bucket, 120, T), filled(sliding, 100, T + 30)]
    refusal = decide([bucket, sliding], meters, [10, 1], T + 30)
    # The bucket has 60 back after 30 s; the sliding window frees one request in 30.6 s.
    assert refusal is not None
    assert refusal.scoped is sliding
    assert refusal.retry_after == pytest.approx(30.6, abs=1e-6)
    over = decide([bucket], meters[:1], [61], T + 30)
    assert over is not None
    assert (over.scoped, over.needed, over.used) == (bucket, 61, 60)
    assert over.retry_after == pytest.approx(0.5, abs=1e-6)


def test_decide_requires_one_meter_and_need_per_limit() -> None:
    with pytest.raises(ValueError):
        decide([RPM, TPM], [filled(RPM, 0)], [1, 1], NOW)
    with pytest.raises(ValueError):
        decide([RPM], [filled(RPM, 0)], [1, 1], NOW)


def test_states() -> None:
    limits = [RPM, TPM, INFLIGHT]
    meters = [filled(RPM, 4), filled(TPM, 1200), filled(INFLIGHT, 1)]
    result = states(limits, meters, NOW)
    assert result == (
        LimitState(RPM, 4, 40.0),
        LimitState(TPM, 1200, 40.0),
        LimitState(INFLIGHT, 1, 0.0),
    )
    assert [s.remaining for s in result] == [6, 0, 1]


def test_states_of_a_bucket_say_when_it_is_full_again() -> None:
    bucket = ScopedLimit(NS, Limit("tpm", Measure.TOKENS, 120, MINUTE, Algorithm.BUCKET))
    (state,) = states([bucket], [filled(bucket, 90, T)], T + 15)
    assert state.used == 60
    assert state.reset_after == pytest.approx(30.0, abs=1e-6)
    assert state.remaining == 60
