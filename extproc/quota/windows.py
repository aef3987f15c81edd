"""Window arithmetic and key building: pure functions, no I/O, no clock of their own.

Both quota backends call these, so a limit means the same thing whichever store is used.
Windows are fixed and aligned to the Unix epoch (so a `1d` window is a UTC calendar day and
every sidecar in a fleet agrees on boundaries without talking to each other).
"""

from __future__ import annotations

from dataclasses import dataclass

from extproc.policy.model import Limit, Measure

KEY_PREFIX = "tg"


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose counter: a namespace, one gateway key inside it, or the namespace's use of one
    forwarded route (`policy.model.Route`)."""

    namespace: str
    key_name: str | None = None
    route: str | None = None

    @property
    def label(self) -> str:
        if self.route is not None:
            return f"{self.namespace} on route {self.route}"
        return self.namespace if self.key_name is None else f"{self.namespace}/{self.key_name}"


@dataclass(frozen=True, slots=True)
class ScopedLimit:
    """A policy limit bound to the scope it counts for (and its policy's time zone)."""

    scope: Scope
    limit: Limit
    time_zone: str = "UTC"

    @property
    def base_key(self) -> str:
        return limit_key(self.scope, self.limit.name)


def limit_key(scope: Scope, limit_name: str) -> str:
    """Store key of a limit, without window suffix.

    The `{ns:…}` hash tag puts every key of one namespace in one Redis Cluster slot, so a
    single script can check and debit all of a caller's limits atomically.
    """
    tag = f"{{ns:{scope.namespace}}}"
    if scope.route is not None:
        return f"{KEY_PREFIX}:{tag}:route:{scope.route}:{limit_name}"
    if scope.key_name is None:
        return f"{KEY_PREFIX}:{tag}:ns:{limit_name}"
    return f"{KEY_PREFIX}:{tag}:key:{scope.key_name}:{limit_name}"


def window_start(now: float, period_s: int) -> int:
    """Start (unix seconds) of the fixed window of length `period_s` that contains `now`."""
    return int(now // period_s) * period_s


def window_key(base_key: str, start: int) -> str:
    return f"{base_key}:{start}"


def reset_after(now: float, period_s: int) -> float:
    """Seconds from `now` until the window containing `now` ends (always > 0)."""
    return window_start(now, period_s) + period_s - now


def format_duration(seconds: float) -> str:
    """OpenAI's `x-ratelimit-reset-*` style: `1s`, `6m0s`, `1h2m3s`, `250ms`."""
    if round(seconds * 1000) < 1000:
        return f"{max(0, round(seconds * 1000))}ms"
    total = int(-(-seconds // 1))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def describe_limit_period(limit: Limit) -> str:
    if limit.months:
        return f"{limit.months}mo"
    return "" if limit.period_s is None else describe_period(limit.period_s)


def describe_period(period_s: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if period_s % size == 0:
            return f"{period_s // size}{unit}"
    return f"{period_s}s"


def amount_of(measure: Measure, requests: int, tokens: int, usd_micros: int) -> int:
    """The part of a cost a limit of `measure` counts (concurrency is counted by leases)."""
    if measure is Measure.REQUESTS:
        return requests
    if measure is Measure.TOKENS:
        return tokens
    if measure is Measure.USD:
        return usd_micros
    return 0
