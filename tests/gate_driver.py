"""Plays Envoy's part for the gate without Envoy: a worker's runtime on a given policy, and
opening a stream's processor the way the ext_proc service does, from the request headers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.gate.credentials import Secret
from extproc.gate.processor import Processor
from extproc.gate.routes import open_processor
from extproc.gate.runtime import CredentialsHolder, Limits, Runtime, SnapshotHolder
from extproc.policy import parse_documents
from extproc.policy.model import (
    ApiKey,
    Capacity,
    ModelRoute,
    PolicySnapshot,
    QuotaPolicy,
    Route,
)
from extproc.policy.prices import PriceTable
from extproc.providers.tokens import TokenCounter
from extproc.quota import MemoryBackend, ScopedLimit
from extproc.quota.failover import FailoverStore
from extproc.telemetry.metrics import Metrics

PROVIDER_KEYS = {"openai": "sk-provider", "anthropic": "sk-ant-provider"}


async def start(
    rt: Runtime, headers: ep.HttpHeaders, metadata: Any = None
) -> tuple[Processor, ep.ProcessingResponse]:
    """Open the processor the route registry chooses for `headers` and hand it the request
    headers, as the service does with a stream's first message; the processor and its reply."""
    request = ep.ProcessingRequest(request_headers=headers)
    if metadata is not None:
        request.metadata_context.CopyFrom(metadata)
    processor = open_processor(rt, request)
    reply = await processor.dispatch("request_headers", request)
    assert reply is not None, "request headers are always answered"
    return processor, reply


def runtime_for(
    policy_yaml: str,
    *,
    max_body_bytes: int = 10_000,
    keys: Mapping[str, str] = PROVIDER_KEYS,
    prices: PriceTable | None = None,
) -> Runtime:
    """A worker's runtime on `policy_yaml`, the real in-process store and tokenizer (the
    caller's `vocab_dir` fixture must have run)."""
    docs = parse_documents(policy_yaml, file="test.yaml", allow_usd=prices is not None)
    snapshot = PolicySnapshot(
        policies={d.namespace: d for d in docs if isinstance(d, QuotaPolicy)},
        keys_by_sha256={d.sha256: d for d in docs if isinstance(d, ApiKey)},
        routes=tuple(d for d in docs if isinstance(d, Route)),
        model_routes=tuple(d for d in docs if isinstance(d, ModelRoute)),
        capacities=tuple(d for d in docs if isinstance(d, Capacity)),
        version="test",
        loaded_at=0.0,
    )
    metrics = Metrics()
    return Runtime(
        policies=SnapshotHolder(snapshot),
        store=FailoverStore(local=MemoryBackend(), shared=None, metrics=metrics),
        counter=TokenCounter(threads=1),
        credentials=CredentialsHolder({name: Secret(key) for name, key in keys.items()}),
        metrics=metrics,
        limits=Limits(max_body_bytes=max_body_bytes),
        prices=prices,
    )


async def used(rt: Runtime, limit: ScopedLimit) -> int:
    """What the store counts now for `limit`, through its own interface (as the control API
    asks it)."""
    (state,) = await rt.store.peek([limit])
    return state.used
