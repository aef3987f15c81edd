"""Priorities on the request path without Envoy (the in-process store, the real tokenizer):
a request's class from policy, key and header (never up past the key's ceiling), a shared
capacity that lets it through, makes it wait (its reply deferred) or sheds it in order, a
client that leaves while waiting leaving the queue, and budget degradation switching the
next request's model, said in a header and charged at the cheaper price."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.errors import BadRequest
from extproc.gate.capacity import MAX_SLEEP_S, capacity_limits
from extproc.gate.credentials import Secret
from extproc.gate.governed import QUEUED_HEADER, SUBSTITUTED_HEADER
from extproc.gate.key_ring import KeyRing, RingKey
from extproc.gate.priority import request_class
from extproc.gate.processor import PRIORITY_HEADER, Processor
from extproc.gate.replies import Deferred
from extproc.gate.runtime import Runtime
from extproc.gate.service import ExternalProcessor
from extproc.policy.model import ApiKey, Priority, QuotaPolicy
from extproc.policy.prices import load_price_table
from tests import envoy_messages as em
from tests.gate_driver import runtime_for, start

PRICES = Path(__file__).parents[2] / "examples" / "prices.yaml"


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


POLICY = f"""
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: team, namespace: team}}
spec:
  priority: standard
  limits: [{{name: daily-tokens, tokens: 1000, per: 1d}}]
  degrade:
  - {{limit: daily-tokens, at: 50%, models: {{"gpt-4o": gpt-4o-mini}}}}
  - {{limit: daily-tokens, at: 60%, refuse: [batch]}}
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: svc, namespace: team}}
spec: {{sha256: {_sha("tg-svc")}, maxPriority: interactive}}
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: exact, namespace: team}}
spec: {{sha256: {_sha("tg-exact")}, substitution: forbid, priority: batch}}
---
apiVersion: tokengate.dev/v1
kind: Capacity
metadata: {{name: mini-tier}}
spec:
  provider: openai
  models: ["gpt-4o-mini"]
  limits: [{{name: inflight, concurrent: 1}}]
  maxWait: {{interactive: 2s, standard: 3s, batch: 5s, background: 0s}}
"""
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.fixture
def rt(vocab_dir: Path) -> Runtime:
    return runtime_for(POLICY, prices=load_price_table(PRICES))


async def _body(
    rt: Runtime, payload: dict[str, Any], key: str = "tg-svc", **headers: str
) -> tuple[Processor, Any]:
    extra = [(k.replace("_", "-"), v) for k, v in headers.items()]
    processor, _ = await start(rt, em.request_headers(key, extra=extra))
    return processor, await processor.on_request_body(em.body(payload))


def _answer_headers(processor: Processor) -> dict[str, str]:
    return dict(processor._headers)  # what the answer's headers get set


def test_the_class_comes_from_policy_and_key_and_the_header_moves_it_within_bounds() -> None:
    policy = QuotaPolicy(name="p", namespace="n", limits=(), priority=Priority.STANDARD)
    capped = ApiKey(name="k", namespace="n", sha256="0" * 64, max_priority=Priority.STANDARD)
    trusted = ApiKey(name="t", namespace="n", sha256="0" * 64, max_priority=Priority.INTERACTIVE)
    assert request_class(policy, None, None) is Priority.STANDARD
    assert request_class(policy, capped, "batch") is Priority.BATCH  # down: always
    assert request_class(policy, capped, "interactive") is Priority.STANDARD  # not past it
    assert request_class(policy, trusted, " Interactive ") is Priority.INTERACTIVE
    with pytest.raises(BadRequest, match="must be one of interactive, standard, batch"):
        request_class(policy, None, "urgent")


def test_a_capacity_with_room_lets_it_through_and_says_its_class(rt: Runtime) -> None:
    async def flow() -> None:
        processor, reply = await _body(rt, CHAT, x_tokengate_priority="interactive")
        assert isinstance(reply, ep.ProcessingResponse)
        assert reply.WhichOneof("response") == "request_body"
        headers = _answer_headers(processor)
        assert headers[PRIORITY_HEADER] == "interactive" and headers[QUEUED_HEADER] == "0"
        (held,) = await rt.store.peek(capacity_limits(_capacity(rt)))
        assert held.used == 1  # its lease, while it runs
        await processor.finish()  # the answer never came: its capacity lease comes back
        (state,) = await rt.store.peek(capacity_limits(_capacity(rt)))
        assert state.used == 0

    asyncio.run(flow())


async def _until_waiting(rt: Runtime) -> None:
    """Hand the loop over until the deferred turn waits in the queue (its depth counted):
    yielding, not sleeping, so nothing depends on how fast the machine is."""
    labels = {"capacity": "mini-tier", "class": "standard"}
    for _ in range(1000):
        if rt.metrics.registry.get_sample_value("tokengate_queue_depth", labels):
            return
        await asyncio.sleep(0)  # one loop turn: the waiter's
    raise AssertionError("the deferred turn never started waiting")


def _capacity(rt: Runtime) -> Any:
    capacity = rt.policies.current.capacity_for("openai", "gpt-4o-mini")
    assert capacity is not None
    return capacity


def test_a_full_capacity_defers_the_reply_until_the_lease_comes_back(rt: Runtime) -> None:
    async def flow() -> None:
        first, _ = await _body(rt, CHAT)
        second, reply = await _body(rt, CHAT)
        assert isinstance(reply, Deferred)
        assert reply.first.override_message_timeout.seconds >= 3  # Envoy waits long enough
        waiting = asyncio.ensure_future(reply.then)
        await _until_waiting(rt)
        assert not waiting.done()
        assert [m for m, _ in await rt.store.queue(capacity_limits(_capacity(rt)))] == [
            f"standard/{second._reservation.request_id}"  # type: ignore[attr-defined]
        ]
        await first.finish()  # the first request ends: its lease comes back
        let_through = await asyncio.wait_for(waiting, timeout=5)
        assert let_through.WhichOneof("response") == "request_body"
        assert int(_answer_headers(second)[QUEUED_HEADER]) > 0

    asyncio.run(flow())


def test_background_is_never_queued_and_a_wait_past_the_maximum_is_refused_at_once(
    rt: Runtime,
) -> None:
    async def flow() -> None:
        holder, _ = await _body(rt, CHAT)
        _, background = await _body(rt, CHAT, x_tokengate_priority="background")
        assert background.immediate_response.status.code == 429
        assert "background requests are never queued" in background.immediate_response.body.decode()
        assert await rt.store.queue(capacity_limits(_capacity(rt))) == ()
        await holder.finish()

    asyncio.run(flow())


def test_a_client_that_leaves_while_waiting_leaves_the_queue_and_gets_its_quota_back(
    rt: Runtime,
) -> None:
    async def flow() -> None:
        holder, _ = await _body(rt, CHAT)
        quitter, reply = await _body(rt, CHAT)
        assert isinstance(reply, Deferred)
        waiting = asyncio.ensure_future(reply.then)
        await _until_waiting(rt)
        waiting.cancel()  # what gRPC does when Envoy resets the stream
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert quitter.holds
        await quitter.finish()
        assert await rt.store.queue(capacity_limits(_capacity(rt))) == ()
        metric = rt.metrics.registry.get_sample_value(
            "tokengate_shed_total", {"capacity": "mini-tier", "class": "standard", "action": "gone"}
        )
        assert metric == 1
        await holder.finish()

    asyncio.run(flow())


def test_crossing_a_budget_threshold_switches_the_next_requests_model(rt: Runtime) -> None:
    big = {**CHAT, "model": "gpt-4o", "max_tokens": 520, "priority": "high"}

    async def flow() -> None:
        first, reply = await _body(rt, big)
        sent = json.loads(reply.request_body.response.body_mutation.body)
        assert sent["model"] == "gpt-4o" and "priority" not in sent  # ours to decide
        await first.finish()  # charged as reserved: past half of the day's 1000 tokens
        exact, reply = await _body(rt, {**big, "max_tokens": 100}, key="tg-exact")
        assert json.loads(reply.request_body.response.body_mutation.body)["model"] == "gpt-4o"
        assert SUBSTITUTED_HEADER not in _answer_headers(exact)  # its key forbids it
        await exact.finish()
        second, reply = await _body(rt, {**big, "max_tokens": 100})
        sent = json.loads(reply.request_body.response.body_mutation.body)
        assert sent["model"] == "gpt-4o-mini"
        assert _answer_headers(second)[SUBSTITUTED_HEADER] == "gpt-4o -> gpt-4o-mini"
        await second.finish()
        _, reply = await _body(rt, big, key="tg-exact")
        assert reply.immediate_response.status.code == 429  # past 60 %: batch refused
        assert "batch requests are refused" in reply.immediate_response.body.decode()

    asyncio.run(flow())


def test_a_large_body_gets_time_for_its_count_and_its_longest_possible_wait(rt: Runtime) -> None:
    """Envoy may honour only a message's first timeout override: the one sent before a large
    body is counted must already cover a queue wait after it (`mini-tier`: at most 5 s)."""
    service = ExternalProcessor(rt)
    assert service._more_time_s() == rt.limits.slow_count_timeout_s + 5 + MAX_SLEEP_S + 1
    bare = runtime_for(POLICY.split("kind: Capacity", maxsplit=1)[0].rsplit("---", 1)[0])
    assert ExternalProcessor(bare)._more_time_s() == bare.limits.slow_count_timeout_s


POOLED = f"""
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: team, namespace: team}}
spec:
  limits: [{{name: rpm, requests: 1000, per: 1m}}]
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: svc, namespace: team}}
spec: {{sha256: {_sha("tg-svc")}}}
---
apiVersion: tokengate.dev/v1
kind: ModelRoute
metadata: {{name: pooled}}
spec:
  model: pooled
  backends: [{{provider: openai, model: gpt-4o-mini, keyPool: secondary}}]
---
apiVersion: tokengate.dev/v1
kind: Capacity
metadata: {{name: secondary-tier}}
spec:
  provider: openai
  keyPool: secondary
  limits: [{{name: inflight, concurrent: 1}}]
"""


def test_a_key_pools_capacity_governs_only_what_its_keys_serve(vocab_dir: Path) -> None:
    rt = runtime_for(POOLED)
    key = RingKey(pool="secondary", name="k", secret=Secret("sk-k"), expires_at=None,
                  warn_before_s=86400)  # fmt: skip
    rt.keys.swap(KeyRing(pools={"secondary": (key,)}))

    async def flow() -> None:
        pooled, _ = await _body(rt, {**CHAT, "model": "pooled"})
        assert _answer_headers(pooled)[QUEUED_HEADER] == "0"  # took the pool's only slot
        _, waits = await _body(rt, {**CHAT, "model": "pooled"})
        assert isinstance(waits, Deferred)  # the pool's tier is full
        plain, reply = await _body(rt, CHAT)  # the provider's own key: not that tier
        assert isinstance(reply, ep.ProcessingResponse)
        assert QUEUED_HEADER not in _answer_headers(plain)
        waits.then.close()
        await pooled.finish()

    asyncio.run(flow())
