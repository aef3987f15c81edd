"""A quota-store call that Redis ran but whose answer the sidecar never read: the call timed
out, or the caller's task was cancelled because the client left. The reservation it made
must not stay charged until its lease expires (10 minutes): that turned a Redis stall of a
few seconds into a 10-minute lock-out of every `concurrent: 1` caller."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from extproc.errors import Unavailable
from extproc.policy.model import FailMode, Limit, Measure
from extproc.quota import Cost, MemoryBackend, ScopedLimit
from extproc.quota.backends.redis import RedisBackend, connect
from extproc.quota.failover import FailoverStore
from extproc.telemetry.metrics import Metrics
from tests.integration.store_helpers import NS, REQUESTS, queued_settlements, used
from tests.redis_proxy import ReplyHoldingProxy
from tests.redis_server import RedisServer
from tests.waiting import wait_until_async

ONE_AT_A_TIME = ScopedLimit(NS, Limit("one-at-a-time", Measure.CONCURRENT, 1, None))
LIMITS = [REQUESTS, ONE_AT_A_TIME]


@pytest.fixture
def proxy(server: RedisServer, tmp_path: Path) -> Iterator[ReplyHoldingProxy]:
    running = ReplyHoldingProxy(server.socket, tmp_path).start()
    yield running
    running.stop()


async def warm_store(proxy: ReplyHoldingProxy, metrics: Metrics, timeout_s: float) -> FailoverStore:
    """A store through the proxy, its script loaded (the reserve is then one EVALSHA)."""
    shared = RedisBackend(connect(proxy.url, timeout_s=timeout_s), lease_ttl_s=600,
                          timeout_s=timeout_s)  # fmt: skip
    store = FailoverStore(local=MemoryBackend(lease_ttl_s=600), shared=shared, metrics=metrics,
                       probe_interval_s=0.05)  # fmt: skip
    warm = (await store.reserve("warm", LIMITS, Cost(1), FailMode.CLOSED)).reservation
    assert warm is not None
    await store.settle(warm, Cost(1))
    return store


def test_a_reserve_redis_ran_for_a_cancelled_caller_is_given_back(
    server: RedisServer, proxy: ReplyHoldingProxy
) -> None:
    metrics = Metrics()

    async def scenario() -> None:
        store = await warm_store(proxy, metrics, timeout_s=30)
        proxy.hold_reply_to(b"reserve")
        caller = asyncio.create_task(store.reserve("left", LIMITS, Cost(1, 10), FailMode.CLOSED))
        await wait_until_async(proxy.withheld.is_set)  # Redis ran it
        caller.cancel()  # what grpc does to the handler when Envoy resets the stream
        with pytest.raises(asyncio.CancelledError):
            await caller

        seen: list[int] = []

        async def given_back() -> bool:
            seen[:] = await used(server, LIMITS)
            return seen == [1, 0]  # only the warm-up request counts

        await wait_until_async(given_back, detail=lambda: seen)
        assert queued_settlements(metrics) == 0
        await store.aclose()

    asyncio.run(scenario())


def test_a_reserve_redis_ran_after_it_timed_out_is_given_back_once_the_store_answers(
    server: RedisServer, proxy: ReplyHoldingProxy
) -> None:
    metrics = Metrics()

    async def scenario() -> None:
        store = await warm_store(proxy, metrics, timeout_s=1.0)
        proxy.hold_reply_to(b"reserve")
        with pytest.raises(Unavailable):
            await store.reserve("late", LIMITS, Cost(1, 10), FailMode.CLOSED)
        await wait_until_async(proxy.withheld.is_set)  # Redis ran it
        assert not store.up and queued_settlements(metrics) == 1
        probes = 0
        seen: list[int] = []

        async def given_back() -> bool:
            nonlocal probes
            probes += 1  # any call probes the store; its success replays the queue
            await store.reserve(f"probe-{probes}", [], Cost(), FailMode.OPEN)
            seen[:] = await used(server, LIMITS)
            return seen == [1, 0]

        await wait_until_async(given_back, detail=lambda: seen)
        assert store.up and queued_settlements(metrics) == 0
        await store.aclose()

    asyncio.run(scenario())
