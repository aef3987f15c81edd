"""The Redis quota store under faults, with a real redis-server: killed and restarted,
frozen, SCRIPT FLUSH mid-load. Each time the fail mode is honoured and nothing is lost or
counted twice. (A sidecar killed with reservations outstanding: test_redis_liveness.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from extproc.errors import Unavailable
from extproc.policy.model import Algorithm, FailMode, Limit, Measure
from extproc.quota import Cost, MemoryBackend, ScopedLimit
from extproc.quota.backends.redis import RedisBackend, connect
from extproc.quota.failover import FailoverStore
from extproc.telemetry.metrics import Metrics
from tests.integration.store_helpers import NS, REQUESTS, queued_settlements, times_down, used
from tests.redis_server import RedisServer
from tests.waiting import wait_until_async

TOKENS = ScopedLimit(NS, Limit("tokens", Measure.TOKENS, 10_000, 86400, Algorithm.CALENDAR))
LIMITS = [REQUESTS, TOKENS]


def make_store(server: RedisServer, metrics: Metrics, *, ttl: float = 600) -> FailoverStore:
    shared = RedisBackend(connect(server.url, timeout_s=0.25), lease_ttl_s=ttl)
    return FailoverStore(
        local=MemoryBackend(lease_ttl_s=ttl), shared=shared, metrics=metrics, probe_interval_s=0.1
    )


def test_redis_down_fails_closed_then_recovers_without_losing_a_settlement(
    server: RedisServer,
) -> None:
    metrics = Metrics()

    async def scenario() -> None:
        store = make_store(server, metrics)
        before = (await store.reserve("a", LIMITS, Cost(1, 100), FailMode.CLOSED)).reservation
        assert before is not None and before.origin == "shared"
        server.kill()
        await store.settle(before, Cost(1, 40))  # cannot reach Redis: queued, not lost
        for _ in range(3):
            with pytest.raises(Unavailable, match="fails closed"):
                await store.reserve("b", LIMITS, Cost(1, 10), FailMode.CLOSED)
        assert not store.up
        assert times_down(metrics) == 1  # logged once
        server.start()  # same socket: the probe notices, no restart of ours

        async def back() -> bool:
            try:
                d = await store.reserve("c", LIMITS, Cost(1, 10), FailMode.CLOSED)
            except Unavailable:
                return False
            return d.allowed

        await wait_until_async(back)
        assert store.up
        await wait_until_async(lambda: queued_settlements(metrics) == 0)
        await store.aclose()

    asyncio.run(scenario())
    # Redis restarted empty (no persistence in the test): what it counts since is exact.
    assert asyncio.run(used(server, LIMITS)) == [1, 10]


def test_a_frozen_redis_times_out_and_queued_settlements_replay_when_it_is_back(
    server: RedisServer,
) -> None:
    metrics = Metrics()

    async def scenario() -> None:
        store = make_store(server, metrics)
        held = [(await store.reserve(f"h{i}", LIMITS, Cost(1, 100), FailMode.OPEN)).reservation
                for i in range(3)]  # fmt: skip
        server.pause()
        try:
            for reservation in held:
                assert reservation is not None
                await store.settle(reservation, Cost(1, 30))  # times out: queued
            assert queued_settlements(metrics) == 3
            local = await store.reserve("during", LIMITS, Cost(1, 5), FailMode.OPEN)
            assert local.reservation is not None and local.reservation.origin == "local"
            await store.settle(local.reservation, Cost(1, 5))
        finally:
            server.resume()

        async def replayed() -> bool:
            await store.reserve("x", [], Cost(), FailMode.OPEN)  # any call probes the store
            return store.up and queued_settlements(metrics) == 0

        await wait_until_async(replayed)
        await store.aclose()

    asyncio.run(scenario())
    # Each held reservation settled exactly once at its true cost; the fail-open request
    # was counted by the local limiter only.
    assert asyncio.run(used(server, LIMITS)) == [3, 90]


def test_a_burst_past_the_pool_waits_for_a_connection_instead_of_failing_closed(
    server: RedisServer,
) -> None:
    """More calls at once than a worker keeps in flight (redis-py's pool fails a call past its
    size: at 100 by default, which opened the breaker for every caller): they wait for a
    slot, all are decided by Redis, and the worker never opens more connections than that."""
    burst = 300
    metrics = Metrics()

    async def scenario() -> tuple[list[str], int]:
        client = connect(server.url, timeout_s=0.25, max_in_flight=8)
        shared = RedisBackend(client, lease_ttl_s=600)
        store = FailoverStore(
            local=MemoryBackend(), shared=shared, metrics=metrics, max_in_flight=8
        )
        decisions = await asyncio.gather(
            *(store.reserve(f"b{i}", LIMITS, Cost(1, 1), FailMode.CLOSED) for i in range(burst))
        )
        probe = aioredis.Redis.from_url(server.url)
        clients = await probe.info("clients")
        await probe.aclose()
        await asyncio.gather(*(store.settle(d.reservation, Cost(1, 1)) for d in decisions
                               if d.reservation is not None))  # fmt: skip
        await store.aclose()
        origins = [d.reservation.origin if d.reservation else "refused" for d in decisions]
        return origins, int(clients["connected_clients"])

    origins, connected = asyncio.run(scenario())
    assert origins == ["shared"] * burst
    assert connected <= 8 + 1  # the calls' share of the pool, plus the client that asked
    assert times_down(metrics) == 0
    assert asyncio.run(used(server, LIMITS)) == [burst, burst]


def test_a_burst_against_a_frozen_redis_waits_only_for_the_calls_in_flight(
    server: RedisServer,
) -> None:
    """The bounded delay holds for calls queued behind the slots: once the calls in flight
    time out and open the breaker, the waiters go to their fail mode without calling."""
    calls = 0

    class Counting(RedisBackend):
        async def reserve(self, *args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return await super().reserve(*args, **kwargs)

    async def scenario() -> list[BaseException | object]:
        shared = Counting(connect(server.url, timeout_s=0.25, max_in_flight=8), lease_ttl_s=600)
        store = FailoverStore(local=MemoryBackend(), shared=shared, metrics=Metrics(),
                           probe_interval_s=60, max_in_flight=8)  # fmt: skip
        await store.reserve("warm", [], Cost(), FailMode.CLOSED)  # connected before the freeze
        server.pause()
        try:
            return await asyncio.gather(
                *(store.reserve(f"f{i}", LIMITS, Cost(1, 1), FailMode.CLOSED) for i in range(100)),
                return_exceptions=True,
            )
        finally:
            server.resume()

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, Unavailable) for o in outcomes)
    assert calls == 1 + 8  # the warm-up, then only the calls that held a slot


def test_redis_down_fails_open_to_the_local_limiter(server: RedisServer) -> None:
    tight = ScopedLimit(NS, Limit("three", Measure.REQUESTS, 3, 86400, Algorithm.CALENDAR))

    async def scenario() -> None:
        store = make_store(server, Metrics())
        server.kill()
        allowed = [
            (await store.reserve(f"r{i}", [tight], Cost(1, 0), FailMode.OPEN)).allowed
            for i in range(5)
        ]
        assert allowed == [True, True, True, False, False]  # same limits, enforced locally
        await store.aclose()

    asyncio.run(scenario())


def test_script_flush_mid_load_loses_nothing(server: RedisServer) -> None:
    async def scenario() -> None:
        backend = RedisBackend(connect(server.url), lease_ttl_s=600)
        admin = aioredis.from_url(server.url)
        for i in range(200):
            if i in (50, 120):
                await admin.script_flush()  # as after a restart or failover: NOSCRIPT next
            decision = await backend.reserve(f"r{i}", LIMITS, Cost(1, 20))
            assert decision.reservation is not None
            await backend.settle(decision.reservation, Cost(1, 7))
            await backend.settle(decision.reservation, Cost(1, 7))  # a retried settle
        await backend.aclose()
        await admin.aclose()

    asyncio.run(scenario())
    assert asyncio.run(used(server, LIMITS)) == [200, 1400]


def test_a_freeze_mid_load_counts_every_settlement_exactly_once(server: RedisServer) -> None:
    """Twenty callers keep reserving and settling while Redis freezes and thaws under them:
    calls fail over to the local limiter (fail open), queued settlements replay, and what
    Redis holds at the end is exactly the true cost of what it admitted.

    A reserve that timed out may still have run on the thawed server: its void (a settle of
    nothing, queued) gives it back, or, should the void land first, makes it take nothing —
    Redis holds the exact total once the queue has drained."""
    metrics = Metrics()
    roomy = ScopedLimit(NS, Limit("roomy", Measure.TOKENS, 10**9, 86400, Algorithm.CALENDAR))

    async def scenario() -> int:
        store = make_store(server, metrics, ttl=6.0)
        shared_cost = 0
        stop = asyncio.Event()

        async def caller(n: int) -> None:
            nonlocal shared_cost
            i = 0
            while not stop.is_set():
                i += 1
                decision = await store.reserve(f"{n}-{i}", [roomy], Cost(1, 3), FailMode.OPEN)
                assert decision.reservation is not None
                await store.settle(decision.reservation, Cost(1, 2))
                if decision.reservation.origin == "shared":
                    shared_cost += 2

        callers = [asyncio.create_task(caller(n)) for n in range(20)]
        await wait_until_async(lambda: shared_cost >= 200)
        server.pause()
        await wait_until_async(lambda: not store.up)
        server.resume()
        await wait_until_async(lambda: store.up and shared_cost >= 600)
        stop.set()
        await asyncio.gather(*callers)
        await wait_until_async(lambda: queued_settlements(metrics) == 0)
        await store.aclose()
        return shared_cost

    shared_cost = asyncio.run(scenario())

    held: list[int] = []

    async def exact() -> bool:
        held[:] = await used(server, [roomy])
        return held == [shared_cost]

    asyncio.run(wait_until_async(exact, seconds=30, detail=lambda: (held, shared_cost)))
