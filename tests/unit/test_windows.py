"""Pure window arithmetic (`extproc.quota.windows`): epoch-aligned window starts and resets,
the Redis key of each limit and window, and how durations and periods are written for people.
Every clock here is a plain number: nothing sleeps, nothing reads the time."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.policy.model import Algorithm, Limit, Measure
from extproc.quota.windows import (
    KEY_PREFIX,
    Scope,
    amount_of,
    describe_limit_period,
    describe_period,
    format_duration,
    limit_key,
    reset_after,
    window_key,
    window_start,
)
from tests.unit.quota_limits import DAY, HOUR, KEY, MINUTE, MONTH, NOW, NS, TPM, scoped

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
