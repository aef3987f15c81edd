"""The provider keys are canaries: they must appear in exactly one place, the credential
header injected toward their own provider, and nowhere a client, an operator's log reader or
a metrics scraper could see them. A gateway key sent in a query string must not be accepted,
forwarded or logged. (Issue 13, "What must be shown".)

One stack runs a mix of traffic once — governed plain and streamed answers of both providers,
compressed answers, upstream errors, every kind of refusal, a stream cut at its budget, an
opened route, keys in query strings — with the sidecar logging at DEBUG; then `/metrics` is
read, the stack is stopped (so every log line is flushed) and the tests scan what was kept.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from extproc.dev.stack import LocalStack
from tests.e2e.forwarding import (
    Got,
    api_key_documents,
    gateway_keys,
    send,
    start_gateway,
    upstream_records,
)

LONG = "366d"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
CLAUDE = {**CHAT, "model": "claude-haiku-4-5", "max_tokens": 30}
NAMESPACES = ("sec", "sec-query", "sec-tight", "sec-budget")
POLICIES = f"""
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: sec, namespace: sec}}
spec:
  limits: [{{name: rpm, requests: 100000, per: 1m}}]
---
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: sec-query, namespace: sec-query}}
spec:
  limits: [{{name: rpm, requests: 100000, per: 1m}}]
---
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: sec-tight, namespace: sec-tight}}
spec:
  limits: [{{name: one-request, requests: 1, per: {LONG}}}]
---
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: sec-budget, namespace: sec-budget}}
spec:
  defaultMaxTokens: 10
  clampCompletion: false  # the stream must be cut, not capped
  limits: [{{name: stream-tokens, tokens: 150, per: {LONG}}}]
---
apiVersion: tokengate.dev/v1
kind: Route
metadata: {{name: models}}
spec: {{methods: [GET], path: /v1/models, provider: openai}}
---
"""


# The paths of the requests that `_traffic` expects to reach the upstream, one each.
FORWARDED = [
    *["/v1/chat/completions"] * 7,  # chat, stream, gzip, upstream-401, tight-1, cut, query
    *["/v1/messages"] * 4,  # messages, stream, gzip stream, upstream-500
    *["/v1/models"] * 2,  # the opened route, with and without a query key
]


@dataclass(frozen=True)
class Run:
    """Everything the traffic left behind, read once the stack has stopped."""

    canaries: dict[str, str]  # provider -> its key
    query_key: str  # a valid gateway key, only ever sent in query strings
    responses: dict[str, Got]
    records: list[dict[str, Any]]
    metrics: str
    logs: dict[str, str]  # file name -> content, Envoy's and the sidecar's


def _traffic(stack: LocalStack, keys: dict[str, str], tag: str) -> dict[str, Got]:
    """Each request by name, and what its client got."""
    query_key = keys["sec-query"]
    bearer = [("authorization", f"Bearer {keys['sec']}"), ("x-request-tag", tag)]
    claude = [("x-api-key", keys["sec"]), ("x-request-tag", tag)]
    zipped = [("x-mock-content-encoding", "gzip")]
    tight = [("authorization", f"Bearer {keys['sec-tight']}"), ("x-request-tag", tag)]
    budget = [("authorization", f"Bearer {keys['sec-budget']}"), ("x-request-tag", tag)]
    chat, messages = json.dumps(CHAT).encode(), json.dumps(CLAUDE).encode()
    stream_chat = json.dumps({**CHAT, "stream": True}).encode()
    stream_claude = json.dumps({**CLAUDE, "stream": True}).encode()
    requests: dict[str, tuple[str, str, list[tuple[str, str]], bytes | None]] = {
        "chat": ("POST", "/v1/chat/completions", bearer, chat),
        "messages": ("POST", "/v1/messages", claude, messages),
        "chat-stream": ("POST", "/v1/chat/completions", bearer, stream_chat),
        "messages-stream": ("POST", "/v1/messages", claude, stream_claude),
        "chat-gzip": ("POST", "/v1/chat/completions", [*bearer, *zipped], chat),
        "messages-stream-gzip": ("POST", "/v1/messages", [*claude, *zipped], stream_claude),
        "upstream-401": (
            "POST", "/v1/chat/completions", [*bearer, ("x-mock-status", "401")], chat
        ),
        "upstream-500": ("POST", "/v1/messages", [*claude, ("x-mock-status", "500")], messages),
        "opened-route": ("GET", "/v1/models", bearer, None),
        "not-found": ("GET", "/v1/files", bearer, None),
        "wrong-method": ("GET", "/v1/chat/completions", bearer, None),
        "no-key": ("POST", "/v1/chat/completions", [("x-request-tag", tag)], chat),
        "compressed-request": (
            "POST", "/v1/chat/completions", [*bearer, ("content-encoding", "gzip")], chat
        ),
        "empty-body": ("POST", "/v1/messages", claude, b""),
        "escaped-slash": ("POST", "/v1/chat/completions%2F", bearer, chat),
        "malformed-header": ("POST", "/v1/chat/completions", [*bearer, ("x-bad h", "1")], chat),
        "tight-1": ("POST", "/v1/chat/completions", tight, chat),
        "tight-2-refused": ("POST", "/v1/chat/completions", tight, chat),
        "stream-cut": (
            "POST",
            "/v1/chat/completions",
            [*budget, ("x-mock-completion-tokens", "2000")],
            stream_chat,
        ),
        # A valid gateway key, in query strings only: alone it is no identity; beside a
        # header key it is a stray credential that must be dropped before the upstream.
        "query-key-alone": (
            "POST", f"/v1/chat/completions?key={query_key}", [("x-request-tag", tag)], chat
        ),
        "query-key-alone-anthropic": (
            "POST", f"/v1/messages?api_key={query_key}", [("x-request-tag", tag)], messages
        ),
        "query-key-beside-header": (
            "POST", f"/v1/chat/completions?api_key={query_key}&x=1", bearer, chat
        ),
        "query-key-opened-route": ("GET", f"/v1/models?access_token={query_key}", bearer, None),
        "query-key-refused-route": ("GET", f"/v1/files?token={query_key}", bearer, None),
    }  # fmt: skip
    port = stack.ports["envoy"]
    got = {}
    for name, (method, target, headers, body) in requests.items():
        typed = [("content-type", "application/json")] if body else []
        got[name] = send(
            port, method, target, [*headers, *typed, ("accept-encoding", "gzip")], body
        )
    return got


def _metrics(stack: LocalStack) -> str:
    got = send(stack.ports["metrics"], "GET", "/metrics", [], None)
    assert got.status == 200
    return got.body.decode()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Iterator[Run]:
    keys = gateway_keys(NAMESPACES)
    stack = start_gateway(
        tmp_path_factory.mktemp("secrets"),
        vocab_dir,
        POLICIES + api_key_documents(keys),
        serve_args=("--log-level", "DEBUG"),
    )
    tag = uuid.uuid4().hex
    try:
        responses = _traffic(stack, keys, tag)
        records = upstream_records(stack, tag)
        metrics = _metrics(stack)
    finally:
        stack.stop()  # flushes every log before the scan
    assert stack.openai_api_key and stack.anthropic_api_key
    yield Run(
        canaries={"openai": stack.openai_api_key, "anthropic": stack.anthropic_api_key},
        query_key=keys["sec-query"],
        responses=responses,
        records=records,
        metrics=metrics,
        logs={path.name: path.read_text() for path in sorted(stack.run_dir.glob("*.log"))},
    )


def _visible(got: Got) -> str:
    return json.dumps([got.status, got.headers, got.body.decode("utf-8", "replace")])


def test_the_traffic_reached_what_it_should(run: Run) -> None:
    """The scans below only mean something if the canaries were really used and the logs
    and metrics really hold this traffic."""
    statuses = {name: got.status for name, got in run.responses.items()}
    assert statuses["chat"] == statuses["messages-stream-gzip"] == 200, statuses
    assert {401, 404, 405, 415, 400, 429} <= set(statuses.values()), statuses
    assert b"stream-tokens" in run.responses["stream-cut"].body  # the cut's error event
    assert sorted(r["path"] for r in run.records) == sorted(FORWARDED), run.records
    used = json.dumps([r["credentials"] for r in run.records])
    assert all(key in used for key in run.canaries.values()), used
    access = [line for line in run.logs["envoy.log"].splitlines() if " up=" in line]
    assert len(access) >= len(run.responses), access  # every request has its access-log line
    assert "tokengate ready" in run.logs["sidecar.log"]
    assert "tokengate_requests_total" in run.metrics


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_canary_is_in_no_response(run: Run, provider: str) -> None:
    canary = run.canaries[provider]
    leaked = [_visible(got) for got in run.responses.values() if canary in _visible(got)]
    assert not leaked, leaked


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_canary_is_in_no_log_line(run: Run, provider: str) -> None:
    canary = run.canaries[provider]
    assert set(run.logs) >= {"envoy.log", "sidecar.log"}, run.logs.keys()
    leaked = [
        f"{name}: {line}"
        for name, text in run.logs.items()
        for line in text.splitlines()
        if canary in line
    ]
    assert not leaked, leaked


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_canary_is_not_in_metrics(run: Run, provider: str) -> None:
    assert run.canaries[provider] not in run.metrics


def test_canary_reaches_its_own_provider_only_in_the_injected_header(run: Run) -> None:
    expected = {
        "openai": ("authorization", f"Bearer {run.canaries['openai']}"),
        "anthropic": ("x-api-key", run.canaries["anthropic"]),
    }
    for record in run.records:
        provider = "anthropic" if record["path"].startswith("/v1/messages") else "openai"
        assert record["credentials"] == {expected[provider][0]: [expected[provider][1]]}, record
        rest = [[n, v] for n, v in record["headers"] if [n, v] != list(expected[provider])]
        seen = json.dumps([record["target"], rest, record["trailers"], record["body"]])
        for canary in run.canaries.values():
            assert canary not in seen, record


def test_gateway_key_in_a_query_string_is_not_identity_and_goes_nowhere(run: Run) -> None:
    alone = [run.responses["query-key-alone"], run.responses["query-key-alone-anthropic"]]
    assert [got.status for got in alone] == [401, 401], [_visible(got) for got in alone]
    beside = run.responses["query-key-beside-header"], run.responses["query-key-opened-route"]
    assert [got.status for got in beside] == [200, 200], [_visible(got) for got in beside]
    assert run.query_key not in json.dumps(run.records)  # neither in a target nor anywhere
    for name, text in run.logs.items():
        lines = [line for line in text.splitlines() if run.query_key in line]
        assert not lines, f"{name}: {lines}"
    assert run.query_key not in run.metrics
