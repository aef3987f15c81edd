"""Redis quota store: one script call per decision (reserve, debit, settle), atomic on the
server, timed by the server's clock.

Everything a caller's limits need lives under one `{ns:<namespace>}` hash tag, so one script
touches one Redis Cluster slot. The script is loaded with EVALSHA and reloaded on NOSCRIPT
(restart, failover, SCRIPT FLUSH) by redis-py's `Script`; a READONLY answer (we reached a
demoted primary after a failover) drops the pool's connections and retries once, which
reconnects to the new primary. Anything else the store does wrong becomes QuotaStoreError,
and the caller's fail mode decides what happens (see `failover.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from extproc.errors import QuotaStoreError
from extproc.policy.model import Algorithm, FailMode, Measure
from extproc.quota.limiter import need_of
from extproc.quota.meters import calendar_window
from extproc.quota.store import (
    DEFAULT_MAX_IN_FLIGHT,
    Cost,
    Decision,
    LimitState,
    QuotaStore,
    Refusal,
    Reservation,
)
from extproc.quota.windows import KEY_PREFIX, ScopedLimit

SCRIPT = (Path(__file__).with_name("redis_scripts.lua")).read_text()
_KIND = {
    Algorithm.BUCKET: "B",
    Algorithm.SLIDING: "S",
    Algorithm.CALENDAR: "C",
    Algorithm.LEASE: "L",
}
# Bounded delay per request when Redis is slow or gone: connect and answer timeouts.
DEFAULT_TIMEOUT_S = 0.25
# Connections past the quota calls' share (the quota store keeps `max_in_flight` calls in
# flight), for the upkeep that shares the client: overrides refresh, ledger flush, reset.
_SPARE_CONNECTIONS = 4


def connect(
    url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, password: str | None = None,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
) -> Any:  # fmt: skip
    """A client for `redis://`, `rediss://`, `unix://` or `redis+cluster://` (Cluster, TLS
    with `rediss+cluster://`). `password` is for a URL that carries none. The pool fits
    `max_in_flight` quota calls (redis-py fails a call past its pool instead of waiting),
    and so does each of a Cluster client's per-node pools."""
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry_on_timeout": False,  # the circuit breaker decides when to try again
        "health_check_interval": 30,
    }
    if password is not None:
        options["password"] = password
    pool = max_in_flight + _SPARE_CONNECTIONS
    if "+cluster://" in url:
        plain = url.replace("+cluster://", "://", 1)
        return RedisCluster.from_url(plain, socket_timeout=timeout_s, password=password,
                                     socket_connect_timeout=timeout_s,
                                     max_connections=max(100, pool))  # fmt: skip
    return aioredis.from_url(url, max_connections=pool, **options)


class RedisBackend(QuotaStore):
    def __init__(
        self,
        client: Any,
        *,
        lease_ttl_s: float,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """`clock` is for the shared test suite only; in service the script uses TIME."""
        self._client = client
        self._script = client.register_script(SCRIPT)
        self._lease_ttl_s = lease_ttl_s
        self._clock = clock

    async def reserve(
        self,
        request_id: str,
        limits: Sequence[ScopedLimit],
        cost: Cost,
        fail_mode: FailMode = FailMode.CLOSED,
    ) -> Decision:
        needs = [need_of(s, cost) for s in limits]
        answer = await self._run("reserve", request_id, limits, needs)
        reservation = Reservation(request_id, tuple(limits), tuple(0 for _ in limits), cost)
        return _decision(answer, limits, needs, reservation)

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

    async def peek(self, limits: Sequence[ScopedLimit]) -> tuple[LimitState, ...]:
        if not limits:
            return ()
        answer = await self._run("peek", "-", limits, [0] * len(limits))
        held = Reservation("-", tuple(limits), (), Cost())
        return _decision(answer, limits, [0] * len(limits), held).states

    async def reset(self, limits: Sequence[ScopedLimit]) -> int:
        keys = [s.base_key for s in limits if s.limit.period_s is not None]
        if not keys:
            return 0
        try:  # one slot (the namespace's hash tag), so one DEL even on a Cluster
            return int(await self._client.delete(*keys))
        except (TimeoutError, redis_errors.RedisError, OSError) as exc:
            raise QuotaStoreError(f"quota store reset failed: {type(exc).__name__}") from exc

    async def _run(
        self, op: str, request_id: str, limits: Sequence[ScopedLimit], needs: Sequence[int]
    ) -> Any:
        namespace = limits[0].scope.namespace if limits else "-"
        tag = f"{KEY_PREFIX}:{{ns:{namespace}}}"
        keys = [f"{tag}:res:{request_id}", f"{tag}:open", *(s.base_key for s in limits)]
        now = self._clock() if self._clock is not None else None
        specs = ";".join(
            _limit_spec(scoped, need, now) for scoped, need in zip(limits, needs, strict=True)
        )
        args: list[str | float] = [
            op, "" if now is None else repr(now), request_id, self._lease_ttl_s, specs,
        ]  # fmt: skip
        try:
            return await self._call(keys, args)
        except (TimeoutError, redis_errors.RedisError, OSError) as exc:
            raise QuotaStoreError(f"quota store {op} failed: {type(exc).__name__}") from exc

    async def _call(self, keys: list[str], args: list[str | float]) -> Any:
        try:
            return await self._script(keys=keys, args=args)
        except redis_errors.ReadOnlyError:
            # A failover demoted the node we talk to: reconnect (to the new primary) once.
            await self._reset_connections()
            return await self._script(keys=keys, args=args)

    async def _reset_connections(self) -> None:
        pool = getattr(self._client, "connection_pool", None)
        if pool is not None:
            await pool.disconnect()

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except (TimeoutError, redis_errors.RedisError, OSError) as exc:
            raise QuotaStoreError(f"quota store unreachable: {type(exc).__name__}") from exc

    async def aclose(self) -> None:
        await self._client.aclose()


def _limit_spec(scoped: ScopedLimit, need: int, now: float | None) -> str:
    limit = scoped.limit
    calendar = "0,0,0"
    if limit.algorithm is Algorithm.CALENDAR:
        calendar = _calendar_bounds(scoped, time.time() if now is None else now)
    counts_requests = 1 if limit.measure is Measure.REQUESTS else 0
    return (
        f"{_KIND[limit.algorithm]},{limit.amount},{limit.period_s or 1},{need},"
        f"{calendar},{counts_requests}"
    )


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
    if ok == 1:
        return Decision(held, None, states)
    scoped = limits[worst - 1]
    refusal = Refusal(scoped, needs[worst - 1], states[worst - 1].used, retry)
    return Decision(None, refusal, states)
