"""Pool keys' own budgets: charged at settlement into the shared counters, learnt at once by
the worker that charged and by every other worker at its next refresh, skipped while used
up and back once the window resets; keys without a budget cost the store nothing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from extproc.gate import key_budgets
from extproc.gate.credentials import Secret
from extproc.gate.key_ring import KeyRing, RingKey, budget_scope
from extproc.gate.routing import served_key
from extproc.gate.runtime import Runtime
from extproc.policy.model import Limit, Measure
from extproc.quota import MemoryBackend, ScopedLimit
from extproc.quota.failover import FailoverStore
from extproc.quota.store import Cost
from extproc.telemetry.events import Event, EventBus
from tests.gate_driver import runtime_for

POLICY = """
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {name: p, namespace: team}
spec:
  limits: [{name: rpm, requests: 100, per: 1m}]
"""
HOUR = 3600


class Recorded(EventBus):
    def __init__(self) -> None:
        super().__init__()
        self.kinds: list[str] = []

    def publish(self, event: Event) -> None:
        self.kinds.append(event.kind)
        super().publish(event)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _key(name: str, *limits: Limit) -> RingKey:
    scope = budget_scope("pool", name)
    return RingKey(
        pool="pool", name=name, secret=Secret(f"sk-{name}"), expires_at=None,
        warn_before_s=86400, budget=tuple(ScopedLimit(scope, limit) for limit in limits),
    )  # fmt: skip


TWO_AN_HOUR = Limit("hourly", Measure.REQUESTS, 2, HOUR)
PRIMARY, SECONDARY = _key("primary"), _key("secondary", TWO_AN_HOUR)
RING = KeyRing(pools={"pool": (PRIMARY, SECONDARY)})


def _sidecars(shared: MemoryBackend, count: int = 2) -> list[Runtime]:
    """Workers of a fleet: each its own runtime, one shared store (as Redis would be)."""
    sidecars = []
    for _ in range(count):
        rt = runtime_for(POLICY)
        rt.store = FailoverStore(local=MemoryBackend(), shared=shared, metrics=rt.metrics)
        rt.events = Recorded()
        rt.keys.swap(RING)
        sidecars.append(rt)
    return sidecars


def _chosen(rt: Runtime, turns: int = 4) -> set[str]:
    chooser, ring, now = rt.key_chooser, rt.keys.current, time.time()  # as the data path
    return {k.name for k in (chooser.choose(ring, "pool", now=now) for _ in range(turns)) if k}


def _spent(rt: Runtime, key: str) -> float | None:
    return rt.metrics.registry.get_sample_value(
        "tokengate_provider_key_budget_spent", {"pool": "pool", "key": key}
    )


def test_a_spent_budget_is_skipped_here_at_once_and_by_the_fleet_at_its_refresh(
    vocab_dir: Path,
) -> None:
    async def scenario() -> None:
        clock = Clock()
        one, two = _sidecars(MemoryBackend(clock=clock))
        await key_budgets.charge(one, SECONDARY, "r1", Cost(requests=1, tokens=10))
        assert _chosen(one) == {"primary", "secondary"}
        await key_budgets.charge(two, SECONDARY, "r2", Cost(requests=1, tokens=10))
        assert _chosen(two) == {"primary"}  # the charging worker knows at once
        assert _chosen(one) == {"primary", "secondary"}  # the other, not yet
        await key_budgets.refresh(one)
        assert _chosen(one) == {"primary"}
        assert _spent(one, "secondary") == 1
        assert isinstance(one.events, Recorded)
        assert one.events.kinds == ["key_budget_spent"]
        clock.now += HOUR  # the window resets in the shared counters
        await key_budgets.refresh(one)
        assert _chosen(one) == {"primary", "secondary"}
        assert _spent(one, "secondary") == 0

    asyncio.run(scenario())


def test_a_charge_counts_what_was_served_and_a_key_without_budget_costs_nothing(
    vocab_dir: Path,
) -> None:
    async def scenario() -> None:
        shared = MemoryBackend()
        (rt,) = _sidecars(shared, count=1)
        await key_budgets.charge(rt, SECONDARY, "one", Cost(requests=1, tokens=7))
        (state,) = await shared.peek(SECONDARY.budget)
        assert state.used == 1
        await key_budgets.charge(rt, PRIMARY, "r", Cost(requests=1))
        await key_budgets.charge(rt, None, "r", Cost(requests=1))
        assert shared._meters.keys() == {SECONDARY.budget[0].base_key}  # nothing else counted

    asyncio.run(scenario())


def test_a_charge_off_the_answers_path_lands(vocab_dir: Path) -> None:
    async def scenario() -> None:
        shared = MemoryBackend()
        (rt,) = _sidecars(shared, count=1)
        key_budgets.charge_later(rt, SECONDARY, "late", Cost(requests=1))
        await asyncio.gather(*key_budgets._CHARGES)
        (state,) = await shared.peek(SECONDARY.budget)
        assert state.used == 1

    asyncio.run(scenario())


def test_the_answer_header_names_the_key() -> None:
    header = "x-tokengate-backend"
    assert served_key({header: "openai/gpt-4o;key=pool/secondary"}) == "pool/secondary"
    assert served_key({header: "openai/gpt-4o"}) is None
    assert served_key({header: "openai/gpt-4o;other=x"}) is None
    assert served_key({}) is None
