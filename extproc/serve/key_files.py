"""Reading provider key pools' files into a `KeyRing` (I/O, off the event loop), and the
warnings their expiry dates call for. The reloader calls `KeyPoolWatch.check` every round:
a few `stat` calls, and a re-read only when a file or the policy moved."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from extproc.gate.credentials import Secret
from extproc.gate.key_ring import KeyRing, RingKey, budget_scope
from extproc.gate.runtime import Current
from extproc.policy import PolicySnapshot
from extproc.quota.windows import ScopedLimit
from extproc.telemetry.events import Event, EventBus
from extproc.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


def read_ring(snapshot: PolicySnapshot) -> tuple[KeyRing, list[str]]:
    """Every pool's keys that could be read; a problem per key that could not (named by
    pool, key and file, never by content)."""
    pools: dict[str, tuple[RingKey, ...]] = {}
    problems: list[str] = []
    for pool in snapshot.key_pools:
        keys = []
        for key in pool.keys:
            try:
                value = key.file.read_text().strip()
            except OSError as exc:
                problems.append(f"key {pool.name}/{key.name}: {key.file}: {exc.strerror}")
                continue
            if not value:
                problems.append(f"key {pool.name}/{key.name}: {key.file} is empty")
                continue
            scope = budget_scope(pool.name, key.name)
            keys.append(
                RingKey(
                    pool=pool.name, name=key.name, secret=Secret(value),
                    expires_at=key.expires_at, warn_before_s=pool.warn_before_s,
                    budget=tuple(ScopedLimit(scope, limit) for limit in key.limits),
                )
            )  # fmt: skip
        pools[pool.name] = tuple(keys)
    return KeyRing(pools=pools), problems


def _stat(path: Path) -> object:
    try:
        st = os.stat(path)
    except OSError as exc:
        return ("unreadable", exc.errno)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)


class KeyPoolWatch:
    """Keeps a worker's `KeyRing` in step with the pools in force and their files."""

    def __init__(
        self, *, keys: Current[KeyRing], metrics: Metrics, events: EventBus,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self._keys = keys
        self._metrics = metrics
        self._events = events
        self._clock = clock
        self._print: object = None
        self._warned: set[str] = set()  # fingerprints already warned about

    async def check(self, snapshot: PolicySnapshot) -> list[str]:
        """Re-read when something moved; the problems found (empty when none or unchanged)."""
        seen = (snapshot.version, tuple(_stat(k.file) for p in snapshot.key_pools for k in p.keys))
        problems: list[str] = []
        if seen != self._print:
            self._print = seen
            ring, problems = await asyncio.to_thread(read_ring, snapshot)
            self._keys.swap(ring)
            counts = ", ".join(f"{pool}: {len(keys)}" for pool, keys in ring.pools.items())
            log.info("provider key pools read (keys usable per pool: %s)", counts or "none")
        self._expiry(self._keys.current)
        return problems

    def _expiry(self, ring: KeyRing) -> None:
        now = self._clock()
        for keys in ring.pools.values():
            for key in keys:
                if key.expires_at is None:
                    continue
                left = key.expires_at - now
                self._metrics.key_expiry.labels(key.pool, key.name).set(max(0.0, left))
                if left <= key.warn_before_s and key.fingerprint not in self._warned:
                    self._warned.add(key.fingerprint)
                    when = "expired" if left <= 0 else f"expires in {left / 86400:.1f} days"
                    message = f"provider key {key.label} {when}"
                    log.warning("%s", message)
                    self._events.publish(Event(kind="key_expiring", message=message))
