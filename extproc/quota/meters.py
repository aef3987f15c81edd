"""How each limit algorithm counts: pure arithmetic on a small state, the clock passed in.

`MemoryBackend` keeps one meter per limit key and calls these methods; the Redis backend's
Lua script (`redis_scripts.lua`) implements the same arithmetic on the same state, and the
shared backend suite (tests/integration/test_quota_*.py) holds both to identical answers.

Every meter answers the same questions:
    used(now)            what counts against the limit now (feeds x-ratelimit-* headers)
    retry_after(need, now) None when `need` fits now, else seconds until it would
    take(need, now)      count `need` now; returns the window it was counted in
    give(window, delta, now)  settle correction: +delta more, -delta back, in that window
    reset_after(now)     seconds until the meter is empty again (headers)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from extproc.policy.model import Algorithm, Limit

# A refused concurrency lease frees up when some request ends; we cannot know when.
LEASE_RETRY_S = 1.0


@dataclass(slots=True)
class Bucket:
    """Token bucket: holds up to `amount`, refills `amount` per `period` continuously.
    A settle that costs more than reserved may take it below zero (debt, repaid by refill)."""

    capacity: int
    period_s: int
    available: float = math.nan
    ts: float = 0.0

    def _refill(self, now: float) -> float:
        if math.isnan(self.available):
            self.available, self.ts = float(self.capacity), now
        elif now > self.ts:
            rate = self.capacity / self.period_s
            self.available = min(self.capacity, self.available + (now - self.ts) * rate)
            self.ts = now
        return self.available

    def used(self, now: float) -> int:
        return max(0, math.ceil(self.capacity - self._refill(now) - 1e-9))

    def retry_after(self, need: int, now: float) -> float | None:
        available = self._refill(now)
        if need <= available + 1e-9:
            return None
        return (need - available) * self.period_s / self.capacity

    def take(self, need: int, now: float) -> int:
        self._refill(now)
        self.available -= need
        return 0

    def give(self, window: int, delta: int, now: float) -> None:
        self._refill(now)
        self.available = min(float(self.capacity), self.available - delta)

    def reset_after(self, now: float) -> float:
        return (self.capacity - self._refill(now)) * self.period_s / self.capacity


@dataclass(slots=True)
class Sliding:
    """Sliding-window counter: the previous fixed window's count, weighted by how much of
    it still overlaps the last `period`, plus the current window's count. An estimate that
    assumes the previous window's requests were spread evenly: it smooths the burst a fixed
    window allows at its edge (up to 2x the limit) without storing every request."""

    capacity: int
    period_s: int
    counts: dict[int, int] = field(default_factory=dict)  # window index -> count
    latest: int = -1  # a clock stepping back stays in the newest window seen

    def _position(self, now: float) -> tuple[int, float]:
        index = int(now // self.period_s)
        if index < self.latest:
            return self.latest, 0.0
        return index, now - index * self.period_s

    def _estimate(self, now: float) -> tuple[int, float]:
        index, elapsed = self._position(now)
        for old in [k for k in self.counts if k < index - 1]:
            del self.counts[old]
        previous = self.counts.get(index - 1, 0)
        weight = 1 - elapsed / self.period_s
        return index, previous * weight + self.counts.get(index, 0)

    def used(self, now: float) -> int:
        return math.ceil(self._estimate(now)[1] - 1e-9)

    def retry_after(self, need: int, now: float) -> float | None:
        index, estimate = self._estimate(now)
        if estimate + need <= self.capacity + 1e-9:
            return None
        current, previous = self.counts.get(index, 0), self.counts.get(index - 1, 0)
        window_end = self.period_s - self._position(now)[1]
        if current + need <= self.capacity and previous > 0:
            # Wait until the previous window's weight has decayed enough.
            fraction = 1 - (self.capacity - current - need) / previous
            return max(0.0, fraction * self.period_s - (self.period_s - window_end))
        if need > self.capacity or current == 0:
            return window_end
        fraction = max(0.0, 1 - (self.capacity - need) / current)
        return window_end + fraction * self.period_s

    def take(self, need: int, now: float) -> int:
        index, _ = self._estimate(now)
        self.counts[index] = self.counts.get(index, 0) + need
        self.latest = max(self.latest, index)
        return index

    def give(self, window: int, delta: int, now: float) -> None:
        index, _ = self._estimate(now)
        if window in (index, index - 1) and window in self.counts:
            self.counts[window] = max(0, self.counts[window] + delta)

    def reset_after(self, now: float) -> float:
        return self.period_s - self._position(now)[1]


@dataclass(slots=True)
class Calendar:
    """Fixed windows: epoch-aligned for sub-day periods; whole days (or months) starting at
    midnight in the policy's time zone otherwise."""

    capacity: int
    limit: Limit
    time_zone: str
    start: int = -1
    end: int = -1
    count: int = 0

    def _roll(self, now: float) -> tuple[int, int]:
        start, end = calendar_window(self.limit, self.time_zone, now)
        if start > self.start:  # never back: a clock stepping back keeps the newer window
            self.start, self.end, self.count = start, end, 0
        return self.start, self.end

    def used(self, now: float) -> int:
        self._roll(now)
        return self.count

    def retry_after(self, need: int, now: float) -> float | None:
        _, end = self._roll(now)
        return None if self.count + need <= self.capacity else max(0.0, end - now)

    def take(self, need: int, now: float) -> int:
        start, _ = self._roll(now)
        self.count += need
        return start

    def give(self, window: int, delta: int, now: float) -> None:
        start, _ = self._roll(now)
        if window == start:
            self.count = max(0, self.count + delta)

    def reset_after(self, now: float) -> float:
        return max(0.0, self._roll(now)[1] - now)


@dataclass(slots=True)
class Leases:
    """Concurrency: one lease per request in flight; a lease nobody returns expires."""

    capacity: int
    leases: dict[str, float] = field(default_factory=dict)  # request id -> deadline

    def _live(self, now: float) -> int:
        for request_id in [r for r, deadline in self.leases.items() if deadline <= now]:
            del self.leases[request_id]
        return len(self.leases)

    def used(self, now: float) -> int:
        return self._live(now)

    def retry_after(self, need: int, now: float) -> float | None:
        return None if self._live(now) + 1 <= self.capacity else LEASE_RETRY_S

    def lease(self, request_id: str, deadline: float) -> None:
        self.leases[request_id] = deadline

    def release(self, request_id: str) -> None:
        self.leases.pop(request_id, None)


Meter = Bucket | Sliding | Calendar | Leases


def new_meter(limit: Limit, time_zone: str) -> Meter:
    period = limit.period_s or 1
    if limit.algorithm is Algorithm.LEASE:
        return Leases(limit.amount)
    if limit.algorithm is Algorithm.BUCKET:
        return Bucket(limit.amount, period)
    if limit.algorithm is Algorithm.SLIDING:
        return Sliding(limit.amount, period)
    return Calendar(limit.amount, limit, time_zone)


_windows: dict[tuple[Limit, str], tuple[int, int]] = {}
_MAX_WINDOWS = 10_000


def calendar_window(limit: Limit, time_zone: str, now: float) -> tuple[int, int]:
    """[start, end) in unix seconds of the CALENDAR window of `limit` containing `now`.
    Remembered per limit and zone while `now` stays inside it: the arithmetic (time zone,
    dates) was 32 us of every in-process quota touch, the lookup is under 1 us."""
    key = (limit, time_zone)
    window = _windows.get(key)
    if window is not None and window[0] <= now < window[1]:
        return window
    window = _calendar_window(limit, time_zone, now)
    if len(_windows) >= _MAX_WINDOWS:
        _windows.clear()
    _windows[key] = window
    return window


def _calendar_window(limit: Limit, time_zone: str, now: float) -> tuple[int, int]:
    period = limit.period_s or 1
    if limit.months == 0 and (period < 86400 or period % 86400):
        start = int(now // period) * period
        return start, start + period
    tz = _zone(time_zone)
    # Whole seconds: fromtimestamp rounds to the microsecond, which would put an instant
    # just before midnight into the next day. Midnights are whole seconds.
    today = datetime.fromtimestamp(math.floor(now), tz).date()
    if limit.months:
        index = (today.year * 12 + today.month - 1) // limit.months * limit.months
        first = date(index // 12, index % 12 + 1, 1)
        after = index + limit.months
        return _midnight(first, tz), _midnight(date(after // 12, after % 12 + 1, 1), tz)
    days = period // 86400
    first = date.fromordinal(today.toordinal() // days * days)
    return _midnight(first, tz), _midnight(first + timedelta(days=days), tz)


def _midnight(day: date, tz: ZoneInfo) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp())


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)
