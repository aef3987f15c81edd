"""Who spent what, recently: the data behind the control API's top consumers.

Settlements are added to per-minute and per-hour buckets in memory (a dict update on the
data path, nothing more). With a shared store, a background flush every interval moves them
into Redis sorted sets (`tg:top:<measure>:m:<minute>` / `:h:<hour>`) so that a query on any
sidecar sees the whole fleet; the query unions the buckets of the window.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from redis import exceptions as redis_errors

from extproc.quota.store import Cost

MEASURES = ("tokens", "requests", "usd")
# window -> (bucket granularity, buckets summed); "1m" sums the current and previous minute.
WINDOWS = {"1m": ("m", 1), "1h": ("m", 60), "1d": ("h", 24)}
_SIZE = {"m": 60, "h": 3600}
_KEEP_S = {"m": 2 * 3600, "h": 2 * 86400}

Bucket = tuple[str, str, int]  # measure, granularity (m|h), bucket index


class Ledger:
    def __init__(self, *, client: Any = None, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._clock = clock
        self._local: dict[Bucket, dict[str, int]] = defaultdict(dict)
        self._pending: dict[Bucket, dict[str, int]] = defaultdict(dict)

    def record(self, namespace: str, key: str | None, cost: Cost) -> None:
        now = self._clock()
        member = f"{namespace}/{key or ''}"
        for measure, amount in zip(MEASURES, (cost.tokens, cost.requests, cost.usd_micros),
                                   strict=True):  # fmt: skip
            if amount <= 0:
                continue
            for unit, size in (("m", 60), ("h", 3600)):
                bucket = (measure, unit, int(now // size))
                target = self._pending if self._client is not None else self._local
                target[bucket][member] = target[bucket].get(member, 0) + amount
        if self._client is None and len(self._local) > 2000:
            self._forget_old(now)

    def _forget_old(self, now: float) -> None:
        for bucket in [
            b for b in self._local if b[2] * (60 if b[1] == "m" else 3600) < now - 2 * 86400
        ]:
            del self._local[bucket]

    async def flush(self) -> None:
        """Move pending buckets to the shared store (background task, every interval)."""
        if self._client is None or not self._pending:
            return
        pending, self._pending = self._pending, defaultdict(dict)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for (measure, unit, index), members in pending.items():
                    key = f"tg:top:{measure}:{unit}:{index}"
                    for member, amount in members.items():
                        pipe.zincrby(key, amount, member)
                    pipe.expire(key, _KEEP_S[unit])
                await pipe.execute()
        except (TimeoutError, redis_errors.RedisError, OSError):
            for bucket, members in pending.items():  # keep them for the next flush
                for member, amount in members.items():
                    self._pending[bucket][member] = self._pending[bucket].get(member, 0) + amount

    async def top(self, window: str, measure: str, count: int) -> list[tuple[str, str, int]]:
        """[(namespace, key, amount)], largest first."""
        unit, buckets = WINDOWS[window]
        last = int(self._clock() // _SIZE[unit])
        indexes = range(last - buckets + 1, last + 1) if buckets > 1 else range(last - 1, last + 1)
        totals: dict[str, int] = defaultdict(int)
        if self._client is not None:
            await self.flush()
            keys = [f"tg:top:{measure}:{unit}:{i}" for i in indexes]
            for key in keys:
                for member, score in await self._client.zrange(key, 0, -1, withscores=True):
                    totals[member.decode()] += int(score)
        else:
            for i in indexes:
                for member, amount in self._local.get((measure, unit, i), {}).items():
                    totals[member] += amount
        ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:count]
        return [(*member.split("/", 1), amount) for member, amount in ranked]  # type: ignore[misc]
