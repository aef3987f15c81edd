"""The meters of every algorithm (`extproc.quota.meters`): the token bucket, the sliding
window, the calendar counter and the leases of a concurrency limit; what each counts, gives
back and says about retrying. Every clock here is a plain number."""

from __future__ import annotations

import pytest

from extproc.policy.model import Algorithm, Limit, Measure
from extproc.quota.meters import (
    LEASE_RETRY_S,
    Bucket,
    Calendar,
    Leases,
    Sliding,
    new_meter,
)
from tests.unit.quota_limits import DAY, MINUTE, T, at, cal

# -- meters: token bucket ---------------------------------------------------------------


def test_bucket_starts_full() -> None:
    bucket = Bucket(capacity=120, period_s=60)
    assert bucket.used(T) == 0
    assert bucket.reset_after(T) == 0.0
    assert bucket.retry_after(120, T) is None


def test_bucket_burst_then_continuous_refill() -> None:
    bucket = Bucket(capacity=120, period_s=60)  # 2 per second
    assert bucket.take(120, T) == 0
    assert bucket.used(T) == 120
    assert bucket.reset_after(T) == pytest.approx(60.0, abs=1e-6)
    assert bucket.retry_after(1, T) == pytest.approx(0.5, abs=1e-6)
    assert bucket.retry_after(10, T) == pytest.approx(5.0, abs=1e-6)
    assert bucket.used(T + 15) == 90
    assert bucket.retry_after(30, T + 15) is None
    assert bucket.retry_after(31, T + 15) == pytest.approx(0.5, abs=1e-6)
    assert bucket.reset_after(T + 15) == pytest.approx(45.0, abs=1e-6)


def test_bucket_counts_a_part_token_as_used() -> None:
    bucket = Bucket(capacity=120, period_s=60)
    bucket.take(120, T)
    assert bucket.used(T + 0.25) == 120  # 0.5 refilled
    assert bucket.retry_after(1, T + 0.25) == pytest.approx(0.25, abs=1e-6)
    assert bucket.used(T + 0.5) == 119


def test_bucket_never_holds_more_than_its_capacity() -> None:
    bucket = Bucket(capacity=120, period_s=60)
    bucket.take(120, T)
    assert bucket.used(T + 3600) == 0
    assert bucket.retry_after(120, T + 3600) is None
    assert bucket.retry_after(121, T + 3600) == pytest.approx(0.5, abs=1e-6)


def test_bucket_give_back_is_capped_and_debt_is_repaid_by_refill() -> None:
    bucket = Bucket(capacity=120, period_s=60)
    bucket.take(60, T)
    bucket.give(0, -500, T)  # a settle far below the reservation: back to full, no more
    assert bucket.used(T) == 0
    bucket.take(60, T)
    bucket.give(0, +90, T)  # settled 90 above the reservation: 30 in debt
    assert bucket.used(T) == 150
    assert bucket.reset_after(T) == pytest.approx(75.0, abs=1e-6)
    assert bucket.retry_after(1, T) == pytest.approx(15.5, abs=1e-6)
    assert bucket.used(T + 15) == 120
    assert bucket.retry_after(10, T + 20) is None


def test_bucket_counts_no_refill_for_time_it_already_saw() -> None:
    bucket = Bucket(capacity=60, period_s=60)
    bucket.take(30, T + 100)
    assert bucket.used(T + 90) == 30  # the clock stepped back: nothing refilled, nothing lost
    bucket.take(30, T + 90)
    # Back at T + 100 nothing has refilled: the time up to T + 100 was already counted.
    assert bucket.used(T + 100) == 60
    assert bucket.used(T + 110) == 50


# -- meters: sliding window -------------------------------------------------------------


def test_sliding_counts_the_current_window_and_weighs_the_previous_one() -> None:
    meter = Sliding(capacity=100, period_s=60)
    index = int(T // 60)
    assert meter.take(100, T + 30) == index
    assert meter.used(T + 30) == 100
    assert meter.reset_after(T + 30) == pytest.approx(30.0, abs=1e-6)
    assert meter.used(T + 60) == 100  # previous window, full weight
    assert meter.used(T + 90) == 50  # half of it still overlaps the last minute
    assert meter.used(T + 119) == 2  # ceil(100 / 60)
    assert meter.used(T + 120) == 0
    assert meter.counts == {}  # the window two periods back is dropped


def test_sliding_retry_after_values() -> None:
    meter = Sliding(capacity=100, period_s=60)
    meter.take(100, T + 30)
    # The current window alone is full: wait for the next window plus the decay of this one.
    assert meter.retry_after(1, T + 30) == pytest.approx(30.6, abs=1e-6)
    # Next window, previous one at full weight: 0.6 s until 1 % of it has decayed.
    assert meter.retry_after(1, T + 60) == pytest.approx(0.6, abs=1e-6)
    assert meter.retry_after(100, T + 60) == pytest.approx(60.0, abs=1e-6)
    assert meter.retry_after(50, T + 90) is None
    meter.take(50, T + 90)
    assert meter.retry_after(1, T + 90) == pytest.approx(0.6, abs=1e-6)
    # Asking for more than the limit: the end of the window, the soonest anything changes.
    assert meter.retry_after(101, T + 90) == pytest.approx(30.0, abs=1e-6)


def test_sliding_retry_when_the_current_window_is_the_obstacle() -> None:
    meter = Sliding(capacity=100, period_s=60)
    meter.take(80, T + 10)
    retry = meter.retry_after(30, T + 10)
    assert retry == pytest.approx(57.5, abs=1e-6)
    assert retry is not None
    # And it is exact: at that moment the 30 fit, a moment before they do not.
    assert meter.retry_after(30, T + 10 + retry + 1e-6) is None
    assert meter.retry_after(30, T + 10 + retry - 0.01) is not None


def test_sliding_give_applies_to_the_current_or_previous_window_only() -> None:
    meter = Sliding(capacity=100, period_s=60)
    index = int(T // 60)
    meter.take(80, T + 50)
    meter.give(index, -50, T + 50)
    assert meter.used(T + 50) == 30
    meter.give(index, -500, T + 55)  # never below zero
    assert meter.used(T + 55) == 0
    meter.take(40, T + 55)
    meter.give(index, +20, T + 90)  # the previous window: weighs 1/2 now
    assert meter.used(T + 90) == 30
    meter.give(index, +1000, T + 130)  # two windows back: gone, nothing to correct
    assert meter.used(T + 130) == 0
    meter.give(index + 100, +5, T + 130)  # a window never counted: ignored
    assert meter.used(T + 130) == 0


# -- meters: calendar -------------------------------------------------------------------


def test_calendar_meter_counts_within_the_window_and_rolls_over() -> None:
    meter = Calendar(100, cal(MINUTE), "UTC")
    assert meter.take(100, T + 10) == int(T)
    assert meter.used(T + 10) == 100
    assert meter.retry_after(1, T + 10) == pytest.approx(50.0, abs=1e-6)
    assert meter.retry_after(0, T + 10) is None
    assert meter.reset_after(T + 59.75) == pytest.approx(0.25, abs=1e-6)
    assert meter.used(T + 60) == 0
    assert meter.reset_after(T + 60) == pytest.approx(60.0, abs=1e-6)


def test_calendar_meter_give_only_touches_its_own_window() -> None:
    meter = Calendar(100, cal(MINUTE), "UTC")
    first = meter.take(80, T + 50)
    meter.give(first, -30, T + 55)
    assert meter.used(T + 55) == 50
    meter.give(first, -500, T + 55)
    assert meter.used(T + 55) == 0
    meter.take(10, T + 70)
    meter.give(first, +500, T + 70)  # that window is over
    assert meter.used(T + 70) == 10


def test_calendar_meter_never_goes_back_to_an_older_window() -> None:
    meter = Calendar(2, cal(MINUTE), "UTC")
    newer = meter.take(2, T + 61)
    assert meter.used(T + 59) == 2  # NTP stepped the clock back a few seconds
    assert meter.retry_after(1, T + 59) == pytest.approx(61.0, abs=1e-6)  # end of `newer`
    assert meter.take(0, T + 59) == newer


def test_calendar_meter_daily_in_berlin_resets_at_local_midnight() -> None:
    meter = Calendar(1000, cal(DAY), "Europe/Berlin")
    midnight = at(2030, 6, 13)
    meter.take(1000, midnight - 30)
    assert meter.reset_after(midnight - 30) == pytest.approx(30.0, abs=1e-6)
    assert meter.retry_after(1, midnight - 1) == pytest.approx(1.0, abs=1e-6)
    assert meter.used(midnight) == 0
    assert meter.reset_after(midnight) == pytest.approx(DAY, abs=1e-6)


# -- meters: leases ---------------------------------------------------------------------


def test_leases_count_requests_in_flight_until_returned_or_expired() -> None:
    meter = Leases(2)
    meter.lease("a", T + 30)
    meter.lease("b", T + 60)
    assert meter.used(T) == 2
    assert meter.retry_after(1, T) == LEASE_RETRY_S
    assert LEASE_RETRY_S == 1.0
    meter.release("a")
    meter.release("a")  # idempotent
    assert meter.used(T) == 1
    assert meter.retry_after(1, T) is None
    meter.lease("b", T + 90)  # renewing is not a second lease
    assert meter.used(T + 60) == 1
    assert meter.used(T + 90) == 0  # expired at its deadline


def test_new_meter_follows_the_algorithm() -> None:
    def limit(algorithm: Algorithm, period: int | None = MINUTE) -> Limit:
        return Limit("x", Measure.TOKENS, 7, period, algorithm)

    bucket = new_meter(limit(Algorithm.BUCKET), "UTC")
    assert isinstance(bucket, Bucket)
    assert (bucket.capacity, bucket.period_s) == (7, MINUTE)
    sliding = new_meter(limit(Algorithm.SLIDING), "UTC")
    assert isinstance(sliding, Sliding)
    assert (sliding.capacity, sliding.period_s) == (7, MINUTE)
    calendar = new_meter(limit(Algorithm.CALENDAR, DAY), "Europe/Berlin")
    assert isinstance(calendar, Calendar)
    assert (calendar.capacity, calendar.time_zone) == (7, "Europe/Berlin")
    leases = new_meter(Limit("c", Measure.CONCURRENT, 3, None), "UTC")
    assert isinstance(leases, Leases)
    assert leases.capacity == 3
