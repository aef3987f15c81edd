"""The OpenTelemetry GenAI metrics and the governance metrics' labels: what one request
records, through the gate as Envoy drives it (plain, streamed, refused) and on `Metrics`
itself (series kept per label tuple, embeddings without output tokens, limit fills)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from extproc.gate.runtime import Runtime
from extproc.policy.model import Limit, Measure
from extproc.providers import Usage
from extproc.quota.store import LimitState
from extproc.quota.windows import Scope, ScopedLimit
from extproc.telemetry.metrics import (
    Finished,
    Metrics,
    Settlement,
)
from extproc.telemetry.records import GEN_AI_TOKEN_BUCKETS, GEN_AI_TTFT_BUCKETS
from tests import envoy_messages as em
from tests.gate_driver import runtime_for, start
from tests.prometheus_samples import sample_value

POLICY = f"""
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: team, namespace: team}}
spec:
  limits:
    - {{name: tokens, tokens: 1000, per: 1h}}
    - {{name: inflight, concurrent: 5}}
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: svc, namespace: team}}
spec:
  sha256: {hashlib.sha256(b"tg-key").hexdigest()}
  limits:
    - {{name: key-requests, requests: 4, per: 1h}}
"""
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
WHO = {"namespace": "team", "key": "svc", "provider": "openai", "model": "gpt-4o"}
GEN_AI = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai",
          "gen_ai_request_model": "gpt-4o"}  # fmt: skip


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def runtime(vocab_dir: Path) -> Runtime:
    return runtime_for(POLICY)


def _value(rt: Runtime, name: str, **labels: str) -> float:
    return sample_value(rt.metrics.registry, name, **labels)


def _sse(*events: dict[str, Any], done: bool = False) -> bytes:
    data = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events)
    return data + (b"data: [DONE]\n\n" if done else b"")


def _delta(text: str) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
    }


async def _plain(rt: Runtime, payload: dict[str, Any], answer: dict[str, Any]) -> None:
    processor, _ = await start(rt, em.request_headers("tg-key"))
    await processor.on_request_body(em.body(payload))
    await processor.on_response_headers(em.response_headers(200))
    await processor.on_response_body(em.body(answer))
    await processor.finish()


def test_a_plain_answer_records_tokens_duration_and_governance_labels(runtime: Runtime) -> None:
    run(_plain(runtime, CHAT, em.completion(9, 30)))
    assert _value(runtime, "tokengate_requests_total", outcome="ok", **WHO) == 1
    assert _value(runtime, "tokengate_tokens_total", kind="prompt", **WHO) == 9
    assert _value(runtime, "tokengate_tokens_total", kind="completion", **WHO) == 30
    usage = "gen_ai_client_token_usage"
    assert (
        _value(runtime, f"{usage}_sum", gen_ai_token_type="input", namespace="team", **GEN_AI) == 9
    )
    assert (
        _value(runtime, f"{usage}_sum", gen_ai_token_type="output", namespace="team", **GEN_AI)
        == 30
    )
    assert _value(runtime, f"{usage}_bucket", gen_ai_token_type="output", namespace="team",
                  le="64.0", **GEN_AI) == 1  # fmt: skip
    duration = "gen_ai_server_request_duration_seconds_count"
    assert _value(runtime, duration, error_type="", **GEN_AI) == 1
    # A plain answer has no first token of its own: no TTFT, no time per output token.
    assert _value(runtime, "gen_ai_server_time_to_first_token_seconds_count", **GEN_AI) == 0


def test_limit_fills_are_gauged_for_the_namespace_and_the_key(runtime: Runtime) -> None:
    run(_plain(runtime, CHAT, em.completion(9, 30)))
    ratio = "tokengate_limit_usage_ratio"
    # At the decision: the reservation (prompt + the expected answer) of 1000 tokens.
    tokens = _value(runtime, ratio, namespace="team", key="-", limit="tokens", measure="tokens")
    assert 0 < tokens <= 1
    assert _value(runtime, ratio, namespace="team", key="svc", limit="key-requests",
                  measure="requests") == 0.25  # fmt: skip
    names = {s.labels.get("limit") for f in runtime.metrics.registry.collect()
             if f.name == ratio for s in f.samples}  # fmt: skip
    assert "inflight" not in names  # a concurrency limit's use is momentary


def test_a_refusal_and_its_duration_carry_the_error_type(runtime: Runtime) -> None:
    for _ in range(4):
        run(_plain(runtime, CHAT, em.completion(9, 30)))
    run(_plain(runtime, CHAT, em.completion(9, 30)))  # the key's fifth request: refused
    assert _value(runtime, "tokengate_refusals_total", limit="key-requests", **WHO) == 1
    assert _value(runtime, "tokengate_requests_total", outcome="rate_limited", **WHO) == 1
    duration = "gen_ai_server_request_duration_seconds_count"
    assert _value(runtime, duration, error_type="rate_limited", **GEN_AI) == 1
    assert _value(runtime, duration, error_type="", **GEN_AI) == 4


def test_a_completed_stream_records_time_to_first_token_and_per_output_token(
    runtime: Runtime,
) -> None:
    async def scenario() -> None:
        processor, _ = await start(runtime, em.request_headers("tg-key"))
        await processor.on_request_body(em.body({**CHAT, "stream": True}))
        sse = em.http_headers([(":status", "200"), ("content-type", "text/event-stream")])
        await processor.on_response_headers(sse)
        await processor.on_response_body(em.body(_sse(_delta("one two")), end_of_stream=False))
        await asyncio.sleep(0.01)  # the time between chunks is what is measured (real clock)
        usage = {
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {"prompt_tokens": 8, "completion_tokens": 6, "total_tokens": 14},
        }
        last = _sse(_delta(" three four five six"), usage, done=True)
        await processor.on_response_body(em.body(last))
        await processor.finish()

    run(scenario())
    ttft = "gen_ai_server_time_to_first_token_seconds"
    assert _value(runtime, f"{ttft}_count", **GEN_AI) == 1
    assert _value(runtime, f"{ttft}_bucket", le=str(GEN_AI_TTFT_BUCKETS[-1]), **GEN_AI) == 1
    per_token = "gen_ai_server_time_per_output_token_seconds"
    assert _value(runtime, f"{per_token}_count", **GEN_AI) == 1
    # 4 tokens after the first chunk, >= 10 ms after it.
    assert _value(runtime, f"{per_token}_sum", **GEN_AI) >= 0.01 / 4
    assert _value(runtime, "tokengate_requests_total", outcome="ok", **WHO) == 1
    # The deprecated unlabelled histograms still record, for one release.
    assert _value(runtime, "tokengate_time_to_first_token_seconds_count") == 1


def test_settlements_reuse_their_series_and_embeddings_have_no_output() -> None:
    metrics = Metrics()
    settled = Settlement(
        namespace="ns", key="-", model="text-embedding-3-small", provider="openai",
        usage=Usage(100, 0), usd_micros=2, source="provider", counted_prompt=100,
        reserved_completion=0, operation="embeddings",
    )  # fmt: skip
    metrics.record_settlement(settled)
    metrics.record_settlement(settled)
    labels = {"gen_ai_operation_name": "embeddings", "gen_ai_provider_name": "openai",
              "gen_ai_request_model": "text-embedding-3-small", "namespace": "ns"}  # fmt: skip
    usage = "gen_ai_client_token_usage"
    assert (
        sample_value(metrics.registry, f"{usage}_count", gen_ai_token_type="input", **labels) == 2
    )
    assert (
        sample_value(metrics.registry, f"{usage}_count", gen_ai_token_type="output", **labels) == 0
    )
    spend = sample_value(metrics.registry, "tokengate_spend_usd_micros_total", namespace="ns",
                         key="-", model="text-embedding-3-small", provider="openai")  # fmt: skip
    assert spend == 4
    assert len(GEN_AI_TOKEN_BUCKETS) == 14 and GEN_AI_TOKEN_BUCKETS[-1] == 4**13


def test_a_finished_request_off_the_governed_endpoints_has_no_duration() -> None:
    metrics = Metrics()
    finished = Finished(
        namespace="ns", key="-", provider="openai", model="-", outcome="passthrough",
        operation=None, seconds=0.2,
    )  # fmt: skip
    metrics.record_finished(finished)
    counted = sample_value(
        metrics.registry, "tokengate_requests_total", namespace="ns", key="-", provider="openai",
        model="-", outcome="passthrough",
    )  # fmt: skip
    assert counted == 1
    durations = [
        s for f in metrics.registry.collect()
        if f.name == "gen_ai_server_request_duration_seconds" for s in f.samples
    ]  # fmt: skip
    assert durations == []


def test_route_and_concurrency_limits_are_left_out_of_the_fill_gauge() -> None:
    metrics = Metrics()
    tokens = Limit("t", Measure.TOKENS, 200, 60)
    states = (
        LimitState(ScopedLimit(Scope("ns"), tokens), 50, 1.0),
        LimitState(ScopedLimit(Scope("ns", route="models"), tokens), 150, 1.0),
        LimitState(ScopedLimit(Scope("ns"), Limit("c", Measure.CONCURRENT, 4, None)), 4, 0.0),
    )
    metrics.record_limits(states)
    samples = [s for f in metrics.registry.collect()
               if f.name == "tokengate_limit_usage_ratio" for s in f.samples]  # fmt: skip
    assert [(s.labels, s.value) for s in samples] == [
        ({"namespace": "ns", "key": "-", "limit": "t", "measure": "tokens"}, 0.25)
    ]


def test_fail_mode_and_store_series_exist_from_the_start() -> None:
    registry = Metrics().registry
    for mode in ("open", "closed"):
        assert registry.get_sample_value("tokengate_fail_mode_decisions_total", {"mode": mode}) == 0
    for state in ("up", "down"):
        assert (
            registry.get_sample_value("tokengate_quota_store_transitions_total", {"state": state})
            == 0
        )
