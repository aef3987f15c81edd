"""Nothing ungoverned reaches a provider (issue 13), against the real Envoy + sidecar + a
recording mock upstream whose provider keys are canaries.

Each row of `forwarding_rows.ROWS` is one request a client (or an attacker with a valid
gateway key) could send, and the assertion is threefold: what the client got (status, the
provider's error format), whether the upstream was called, and — when it was — that it saw
the canonical path, exactly one credential (the injected key of the right provider), no
credential query parameter, no client secret anywhere, and `accept-encoding: identity`.
The tests after the table drive the official SDKs against an upstream that compresses
anyway, an opened route's own limits, and connection reuse after refusals.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest

from extproc.dev.stack import LocalStack
from extproc.providers import tokens
from tests.e2e.forwarding import (
    Connection,
    Forwarded,
    Got,
    Refused,
    Secrets,
    api_key_documents,
    check,
    check_forwarded,
    check_refused,
    gateway_keys,
    send,
    start_gateway,
    upstream_records,
    upstream_total,
)
from tests.e2e.forwarding_rows import CHAT, CLAUDE, NAMESPACES, ROWS, Row
from tests.e2e.harness import metric_value, wait_until

LONG = "366d"
STREAM_BUDGET = 150
HELLO_PROMPT = 1 + 1 + 3 + 3  # "user" + "hello" + OpenAI message framing + reply priming
ENVOY_MIN_CONTENT_LENGTH = 30  # the compressor's default: smaller answers stay identity


def _policy(namespace: str, *limits: str, extra: str = "") -> str:
    return (
        "apiVersion: tokengate.dev/v1\nkind: QuotaPolicy\n"
        f"metadata: {{name: {namespace}, namespace: {namespace}}}\nspec:\n"
        f'  models: {{allow: ["gpt-4o*", "claude-*"]}}\n{extra}'
        f"  limits: [{', '.join(limits)}]\n"
    )


ROOMY = ("{name: rpm, requests: 100000, per: 1m}", "{name: inflight, concurrent: 100}")
ONE_REQUEST = f"{{name: one-request, requests: 1, per: {LONG}}}"
ROUTES = f"""
apiVersion: tokengate.dev/v1
kind: Route
metadata: {{name: models}}
spec: {{methods: [GET], path: /v1/models, provider: openai, namespaces: ["*"]}}
---
apiVersion: tokengate.dev/v1
kind: Route
metadata: {{name: files, namespace: fw}}
spec: {{methods: [GET, DELETE], path: /v1/files/*, provider: openai}}
---
apiVersion: tokengate.dev/v1
kind: Route
metadata: {{name: one-model}}
spec:
  methods: [GET]
  path: /v1/models/*
  provider: openai
  namespaces: [route-limited]
  limits: [{{name: route-once, requests: 1, per: {LONG}}}]
"""
POLICIES = "---\n".join(
    [
        *(_policy(ns, *ROOMY) for ns in ("fw", "fw-other", "gz", "route-limited")),
        *(_policy(ns, ONE_REQUEST) for ns in NAMESPACES if ns.startswith("empty-")),
        _policy(
            "budget",
            f"{{name: stream-tokens, tokens: {STREAM_BUDGET}, per: {LONG}}}",
            # The cut is what this namespace shows; a clamped cap would end the stream first.
            extra="  defaultMaxTokens: 10\n  clampCompletion: false\n",
        ),
        ROUTES,
    ]
)


@dataclass(frozen=True)
class Gateway:
    stack: LocalStack
    keys: dict[str, str]
    leak: str

    @property
    def port(self) -> int:
        return self.stack.ports["envoy"]

    def secrets(self) -> Secrets:
        assert self.stack.openai_api_key and self.stack.anthropic_api_key
        return Secrets(
            injected={
                "openai": ("authorization", f"Bearer {self.stack.openai_api_key}"),
                "anthropic": ("x-api-key", self.stack.anthropic_api_key),
            },
            forbidden=(self.leak, *self.keys.values()),
        )

    def fill(self, text: str, namespace: str) -> str:
        return (
            text.replace("{key}", self.keys[namespace])
            .replace("{other}", self.keys["fw-other"])
            .replace("{leak}", self.leak)
        )


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Any) -> Iterator[Gateway]:
    keys = gateway_keys((*NAMESPACES, "gz", "budget", "route-limited"))
    policies = POLICIES + "---\n" + api_key_documents(keys)
    stack = start_gateway(tmp_path_factory.mktemp("forwarding"), vocab_dir, policies)
    try:
        yield Gateway(stack, keys, leak=f"sk-leak-{uuid.uuid4().hex}")
    finally:
        stack.stop()


def _headers(gateway: Gateway, row: Row, tag: str) -> list[tuple[str, str]]:
    headers = [("x-request-tag", tag)]
    if not any(name.lower() == "accept-encoding" for name, _ in row.headers):
        headers.append(("accept-encoding", "gzip, deflate"))
    if row.identity == "authorization":
        headers.append(("authorization", "Bearer {key}"))
    elif row.identity:
        headers.append((row.identity, "{key}"))
    if "/v1/messages" in row.target:
        headers.append(("anthropic-version", "2023-06-01"))
    if row.request_body():
        headers.append(("content-type", "application/json"))
    headers.extend(row.headers)
    return [(name, gateway.fill(value, row.namespace)) for name, value in headers]


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_forwarding_table(gateway: Gateway, row: Row) -> None:
    tag = uuid.uuid4().hex
    headers = _headers(gateway, row, tag)
    trailers = [(name, gateway.fill(value, row.namespace)) for name, value in row.trailers]
    before = upstream_total(gateway.stack)
    got = send(
        gateway.port,
        row.method,
        gateway.fill(row.target, row.namespace),
        headers,
        row.request_body(),
        chunked=row.chunked,
        trailers=trailers,
    )
    called = upstream_total(gateway.stack) - before
    check(got, row.expect, called, upstream_records(gateway.stack, tag), gateway.secrets())
    if called:
        _check_answer(got, dict((n.lower(), v) for n, v in headers).get("accept-encoding", ""))
    if row.counted_by is not None:
        _check_counted(gateway, row, got)


def _check_answer(got: Got, accepted: str) -> None:
    """The client got the upstream's answer, readable, compressed by Envoy only if asked
    (and worth it: Envoy's compressor leaves bodies under `min_content_length` alone)."""
    answer = got.json()
    assert answer.get("error") is None and answer.get("type") != "error", answer  # null is fine
    encoding = got.header("content-encoding")
    if "gzip" in accepted and len(got.body) >= ENVOY_MIN_CONTENT_LENGTH:
        assert encoding == "gzip", got.headers
    elif "gzip" in accepted:
        assert encoding in (None, "gzip"), got.headers
    else:
        assert encoding is None, got.headers


def _check_counted(gateway: Gateway, row: Row, refused: Got) -> None:
    """The refused request used the namespace's one request: a valid one is now a 429."""
    assert row.counted_by is not None
    provider = "anthropic" if "/v1/messages" in row.target else "openai"
    body = CLAUDE if provider == "anthropic" else CHAT
    path = "/v1/messages" if provider == "anthropic" else "/v1/chat/completions"
    headers = [
        ("authorization", f"Bearer {gateway.keys[row.namespace]}"),
        ("content-type", "application/json"),
    ]
    before = upstream_total(gateway.stack)
    got = send(gateway.port, "POST", path, headers, body)
    kind = "rate_limit_error" if provider == "anthropic" else None
    check_refused(got, Refused(429, provider, kind), upstream_total(gateway.stack) - before)
    assert row.counted_by in str(got.json()), (refused.body, got.body)


# --- the SDKs against an upstream that compresses anyway -------------------------------------


def _openai(gateway: Gateway, tag: str, namespace: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gateway.stack.base_url}/v1",
        api_key=gateway.keys[namespace],
        max_retries=0,
        timeout=60,
        default_headers={"x-request-tag": tag, "x-mock-content-encoding": "gzip"},
    )


def _anthropic(gateway: Gateway, tag: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=gateway.stack.base_url,
        api_key=gateway.keys["gz"],
        max_retries=0,
        timeout=60,
        default_headers={"x-request-tag": tag, "x-mock-content-encoding": "gzip"},
    )


def _sdk_call(
    gateway: Gateway, tag: str, provider: str, model: str, stream: bool
) -> tuple[int, int]:
    """One SDK call answered gzip-compressed; returns (prompt, completion) as the provider
    reported them to the client."""
    asked = {"x-mock-completion-tokens": "17"}
    if provider == "openai":
        api = _openai(gateway, tag, "gz")
        messages: Any = [{"role": "user", "content": "hello"}]
        if not stream:
            done = api.chat.completions.create(
                model=model, messages=messages, max_tokens=50, extra_headers=asked
            )
            assert done.usage is not None and done.choices[0].message.content
            return done.usage.prompt_tokens, done.usage.completion_tokens
        chunks = list(
            api.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=50,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers=asked,
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
        assert usage is not None and len(text.split()) == usage.completion_tokens
        return usage.prompt_tokens, usage.completion_tokens
    claude = _anthropic(gateway, tag)
    hello: Any = [{"role": "user", "content": "hello"}]
    if not stream:
        message = claude.messages.create(
            model=model, max_tokens=50, messages=hello, extra_headers=asked
        )
        return message.usage.input_tokens, message.usage.output_tokens
    with claude.messages.stream(
        model=model, max_tokens=50, messages=hello, extra_headers=asked
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert len(text.split()) == final.usage.output_tokens
    return final.usage.input_tokens, final.usage.output_tokens


@pytest.mark.parametrize(
    ("provider", "model", "stream"),
    [
        ("openai", "gpt-4o", False),
        ("openai", "gpt-4o-mini", True),
        ("anthropic", "claude-haiku-4-5", False),
        ("anthropic", "claude-opus-4-5", True),
    ],
    ids=["openai-plain", "openai-stream", "anthropic-plain", "anthropic-stream"],
)
def test_sdk_reads_gzip_answers_and_usage_settles_as_reported(
    gateway: Gateway, provider: str, model: str, stream: bool
) -> None:
    """One (namespace, model) pair per case, so the settled-token metric is this call's."""
    tag = uuid.uuid4().hex
    labels = {"namespace": "gz", "model": model}
    before = upstream_total(gateway.stack)
    prompt, completion = _sdk_call(gateway, tag, provider, model, stream)
    assert completion == 17
    path = "/v1/messages" if provider == "anthropic" else "/v1/chat/completions"
    got = Got(200, (), b"{}")
    records = upstream_records(gateway.stack, tag)
    called = upstream_total(gateway.stack) - before
    check_forwarded(got, Forwarded(provider, path), called, records, gateway.secrets())
    wait_until(
        lambda: (
            metric_value(gateway.stack, "tokengate_tokens_total", kind="completion", **labels)
            == completion
        ),
        detail=gateway.stack.children["sidecar"].log_tail,
    )
    assert metric_value(gateway.stack, "tokengate_tokens_total", kind="prompt", **labels) == prompt


def test_gzip_stream_is_cut_at_the_budget_and_charged_what_was_delivered(gateway: Gateway) -> None:
    tag = uuid.uuid4().hex
    api = _openai(gateway, tag, "budget")
    hello: Any = [{"role": "user", "content": "hello"}]
    stream = api.chat.completions.create(
        model="gpt-4o",
        messages=hello,
        stream=True,
        extra_headers={"x-mock-completion-tokens": "2000", "x-mock-chunk-delay-ms": "2"},
    )
    received: list[str] = []
    with pytest.raises(openai.APIError) as cut:
        for chunk in stream:
            received.extend(c.delta.content or "" for c in chunk.choices)
    assert "stream-tokens" in cut.value.message
    delivered = tokens.count("".join(received), "o200k_base")
    assert 0 < delivered <= STREAM_BUDGET - HELLO_PROMPT
    labels = {"namespace": "budget", "model": "gpt-4o", "kind": "completion"}
    wait_until(lambda: metric_value(gateway.stack, "tokengate_tokens_total", **labels) == delivered)
    with pytest.raises(openai.RateLimitError) as refused:
        api.chat.completions.create(model="gpt-4o", messages=hello)
    assert f"used {HELLO_PROMPT + delivered}," in refused.value.message


# --- opened routes and connections ----------------------------------------------------------


def test_an_opened_routes_own_limit_refuses_before_the_upstream(gateway: Gateway) -> None:
    tag = uuid.uuid4().hex
    headers = [("authorization", f"Bearer {gateway.keys['route-limited']}"), ("x-request-tag", tag)]
    before = upstream_total(gateway.stack)
    first = send(gateway.port, "GET", "/v1/models/gpt-4o", headers, None)
    records = upstream_records(gateway.stack, tag)
    called = upstream_total(gateway.stack) - before
    check_forwarded(
        first, Forwarded("openai", "/v1/models/gpt-4o"), called, records, gateway.secrets()
    )
    assert first.json()["id"] == "gpt-4o"
    before = upstream_total(gateway.stack)
    second = send(gateway.port, "GET", "/v1/models/gpt-4o", headers, None)
    check_refused(second, Refused(429, "openai"), upstream_total(gateway.stack) - before)
    assert "route-once" in second.json()["error"]["message"]
    assert (second.header("retry-after") or "").isdigit()
    other = [("authorization", f"Bearer {gateway.keys['fw']}")]
    not_opened = send(gateway.port, "GET", "/v1/models/gpt-4o", other, None)
    assert not_opened.status == 404  # opened for route-limited only


def test_refusals_keep_the_client_connection_open(gateway: Gateway) -> None:
    """401, 404, 405, 415 and the body phase's 400 each leave the connection usable."""
    key = [("authorization", f"Bearer {gateway.keys['fw']}")]
    json_ct = [*key, ("content-type", "application/json")]
    with Connection(gateway.port) as conn:
        refusals = [
            conn.send("POST", "/v1/chat/completions", [], CHAT),
            conn.send("GET", "/v1/files", key, None),
            conn.send("GET", "/v1/chat/completions", key, None),
            conn.send(
                "POST", "/v1/chat/completions", [*json_ct, ("content-encoding", "gzip")], CHAT
            ),
            conn.send("POST", "/v1/chat/completions", json_ct, b""),
        ]
        assert [r.status for r in refusals] == [401, 404, 405, 415, 400]
        assert all(r.kept_open for r in refusals), [r.headers for r in refusals]
        answer = conn.send("POST", "/v1/chat/completions", json_ct, CHAT)
    assert answer.status == 200 and answer.json()["object"] == "chat.completion"
