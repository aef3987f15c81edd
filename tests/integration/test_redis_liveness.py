"""Fast lease recovery on a real redis-server: reservations belong to the sidecar instance
(process) that made them; when it stops renewing its liveness, the next call in the
namespace, from any sidecar, releases its concurrency leases and keeps its reservations
charged as recorded (estimate plus stream debits). One fake clock drives the scripts of
every instance; the last test kills a real process and measures on the wall clock."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis

from extproc.policy.model import Measure
from extproc.quota.backends.redis import RedisBackend, connect
from extproc.quota.backends.redis_liveness import REGISTRY, Instance, inst_key
from extproc.quota.store import Cost
from tests.integration.quota_semantics import T0, FakeClock, allowed, counters, lim, refused
from tests.redis_server import RedisServer
from tests.waiting import wait_until_async

TTL = 10.0  # instance TTL
DAILY = lim("daily", Measure.TOKENS, 100_000, 86400)
INFLIGHT = lim("inflight", Measure.CONCURRENT, 3, None)
LIMITS = [DAILY, INFLIGHT]


@asynccontextmanager
async def sidecars(
    server: RedisServer, clock: FakeClock, *names: str
) -> AsyncIterator[list[RedisBackend]]:
    """One backend per named instance, all on the same server and the same fake clock."""
    backends = [
        RedisBackend(
            connect(server.url, timeout_s=10.0),
            lease_ttl_s=600,
            timeout_s=10.0,
            clock=clock,
            instance=Instance(id=name, ttl_s=TTL),
        )
        for name in names
    ]
    try:
        yield backends
    finally:
        for backend in backends:
            await backend.aclose()


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def test_a_dead_instances_leases_come_back_at_its_deadline_and_its_cost_stays(
    server: RedisServer,
) -> None:
    clock = FakeClock(T0)

    async def scenario() -> None:
        async with sidecars(server, clock, "a", "b") as (a, b):
            held = [allowed(await a.reserve(f"a{i}", LIMITS, Cost(1, 100))) for i in range(3)]
            clock.now = T0 + 4
            allowed(await a.debit(held[0], Cost(tokens=50)))  # a stream; renews a to T0 + 14
            # a dies now: the namespace stays full until its liveness runs out
            clock.now = T0 + 13.9
            assert refused(await b.reserve("b1", LIMITS, Cost(1, 5))).scoped == INFLIGHT
            clock.now = T0 + 14
            allowed(await b.reserve("b1", LIMITS, Cost(1, 5)))
            # 3 x 100 reserved + 50 streamed stay charged; one lease held, b's
            assert await counters(b, LIMITS) == {"daily": 355, "inflight": 1}

    run(scenario)


def test_the_heartbeat_keeps_an_idle_instance_alive(server: RedisServer) -> None:
    """A plain request waiting minutes for its answer makes no store call: the heartbeat
    renews its instance where it holds reservations, and only there."""
    clock = FakeClock(T0)

    async def scenario() -> None:
        async with sidecars(server, clock, "a", "b") as (a, b):
            for i in range(3):
                allowed(await a.reserve(f"a{i}", LIMITS, Cost(1, 100)))
            assert a.liveness is not None
            clock.now = T0 + 1  # renewed by the reserves within half a beat: not due
            assert await a.liveness.renew() == 0
            clock.now = T0 + 8
            assert await a.liveness.renew() == 1  # until T0 + 18
            clock.now = T0 + 17.9
            assert refused(await b.reserve("b1", LIMITS, Cost(1, 5))).scoped == INFLIGHT
            clock.now = T0 + 18
            allowed(await b.reserve("b1", LIMITS, Cost(1, 5)))

    run(scenario)


def test_any_call_of_an_instance_renews_it_in_that_namespace(server: RedisServer) -> None:
    clock = FakeClock(T0)
    roomy = lim("roomy", Measure.TOKENS, 100_000, 86400)

    async def scenario() -> None:
        async with sidecars(server, clock, "a", "b") as (a, b):
            for i in range(3):
                allowed(await a.reserve(f"a{i}", LIMITS, Cost(1, 100)))
            clock.now = T0 + 9
            await a.reserve("other", [roomy], Cost(1, 1))  # same namespace: until T0 + 19
            clock.now = T0 + 18.9
            assert refused(await b.reserve("b1", LIMITS, Cost(1, 5))).scoped == INFLIGHT

    run(scenario)


def test_an_instance_only_cut_off_settles_late_at_the_true_cost_once(
    server: RedisServer,
) -> None:
    """A partition or a stall longer than the TTL: its reservations were closed (charged as
    reserved, leases released); its settles still land, exactly, once; its void (the reserve
    was never forwarded) gives everything back."""
    clock = FakeClock(T0)

    async def scenario() -> None:
        async with sidecars(server, clock, "a", "b") as (a, b):
            settled = allowed(await a.reserve("a1", LIMITS, Cost(1, 100)))
            voided = allowed(await a.reserve("a2", LIMITS, Cost(1, 100)))
            clock.now = T0 + 10
            assert await counters(b, LIMITS) == {"daily": 200, "inflight": 0}
            await a.settle(settled, Cost(1, 30))
            await a.settle(settled, Cost(1, 30))
            await a.settle(voided, Cost())
            assert await counters(b, LIMITS) == {"daily": 30, "inflight": 0}

    run(scenario)


def test_a_dead_instance_is_swept_fifty_reservations_per_call(server: RedisServer) -> None:
    """Thousands of reservations of a dead sidecar never make one script block Redis."""
    clock = FakeClock(T0)
    wide = lim("wide", Measure.CONCURRENT, 100, None)

    async def scenario() -> None:
        async with sidecars(server, clock, "a", "b") as (a, b):
            for i in range(60):
                allowed(await a.reserve(f"a{i}", [DAILY, wide], Cost(1, 10)))
            clock.now = T0 + TTL
            assert await counters(b, [DAILY, wide]) == {"daily": 600, "wide": 10}
            assert await counters(b, [DAILY, wide]) == {"daily": 600, "wide": 0}
            admin = aioredis.from_url(server.url)
            gone = await admin.exists(inst_key(DAILY.scope.namespace) + ":a")
            members = await admin.zrange(inst_key(DAILY.scope.namespace), 0, -1)
            await admin.aclose()
            assert (gone, members) == (0, [b"b"])  # nothing of a is left in the namespace

    run(scenario)


def test_without_an_instance_only_the_lease_ttl_ends_a_reservation(
    server: RedisServer,
) -> None:
    """A backend with no instance (an older sidecar) owns nothing: the lease TTL stays the
    last resort, and it too charges what was reserved."""
    clock = FakeClock(T0)

    async def scenario() -> None:
        async with sidecars(server, clock, "b") as (b,):
            anonymous = RedisBackend(connect(server.url), lease_ttl_s=30, clock=clock)
            for i in range(3):
                allowed(await anonymous.reserve(f"x{i}", LIMITS, Cost(1, 100)))
            await anonymous.aclose()
            clock.now = T0 + 29.9
            assert refused(await b.reserve("b1", LIMITS, Cost(1, 5))).scoped == INFLIGHT
            clock.now = T0 + 30
            allowed(await b.reserve("b1", LIMITS, Cost(1, 5)))
            assert await counters(b, LIMITS) == {"daily": 305, "inflight": 1}

    run(scenario)


KILLED_SIDECAR = textwrap.dedent(
    """
    import asyncio, sys
    from extproc.policy.model import Limit, Measure, Algorithm
    from extproc.quota import Cost, Scope, ScopedLimit
    from extproc.quota.backends.redis import RedisBackend, connect
    from extproc.quota.backends.redis_liveness import Instance

    async def main():
        ns = Scope("team-a")
        day = Limit("daily", Measure.TOKENS, 100000, 86400, Algorithm.CALENDAR)
        three = Limit("inflight", Measure.CONCURRENT, 3, None)
        limits = [ScopedLimit(ns, day), ScopedLimit(ns, three)]
        backend = RedisBackend(connect(sys.argv[1]), lease_ttl_s=600,
                               instance=Instance.new(ttl_s=float(sys.argv[2])))
        backend.start_heartbeat()
        for i in range(3):
            assert (await backend.reserve(f"crash-{i}", limits, Cost(1, 1000))).allowed
        print(backend.liveness.instance.id, flush=True)
        await asyncio.Event().wait()  # hold the leases, heart beating, until killed

    asyncio.run(main())
    """
)


def test_a_killed_sidecars_leases_come_back_within_its_instance_ttl(
    server: RedisServer,
) -> None:
    """Real process, real heartbeat, real SIGKILL, wall clock: alive past its TTL it keeps
    its leases; killed, they are back within the TTL, its 3 x 1000 tokens still charged."""
    ttl = 1.0
    sidecar = subprocess.Popen(
        [sys.executable, "-c", KILLED_SIDECAR, server.url, str(ttl)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert sidecar.stdout is not None
    instance = sidecar.stdout.readline().strip()
    assert instance, "the sidecar did not reserve"
    observed: dict[str, float] = {}

    async def scenario() -> None:
        admin = aioredis.from_url(server.url)
        seconds, micros = await admin.time()
        reserved = seconds + micros / 1e6

        async def renewed_past_its_ttl() -> bool:
            deadline = await admin.zscore(REGISTRY, instance)
            return deadline is not None and deadline >= reserved + 1.5 * ttl + ttl

        await wait_until_async(renewed_past_its_ttl)
        await admin.aclose()
        other = RedisBackend(connect(server.url), lease_ttl_s=600,
                             instance=Instance.new(ttl_s=ttl))  # fmt: skip
        full = await other.reserve("still-held", LIMITS, Cost(1, 10))
        assert full.refusal is not None and full.refusal.scoped == INFLIGHT
        sidecar.kill()
        sidecar.wait(10)
        killed = time.monotonic()

        async def back() -> bool:
            decision = await other.reserve("after", LIMITS, Cost(1, 10))
            if decision.reservation is not None:
                await other.settle(decision.reservation, Cost(1, 0))
            return decision.allowed

        await wait_until_async(back, seconds=10)
        observed["after_kill_s"] = time.monotonic() - killed
        observed["used"] = (await counters(other, [DAILY]))["daily"]
        await other.aclose()

    try:
        run(scenario)
    finally:
        sidecar.kill()
        sidecar.wait(10)
    assert observed["after_kill_s"] <= ttl + 0.5, observed  # the liveness bound, not 600 s
    assert observed["used"] == 3000  # charged as reserved: never refunded


def test_the_registry_lists_live_instances_and_forgets_a_retired_one(
    server: RedisServer,
) -> None:
    clock = FakeClock(T0)

    async def scenario() -> None:
        async with sidecars(server, clock, "a") as (a,):
            assert a.liveness is not None
            await a.liveness.renew()
            admin = aioredis.from_url(server.url)
            assert await admin.zscore(REGISTRY, "a") == T0 + TTL
            await a.liveness.retire()
            assert await admin.zscore(REGISTRY, "a") is None
            await admin.aclose()

    run(scenario)
