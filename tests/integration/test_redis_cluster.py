"""The Redis backend on a real three-node Redis Cluster: a caller's keys share one slot
(hash tag per namespace), namespaces spread over the nodes, and scripts reload after
SCRIPT FLUSH on every node."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from redis.asyncio.cluster import RedisCluster

from extproc.policy.model import Algorithm, Limit, Measure
from extproc.quota import Cost, Scope, ScopedLimit
from extproc.quota.backends.redis import RedisBackend, connect
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
        backend = RedisBackend(connect(cluster.url, timeout_s=2.0), lease_ttl_s=600)
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
