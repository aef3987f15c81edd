"""What the Redis fault tests share: the scope their limits live in, a request limit, a read
of the counters as Redis holds them, and the store's metrics as a scrape reads them."""

from __future__ import annotations

from extproc.policy.model import Algorithm, Limit, Measure
from extproc.quota import Cost, Scope, ScopedLimit
from extproc.quota.backends.redis import RedisBackend, connect
from extproc.telemetry.metrics import Metrics
from tests.prometheus_samples import sample_value
from tests.redis_server import RedisServer

NS = Scope("faults")
REQUESTS = ScopedLimit(NS, Limit("requests", Measure.REQUESTS, 1000, 86400, Algorithm.CALENDAR))


async def used(server: RedisServer, limits: list[ScopedLimit]) -> list[int]:
    """Counters as Redis holds them, read with a probe that takes nothing."""
    probe = RedisBackend(connect(server.url), lease_ttl_s=600)
    blocker = ScopedLimit(NS, Limit("blocker", Measure.REQUESTS, 0, 60, Algorithm.CALENDAR))
    decision = await probe.reserve("probe", [*limits, blocker], Cost(1, 1, 1))
    await probe.aclose()
    return [s.used for s in decision.states[:-1]]


def queued_settlements(metrics: Metrics) -> float:
    """Settlements waiting for the store, as /metrics shows them."""
    return sample_value(metrics.registry, "tokengate_settlements_queued")


def times_down(metrics: Metrics) -> float:
    """How often the store was seen to go down, as /metrics shows it."""
    return sample_value(metrics.registry, "tokengate_quota_store_transitions_total", state="down")
