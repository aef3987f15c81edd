"""Model routes in the gate, Envoy played by the tests: the governed stream's routing reply,
which backends a request keeps, what it is reserved and charged at, and each attempt's
upstream phase (credential, path, model, translation both ways)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from google.protobuf import json_format, struct_pb2

from extproc.backends.health import Headroom, HealthPolicy, Outcome
from extproc.backends.memory import MemoryHealth
from extproc.errors import QuotaStoreError
from extproc.gate.failover import ROUTE_METADATA_NAMESPACE
from extproc.gate.processor import Processor
from extproc.gate.routes import open_processor
from extproc.gate.runtime import Runtime
from extproc.gate.upstream import UpstreamProcessor
from extproc.policy.prices import load_price_table
from tests import envoy_messages as em
from tests.gate_driver import runtime_for, start

PRICES = Path(__file__).resolve().parents[2] / "examples" / "prices.yaml"
POLICY = f"""
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: team, namespace: team}}
spec:
  models: {{allow: ["gpt-4o*", "claude-*", "fast", "only-claude", "forbidden"]}}
  limits:
    - {{name: spend, usd: 100, per: 1d}}
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: svc, namespace: team}}
spec: {{sha256: {hashlib.sha256(b"tg-key").hexdigest()}}}
---
apiVersion: tokengate.dev/v1
kind: ModelRoute
metadata: {{name: gpt-4o}}
spec:
  model: gpt-4o-mini
  backends:
  - {{provider: openai, model: gpt-4o-mini}}
  - {{provider: anthropic, model: claude-sonnet-4-5, maxTokens: 512}}
---
apiVersion: tokengate.dev/v1
kind: ModelRoute
metadata: {{name: only-claude}}
spec:
  model: only-claude
  backends: [{{provider: anthropic, model: claude-sonnet-4-5}}]
---
apiVersion: tokengate.dev/v1
kind: ModelRoute
metadata: {{name: fast}}
spec:
  model: fast
  backends: [{{provider: openai, model: gpt-4o-mini}}]
---
apiVersion: tokengate.dev/v1
kind: ModelRoute
metadata: {{name: forbidden}}
spec:
  model: forbidden
  backends: [{{provider: openai, model: o1-pro}}]
---
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: tight, namespace: tight}}
spec:
  limits:
    - {{name: one, requests: 1, per: 1d}}
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: svc, namespace: tight}}
spec: {{sha256: {hashlib.sha256(b"tg-tight").hexdigest()}}}
"""
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def runtime(vocab_dir: Path) -> Runtime:
    return runtime_for(POLICY, prices=load_price_table(PRICES))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _routed(rt: Runtime, payload: dict[str, Any]) -> tuple[Processor, ep.ProcessingResponse]:
    processor, _ = await start(rt, em.request_headers("tg-key"))
    return processor, await processor.on_request_body(em.body(payload))


def _route(reply: ep.ProcessingResponse) -> dict[str, Any]:
    route: dict[str, Any] = json_format.MessageToDict(reply.dynamic_metadata)
    return route[ROUTE_METADATA_NAMESPACE]  # type: ignore[no-any-return]


def test_a_routed_request_names_the_failover_cluster_and_its_backends(runtime: Runtime) -> None:
    _, reply = run(_routed(runtime, CHAT))
    common = reply.request_body.response
    assert em.set_headers(common.header_mutation) == {
        "x-tokengate-upstream": "failover.openai.anthropic",
        "x-envoy-max-retries": "1",
    }
    assert "authorization" in common.header_mutation.remove_headers  # each attempt sets its own
    assert common.clear_route_cache
    route = _route(reply)
    assert route["backends"] == ["openai/gpt-4o-mini/4096", "anthropic/claude-sonnet-4-5/512"]
    assert (route["client"], route["path"], route["stream"]) == (
        "openai", "/v1/chat/completions", False,
    )  # fmt: skip


def test_a_model_without_a_route_goes_where_its_path_says(runtime: Runtime) -> None:
    _, reply = run(_routed(runtime, {**CHAT, "model": "gpt-4o"}))
    assert not reply.HasField("dynamic_metadata")
    assert reply.request_body.response.header_mutation.set_headers == []


def test_a_fallback_that_cannot_express_the_request_is_dropped(runtime: Runtime) -> None:
    """n=2 cannot go to Anthropic: the OpenAI backend is left, alone and speaking the
    client's API, so the request takes the ordinary provider route (no upstream phase)."""
    _, reply = run(_routed(runtime, {**CHAT, "n": 2}))
    assert not reply.HasField("dynamic_metadata")
    common = reply.request_body.response
    assert "x-tokengate-upstream" not in em.set_headers(common.header_mutation)
    assert json.loads(common.body_mutation.body)["model"] == "gpt-4o-mini"


def test_an_alias_goes_straight_to_its_backend_and_says_so(runtime: Runtime) -> None:
    processor, reply = run(_routed(runtime, {**CHAT, "model": "fast"}))
    assert json.loads(reply.request_body.response.body_mutation.body)["model"] == "gpt-4o-mini"
    answer = run(processor.on_response_headers(em.response_headers(200)))
    headers = em.set_headers(answer.response_headers.response.header_mutation)
    assert headers["x-tokengate-backend"] == "openai/gpt-4o-mini"
    assert processor.model == "gpt-4o-mini"


def test_no_backend_able_to_serve_is_the_first_reason(runtime: Runtime) -> None:
    _, reply = run(_routed(runtime, {**CHAT, "model": "only-claude", "n": 2}))
    assert reply.immediate_response.status.code == 400
    assert b"untranslatable" in reply.immediate_response.body
    _, reply = run(_routed(runtime, {**CHAT, "model": "forbidden"}))
    assert reply.immediate_response.status.code == 403


def _answer(processor: Processor, served: str, usage: tuple[int, int]) -> None:
    headers = em.http_headers(
        [(":status", "200"), ("content-type", "application/json"),
         ("x-tokengate-backend", served)]
    )  # fmt: skip
    run(processor.on_response_headers(headers))
    run(processor.on_response_body(em.body(em.completion(*usage))))


def test_the_answer_is_charged_as_the_backend_that_served(runtime: Runtime) -> None:
    processor, _ = run(_routed(runtime, CHAT))
    _answer(processor, "anthropic/claude-sonnet-4-5", (1000, 100))
    spent = runtime.metrics.spend.labels("team", "svc", "claude-sonnet-4-5", "anthropic")
    assert spent._value.get() == 1000 * 3.00 + 100 * 15.00  # micro-dollars at Sonnet's price
    assert processor.model == "claude-sonnet-4-5"


def test_client_envoy_control_headers_are_removed(runtime: Runtime) -> None:
    extra = [("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "9")]
    _, reply = run(start(runtime, em.request_headers("tg-key", extra=extra)))
    removed = reply.request_headers.response.header_mutation.remove_headers
    assert {"x-envoy-retry-on", "x-envoy-max-retries"} <= set(removed)


# -- the upstream phase ---------------------------------------------------------------------


def _attempt_request(
    attempt: int, *, client: str = "openai", host: str | None = None, **route: Any
) -> ep.ProcessingRequest:
    facts = {
        "client": client,
        "path": "/v1/chat/completions" if client == "openai" else "/v1/messages",
        "stream": False,
        "backends": ["openai/gpt-4o-mini/4096", "anthropic/claude-sonnet-4-5/512"],
        **route,
    }
    metadata = struct_pb2.Struct()
    metadata.update({ROUTE_METADATA_NAMESPACE: facts})
    headers = em.request_headers(
        None, path="/v1/anything-an-earlier-attempt-left",
        extra=[("x-envoy-attempt-count", str(attempt)), ("x-api-key", "sk-ant-earlier")],
    )  # fmt: skip
    request = ep.ProcessingRequest(request_headers=headers)
    request.metadata_context.filter_metadata[ROUTE_METADATA_NAMESPACE].CopyFrom(
        metadata.fields[ROUTE_METADATA_NAMESPACE].struct_value
    )
    if host is not None:
        text = (
            'filter_metadata { key: "tokengate" value { fields { key: "provider" '
            f'value {{ string_value: "{host}" }} }} }} }}'
        )
        request.attributes["envoy.filters.http.ext_proc"].update(
            {"xds.upstream_host_metadata": text}
        )
    return request


async def _open_attempt(
    rt: Runtime, request: ep.ProcessingRequest
) -> tuple[Processor, ep.ProcessingResponse]:
    processor = open_processor(rt, request)
    assert isinstance(processor, UpstreamProcessor)
    reply = await processor.dispatch("request_headers", request)
    assert reply is not None
    return processor, reply


def test_the_first_attempt_goes_to_the_first_backend_with_only_its_key(
    runtime: Runtime,
) -> None:
    processor, reply = run(_open_attempt(runtime, _attempt_request(1, host="openai")))
    mutation = reply.request_headers.response.header_mutation
    assert em.set_headers(mutation)["authorization"] == "Bearer sk-provider"
    assert em.set_headers(mutation)[":path"] == "/v1/chat/completions"
    assert {"x-api-key", "anthropic-version"} <= set(mutation.remove_headers)
    body = run(processor.on_request_body(em.body(CHAT)))
    sent = json.loads(body.request_body.response.body_mutation.body)
    assert sent["model"] == "gpt-4o-mini"
    assert em.set_headers(body.request_body.response.header_mutation)["content-length"] == str(
        len(body.request_body.response.body_mutation.body)
    )


def test_the_second_attempt_is_translated_for_anthropic(runtime: Runtime) -> None:
    processor, reply = run(_open_attempt(runtime, _attempt_request(2, host="anthropic")))
    headers = em.set_headers(reply.request_headers.response.header_mutation)
    assert headers["x-api-key"] == "sk-ant-provider"
    assert headers[":path"] == "/v1/messages"
    assert headers["anthropic-version"] == "2023-06-01"
    assert "authorization" in reply.request_headers.response.header_mutation.remove_headers
    body = run(processor.on_request_body(em.body(CHAT)))
    sent = json.loads(body.request_body.response.body_mutation.body)
    assert sent["model"] == "claude-sonnet-4-5" and sent["max_tokens"] == 512
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]


def test_an_attempt_whose_host_is_another_provider_sends_nothing(runtime: Runtime) -> None:
    _, reply = run(_open_attempt(runtime, _attempt_request(1, host="anthropic")))
    assert reply.immediate_response.status.code == 503


def test_an_attempt_past_the_last_backend_sends_nothing(runtime: Runtime) -> None:
    _, reply = run(_open_attempt(runtime, _attempt_request(3)))
    assert reply.immediate_response.status.code == 503


def test_an_anthropic_answer_reaches_an_openai_client_translated(runtime: Runtime) -> None:
    processor, _ = run(_open_attempt(runtime, _attempt_request(2, host="anthropic")))
    run(processor.on_request_body(em.body(CHAT)))
    headers = run(processor.on_response_headers(em.response_headers(200)))
    assert em.set_headers(headers.response_headers.response.header_mutation) == {
        "x-tokengate-backend": "anthropic/claude-sonnet-4-5"
    }
    message = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "Hi!"}], "stop_reason": "end_turn",
        "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 3},
    }  # fmt: skip
    reply = run(processor.on_response_body(em.body(message)))
    answer = json.loads(reply.response_body.response.body_mutation.body)
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == "Hi!"
    assert answer["usage"]["prompt_tokens"] == 9 and answer["usage"]["completion_tokens"] == 3


def test_an_anthropic_error_reaches_an_openai_client_in_its_format(runtime: Runtime) -> None:
    processor, _ = run(_open_attempt(runtime, _attempt_request(2, host="anthropic")))
    run(processor.on_request_body(em.body(CHAT)))
    run(processor.on_response_headers(em.response_headers(529)))
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    reply = run(processor.on_response_body(em.body(error)))
    common = reply.response_body.response
    assert em.set_headers(common.header_mutation)[":status"] == "503"
    assert json.loads(common.body_mutation.body)["error"]["message"]


# -- backend health ---------------------------------------------------------------------------


async def _fail(rt: Runtime, backend: str, times: int) -> None:
    for _ in range(times):
        await rt.health.record(backend, Outcome(ok=False))


def test_an_open_breaker_leaves_its_backend_out_of_the_chain(runtime: Runtime) -> None:
    run(_fail(runtime, "openai/gpt-4o-mini", HealthPolicy().failures))
    _, reply = run(_routed(runtime, CHAT))
    headers = em.set_headers(reply.request_body.response.header_mutation)
    assert headers["x-tokengate-upstream"] == "failover.anthropic"
    assert headers["x-envoy-max-retries"] == "0"
    assert _route(reply)["backends"] == ["anthropic/claude-sonnet-4-5/512"]
    skipped = runtime.metrics.backend_skipped.labels("openai/gpt-4o-mini", "open")
    assert skipped._value.get() == 1


def test_every_backend_open_is_a_503_with_retry_after(runtime: Runtime) -> None:
    for backend in ("openai/gpt-4o-mini", "anthropic/claude-sonnet-4-5"):
        run(_fail(runtime, backend, HealthPolicy().failures))
    _, reply = run(_routed(runtime, CHAT))
    assert reply.immediate_response.status.code == 503
    headers = em.set_headers(reply.immediate_response.headers)
    assert 1 <= int(headers["retry-after"]) <= HealthPolicy().cooldown_s
    assert b"backends_unavailable" in reply.immediate_response.body


def test_a_provider_out_of_requests_is_skipped_before_it_says_429(runtime: Runtime) -> None:
    spent = Headroom(remaining_requests=0, requests_reset_s=20.0)
    run(runtime.health.record("openai/gpt-4o-mini", Outcome(ok=True, headroom=spent)))
    _, reply = run(_routed(runtime, CHAT))
    assert _route(reply)["backends"] == ["anthropic/claude-sonnet-4-5/512"]
    run(runtime.health.record("anthropic/claude-sonnet-4-5", Outcome(ok=True, headroom=spent)))
    _, reply = run(_routed(runtime, CHAT))
    assert reply.immediate_response.status.code == 429
    assert em.set_headers(reply.immediate_response.headers)["retry-after"] == "20"


def test_each_attempt_reports_its_outcome(runtime: Runtime) -> None:
    async def attempt(status: int | None) -> None:
        processor, _ = await _open_attempt(runtime, _attempt_request(1, host="openai"))
        await processor.on_request_body(em.body(CHAT))
        if status is not None:
            await processor.on_response_headers(em.response_headers(status))
        await processor.finish()
        await asyncio.gather(*asyncio.all_tasks() - {asyncio.current_task()})

    for status in (200, 503, 429, None, 400):
        run(attempt(status))
    counts = {
        outcome: runtime.metrics.backend_attempts.labels("openai/gpt-4o-mini", outcome)._value.get()
        for outcome in ("ok", "failed", "no_answer", "client_error")
    }
    assert counts == {"ok": 1, "failed": 2, "no_answer": 1, "client_error": 1}
    (state,) = run(runtime.health.view(["openai/gpt-4o-mini"]))
    # 503 and 429 count; no answer (it may be the client leaving) and a 400 are neutral
    assert state.failures == 2 and state.state == "closed"


class _DownHealth:
    """A health store that cannot be reached."""

    async def admit(self, backends: Any, *, tokens: int) -> Any:
        raise QuotaStoreError("connection refused")

    async def record(self, backend: str, outcome: Outcome) -> Any:
        raise QuotaStoreError("connection refused")

    async def view(self, backends: Any) -> Any:
        raise QuotaStoreError("connection refused")


def test_with_backend_health_unreachable_every_backend_is_tried(runtime: Runtime) -> None:
    runtime.health = _DownHealth()
    _, reply = run(_routed(runtime, CHAT))
    headers = em.set_headers(reply.request_body.response.header_mutation)
    assert headers["x-tokengate-upstream"] == "failover.openai.anthropic"
    processor, _ = run(_open_attempt(runtime, _attempt_request(1, host="openai")))
    run(processor.on_request_body(em.body(CHAT)))
    reply = run(processor.on_response_headers(em.response_headers(200)))  # reported, not raised
    assert reply.HasField("response_headers")


class _CountingHealth(MemoryHealth):
    def __init__(self) -> None:
        super().__init__(HealthPolicy())
        self.admits = 0

    async def admit(self, backends: Any, *, tokens: int) -> Any:
        self.admits += 1
        return await super().admit(backends, tokens=tokens)


def test_a_request_its_quota_refuses_claims_no_backend(runtime: Runtime) -> None:
    """Else a caller over its own budget could drain a shared provider's headroom (or hold
    a half-open backend's probe slot) with requests that are never sent."""
    runtime.health = health = _CountingHealth()

    async def send() -> ep.ProcessingResponse:
        processor, _ = await start(runtime, em.request_headers("tg-tight"))
        return await processor.on_request_body(em.body(CHAT))

    assert run(send()).HasField("request_body")
    assert run(send()).immediate_response.status.code == 429
    assert health.admits == 1
