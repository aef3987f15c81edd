"""Settlement on the provider's numbers whenever they arrived: a stream that ends early (the
client gone, a cut, an upstream error or reset) is charged our count raised to what the
provider already reported, cache writes at their own price, and spend shows on /metrics."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from extproc.gate.runtime import Runtime
from extproc.policy.prices import PriceTable
from extproc.quota import limits_for
from tests import envoy_messages as em
from tests.gate_driver import runtime_for, start, used

POLICY = f"""
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: team, namespace: team}}
spec:
  limits:
    - {{name: tokens, tokens: 1000000, per: 1h, algorithm: calendar}}
    - {{name: spend, usd: 100, per: 1d}}
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: svc, namespace: team}}
spec: {{sha256: {hashlib.sha256(b"tg-key").hexdigest()}}}
"""
PRICES = PriceTable.parse(
    "apiVersion: tokengate.dev/v1\nkind: PriceTable\nprices:\n"
    "  - {model: claude-x, input: 3.00, cachedInput: 0.30, cacheWrite: 3.75, output: 15.00}\n",
    file="prices.yaml",
)
CLAUDE = {"model": "claude-x", "max_tokens": 100, "stream": True,
          "messages": [{"role": "user", "content": "hello"}]}  # fmt: skip


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def runtime(vocab_dir: Path) -> Runtime:
    return runtime_for(POLICY, prices=PRICES)


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()


START = _event("message_start", {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "content": [],
    "usage": {"input_tokens": 5000, "cache_creation_input_tokens": 1000,
              "cache_read_input_tokens": 60, "output_tokens": 1},
}})  # fmt: skip
TEXT = {"type": "text_delta", "text": " the"}
DELTA = _event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": TEXT})


def _counters(rt: Runtime) -> tuple[int, int]:
    policy = rt.policies.current.policies["team"]
    tokens, spend = limits_for(policy, None)
    return int(run(used(rt, tokens))), int(run(used(rt, spend)))


def test_a_client_gone_after_the_first_delta_pays_the_input_the_provider_reported(
    runtime: Runtime,
) -> None:
    """Measured before: ten such disconnects charged 90 tokens for 60,570 of input."""

    async def scenario() -> None:
        headers = em.request_headers(None, path="/v1/messages", extra=[("x-api-key", "tg-key")])
        processor, _ = await start(runtime, headers)
        await processor.on_request_body(em.body(CLAUDE))
        sse = em.http_headers([(":status", "200"), ("content-type", "text/event-stream")])
        await processor.on_response_headers(sse)
        await processor.on_response_body(em.body(START + DELTA, end_of_stream=False))
        await processor.finish()  # the client left: no message_delta, no final usage

    run(scenario())
    tokens, spend = _counters(runtime)
    assert tokens == 6060 + 1  # the provider's input (fresh + writes + reads), 1 delivered
    # 5000 x $3 + 1000 x $3.75 + 60 x $0.30 per million, 1 token of output at $15/M
    assert spend == -(-(5000 * 3_000_000 + 1000 * 3_750_000 + 60 * 300_000 + 15_000_000) // 10**6)
    partial = runtime.metrics.registry.get_sample_value(
        "tokengate_usage_source_total", {"source": "partial"}
    )
    assert partial == 1


def test_spend_is_reported_by_namespace_key_model_and_provider(runtime: Runtime) -> None:
    async def scenario() -> None:
        processor, _ = await start(runtime, em.request_headers("tg-key"))
        await processor.on_request_body(em.body({"model": "claude-x", "messages": [
            {"role": "user", "content": "hello"}]}))  # fmt: skip
        await processor.on_response_headers(em.response_headers(200))
        await processor.on_response_body(em.body(em.completion(1_000_000, 0)))
        await processor.finish()

    run(scenario())
    spend = runtime.metrics.registry.get_sample_value(
        "tokengate_spend_usd_micros_total",
        {"namespace": "team", "key": "svc", "model": "claude-x", "provider": "openai"},
    )
    assert spend == 3_000_000  # a million input tokens at $3/M
