"""A governed route at its edges: requests without a readable body (refused, still counted),
compressed request bodies (415), and answers an upstream compressed although it was asked
for identity (decoded and counted, or refused and charged)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import pytest

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
  defaultMaxTokens: 100
  limits:
    - {{name: rpm, requests: 10, per: 1m, algorithm: calendar}}
    - {{name: tokens, tokens: 300, per: 1h, algorithm: calendar}}
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: svc, namespace: team}}
spec: {{sha256: {hashlib.sha256(b"tg-key").hexdigest()}}}
"""
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
PROMPT = 8  # "user" + "hello" + message framing + reply priming
CORRUPT_GZIP = gzip.compress(b"x")[:10] + b"\xff" * 20  # a gzip header, then an invalid block


@pytest.fixture
def runtime(vocab_dir: Path) -> Runtime:
    return runtime_for(POLICY)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def _counted(rt: Runtime, limit: str) -> int:
    policy = rt.policies.current.policies["team"]
    return int(run(used(rt, next(s for s in limits_for(policy, None) if s.limit.name == limit))))


def _status(reply: Any) -> int:
    return int(reply.immediate_response.status.code)


def test_a_post_without_body_is_400_and_counted(runtime: Runtime) -> None:
    headers = em.request_headers("tg-key")
    headers.end_of_stream = True  # Envoy's word for "no body follows"
    _, reply = run(start(runtime, headers))
    body = json.loads(reply.immediate_response.body)
    assert (_status(reply), body["error"]["type"]) == (400, "invalid_request_error")
    assert _counted(runtime, "rpm") == 1


@pytest.mark.parametrize("payload", [b"", b"   \n\t ", b"{not json", b"[]"])
def test_an_unreadable_body_is_400_and_counted(runtime: Runtime, payload: bytes) -> None:
    async def scenario() -> Any:
        processor, _ = await start(runtime, em.request_headers("tg-key"))
        reply = await processor.on_request_body(em.body(payload))
        await processor.finish()
        return reply

    assert _status(run(scenario())) == 400
    assert (_counted(runtime, "rpm"), _counted(runtime, "tokens")) == (1, 0)


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "GZIP "])
def test_a_compressed_request_body_is_415(runtime: Runtime, coding: str) -> None:
    headers = em.request_headers("tg-key", extra=[("content-encoding", coding)])
    _, reply = run(start(runtime, headers))
    body = json.loads(reply.immediate_response.body)
    assert (_status(reply), body["error"]["code"]) == (415, "unsupported_content_encoding")


async def _admitted(rt: Runtime, payload: dict[str, Any]) -> Processor:
    processor, _ = await start(rt, em.request_headers("tg-key"))
    await processor.on_request_body(em.body(payload))
    return processor


def _answer_headers(coding: str, content_type: str = "application/json") -> Any:
    return em.http_headers(
        [(":status", "200"), ("content-type", content_type), ("content-encoding", coding),
         ("content-length", "123")]
    )  # fmt: skip


def test_a_gzip_answer_is_decoded_counted_and_sent_on_decoded(runtime: Runtime) -> None:
    raw = json.dumps(em.completion(PROMPT, 42)).encode()
    packed = gzip.compress(raw)

    async def scenario() -> tuple[Any, list[Any]]:
        processor = await _admitted(runtime, CHAT)
        head = await processor.on_response_headers(_answer_headers("gzip"))
        bodies = [
            await processor.on_response_body(em.body(packed[:10], end_of_stream=False)),
            await processor.on_response_body(em.body(packed[10:])),
        ]
        await processor.finish()
        return head, bodies

    head, bodies = run(scenario())
    removed = set(head.response_headers.response.header_mutation.remove_headers)
    assert removed == {"content-encoding", "content-length"}
    sent = b"".join(b.response_body.response.body_mutation.body for b in bodies)
    assert sent == raw
    assert _counted(runtime, "tokens") == PROMPT + 42  # the provider's usage, read decoded


def _sse(text: str) -> bytes:
    chunk = {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def test_a_gzip_stream_is_counted_and_cut_like_a_plain_one(runtime: Runtime) -> None:
    pack = zlib.compressobj(wbits=31)  # gzip framing, flushed per event as a server would
    words = " the" * 100  # 100 tokens an event; the budget allows 300 in all

    async def scenario() -> list[Any]:
        processor = await _admitted(runtime, {**CHAT, "stream": True, "max_tokens": 50})
        await processor.on_response_headers(_answer_headers("gzip", "text/event-stream"))
        replies = []
        for _ in range(4):
            data = pack.compress(_sse(words)) + pack.flush(zlib.Z_SYNC_FLUSH)
            replies.append(await processor.on_response_body(em.body(data, end_of_stream=False)))
        await processor.finish()
        return replies

    replies = run(scenario())
    sent = [r.response_body.response.body_mutation.body for r in replies[:2]]
    assert sent == [_sse(words), _sse(words)]  # decoded events reach the client
    cut = replies[2].response_body.response.body_mutation.body
    assert b'"error"' in cut and b"'tokens'" in cut  # 7 + 300 > 300: cut at the third event
    assert replies[3].immediate_response.status.code == 429
    assert _counted(runtime, "tokens") == PROMPT + 200  # exactly what was delivered


@pytest.mark.parametrize("content_type", ["application/json", "text/event-stream"])
def test_an_encoding_we_cannot_read_is_refused_and_charged_in_full(
    runtime: Runtime, content_type: str
) -> None:
    async def scenario() -> Any:
        processor = await _admitted(runtime, CHAT)
        reply = await processor.on_response_headers(_answer_headers("br", content_type))
        await processor.finish()
        return reply

    reply = run(scenario())
    body = json.loads(reply.immediate_response.body)
    assert (_status(reply), body["error"]["code"]) == (502, "upstream_unreadable")
    assert _counted(runtime, "tokens") == PROMPT + 100  # the whole reservation: maybe billed


def test_a_corrupt_gzip_answer_is_cut_not_forwarded(runtime: Runtime) -> None:
    async def scenario() -> Any:
        processor = await _admitted(runtime, CHAT)
        await processor.on_response_headers(_answer_headers("gzip"))
        reply = await processor.on_response_body(em.body(CORRUPT_GZIP))
        await processor.finish()
        return reply

    assert _status(run(scenario())) == 502
    assert _counted(runtime, "tokens") == PROMPT + 100
