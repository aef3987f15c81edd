"""Redis quota store: one script call per decision (reserve, debit, settle), atomic on the
server, timed by the server's clock.

Everything a caller's limits need lives under one `{ns:<namespace>}` hash tag, so one script
touches one Redis Cluster slot. The script is loaded with EVALSHA and reloaded on NOSCRIPT
(restart, failover, SCRIPT FLUSH) by redis-py's `Script`; a READONLY answer (we reached a
demoted primary after a failover) drops the pool's idle connections and retries (up to 3
times), which reconnects to the new primary. Anything else the store does wrong becomes
QuotaStoreError, and the caller's fail mode decides what happens (see `failover.py`).

Each call has a deadline that discounts the time this process's event loop was starved
(`deadline.py`); redis-py's own socket timeout is only a backstop past it. With an
`Instance`, reservations belong to this process and its liveness is kept in every namespace
where it holds one (`redis_liveness.py`), so a dead sidecar's leases come back in seconds.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from extproc.errors import QuotaStoreError
from extproc.policy.model import Algorithm, FailMode
from extproc.quota.backends.redis_batch import DEFAULT_STALL_S, ScriptBatch
from extproc.quota.backends.redis_liveness import Heartbeat, Instance, Liveness
from extproc.quota.deadline import STARVED_WALL_FACTOR, LoopLag
from extproc.quota.limiter import need_of
from extproc.quota.meters import calendar_window
from extproc.quota.queue import queue_keys
from extproc.quota.store import (
    DEFAULT_MAX_IN_FLIGHT,
    Cost,
    Decision,
    LimitState,
    QuotaStore,
    Refusal,
    Reservation,
    Ticket,
)
from extproc.quota.windows import KEY_PREFIX, ScopedLimit

log = logging.getLogger(__name__)

SCRIPT = (Path(__file__).with_name("redis_scripts.lua")).read_text()
_KIND = {
    Algorithm.BUCKET: "B",
    Algorithm.SLIDING: "S",
    Algorithm.CALENDAR: "C",
    Algorithm.LEASE: "L",
}
# Bounded delay per request when Redis is slow or gone: the running time a call may take
# (`deadline.py`). redis-py's socket timeouts are set past the starved wall cap, as a backstop
# that never fires first (it cannot tell a starved loop from a slow store).
DEFAULT_TIMEOUT_S = 0.25
_BACKSTOP_FACTOR = STARVED_WALL_FACTOR + 2
# Connections past the quota calls' share (the quota store keeps `max_in_flight` calls in
# flight), for the upkeep that shares the client: overrides refresh, ledger flush, reset.
_SPARE_CONNECTIONS = 4
# READONLY answers one call may meet after a failover before it gives up: the retry can
# draw a connection another call is just returning from the demoted node.
_READONLY_RETRIES = 3


def connect(
    url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, password: str | None = None,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
) -> Any:  # fmt: skip
    """A client for `redis://`, `rediss://`, `unix://` or `redis+cluster://` (Cluster, TLS
    with `rediss+cluster://`). `password` is for a URL that carries none. The pool fits
    `max_in_flight` quota calls (redis-py fails a call past its pool instead of waiting),
    and so does each of a Cluster client's per-node pools. `timeout_s` is the quota calls'
    deadline; the client's socket timeouts are its backstop (10x), which also bounds the
    upkeep that shares the client (overrides, ledger)."""
    backstop = timeout_s * _BACKSTOP_FACTOR
    options: dict[str, Any] = {
        "socket_timeout": backstop,
        "socket_connect_timeout": backstop,
        "retry_on_timeout": False,  # the circuit breaker decides when to try again
        "health_check_interval": 30,
    }
    if password is not None:
        options["password"] = password
    pool = max_in_flight + _SPARE_CONNECTIONS
    if "+cluster://" in url:
        plain = url.replace("+cluster://", "://", 1)
        return RedisCluster.from_url(plain, socket_timeout=backstop, password=password,
                                     socket_connect_timeout=backstop,
                                     max_connections=max(100, pool))  # fmt: skip
    return aioredis.from_url(url, max_connections=pool, **options)


class RedisBackend(QuotaStore):
    def __init__(
        self,
        client: Any,
        *,
        lease_ttl_s: float,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        instance: Instance | None = None,
        lag: LoopLag | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """`instance`: this process, whose liveness the store keeps (None: reservations
        belong to nobody and only their lease TTL ends them). `lag`: the event-loop monitor
        the deadlines read (one of its own by default, started at the first call). `clock`
        is for tests only; in service the script uses the server's TIME."""
        self._client = client
        self._script = client.register_script(SCRIPT)
        # Group commit (redis_batch.py) on a single Redis; a Cluster client calls directly.
        stall_s = min(timeout_s, DEFAULT_STALL_S)
        self._batch = (
            None
            if isinstance(client, RedisCluster)
            else ScriptBatch(client, SCRIPT, stall_s=stall_s)
        )
        self._lease_ttl_s = lease_ttl_s
        self._timeout_s = timeout_s
        self._lag = lag if lag is not None else LoopLag()
        self._clock = clock
        self._liveness = None if instance is None else Liveness(instance=instance, client=client,
                                                                clock=clock)  # fmt: skip
        self._heartbeat: Heartbeat | None = None
        self._me = "" if instance is None else instance.id
        self._instance_ttl = "0" if instance is None else repr(instance.ttl_s)

    @property
    def liveness(self) -> Liveness | None:
        return self._liveness

    def start_heartbeat(self) -> None:
        """Renew this instance's liveness every third of its TTL until `aclose` (needs the
        running loop; a no-op without an instance)."""
        if self._liveness is not None and self._heartbeat is None:
            self._heartbeat = Heartbeat(liveness=self._liveness)
            self._heartbeat.start()

    async def reserve(
        self,
        request_id: str,
        limits: Sequence[ScopedLimit],
        cost: Cost,
        fail_mode: FailMode = FailMode.CLOSED,
        *,
        ticket: Ticket | None = None,
        keep: bool = True,
    ) -> Decision:
        needs = [need_of(s, cost) for s in limits]
        op = "reserve" if keep else "take"
        answer = await self._run(op, request_id, limits, needs, ticket=ticket)
        reservation = Reservation(request_id, tuple(limits), tuple(0 for _ in limits), cost)
        decision = _decision(answer, limits, needs, reservation)
        if decision.allowed and keep and self._liveness is not None:
            self._liveness.hold(request_id, _namespace(limits))
        return decision

    async def debit(
        self, reservation: Reservation, extra: Cost, fail_mode: FailMode = FailMode.CLOSED
    ) -> Decision:
        limits = reservation.limits
        needs = [0 if s.limit.period_s is None else need_of(s, extra) for s in limits]
        answer = await self._run("debit", reservation.request_id, limits, needs)
        grown = Reservation(reservation.request_id, limits, reservation.windows,
                            reservation.cost + extra)  # fmt: skip
        return _decision(answer, limits, needs, grown)

    async def settle(self, reservation: Reservation, actual: Cost) -> None:
        needs = [need_of(s, actual) for s in reservation.limits]
        await self._run("settle", reservation.request_id, reservation.limits, needs)
        if self._liveness is not None:
            self._liveness.drop(reservation.request_id)

    async def peek(self, limits: Sequence[ScopedLimit]) -> tuple[LimitState, ...]:
        if not limits:
            return ()
        answer = await self._run("peek", "-", limits, [0] * len(limits))
        held = Reservation("-", tuple(limits), (), Cost())
        return _decision(answer, limits, [0] * len(limits), held).states

    async def leave(self, limits: Sequence[ScopedLimit], member: str) -> None:
        if not limits:
            return
        queue, holds = queue_keys(limits[0].scope)
        try:  # one slot (the capacity's hash tag): one round trip
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.zrem(queue, member)
                pipe.zrem(holds, member)
                await pipe.execute()
        except (TimeoutError, redis_errors.RedisError, OSError) as exc:
            raise QuotaStoreError(f"quota store leave failed: {type(exc).__name__}") from exc

    async def queue(self, limits: Sequence[ScopedLimit]) -> tuple[tuple[str, float], ...]:
        if not limits:
            return ()
        queue, holds = queue_keys(limits[0].scope)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.zrange(queue, 0, -1, withscores=True)
                now = self._clock() if self._clock is not None else time.time()
                pipe.zrangebyscore(holds, "(" + repr(now), "+inf")
                tickets, held = await pipe.execute()
        except (TimeoutError, redis_errors.RedisError, OSError) as exc:
            raise QuotaStoreError(f"quota store queue failed: {type(exc).__name__}") from exc
        live = {_text(m) for m in held}
        return tuple((_text(m), float(s)) for m, s in tickets if _text(m) in live)

    async def reset(self, limits: Sequence[ScopedLimit]) -> int:
        keys = [s.base_key for s in limits if s.limit.period_s is not None]
        if not keys:
            return 0
        try:  # one slot (the namespace's hash tag), so one DEL even on a Cluster
            return int(await self._client.delete(*keys))
        except (TimeoutError, redis_errors.RedisError, OSError) as exc:
            raise QuotaStoreError(f"quota store reset failed: {type(exc).__name__}") from exc

    async def _run(
        self,
        op: str,
        request_id: str,
        limits: Sequence[ScopedLimit],
        needs: Sequence[int],
        *,
        ticket: Ticket | None = None,
    ) -> Any:
        namespace = _namespace(limits)
        tag = f"{KEY_PREFIX}:{{ns:{namespace}}}"
        keys = [f"{tag}:res:{request_id}", f"{tag}:open", f"{tag}:inst",
                *(s.base_key for s in limits)]  # fmt: skip
        if ticket is not None:
            keys += queue_keys(limits[0].scope)
        now = self._clock() if self._clock is not None else None
        specs = ";".join(
            _limit_spec(scoped, need, now) for scoped, need in zip(limits, needs, strict=True)
        )
        me = self._me if op != "peek" else ""
        args: list[str | float] = [
            op, "" if now is None else repr(now), request_id, self._lease_ttl_s, specs, me,
            self._instance_ttl,
        ]  # fmt: skip
        if ticket is not None:
            args.append(f"{ticket.member};{ticket.score!r};{ticket.hold_s!r}")
        try:
            answer = await self._call(keys, args)
        except (TimeoutError, redis_errors.RedisError, OSError) as exc:
            raise QuotaStoreError(f"quota store {op} failed: {type(exc).__name__}") from exc
        if self._liveness is not None and me:
            self._liveness.renewed(namespace)
        if op != "settle":
            _log_recovered(answer, len(limits), namespace)
        return answer

    async def _call(self, keys: list[str], args: list[str | float]) -> Any:
        """One script call within the call's deadline (StoreTimeout, LoopStarved)."""
        self._lag.ensure_running()
        async with self._lag.deadline(self._timeout_s):
            for attempt in range(_READONLY_RETRIES + 1):
                try:
                    if self._batch is not None:
                        return await self._batch.call(keys, args)
                    return await self._script(keys=keys, args=args)
                except redis_errors.ResponseError as exc:
                    if not _readonly(exc) or attempt == _READONLY_RETRIES:
                        raise
                    # A failover demoted the node we talk to: reconnect to the new primary.
                    await self._reset_connections()
            raise AssertionError("unreachable")

    async def _reset_connections(self) -> None:
        """Drop the idle connections (they lead to the demoted node) and mark those in use
        by other calls to be dropped when they come back, so that no call's reply is cut:
        dropping them all at once (redis-py's default) cut replies under a real failover and
        opened the breaker. The pool's lock is held meanwhile, as redis-py's own `release`
        does, so that no call draws an idle connection while it is being closed."""
        pool = getattr(self._client, "connection_pool", None)
        if pool is None:  # a Cluster client follows the topology itself
            return
        await pool.update_active_connections_for_reconnect()
        async with getattr(pool, "_lock", contextlib.nullcontext()):
            await pool.disconnect(inuse_connections=False)

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except (TimeoutError, redis_errors.RedisError, OSError) as exc:
            raise QuotaStoreError(f"quota store unreachable: {type(exc).__name__}") from exc

    async def aclose(self) -> None:
        if self._heartbeat is not None:
            await self._heartbeat.stop()
        if self._liveness is not None:
            await self._liveness.retire()
        await self._lag.aclose()
        await self._client.aclose()


def _readonly(exc: redis_errors.ResponseError) -> bool:
    """A write refused by a replica: READONLY on its own (ReadOnlyError), or, inside a
    script, as Redis 6 reports it: "Error running script ... -READONLY You can't write
    against a read only replica." (a plain ResponseError). The refused write was the
    script's first, so nothing was applied and the call may run again."""
    return isinstance(exc, redis_errors.ReadOnlyError) or "READONLY" in str(exc)


def _namespace(limits: Sequence[ScopedLimit]) -> str:
    return limits[0].scope.namespace if limits else "-"


def _log_recovered(answer: Any, limits: int, namespace: str) -> None:
    """The script says how many reservations of dead instances it closed (charged as
    recorded, leases released): rare, and worth a line in the log."""
    if len(answer) > 3 + 2 * limits and int(answer[3 + 2 * limits]) > 0:
        log.warning(
            "namespace %s: closed %d reservations of sidecar instances that stopped renewing "
            "their liveness (charged as reserved, concurrency leases released)",
            namespace, int(answer[3 + 2 * limits]),
        )  # fmt: skip


def _limit_spec(scoped: ScopedLimit, need: int, now: float | None) -> str:
    limit = scoped.limit
    calendar = "0,0,0"
    if limit.algorithm is Algorithm.CALENDAR:
        calendar = _calendar_bounds(scoped, time.time() if now is None else now)
    return f"{_KIND[limit.algorithm]},{limit.amount},{limit.period_s or 1},{need},{calendar}"


_bounds_cache: dict[ScopedLimit, tuple[int, int, str]] = {}


def _calendar_bounds(scoped: ScopedLimit, at: float) -> str:
    """Window boundaries need the time zone database, which Lua has not: computed here for
    the window this clock sees and the next one (the script picks by the server's clock),
    and reused while this clock stays inside that window."""
    cached = _bounds_cache.get(scoped)
    if cached is not None and cached[0] <= at < cached[1]:
        return cached[2]
    start, stop = calendar_window(scoped.limit, scoped.time_zone, at)
    next_stop = calendar_window(scoped.limit, scoped.time_zone, stop)[1]
    if len(_bounds_cache) > 10_000:
        _bounds_cache.clear()
    text = f"{start},{stop},{next_stop}"
    _bounds_cache[scoped] = (start, stop, text)
    return text


def _decision(
    answer: Any, limits: Sequence[ScopedLimit], needs: Sequence[int], held: Reservation
) -> Decision:
    ok, worst, retry = int(answer[0]), int(answer[1]), float(answer[2])
    states = tuple(
        LimitState(s, int(answer[3 + 2 * i]), float(answer[4 + 2 * i]))
        for i, s in enumerate(limits)
    )
    ahead = int(answer[4 + 2 * len(limits)]) if len(answer) > 4 + 2 * len(limits) else -1
    if ok == 1:
        return Decision(held, None, states, ahead=ahead)
    if worst == -1:  # the limits had room, but not for the tickets ahead of it too
        behind = Refusal(limits[0], needs[0], states[0].used, 0.0)
        return Decision(None, behind, states, ahead=ahead, queued=True)
    scoped = limits[worst - 1]
    refusal = Refusal(scoped, needs[worst - 1], states[worst - 1].used, retry)
    return Decision(None, refusal, states, ahead=ahead)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
