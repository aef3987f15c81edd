"""Pure quota arithmetic: window alignment, key building, durations, and the limiter's
decision over counters (`extproc.quota.windows`, `extproc.quota.limiter`)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.policy.model import Limit, Measure
from extproc.quota.backend import Cost, LimitState, Refusal
from extproc.quota.limiter import CONCURRENCY_RETRY_S, decide, need_of, states_after, window_of
from extproc.quota.windows import (
    KEY_PREFIX,
    Scope,
    ScopedLimit,
    amount_of,
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


def scoped(
    name: str, measure: Measure, amount: int, period: int | None, scope: Scope = NS
) -> ScopedLimit:
    return ScopedLimit(scope, Limit(name, measure, amount, period))


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


# -- limiter.decide ---------------------------------------------------------------------


def test_need_of_and_window_of() -> None:
    cost = Cost(requests=1, tokens=250, usd_micros=7)
    assert need_of(RPM, cost) == 1
    assert need_of(TPM, cost) == 250
    assert need_of(INFLIGHT, cost) == 1
    assert need_of(INFLIGHT, Cost()) == 1
    assert window_of(TPM, NOW) == 1_699_999_980
    assert window_of(DAILY, NOW) == 1_699_920_000
    assert window_of(INFLIGHT, NOW) == 0


def test_decide_everything_fits() -> None:
    limits = [RPM, TPM, DAILY, INFLIGHT]
    assert decide(limits, [0, 0, 0, 0], Cost(requests=1, tokens=100), NOW) is None


def test_decide_fits_exactly_at_the_limit() -> None:
    # 9 + 1 == 10 requests, 900 + 100 == 1000 tokens, 1 + 1 == 2 leases
    limits = [RPM, TPM, INFLIGHT]
    assert decide(limits, [9, 900, 1], Cost(requests=1, tokens=100), NOW) is None


def test_decide_refusal_names_the_limit() -> None:
    refusal = decide([RPM, TPM, DAILY], [3, 950, 100], Cost(requests=1, tokens=100), NOW)
    assert refusal == Refusal(TPM, needed=100, used=950, retry_after=40.0)
    assert refusal.scoped.limit.name == "tpm"
    assert not refusal.never_fits


def test_decide_one_over_the_limit_refuses() -> None:
    refusal = decide([TPM], [901], Cost(tokens=100), NOW)
    assert refusal is not None
    assert (refusal.needed, refusal.used) == (100, 901)


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
def test_decide_reports_the_refusal_that_frees_up_last(order: tuple[int, int, int]) -> None:
    limits = [RPM, TPM, DAILY]
    used = [10, 1000, 5000]  # all three full
    refusal = decide([limits[i] for i in order], [used[i] for i in order], Cost(1, 1), NOW)
    assert refusal is not None
    assert refusal.scoped is DAILY
    assert refusal.retry_after == 6400.0


def test_decide_minute_limit_beats_concurrency_when_it_frees_later() -> None:
    refusal = decide([INFLIGHT, RPM], [2, 10], Cost(requests=1), NOW)
    assert refusal is not None
    assert refusal.scoped is RPM
    assert refusal.retry_after == 40.0


def test_decide_concurrency_needs_one_per_request() -> None:
    assert decide([INFLIGHT], [1], Cost(), NOW) is None
    refusal = decide([INFLIGHT], [2], Cost(), NOW)
    assert refusal == Refusal(INFLIGHT, needed=1, used=2, retry_after=CONCURRENCY_RETRY_S)
    assert CONCURRENCY_RETRY_S == 1.0


def test_decide_skips_zero_need_measures() -> None:
    # A requests-only cost never trips a token limit, even an exhausted (overshot) one.
    assert decide([TPM, DAILY, RPM], [1500, 9999, 0], Cost(requests=1), NOW) is None
    # And a tokens-only cost never trips a request limit.
    assert decide([RPM, TPM], [10, 0], Cost(tokens=5), NOW) is None


def test_decide_never_fits_refusal() -> None:
    refusal = decide([TPM], [0], Cost(tokens=1001), NOW)
    assert refusal is not None
    assert refusal.never_fits
    assert decide([TPM], [0], Cost(tokens=1000), NOW) is None


def test_decide_requires_one_counter_per_limit() -> None:
    with pytest.raises(ValueError):
        decide([RPM, TPM], [0], Cost(requests=1), NOW)


def test_states_after() -> None:
    states = states_after([RPM, TPM, INFLIGHT], [4, 1200, 1], NOW)
    assert states == (
        LimitState(RPM, 4, 40.0),
        LimitState(TPM, 1200, 40.0),
        LimitState(INFLIGHT, 1, 0.0),
    )
    assert [s.remaining for s in states] == [6, 0, 1]
