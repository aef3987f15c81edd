"""The Redis backend on a real three-node Redis Cluster: a caller's keys share one slot
(hash tag per namespace), namespaces spread over the nodes, scripts reload after
SCRIPT FLUSH on every node, and a dead instance's leases come back on every slot."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from redis.asyncio.cluster import RedisCluster

from extproc.policy.model import Algorithm, Limit, Measure
from extproc.quota import Cost, Scope, ScopedLimit
from extproc.quota.backends.redis import RedisBackend, connect
from extproc.quota.backends.redis_liveness import Instance
from tests.integration.quota_semantics import T0, FakeClock
from tests.redis_server import RedisClusterNodes


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    nodes = RedisClusterNodes(tmp_path_factory.mktemp("cluster")).start()
    yield nodes
    nodes.stop()


def limits(namespace: str) -> list[ScopedLimit]:
    ns, key = Scope(namespace), Scope(namespace, "svc")
    return [
        # A slow bucket (refills 100 a day), so the counts below are exact whatever the pace.
        ScopedLimit(ns, Limit("tpm", Measure.TOKENS, 100, 86400, Algorithm.BUCKET)),
        ScopedLimit(ns, Limit("day", Measure.TOKENS, 1000, 86400, Algorithm.CALENDAR)),
        ScopedLimit(key, Limit("rpm", Measure.REQUESTS, 5, 60, Algorithm.SLIDING)),
        ScopedLimit(key, Limit("inflight", Measure.CONCURRENT, 1, None)),
    ]


def test_every_namespace_is_governed_atomically_on_its_own_slot(
    cluster: RedisClusterNodes,
) -> None:
    namespaces = [f"team-{i}" for i in range(12)]

    async def scenario() -> None:
        backend = RedisBackend(connect(cluster.url, timeout_s=2.0), lease_ttl_s=600, timeout_s=2.0)
        admin = RedisCluster.from_url(cluster.url.replace("+cluster", ""))
        slots = {admin.keyslot(limits(ns)[0].base_key) for ns in namespaces}
        assert len(slots) > 1  # the namespaces really live in different slots
        for ns in namespaces:
            first = await backend.reserve(f"{ns}-1", limits(ns), Cost(1, 60))
            assert first.reservation is not None
            second = await backend.reserve(f"{ns}-2", limits(ns), Cost(1, 10))
            assert second.refusal is not None and second.refusal.scoped.limit.name == "inflight"
            await backend.settle(first.reservation, Cost(1, 25))
        await admin.script_flush()  # redis-py sends SCRIPT FLUSH to every node
        for ns in namespaces:
            after = await backend.reserve(f"{ns}-3", limits(ns), Cost(1, 10))
            assert after.reservation is not None
            assert [s.used for s in after.states] == [35, 35, 2, 1]
            await backend.settle(after.reservation, Cost(1, 10))
        await backend.aclose()
        await admin.aclose()

    asyncio.run(scenario())


def test_a_dead_instance_is_recovered_on_every_slot_and_its_heartbeat_spans_the_nodes(
    cluster: RedisClusterNodes,
) -> None:
    """Liveness lives in each namespace's own slot: the heartbeat renews it on every node
    (one pipeline), and each namespace's script recovers the dead instance's leases."""
    namespaces = [f"live-{i}" for i in range(8)]
    clock = FakeClock(T0)

    def sidecar(name: str) -> RedisBackend:
        return RedisBackend(connect(cluster.url, timeout_s=2.0), lease_ttl_s=600,
                            timeout_s=2.0, clock=clock, instance=Instance(id=name))  # fmt: skip

    async def scenario() -> None:
        a, b = sidecar("a"), sidecar("b")
        for ns in namespaces:
            assert (await a.reserve(f"{ns}-a", limits(ns), Cost(1, 10))).allowed
        assert a.liveness is not None
        clock.now = T0 + 8
        assert await a.liveness.renew() == len(namespaces)  # until T0 + 18, on every node
        clock.now = T0 + 17.9
        for ns in namespaces:
            refusal = (await b.reserve(f"{ns}-b", limits(ns), Cost(1, 10))).refusal
            assert refusal is not None and refusal.scoped.limit.name == "inflight"
        clock.now = T0 + 18
        for ns in namespaces:
            after = await b.reserve(f"{ns}-b", limits(ns), Cost(1, 10))
            assert after.reservation is not None
            assert [s.used for s in after.states][1:] == [20, 2, 1]  # a's 10 tokens stay
        await a.aclose()
        await b.aclose()

    asyncio.run(scenario())
