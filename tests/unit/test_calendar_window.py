"""Calendar windows in a policy's time zone (`extproc.quota.meters.calendar_window`): days
from local midnight across daylight-saving changes, blocks of days, calendar months, and the
exact instant a window ends. Every clock here is a plain number."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.policy.model import Limit
from extproc.quota.meters import (
    calendar_window,
)
from tests.unit.quota_limits import DAY, HOUR, KOLKATA, MINUTE, MONTH, NOW, at, cal


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
