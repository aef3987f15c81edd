"""Default deny, route by route: which processor a request line gets, what is refused (404,
405, 401 first), what a `Route` policy opens and counts, and where its key goes."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from extproc.gate import replies
from extproc.gate.runtime import Runtime
from extproc.quota import limits_for, route_limits
from tests import envoy_messages as em
from tests.gate_driver import runtime_for, start, used

POLICY = f"""
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: team, namespace: team}}
spec:
  limits:
    - {{name: rpm, requests: 10, per: 1m, algorithm: calendar}}
    - {{name: inflight, concurrent: 5}}
---
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: other, namespace: other}}
spec:
  limits: [{{name: rpm, requests: 10, per: 1m}}]
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: svc, namespace: team}}
spec: {{sha256: {hashlib.sha256(b"tg-key").hexdigest()}}}
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: svc, namespace: other}}
spec: {{sha256: {hashlib.sha256(b"tg-other").hexdigest()}}}
---
apiVersion: tokengate.dev/v1
kind: Route
metadata: {{name: models}}
spec:
  methods: [GET]
  path: /v1/models
  provider: openai
  limits: [{{name: route-rpm, requests: 2, per: 1m, algorithm: calendar}}]
---
apiVersion: tokengate.dev/v1
kind: Route
metadata: {{name: files, namespace: team}}
spec: {{methods: [GET, DELETE], path: /v1/files/*, provider: openai}}
---
apiVersion: tokengate.dev/v1
kind: Route
metadata: {{name: count-tokens}}
spec: {{methods: [POST], path: /v1/messages/count_tokens, provider: anthropic}}
"""


@pytest.fixture
def runtime(vocab_dir: Path) -> Runtime:
    return runtime_for(POLICY)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def _headers(key: str | None = "tg-key", *, path: str, method: str = "GET", **kw: Any) -> Any:
    return em.request_headers(key, path=path, method=method, **kw)


def _refusal(reply: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    immediate = reply.immediate_response
    return (
        immediate.status.code,
        json.loads(immediate.body),
        em.set_headers(immediate.headers),
    )


@pytest.mark.parametrize(
    "path",
    [
        "/v1/files",  # the shared account's objects: closed unless a Route opens them
        "/v1/batches",
        "/v1/responses/resp_123",
        "/V1/chat/completions",  # another spelling is another path
        "/v1/chat/completions/",
        "/v1/chat/completions;x=1",
    ],
)
def test_what_no_route_opens_is_404_in_openai_format(runtime: Runtime, path: str) -> None:
    _, reply = run(start(runtime, _headers(path=path, method="POST")))
    status, body, _ = _refusal(reply)
    assert (status, body["error"]["code"]) == (404, "unknown_url")


def test_an_anthropic_path_is_refused_in_anthropic_format(runtime: Runtime) -> None:
    _, reply = run(start(runtime, _headers(path="/v1/messages/batches", method="POST")))
    status, body, _ = _refusal(reply)
    assert (status, body["type"], body["error"]["type"]) == (404, "error", "not_found_error")


def test_a_known_path_with_another_method_is_405_naming_the_allowed(runtime: Runtime) -> None:
    _, reply = run(start(runtime, _headers(path="/v1/chat/completions", method="GET")))
    status, body, headers = _refusal(reply)
    assert (status, body["error"]["code"], headers["allow"]) == (405, "method_not_allowed", "POST")
    _, reply = run(start(runtime, _headers(path="/v1/files/file-1", method="PUT")))
    assert _refusal(reply)[2]["allow"] == "DELETE, GET"


def test_the_caller_is_identified_before_a_route_is_refused(runtime: Runtime) -> None:
    _, reply = run(start(runtime, _headers(None, path="/v1/files")))
    assert _refusal(reply)[0] == 401
    key_in_query = _headers(None, path="/v1/chat/completions?api_key=tg-key", method="POST")
    _, reply = run(start(runtime, key_in_query))
    assert _refusal(reply)[0] == 401  # a key in the query string is never identity


def test_an_opened_route_is_forwarded_and_counted_under_its_own_limits(runtime: Runtime) -> None:
    policy = runtime.policies.current.policies["team"]
    route = next(r for r in runtime.policies.current.routes if r.name == "models")
    (route_rpm,) = route_limits(route, policy)
    rpm = next(s for s in limits_for(policy, None) if s.limit.name == "rpm")

    async def call() -> Any:
        processor, reply = await start(runtime, _headers(path="/v1/models"))
        await processor.finish()
        return reply

    first = run(call())
    assert first.mode_override == replies.PASSTHROUGH_MODE
    mutation = first.request_headers.response.header_mutation
    assert em.set_headers(mutation)["authorization"] == "Bearer sk-provider"
    run(call())
    assert (run(used(runtime, rpm)), run(used(runtime, route_rpm))) == (2, 2)
    status, body, _ = _refusal(run(call()))  # the route's own 2 a minute are spent
    assert (status, body["error"]["code"]) == (429, "rate_limit_exceeded")
    assert "route-rpm" in body["error"]["message"]


def test_a_namespaced_route_is_closed_to_other_namespaces(runtime: Runtime) -> None:
    _, reply = run(start(runtime, _headers(path="/v1/files/file-1")))
    assert reply.HasField("request_headers")  # team: opened
    _, reply = run(start(runtime, _headers("tg-other", path="/v1/files/file-1")))
    status, body, _ = _refusal(reply)
    assert status == 404 and "not opened for namespace 'other'" in body["error"]["message"]


def test_an_anthropic_route_gets_the_anthropic_key_and_upstream(runtime: Runtime) -> None:
    extra = [("x-api-key", "tg-key")]
    headers = em.request_headers(None, path="/v1/messages/count_tokens", extra=extra)
    _, reply = run(start(runtime, headers))
    mutation = reply.request_headers.response.header_mutation
    sets = em.set_headers(mutation)
    assert (sets["x-api-key"], sets["x-tokengate-upstream"]) == ("sk-ant-provider", "anthropic")
    # The gateway key the client sent as x-api-key is overwritten, never forwarded beside it.
    assert "authorization" in mutation.remove_headers
    assert "x-api-key" not in mutation.remove_headers


@pytest.mark.parametrize(
    ("path", "upstream_path"),
    [
        ("/v1/chat/completions?api_key=sk-x&stream=1", "/v1/chat/completions?stream=1"),
        ("/v1/chat/completions?KEY=a&Token=b&access_token=c", "/v1/chat/completions"),
        ("/v1/chat/completions?api%5Fkey=sk-x", "/v1/chat/completions"),
    ],
)
def test_credential_query_parameters_never_reach_the_upstream(
    runtime: Runtime, path: str, upstream_path: str
) -> None:
    _, reply = run(start(runtime, _headers(path=path, method="POST")))
    assert em.set_headers(reply.request_headers.response.header_mutation)[":path"] == upstream_path


def test_credential_headers_are_found_by_pattern(runtime: Runtime) -> None:
    extra = [
        ("openai-api-key", "a"), ("anthropic-api-key", "b"), ("x-auth-token", "c"),
        ("x_api_key", "d"), ("cookie", "e"), ("x-request-id", "kept"),
    ]  # fmt: skip
    _, reply = run(
        start(runtime, _headers(path="/v1/chat/completions", method="POST", extra=extra))
    )
    removed = set(reply.request_headers.response.header_mutation.remove_headers)
    assert {"openai-api-key", "anthropic-api-key", "x-auth-token", "x_api_key", "cookie"} <= removed
    assert "x-request-id" not in removed and "authorization" not in removed  # set, not removed
