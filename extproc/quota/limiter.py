"""The all-or-nothing decision over a caller's limits, as pure functions over meters.

`MemoryBackend` runs it directly; the Redis backend's Lua script implements the same rules
and the shared backend suite holds both to them.
"""

from __future__ import annotations

from collections.abc import Sequence

from extproc.policy.model import Measure
from extproc.quota.meters import Leases, Meter
from extproc.quota.store import Cost, LimitState, Refusal
from extproc.quota.windows import ScopedLimit


def need_of(scoped: ScopedLimit, cost: Cost) -> int:
    if scoped.limit.measure is Measure.CONCURRENT:
        return 1
    return cost.amount(scoped.limit.measure)


def decide(
    limits: Sequence[ScopedLimit], meters: Sequence[Meter], needs: Sequence[int], now: float
) -> Refusal | None:
    """The refusal to report, or None when every limit has room.

    When several limits refuse, the one that frees up last is reported, so a client that
    honours Retry-After does not come back into another refusal.
    """
    worst: Refusal | None = None
    for scoped, meter, need in zip(limits, meters, needs, strict=True):
        if need <= 0:
            continue
        retry = meter.retry_after(need, now)
        if retry is None:
            continue
        refusal = Refusal(scoped, need, meter.used(now), retry)
        if worst is None or refusal.retry_after > worst.retry_after:
            worst = refusal
    return worst


def states(
    limits: Sequence[ScopedLimit], meters: Sequence[Meter], now: float
) -> tuple[LimitState, ...]:
    return tuple(
        LimitState(s, m.used(now), 0.0 if isinstance(m, Leases) else m.reset_after(now))
        for s, m in zip(limits, meters, strict=True)
    )
