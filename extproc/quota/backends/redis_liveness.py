"""Which sidecar instance holds a reservation, and whether it is still alive.

An instance is one process (each worker is one). Its reservations carry its id (record field
`o`, and an index `tg:{ns:N}:inst:<id>` per namespace), and its liveness deadline lives in
every namespace where it holds something (`tg:{ns:N}:inst`, instance -> deadline, in the
namespace's own hash tag so that the reserve/debit/settle script of that namespace can read
it: one Cluster slot, no extra round trip). Every script call renews the caller's deadline
in that namespace; the heartbeat renews it, every third of the TTL, in the namespaces where
this instance holds reservations and made no call lately, so that a plain request waiting
minutes for a long answer keeps its lease.

When an instance stops renewing (SIGKILL, OOM, a node gone), the next script call in the
namespace, from any sidecar, closes its reservations there atomically: charged as recorded
(the estimate plus stream debits: it may have been billed), concurrency leases released.
So a crash locks a `concurrent:` limit for at most the instance TTL (10 s by default)
instead of the lease TTL (10 minutes). An instance that was only cut off (a partition, a
stall longer than the TTL) and comes back settles as usual: its late settle replaces the
recorded cost by the true one, exactly once (see the script's `close`).

The registry `tg:instances` (instance -> deadline, its own slot) is for operators: the
sidecars alive now, `ZRANGEBYSCORE tg:instances <now> +inf`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis import exceptions as redis_errors

from extproc.quota.windows import KEY_PREFIX

log = logging.getLogger(__name__)

REGISTRY = f"{KEY_PREFIX}:instances"
DEFAULT_INSTANCE_TTL_S = 10.0
_FORGET_AFTER_S = 86400.0  # registry entries of instances dead this long are dropped


@dataclass(frozen=True, slots=True, kw_only=True)
class Instance:
    id: str
    ttl_s: float = DEFAULT_INSTANCE_TTL_S

    @classmethod
    def new(cls, *, ttl_s: float = DEFAULT_INSTANCE_TTL_S) -> Instance:
        """A new id per process start: a restarted worker is another instance, so the
        reservations of the one that died are not mistaken for its own."""
        return cls(id=f"{socket.gethostname()}/{os.getpid()}/{os.urandom(4).hex()}", ttl_s=ttl_s)

    @property
    def renew_every_s(self) -> float:
        """A third of the TTL: two renewals may be lost before the instance counts as dead."""
        return self.ttl_s / 3


def inst_key(namespace: str) -> str:
    return f"{KEY_PREFIX}:{{ns:{namespace}}}:inst"


class Liveness:
    """This instance's open reservations per namespace, and the renewal of its deadline
    where it holds them."""

    def __init__(
        self, *, instance: Instance, client: Any, clock: Callable[[], float] | None = None
    ) -> None:
        """`clock` is for tests only (the script's clock, which then also says when a call
        last renewed a namespace); in service the server's TIME, and this host's monotonic
        clock for the bookkeeping."""
        self.instance = instance
        self._client = client
        self._clock = clock
        self._now = clock if clock is not None else time.monotonic
        self._held: dict[str, str] = {}  # request id -> namespace
        self._renewed: dict[str, float] = {}  # namespace -> when a call last renewed it

    def hold(self, request_id: str, namespace: str) -> None:
        self._held[request_id] = namespace

    def drop(self, request_id: str) -> None:
        self._held.pop(request_id, None)

    def renewed(self, namespace: str) -> None:
        """A script call just renewed this instance's deadline in `namespace`."""
        self._renewed[namespace] = self._now()

    def held_namespaces(self) -> set[str]:
        return set(self._held.values())

    def due(self) -> set[str]:
        """Namespaces where this instance holds reservations and no call renewed it in the
        last half beat (so that at most one beat is ever skipped)."""
        since = self._now() - self.instance.renew_every_s / 2
        held = self.held_namespaces()
        for namespace in [n for n in self._renewed if n not in held]:
            del self._renewed[namespace]
        return {n for n in held if self._renewed.get(n, -1.0) < since}

    async def renew(self) -> int:
        """One heartbeat: the registry and every namespace that is due, in one pipeline (not
        a script: it is upkeep, not a quota decision). Returns the namespaces renewed."""
        due = self.due()
        now = self._clock() if self._clock is not None else await self._server_time()
        deadline = now + self.instance.ttl_s
        me = self.instance.id
        pipe = self._client.pipeline(transaction=False)
        for namespace in due:
            pipe.zadd(inst_key(namespace), {me: deadline})
        pipe.zadd(REGISTRY, {me: deadline})
        pipe.zremrangebyscore(REGISTRY, "-inf", now - _FORGET_AFTER_S)
        await pipe.execute()
        stamp = self._now()
        for namespace in due:
            self._renewed[namespace] = stamp
        return len(due)

    async def _server_time(self) -> float:
        """The store's clock, which the scripts compare deadlines with."""
        seconds, micros = await self._client.time()
        return int(seconds) + int(micros) / 1e6

    async def retire(self) -> None:
        """A graceful exit leaves the registry at once (best effort)."""
        with contextlib.suppress(TimeoutError, redis_errors.RedisError, OSError):
            await self._client.zrem(REGISTRY, self.instance.id)


class Heartbeat:
    """Renews an instance's liveness every third of its TTL, until stopped. A store that
    does not answer is logged once, and its return once; the quota calls' own breaker is
    not touched (upkeep never decides a request)."""

    def __init__(self, *, liveness: Liveness) -> None:
        self._liveness = liveness
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="liveness")

    async def _run(self) -> None:
        while True:
            try:
                await self._liveness.renew()
            except (TimeoutError, redis_errors.RedisError, OSError) as exc:
                if not self._failing:
                    log.warning("liveness renewal failed (%s); retrying", type(exc).__name__)
                self._failing = True
            else:
                if self._failing:
                    log.warning("liveness renewed again")
                self._failing = False
            await asyncio.sleep(self._liveness.instance.renew_every_s)  # the beat's period

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
