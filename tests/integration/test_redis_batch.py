"""Group commit against a real redis-server: the calls of one event-loop turn share one round
trip (Redis's own count of reads says so), each keeps its own atomic answer, a flushed script
is reloaded, and a stalled batch does not hold up the next one for longer than `stall_s`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from extproc.policy.model import Limit, Measure
from extproc.quota import Cost, ScopedLimit
from extproc.quota.backends.redis import RedisBackend, connect
from extproc.quota.backends.redis_batch import ScriptBatch
from tests.integration.store_helpers import NS, used
from tests.redis_proxy import ReplyHoldingProxy
from tests.redis_server import RedisServer
from tests.waiting import wait_until_async

TEN = ScopedLimit(NS, Limit("ten", Measure.REQUESTS, 10, 60))


async def _reads(admin: aioredis.Redis) -> int:
    return int((await admin.info("stats"))["total_reads_processed"])


@contextlib.asynccontextmanager
async def _warm(server: RedisServer) -> AsyncIterator[tuple[RedisBackend, aioredis.Redis]]:
    """A store with its script loaded and its connection open, and an admin client."""
    admin = aioredis.from_url(server.url)
    store = RedisBackend(connect(server.url), lease_ttl_s=600)
    await store.reserve("warm", [], Cost())
    yield store, admin
    await store.aclose()
    await admin.aclose()


def test_one_turns_calls_share_one_round_trip_and_each_is_atomic(server: RedisServer) -> None:
    async def scenario() -> None:
        async with _warm(server) as (store, admin):
            before = await _reads(admin)
            decisions = await asyncio.gather(
                *(store.reserve(f"r{i}", [TEN], Cost(1)) for i in range(50))
            )
            reads = await _reads(admin) - before - 1  # the second INFO is one read
            assert sum(d.allowed for d in decisions) == 10  # exactly the limit, no more
            assert reads == 1, f"50 reserves made in one turn took {reads} round trips"
            assert await used(server, [TEN]) == [10]

    asyncio.run(scenario())


def test_calls_apart_go_alone_without_waiting(server: RedisServer) -> None:
    async def scenario() -> None:
        async with _warm(server) as (store, admin):
            before = await _reads(admin)
            for i in range(5):
                assert (await store.reserve(f"alone{i}", [TEN], Cost(1))).allowed
            assert await _reads(admin) - before - 1 == 5

    asyncio.run(scenario())


def test_a_flushed_script_is_loaded_again_for_the_whole_batch(server: RedisServer) -> None:
    async def scenario() -> None:
        async with _warm(server) as (store, admin):
            await admin.script_flush()
            decisions = await asyncio.gather(
                *(store.reserve(f"f{i}", [TEN], Cost(1)) for i in range(12))
            )
            assert sum(d.allowed for d in decisions) == 10

    asyncio.run(scenario())


def test_an_error_answer_goes_to_its_own_caller_only(server: RedisServer) -> None:
    async def scenario() -> None:
        client = aioredis.from_url(server.url)
        batch = ScriptBatch(client, "if ARGV[1] == 'bad' then error('refused') end return 1")
        good, bad = batch.call(["k"], ["good"]), batch.call(["k"], ["bad"])
        assert await good == 1
        with pytest.raises(Exception, match="refused"):
            await bad
        await client.aclose()

    asyncio.run(scenario())


@pytest.fixture
def proxy(server: RedisServer, tmp_path: Path) -> Iterator[ReplyHoldingProxy]:
    running = ReplyHoldingProxy(server.socket, tmp_path).start()
    yield running
    running.stop()


def test_a_stalled_batch_lets_the_next_go_on_another_connection(
    proxy: ReplyHoldingProxy,
) -> None:
    async def scenario() -> None:
        store = RedisBackend(connect(proxy.url), lease_ttl_s=600, timeout_s=30)
        await store.reserve("warm", [], Cost())
        proxy.hold_reply_to(b"stuck")
        stuck = asyncio.ensure_future(store.reserve("stuck", [TEN], Cost(1)))
        await wait_until_async(proxy.withheld.is_set)  # Redis ran it; its answer is held
        loop = asyncio.get_running_loop()
        started = loop.time()
        decision = await store.reserve("next", [TEN], Cost(1))
        # Without the stall rule it would wait for the held answer: 30 s, then time out.
        assert decision.allowed and not stuck.done()
        assert loop.time() - started < 5
        stuck.cancel()
        await store.aclose()

    asyncio.run(scenario())
