"""Limits and instants shared by the pure quota-arithmetic tests (windows, calendar windows,
meters, limiter): plain numbers for clocks, so nothing there sleeps or reads the time."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from extproc.policy.model import Algorithm, Limit, Measure
from extproc.quota.windows import Scope, ScopedLimit

MINUTE, HOUR, DAY, MONTH = 60, 3600, 86400, 30 * 86400
NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
T = 1_907_532_780.0  # a minute boundary (2030-06-12T22:13:00Z)

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


def cal(period: int, months: int = 0) -> Limit:
    """A calendar limit of `period` seconds (or `months` calendar months)."""
    return Limit("c", Measure.TOKENS, 1, period, Algorithm.CALENDAR, months)


RPM = scoped("rpm", Measure.REQUESTS, 10, MINUTE)
TPM = scoped("tpm", Measure.TOKENS, 1000, MINUTE)
DAILY = scoped("daily", Measure.TOKENS, 5000, DAY)
INFLIGHT = scoped("inflight", Measure.CONCURRENT, 2, None)
