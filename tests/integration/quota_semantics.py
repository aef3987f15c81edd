"""The shared semantics suite of the quota backends: what its tests share.

Every test of the suite (test_quota_reserve_settle, test_quota_expiry_debit,
test_quota_algorithms) runs against `MemoryBackend` and `RedisBackend` (a real redis-server
on a Unix socket, one per module, flushed before each test) through the `backend_factory`
fixture of conftest.py, with one fake clock driving both, and expects the same exact answers
from both; test_quota_backends_agree runs both on one sequence of operations and compares
every decision and every state, step by step.

The fake clock is in the future on purpose: the Redis script sets absolute expiries
(PEXPIREAT) on calendar keys from the clock it is given, and the server expires keys by its
own clock, so a fake time in the past would make Redis drop those keys at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import redis

from extproc.policy.model import Algorithm, Limit, Measure
from extproc.quota.backends.memory import DEFAULT_LEASE_TTL_S, MemoryBackend
from extproc.quota.backends.redis import RedisBackend, connect
from extproc.quota.store import Cost, Decision, LimitState, QuotaStore, Refusal, Reservation
from extproc.quota.windows import Scope, ScopedLimit
from tests.redis_server import RedisServer

T0 = 1_907_532_780.0  # 2030-06-12 22:13:00 UTC: a minute boundary, 1 h 47 min before midnight
NS = Scope("team-a")
BERLIN = ZoneInfo("Europe/Berlin")
WINDOWED = [Algorithm.CALENDAR, Algorithm.SLIDING, Algorithm.BUCKET]
# Refuses everything and never changes: a reserve that includes it reads counters only.
BLOCKER = ScopedLimit(NS, Limit("blocker", Measure.REQUESTS, 0, 60))
HUGE = Cost(requests=1, tokens=10**12, usd_micros=10**12)
ABS = 1e-6  # tolerance of reset_after / retry_after (float arithmetic in Python and Lua)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def lim(
    name: str,
    measure: Measure,
    amount: int,
    period: int | None,
    algorithm: Algorithm = Algorithm.CALENDAR,
    *,
    months: int = 0,
    time_zone: str = "UTC",
    scope: Scope = NS,
) -> ScopedLimit:
    return ScopedLimit(scope, Limit(name, measure, amount, period, algorithm, months), time_zone)


def berlin(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN).timestamp()


# -- the two backends ---------------------------------------------------------------------

Scenario = Callable[[QuotaStore], Awaitable[None]]


@dataclass(frozen=True)
class BackendFactory:
    """Opens a fresh backend of one kind on a given fake clock."""

    kind: str
    server: RedisServer | None = None

    @asynccontextmanager
    async def open(
        self, clock: FakeClock, *, lease_ttl_s: float = DEFAULT_LEASE_TTL_S
    ) -> AsyncIterator[QuotaStore]:
        backend: QuotaStore
        if self.server is None:
            backend = MemoryBackend(clock=clock, lease_ttl_s=lease_ttl_s)
        else:
            client = connect(self.server.url, timeout_s=10.0)
            backend = RedisBackend(client, lease_ttl_s=lease_ttl_s, timeout_s=10.0, clock=clock)
        try:
            yield backend
        finally:
            await backend.aclose()

    def run(
        self, clock: FakeClock, scenario: Scenario, *, lease_ttl_s: float = DEFAULT_LEASE_TTL_S
    ) -> None:
        async def main() -> None:
            async with self.open(clock, lease_ttl_s=lease_ttl_s) as backend:
                await scenario(backend)

        asyncio.run(main())


def flush(server: RedisServer) -> None:
    client = redis.Redis(unix_socket_path=str(server.socket))
    try:
        client.flushall()
    finally:
        client.close()


# -- reading and checking -----------------------------------------------------------------


async def probe(backend: QuotaStore, limits: Sequence[ScopedLimit]) -> tuple[LimitState, ...]:
    """Every limit's state, read through a reserve that is always refused."""
    decision = await backend.reserve("probe", [*limits, BLOCKER], HUGE)
    assert not decision.allowed
    return decision.states[:-1]


async def counters(backend: QuotaStore, limits: Sequence[ScopedLimit]) -> dict[str, int]:
    return {s.scoped.limit.name: s.used for s in await probe(backend, limits)}


def allowed(decision: Decision) -> Reservation:
    assert decision.refusal is None
    assert decision.reservation is not None
    return decision.reservation


def refused(decision: Decision) -> Refusal:
    assert decision.reservation is None
    assert decision.refusal is not None
    return decision.refusal


def assert_refusal(refusal: Refusal, *, used: int, retry_after: float) -> None:
    assert refusal.used == used
    assert refusal.retry_after == pytest.approx(retry_after, abs=ABS)


def used(states: Sequence[LimitState]) -> list[int]:
    return [s.used for s in states]


def resets(states: Sequence[LimitState]) -> list[float]:
    return [s.reset_after for s in states]


@asynccontextmanager
async def both(
    server: RedisServer, clock: FakeClock, *, lease_ttl_s: float = DEFAULT_LEASE_TTL_S
) -> AsyncIterator[tuple[QuotaStore, QuotaStore]]:
    flush(server)
    async with (
        BackendFactory("memory").open(clock, lease_ttl_s=lease_ttl_s) as memory,
        BackendFactory("redis", server).open(clock, lease_ttl_s=lease_ttl_s) as shared,
    ):
        yield memory, shared


def assert_same(memory: Decision, shared: Decision, where: str = "") -> None:
    """Both backends decided alike and report the same states (floats within ABS)."""
    assert memory.allowed == shared.allowed, where
    if memory.reservation is not None and shared.reservation is not None:
        mine, theirs = memory.reservation, shared.reservation
        assert (mine.request_id, mine.limits, mine.cost) == (
            theirs.request_id,
            theirs.limits,
            theirs.cost,
        ), where
    assert (memory.refusal is None) == (shared.refusal is None), where
    if memory.refusal is not None and shared.refusal is not None:
        mine_r, theirs_r = memory.refusal, shared.refusal
        assert (mine_r.scoped, mine_r.needed, mine_r.used) == (
            theirs_r.scoped,
            theirs_r.needed,
            theirs_r.used,
        ), where
        assert mine_r.retry_after == pytest.approx(theirs_r.retry_after, abs=ABS), where
    assert [s.scoped for s in memory.states] == [s.scoped for s in shared.states], where
    assert used(memory.states) == used(shared.states), where
    assert resets(memory.states) == pytest.approx(resets(shared.states), abs=ABS), where
