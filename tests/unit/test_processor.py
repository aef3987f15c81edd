"""The per-stream processor, phase by phase, with the real in-process quota store and real
tokenizer (no Envoy: the tests play Envoy's part with the messages it would send)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from extproc.gate import replies
from extproc.gate.processor import Processor
from extproc.gate.runtime import Runtime
from extproc.quota import limits_for
from tests import envoy_messages as em
from tests.gate_driver import runtime_for, start, used

POLICY = f"""
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: team, namespace: team}}
spec:
  clampCompletion: false  # reserve-and-settle; clamping has its own tests
  models: {{allow: ["gpt-4o*"]}}
  defaultMaxTokens: 100
  limits:
    - {{name: rpm, requests: 10, per: 1m, algorithm: calendar}}
    - {{name: tokens, tokens: 1000, per: 1h, algorithm: calendar}}
    - {{name: inflight, concurrent: 1}}
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: svc, namespace: team}}
spec: {{sha256: {hashlib.sha256(b"tg-key").hexdigest()}}}
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: orphan, namespace: nobody}}
spec: {{sha256: {hashlib.sha256(b"tg-orphan").hexdigest()}}}
"""
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
PROMPT = 1 + 1 + 3 + 3  # "user" + "hello" + message framing + reply priming


@pytest.fixture
def runtime(vocab_dir: Path) -> Runtime:
    return runtime_for(POLICY, keys={"openai": "sk-provider"})


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _admit(rt: Runtime, payload: dict[str, Any] = CHAT) -> tuple[Processor, Any]:
    processor, _ = await start(rt, em.request_headers("tg-key"))
    return processor, await processor.on_request_body(em.body(payload))


async def _used(rt: Runtime, limit: str) -> int:
    """What the quota store counts now for the team's limit named `limit`."""
    policy = rt.policies.current.policies["team"]
    return await used(rt, next(s for s in limits_for(policy, None) if s.limit.name == limit))


def test_headers_strip_every_client_credential_and_inject_the_provider_key(
    runtime: Runtime,
) -> None:
    extra = [("x-api-key", "sk-client"), ("Api-Key", "x"), ("x-goog-api-key", "y")]
    _, reply = run(start(runtime, em.request_headers("tg-key", extra=extra)))
    common = reply.request_headers.response
    assert em.set_headers(common.header_mutation) == {
        "authorization": "Bearer sk-provider",
        "x-tokengate-upstream": "openai",
        "accept-encoding": "identity",  # every governed answer must be readable
    }
    assert set(common.header_mutation.remove_headers) == {
        "proxy-authorization", "x-forwarded-authorization", "cookie",
        "x-api-key", "api-key", "Api-Key", "x-goog-api-key",
    }  # fmt: skip
    assert common.clear_route_cache
    assert reply.mode_override == replies.GOVERNED_MODE


@pytest.mark.parametrize(
    ("key", "status", "code"),
    [
        (None, 401, "missing_api_key"),
        ("tg-wrong", 401, "invalid_api_key"),
        ("tg-orphan", 403, "no_policy"),
    ],
)
def test_callers_without_identity_or_policy_are_refused(
    runtime: Runtime, key: str | None, status: int, code: str
) -> None:
    _, reply = run(start(runtime, em.request_headers(key)))
    assert reply.immediate_response.status.code == status
    assert f'"code": "{code}"' in reply.immediate_response.body.decode()
    assert b"sk-provider" not in reply.SerializeToString()


def test_declared_body_over_the_limit_is_refused_before_reading_it(runtime: Runtime) -> None:
    headers = em.request_headers("tg-key", extra=[("content-length", "10001")])
    _, reply = run(start(runtime, headers))
    assert reply.immediate_response.status.code == 413


def test_partial_body_means_over_the_buffer_limit(runtime: Runtime) -> None:
    async def scenario() -> Any:
        processor, _ = await start(runtime, em.request_headers("tg-key"))
        return await processor.on_request_body(em.body(CHAT, end_of_stream=False))

    assert run(scenario()).immediate_response.status.code == 413


def test_model_outside_allow_list_is_403(runtime: Runtime) -> None:
    _, reply = run(_admit(runtime, {**CHAT, "model": "claude-3-opus"}))
    assert reply.immediate_response.status.code == 403
    assert "claude-3-opus" in reply.immediate_response.body.decode()


def test_reserve_then_settle_with_provider_usage(runtime: Runtime) -> None:
    async def scenario() -> int:
        processor, reply = await _admit(runtime)
        assert reply == replies.REQUEST_BODY_CONTINUE
        reserved = await _used(runtime, "tokens")
        headers = await processor.on_response_headers(em.response_headers(200))
        assert em.set_headers(headers.response_headers.response.header_mutation)[
            "x-ratelimit-remaining-tokens"
        ] == str(1000 - reserved)
        await processor.on_response_body(em.body(em.completion(PROMPT, 20)))
        await processor.finish()
        return reserved

    reserved = run(scenario())
    assert reserved == PROMPT + 100  # defaultMaxTokens when the request names none
    assert run(_used(runtime, "tokens")) == PROMPT + 20
    assert run(_used(runtime, "rpm")) == 1


def test_answer_is_settled_before_its_reply_so_the_next_call_finds_its_slot(
    runtime: Runtime,
) -> None:
    """The caller may send its next request the instant it has the answer, before Envoy
    closes the ext_proc stream: by then the concurrency slot (limit 1) and the unused part
    of the reservation must already be given back."""

    async def scenario() -> Any:
        first, _ = await _admit(runtime)
        await first.on_response_headers(em.response_headers(200))
        await first.on_response_body(em.body(em.completion(PROMPT, 20)))
        settled = await _used(runtime, "tokens"), await _used(runtime, "inflight")
        _, reply = await _admit(runtime)  # `first.finish()` has not run yet
        await first.finish()
        return settled, reply

    settled, reply = run(scenario())
    assert settled == (PROMPT + 20, 0)
    assert reply == replies.REQUEST_BODY_CONTINUE


def test_usage_is_read_from_an_answer_split_across_chunks(runtime: Runtime) -> None:
    answer = json.dumps(em.completion(PROMPT, 33)).encode()

    async def scenario() -> None:
        processor, _ = await _admit(runtime)
        await processor.on_response_headers(em.response_headers(200))
        for i in range(0, len(answer), 10):
            last = i + 10 >= len(answer)
            reply = await processor.on_response_body(
                em.body(answer[i : i + 10], end_of_stream=last)
            )
            assert reply == replies.RESPONSE_BODY_CONTINUE
        await processor.finish()

    run(scenario())
    assert run(_used(runtime, "tokens")) == PROMPT + 33


def test_answer_over_the_body_limit_is_charged_as_reserved(runtime: Runtime) -> None:
    answer = json.dumps({**em.completion(PROMPT, 33), "pad": "x" * 20_000}).encode()

    async def scenario() -> None:
        processor, _ = await _admit(runtime)
        await processor.on_response_headers(em.response_headers(200))
        await processor.on_response_body(em.body(answer[:15_000], end_of_stream=False))
        await processor.on_response_body(em.body(answer[15_000:], end_of_stream=True))
        await processor.finish()

    run(scenario())
    assert run(_used(runtime, "tokens")) == PROMPT + 100  # usage unreadable past 10,000 bytes


def test_upstream_error_releases_tokens_and_skips_the_body(runtime: Runtime) -> None:
    async def scenario() -> Any:
        processor, _ = await _admit(runtime)
        reply = await processor.on_response_headers(em.response_headers(500))
        await processor.finish()
        return reply

    reply = run(scenario())
    assert reply.mode_override == replies.SKIP_RESPONSE_BODY_MODE
    assert run(_used(runtime, "tokens")) == 0
    assert run(_used(runtime, "rpm")) == 1


def test_a_gateway_timeout_is_charged_as_reserved_not_refunded(runtime: Runtime) -> None:
    """504: Envoy gave up waiting, the provider may have billed the work all the same."""

    async def scenario() -> None:
        processor, _ = await _admit(runtime)
        await processor.on_response_headers(em.response_headers(504))
        await processor.finish()

    run(scenario())
    assert run(_used(runtime, "tokens")) == PROMPT + 100  # the prompt and defaultMaxTokens


def test_client_gone_before_the_answer_settles_the_reservation_once(runtime: Runtime) -> None:
    async def scenario() -> None:
        processor, _ = await _admit(runtime)
        blocked, refusal = await _admit(runtime)  # the single concurrency slot is taken
        assert refusal.immediate_response.status.code == 429
        assert "inflight" in refusal.immediate_response.body.decode()
        await processor.finish()
        await processor.finish()
        await blocked.finish()
        _, admitted = await _admit(runtime)  # the lease came back
        assert admitted == replies.REQUEST_BODY_CONTINUE

    run(scenario())
    assert run(_used(runtime, "tokens")) == 2 * (PROMPT + 100)  # no usage: charged as reserved


def test_internal_error_reply_carries_no_internals(runtime: Runtime) -> None:
    processor, _ = run(start(runtime, em.request_headers("tg-key")))
    reply = processor.internal_error(RuntimeError("secret detail sk-provider"))
    body = reply.immediate_response.body.decode()
    assert reply.immediate_response.status.code == 500
    assert "secret detail" not in body and "sk-provider" not in body


def _sse(text: str) -> bytes:
    chunk = {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def test_stream_request_is_rewritten_to_ask_for_usage(runtime: Runtime) -> None:
    _, reply = run(_admit(runtime, {**CHAT, "stream": True}))
    common = reply.request_body.response
    assert json.loads(common.body_mutation.body)["stream_options"] == {"include_usage": True}
    assert list(common.header_mutation.remove_headers) == ["content-length"]


def test_stream_over_budget_is_cut_with_an_error_event_then_reset(runtime: Runtime) -> None:
    words = " the" * 200  # 200 tokens a chunk; the policy allows 1000 tokens an hour

    async def scenario() -> tuple[list[Any], int]:
        processor, _ = await _admit(runtime, {**CHAT, "stream": True})
        sse = em.http_headers([(":status", "200"), ("content-type", "text/event-stream")])
        await processor.on_response_headers(sse)
        answers = [await processor.on_response_body(em.body(_sse(words), end_of_stream=False))
                   for _ in range(6)]  # fmt: skip
        await processor.finish()
        return answers, await _used(runtime, "tokens")

    answers, used = run(scenario())
    passed = [r for r in answers if r == replies.RESPONSE_BODY_CONTINUE]
    assert len(passed) == 4  # 8 + 4 x 200 = 808 fits; 1008 does not
    cut = answers[4].response_body.response.body_mutation.body
    assert b'"error"' in cut and b"'tokens'" in cut
    assert answers[5].immediate_response.status.code == 429  # Envoy resets both sides
    assert used == PROMPT + 4 * 200  # exactly what was delivered


def test_client_gone_mid_stream_is_charged_what_was_delivered(runtime: Runtime) -> None:
    async def scenario() -> int:
        processor, _ = await _admit(runtime, {**CHAT, "stream": True, "max_tokens": 500})
        sse = em.http_headers([(":status", "200"), ("content-type", "text/event-stream")])
        await processor.on_response_headers(sse)
        await processor.on_response_body(em.body(_sse(" a b c"), end_of_stream=False))
        await processor.finish()  # Envoy closed the stream: the client went away
        return await _used(runtime, "tokens")

    assert run(scenario()) == PROMPT + 3
