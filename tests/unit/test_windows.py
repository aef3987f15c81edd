"""Pure quota arithmetic: window alignment, key building, durations, calendar windows in a
policy time zone, the meters of every algorithm, and the limiter's all-or-nothing decision
over meters (`extproc.quota.windows`, `extproc.quota.meters`, `extproc.quota.limiter`).
Every clock here is a plain number: nothing sleeps, nothing reads the time."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.policy.model import Algorithm, Limit, Measure
from extproc.quota.limiter import decide, need_of, states
from extproc.quota.meters import (
    LEASE_RETRY_S,
    Bucket,
    Calendar,
    Leases,
    Meter,
    Sliding,
    calendar_window,
    new_meter,
)
from extproc.quota.store import Cost, LimitState, Refusal
from extproc.quota.windows import (
    KEY_PREFIX,
    Scope,
    ScopedLimit,
    amount_of,
    describe_limit_period,
    describe_period,
    format_duration,
    limit_key,
    reset_after,
    window_key,
    window_start,
)

MINUTE, HOUR, DAY, MONTH = 60, 3600, 86400, 30 * 86400
NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z

NS = Scope("team-a")
KEY = Scope("team-a", "billing-svc")
BERLIN, KOLKATA = ZoneInfo("Europe/Berlin"), ZoneInfo("Asia/Kolkata")


def scoped(
    name: str, measure: Measure, amount: int, period: int | None, scope: Scope = NS
) -> ScopedLimit:
    return ScopedLimit(scope, Limit(name, measure, amount, period))


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, tz: ZoneInfo = BERLIN
) -> int:
    """Unix seconds of a wall-clock time in `tz`."""
    return int(datetime(year, month, day, hour, minute, tzinfo=tz).timestamp())


RPM = scoped("rpm", Measure.REQUESTS, 10, MINUTE)
TPM = scoped("tpm", Measure.TOKENS, 1000, MINUTE)
DAILY = scoped("daily", Measure.TOKENS, 5000, DAY)
INFLIGHT = scoped("inflight", Measure.CONCURRENT, 2, None)


# -- window_start / reset_after ---------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "expected"),
    [
        (MINUTE, 1_699_999_980),
        (HOUR, 1_699_999_200),
        (DAY, 1_699_920_000),
        (MONTH, 1_697_760_000),
    ],
)
def test_window_start_is_epoch_aligned(period: int, expected: int) -> None:
    start = window_start(NOW, period)
    assert start == expected
    assert start % period == 0
    assert start <= NOW < start + period


def test_daily_window_starts_at_utc_midnight() -> None:
    start = window_start(NOW, DAY)
    assert datetime.fromtimestamp(start, UTC) == datetime(2023, 11, 14, tzinfo=UTC)
    # The last instant of the day is still in it; midnight starts the next one.
    assert window_start(start + DAY - 0.001, DAY) == start
    assert window_start(start + DAY, DAY) == start + DAY


def test_window_start_at_exact_boundary_and_fraction() -> None:
    assert window_start(1_699_999_980.0, MINUTE) == 1_699_999_980
    assert window_start(1_699_999_979.999, MINUTE) == 1_699_999_920
    assert window_start(59.9, MINUTE) == 0
    assert isinstance(window_start(NOW + 0.5, MINUTE), int)


def test_thirty_day_window_is_epoch_aligned_not_calendar_month() -> None:
    start = window_start(NOW, MONTH)
    assert start == 655 * MONTH
    assert datetime.fromtimestamp(start, UTC) == datetime(2023, 10, 20, tzinfo=UTC)


def test_reset_after_exact_values() -> None:
    assert reset_after(NOW, MINUTE) == 40.0  # 22:13:20 -> 22:14:00
    assert reset_after(NOW, HOUR) == 2800.0  # -> 23:00:00
    assert reset_after(NOW, DAY) == 6400.0  # -> midnight
    assert reset_after(1_699_999_980.0, MINUTE) == 60.0  # at the boundary: a full window
    assert reset_after(1_699_999_979.75, MINUTE) == pytest.approx(0.25)


@given(
    now=st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False),
    period=st.sampled_from([1, MINUTE, HOUR, DAY, MONTH, 90, 7]),
)
def test_reset_after_is_in_zero_to_period(now: float, period: int) -> None:
    left = reset_after(now, period)
    assert 0 < left <= period
    start = window_start(now, period)
    assert start <= now < start + period


# -- keys -------------------------------------------------------------------------------


def test_scope_label() -> None:
    assert NS.label == "team-a"
    assert KEY.label == "team-a/billing-svc"


def test_namespace_limit_key_has_hash_tag() -> None:
    assert KEY_PREFIX == "tg"
    assert limit_key(NS, "tpm") == "tg:{ns:team-a}:ns:tpm"
    assert TPM.base_key == "tg:{ns:team-a}:ns:tpm"


def test_key_limit_key_shares_the_namespace_hash_tag() -> None:
    assert limit_key(KEY, "rpm") == "tg:{ns:team-a}:key:billing-svc:rpm"
    assert scoped("rpm", Measure.REQUESTS, 1, MINUTE, KEY).base_key == (
        "tg:{ns:team-a}:key:billing-svc:rpm"
    )


def test_keys_of_different_scopes_never_collide() -> None:
    keys = {
        limit_key(NS, "rpm"),
        limit_key(KEY, "rpm"),
        limit_key(Scope("team-b"), "rpm"),
        limit_key(Scope("team-b", "billing-svc"), "rpm"),
    }
    assert len(keys) == 4


def test_window_key_appends_window_start() -> None:
    start = window_start(NOW, MINUTE)
    assert window_key(TPM.base_key, start) == "tg:{ns:team-a}:ns:tpm:1699999980"


def test_amount_of_picks_the_measure() -> None:
    assert amount_of(Measure.REQUESTS, 1, 20, 300) == 1
    assert amount_of(Measure.TOKENS, 1, 20, 300) == 20
    assert amount_of(Measure.USD, 1, 20, 300) == 300
    assert amount_of(Measure.CONCURRENT, 1, 20, 300) == 0


# -- durations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.25, "250ms"),
        (0.0, "0ms"),
        (0.001, "1ms"),
        (0.5004, "500ms"),
        (0.9996, "1s"),  # rounds to 1000 ms: say it in seconds
        (1, "1s"),
        (1.0, "1s"),
        (59, "59s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (3599, "59m59s"),
        (3600, "1h0m0s"),
        (3723, "1h2m3s"),
        (86400, "24h0m0s"),
        # fractional seconds round up: a client that waits this long is past the reset
        (1.01, "2s"),
        (1.5, "2s"),
        (58.2, "59s"),
        (59.001, "1m0s"),
        (3722.1, "1h2m3s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("period", "text"),
    [
        (1, "1s"),
        (45, "45s"),
        (90, "90s"),
        (60, "1m"),
        (300, "5m"),
        (5400, "90m"),
        (3600, "1h"),
        (7200, "2h"),
        (86400, "1d"),
        (MONTH, "30d"),
    ],
)
def test_describe_period(period: int, text: str) -> None:
    assert describe_period(period) == text


def test_describe_limit_period() -> None:
    assert describe_limit_period(Limit("m", Measure.USD, 5, MONTH, Algorithm.CALENDAR, 1)) == "1mo"
    assert describe_limit_period(Limit("q", Measure.USD, 5, 3 * MONTH, months=3)) == "3mo"
    assert describe_limit_period(Limit("d", Measure.TOKENS, 5, DAY)) == "1d"
    assert describe_limit_period(Limit("c", Measure.CONCURRENT, 5, None)) == ""


def test_a_limit_without_period_is_a_lease() -> None:
    assert Limit("c", Measure.CONCURRENT, 5, None).algorithm is Algorithm.LEASE
    assert Limit("t", Measure.TOKENS, 5, MINUTE).algorithm is Algorithm.CALENDAR


# -- calendar_window --------------------------------------------------------------------


def cal(period: int, months: int = 0) -> Limit:
    return Limit("c", Measure.TOKENS, 1, period, Algorithm.CALENDAR, months)


@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin", "Asia/Kolkata"])
def test_calendar_window_below_a_day_is_epoch_aligned_in_every_time_zone(tz: str) -> None:
    assert calendar_window(cal(MINUTE), tz, NOW) == (1_699_999_980, 1_700_000_040)
    # Hours are UTC hours: in Kolkata (UTC+5:30) an hourly budget resets at :30 local.
    assert calendar_window(cal(HOUR), tz, NOW) == (1_699_999_200, 1_700_002_800)
    # Not a whole number of days: epoch-aligned blocks as well.
    start = int(NOW // (36 * HOUR)) * 36 * HOUR
    assert calendar_window(cal(36 * HOUR), tz, NOW) == (start, start + 36 * HOUR)


def test_calendar_day_in_utc() -> None:
    midnight = at(2023, 11, 14, tz=ZoneInfo("UTC"))
    assert calendar_window(cal(DAY), "UTC", NOW) == (midnight, midnight + DAY)
    assert calendar_window(cal(DAY), "UTC", midnight + DAY - 0.001) == (midnight, midnight + DAY)
    assert calendar_window(cal(DAY), "UTC", midnight + DAY)[0] == midnight + DAY


def test_calendar_window_an_instant_before_midnight_is_still_the_old_day() -> None:
    """The last representable instant before a window ends belongs to that window
    (`datetime.fromtimestamp` rounds to the microsecond; the local date is read from whole
    seconds so half a microsecond before midnight is not the next day)."""
    for tz in ("UTC", "Europe/Berlin", "Asia/Kolkata"):
        for limit in (cal(DAY), cal(7 * DAY), cal(MONTH, months=1)):
            end = calendar_window(limit, tz, NOW)[1]
            before = math.nextafter(end, 0)  # 2.4e-7 s before
            assert calendar_window(limit, tz, before) == calendar_window(limit, tz, NOW), (
                tz,
                limit,
            )


def test_calendar_day_starts_at_local_midnight_in_berlin() -> None:
    # NOW is 23:13:20 CET (UTC+1) on 14 November.
    assert calendar_window(cal(DAY), "Europe/Berlin", NOW) == (
        at(2023, 11, 14),
        at(2023, 11, 15),
    )
    # 23:00 UTC is midnight in Berlin: the next day, though it is still the 14th in UTC.
    assert calendar_window(cal(DAY), "Europe/Berlin", at(2023, 11, 15)) == (
        at(2023, 11, 15),
        at(2023, 11, 16),
    )
    assert datetime.fromtimestamp(at(2023, 11, 15), UTC) == datetime(2023, 11, 14, 23, tzinfo=UTC)


def test_calendar_day_when_berlin_springs_forward_lasts_23_hours() -> None:
    start, end = at(2030, 3, 31), at(2030, 4, 1)
    assert end - start == 23 * HOUR
    for local_time in (at(2030, 3, 31, 0, 30), at(2030, 3, 31, 1, 59), at(2030, 3, 31, 3, 0)):
        assert calendar_window(cal(DAY), "Europe/Berlin", local_time) == (start, end)
    assert calendar_window(cal(DAY), "Europe/Berlin", end - 1) == (start, end)
    assert calendar_window(cal(DAY), "Europe/Berlin", end)[0] == end
    assert calendar_window(cal(DAY), "Europe/Berlin", start - 1)[1] == start


def test_calendar_day_when_berlin_falls_back_lasts_25_hours() -> None:
    start, end = at(2030, 10, 27), at(2030, 10, 28)
    assert end - start == 25 * HOUR
    # 02:30 happens twice that night (00:30 and 01:30 UTC): both are the same day.
    twice = (
        datetime(2030, 10, 27, 0, 30, tzinfo=UTC).timestamp(),
        datetime(2030, 10, 27, 1, 30, tzinfo=UTC).timestamp(),
    )
    for moment in twice:
        assert calendar_window(cal(DAY), "Europe/Berlin", moment) == (start, end)
    assert calendar_window(cal(DAY), "Europe/Berlin", end - 1) == (start, end)


def test_calendar_day_in_kolkata_starts_at_18_30_utc() -> None:
    # NOW is 03:43:20 IST on 15 November.
    start, end = calendar_window(cal(DAY), "Asia/Kolkata", NOW)
    assert (start, end) == (at(2023, 11, 15, tz=KOLKATA), at(2023, 11, 16, tz=KOLKATA))
    assert datetime.fromtimestamp(start, UTC) == datetime(2023, 11, 14, 18, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("days", "moment", "first", "after"),
    [
        # Blocks of N days are aligned on day ordinals in the policy's zone: a 7-day
        # budget starts on Sundays, a 30-day one on a fixed 30-day grid.
        (7, date(2030, 6, 12), date(2030, 6, 9), date(2030, 6, 16)),
        (7, date(2030, 6, 9), date(2030, 6, 9), date(2030, 6, 16)),
        (7, date(2030, 6, 8), date(2030, 6, 2), date(2030, 6, 9)),
        (30, date(2030, 6, 20), date(2030, 6, 12), date(2030, 7, 12)),
        (2, date(2030, 6, 13), date(2030, 6, 12), date(2030, 6, 14)),
    ],
)
@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin", "Asia/Kolkata"])
def test_calendar_blocks_of_days(
    days: int, moment: date, first: date, after: date, tz: str
) -> None:
    zone = ZoneInfo(tz)
    now = at(moment.year, moment.month, moment.day, 12, 0, tz=zone)
    assert calendar_window(cal(days * DAY), tz, now) == (
        at(first.year, first.month, first.day, tz=zone),
        at(after.year, after.month, after.day, tz=zone),
    )
    if days == 7:
        assert first.weekday() == 6  # Sunday


@pytest.mark.parametrize(
    ("months", "moment", "first", "after"),
    [
        (1, date(2030, 6, 12), date(2030, 6, 1), date(2030, 7, 1)),
        (1, date(2030, 6, 1), date(2030, 6, 1), date(2030, 7, 1)),
        (1, date(2030, 6, 30), date(2030, 6, 1), date(2030, 7, 1)),
        (1, date(2030, 12, 31), date(2030, 12, 1), date(2031, 1, 1)),
        (1, date(2028, 2, 29), date(2028, 2, 1), date(2028, 3, 1)),
        (3, date(2030, 5, 10), date(2030, 4, 1), date(2030, 7, 1)),
        (3, date(2030, 12, 31), date(2030, 10, 1), date(2031, 1, 1)),
        (12, date(2030, 6, 12), date(2030, 1, 1), date(2031, 1, 1)),
    ],
)
@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin", "Asia/Kolkata"])
def test_calendar_months_start_on_the_first_at_local_midnight(
    months: int, moment: date, first: date, after: date, tz: str
) -> None:
    zone = ZoneInfo(tz)
    limit = cal(months * MONTH, months=months)
    for hour in (0, 12, 23):
        now = at(moment.year, moment.month, moment.day, hour, 0, tz=zone)
        assert calendar_window(limit, tz, now) == (
            at(first.year, first.month, first.day, tz=zone),
            at(after.year, after.month, after.day, tz=zone),
        )


def test_calendar_month_boundary_is_exact() -> None:
    month = cal(MONTH, months=1)
    july = at(2030, 7, 1)
    assert calendar_window(month, "Europe/Berlin", july - 0.001) == (at(2030, 6, 1), july)
    assert calendar_window(month, "Europe/Berlin", july) == (july, at(2030, 8, 1))
    # A month budget is not a 30-day block: June has 30 days, July 31, February 28.
    assert (
        calendar_window(month, "UTC", at(2030, 7, 15, tz=ZoneInfo("UTC")))[1]
        - at(2030, 7, 1, tz=ZoneInfo("UTC"))
        == 31 * DAY
    )
    feb = calendar_window(month, "UTC", at(2030, 2, 10, tz=ZoneInfo("UTC")))
    assert feb[1] - feb[0] == 28 * DAY


_CALENDAR_LIMITS = [
    cal(MINUTE),
    cal(HOUR),
    cal(36 * HOUR),
    cal(DAY),
    cal(7 * DAY),
    cal(MONTH),
    cal(MONTH, months=1),
    cal(3 * MONTH, months=3),
]


@given(
    now=st.floats(min_value=86400, max_value=4_000_000_000, allow_nan=False),
    limit=st.sampled_from(_CALENDAR_LIMITS),
    tz=st.sampled_from(["UTC", "Europe/Berlin", "Asia/Kolkata"]),
)
def test_calendar_window_contains_now_and_the_next_starts_where_it_ends(
    now: float, limit: Limit, tz: str
) -> None:
    start, end = calendar_window(limit, tz, now)
    assert isinstance(start, int)
    assert isinstance(end, int)
    assert start <= now < end
    assert calendar_window(limit, tz, end)[0] == end
    assert calendar_window(limit, tz, start) == (start, end)


# -- meters: token bucket ---------------------------------------------------------------

T = 1_907_532_780.0  # a minute boundary (2030-06-12T22:13:00Z)


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


# -- limiter ----------------------------------------------------------------------------


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
