"""The decision a backend makes, as a pure function over counters (no I/O, no clock).

`MemoryBackend` runs it directly; the Redis backend's Lua script implements the same rules
and the shared backend test-suite holds both to them.
"""

from __future__ import annotations

from collections.abc import Sequence

from extproc.policy.model import Measure
from extproc.quota.backend import Cost, LimitState, Refusal
from extproc.quota.windows import ScopedLimit, reset_after, window_start

# A refused concurrency limit frees up when some request ends; we cannot know when.
CONCURRENCY_RETRY_S = 1.0


def window_of(scoped: ScopedLimit, now: float) -> int:
    period = scoped.limit.period_s
    return 0 if period is None else window_start(now, period)


def need_of(scoped: ScopedLimit, cost: Cost) -> int:
    if scoped.limit.measure is Measure.CONCURRENT:
        return 1
    return cost.amount(scoped.limit.measure)


def retry_after_of(scoped: ScopedLimit, now: float) -> float:
    period = scoped.limit.period_s
    return CONCURRENCY_RETRY_S if period is None else reset_after(now, period)


def decide(
    limits: Sequence[ScopedLimit], used: Sequence[int], cost: Cost, now: float
) -> Refusal | None:
    """The refusal to report, or None when every limit has room for `cost`.

    When several limits refuse, the one that frees up last is reported, so a client that
    honours Retry-After does not come back into another refusal.
    """
    worst: Refusal | None = None
    for scoped, current in zip(limits, used, strict=True):
        need = need_of(scoped, cost)
        if need <= 0 or current + need <= scoped.limit.amount:
            continue
        refusal = Refusal(scoped, need, current, retry_after_of(scoped, now))
        if worst is None or refusal.retry_after > worst.retry_after:
            worst = refusal
    return worst


def states_after(
    limits: Sequence[ScopedLimit], used: Sequence[int], now: float
) -> tuple[LimitState, ...]:
    return tuple(
        LimitState(
            s,
            u,
            0.0 if s.limit.period_s is None else reset_after(now, s.limit.period_s),
        )
        for s, u in zip(limits, used, strict=True)
    )
