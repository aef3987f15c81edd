"""A starved event loop is not an unreachable store (extproc/quota/deadline.py), against a
real redis-server: the loop is held (a busy section, as CPU starvation or CFS throttling
does) right after a reserve was sent; Redis answers at once and the answer waits in the
socket. Fail-closed callers must get their decision, and the breaker must stay shut."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio.connection import AbstractConnection

from extproc.errors import Unavailable
from extproc.policy.model import FailMode, Limit, Measure
from extproc.quota import Cost, MemoryBackend, ScopedLimit
from extproc.quota.backends.redis import RedisBackend, connect
from extproc.quota.deadline import LoopLag
from extproc.quota.failover import FailoverStore
from extproc.telemetry.metrics import Metrics
from tests.integration.store_helpers import NS, REQUESTS, queued_settlements, times_down, used
from tests.redis_server import RedisServer
from tests.waiting import wait_until_async

ONE = ScopedLimit(NS, Limit("one", Measure.CONCURRENT, 1, None))
LIMITS = [REQUESTS, ONE]


class Starver:
    """Starves the event loop while the next command is in flight, in the order that makes
    a plain timeout fire with the answer in hand. Redis is frozen (SIGSTOP) before the
    command goes out; right after it is written (patched into redis-py's connection: the one
    place where "in flight" is exact), a callback thaws Redis and holds the loop for
    `seconds`. Redis answers during the hold, so when the loop runs again it finds the
    answer readable in the same iteration as the expired deadline."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.server: RedisServer | None = None

    def next_command(self, server: RedisServer, seconds: float) -> None:
        self.server, self.seconds = server, seconds
        server.pause()

    def written(self) -> None:
        if self.server is not None:
            asyncio.get_running_loop().call_soon(self._hold, self.server, self.seconds)
            self.server = None

    @staticmethod
    def _hold(server: RedisServer, seconds: float) -> None:
        end = time.monotonic() + seconds
        server.resume()
        while time.monotonic() < end:
            pass


@pytest.fixture
def starver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Starver]:
    starver = Starver()
    write = AbstractConnection._send_packed_command

    async def write_then_starve(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        await write(self, *args, **kwargs)
        starver.written()

    monkeypatch.setattr(AbstractConnection, "_send_packed_command", write_then_starve)
    yield starver


async def warm_store(server: RedisServer, metrics: Metrics, timeout_s: float) -> FailoverStore:
    shared = RedisBackend(connect(server.url, timeout_s=timeout_s), lease_ttl_s=600,
                          timeout_s=timeout_s)  # fmt: skip
    store = FailoverStore(local=MemoryBackend(), shared=shared, metrics=metrics,
                          probe_interval_s=0.05)  # fmt: skip
    warm = (await store.reserve("warm", LIMITS, Cost(1), FailMode.CLOSED)).reservation
    assert warm is not None and warm.origin == "shared"  # the script is loaded
    await store.settle(warm, Cost(1))
    return store


def test_a_starved_loop_does_not_open_the_breaker_or_refuse_fail_closed_callers(
    server: RedisServer, starver: Starver
) -> None:
    metrics = Metrics()

    async def scenario() -> None:
        store = await warm_store(server, metrics, timeout_s=0.25)
        starver.next_command(server, 0.6)  # more than twice the store timeout
        decision = await store.reserve("starved", LIMITS, Cost(1), FailMode.CLOSED)
        assert decision.reservation is not None and decision.reservation.origin == "shared"
        assert store.up
        await store.settle(decision.reservation, Cost(1))
        await store.aclose()

    asyncio.run(scenario())
    assert times_down(metrics) == 0
    assert asyncio.run(used(server, LIMITS)) == [2, 0]


def test_counting_the_starved_time_is_what_keeps_the_answer(
    server: RedisServer, starver: Starver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same starvation with the lag left out of the deadline (as before): the call
    times out with its answer in the socket, the breaker opens, a fail-closed caller gets
    503 "unreachable" from a healthy store."""
    monkeypatch.setattr(LoopLag, "starved", lambda self, since, now: 0.0)
    metrics = Metrics()

    async def scenario() -> None:
        store = await warm_store(server, metrics, timeout_s=0.25)
        starver.next_command(server, 0.6)
        with pytest.raises(Unavailable, match="unreachable"):
            await store.reserve("starved", LIMITS, Cost(1), FailMode.CLOSED)
        assert not store.up
        await store.aclose()

    asyncio.run(scenario())
    assert times_down(metrics) == 1


def test_starved_past_the_wall_cap_the_call_gets_its_fail_mode_but_the_breaker_stays_shut(
    server: RedisServer, starver: Starver
) -> None:
    """Bounded delay under starvation too: past 8x the timeout the caller gets its fail
    mode (as overloaded, not as an unreachable store); the reserve Redis ran is voided."""
    metrics = Metrics()

    async def scenario() -> None:
        store = await warm_store(server, metrics, timeout_s=0.1)
        starver.next_command(server, 1.0)  # past the wall cap of 0.8 s
        with pytest.raises(Unavailable, match="overloaded"):
            await store.reserve("starved", LIMITS, Cost(1), FailMode.CLOSED)
        assert store.up
        await wait_until_async(lambda: queued_settlements(metrics) == 0)
        await store.aclose()

    asyncio.run(scenario())
    assert times_down(metrics) == 0
    assert asyncio.run(used(server, LIMITS)) == [1, 0]  # the warm-up only


def test_a_frozen_store_on_a_healthy_loop_still_times_out_in_the_store_timeout(
    server: RedisServer,
) -> None:
    metrics = Metrics()

    async def scenario() -> float:
        store = await warm_store(server, metrics, timeout_s=0.25)
        server.pause()
        start = time.monotonic()
        try:
            with pytest.raises(Unavailable, match="unreachable"):
                await store.reserve("frozen", LIMITS, Cost(1), FailMode.CLOSED)
            return time.monotonic() - start
        finally:
            server.resume()
            await store.aclose()

    elapsed = asyncio.run(scenario())
    assert 0.25 <= elapsed < 0.25 * 8  # the timeout; never past the wall cap
    assert times_down(metrics) == 1
