"""Streaming cost of one sidecar worker, measured by playing Envoy's part over ext_proc.

Through Envoy, SSE events that arrive together are merged into one body message, so the
sidecar would see fewer, larger chunks than a provider sends; here every event is its own
message (the worst case, and what a slow token-by-token provider produces). The worker does
everything it does for a real stream: SSE parsing, tiktoken on every delta, batched debits
to Redis, the final settle.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from grpc.aio import EOF  # type: ignore[attr-defined]  # stubs lag the runtime

from extproc.dev.bench import configs
from extproc.dev.bench.procs import cpu_seconds, rss_bytes
from extproc.dev.stack import StackError

DELTA = " tokens flow"  # two tokens per chunk, like a provider streaming word by word


def _headers(pairs: list[tuple[str, str]]) -> Any:
    return ep.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
        )
    )


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _chunk(delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": configs.MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}], **extra}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Conversation:
    """The messages of one streamed chat completion, as Envoy sends them."""

    opening: tuple[Any, ...]  # request headers, request body, response headers
    chunks: tuple[Any, ...]  # one content event per message
    closing: Any  # the usage event and [DONE], end of stream

    @classmethod
    def build(cls, chunks: int) -> Conversation:
        body = json.dumps({
            "model": configs.MODEL, "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": 4 * chunks, "messages": [{"role": "user", "content": configs.PROMPT}],
        }).encode()  # fmt: skip
        opening = (
            ep.ProcessingRequest(request_headers=_headers([
                (":method", "POST"), (":path", "/v1/chat/completions"), (":authority", "bench"),
                ("authorization", f"Bearer {configs.API_KEY}"),
                ("content-type", "application/json"), ("content-length", str(len(body))),
            ])),
            ep.ProcessingRequest(request_body=ep.HttpBody(body=body, end_of_stream=True)),
            ep.ProcessingRequest(response_headers=_headers(
                [(":status", "200"), ("content-type", "text/event-stream")]
            )),
        )  # fmt: skip
        content = _event(_chunk({"content": DELTA}))
        usage = {"prompt_tokens": 24, "completion_tokens": 2 * chunks,
                 "total_tokens": 24 + 2 * chunks}  # fmt: skip
        last = _event(_chunk({}, usage=usage) | {"choices": []}) + b"data: [DONE]\n\n"
        return cls(
            opening=opening,
            chunks=tuple(
                ep.ProcessingRequest(response_body=ep.HttpBody(body=content)) for _ in range(chunks)
            ),
            closing=ep.ProcessingRequest(response_body=ep.HttpBody(body=last, end_of_stream=True)),
        )


class Stream:
    """One ext_proc stream driven message by message, as Envoy does: send, await reply."""

    def __init__(self, stub: Any) -> None:
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._call = stub.Process(self._messages())

    async def _messages(self) -> AsyncIterator[Any]:
        while (message := await self._outbox.get()) is not None:
            yield message

    async def exchange(self, message: Any) -> Any:
        await self._outbox.put(message)
        reply = await self._call.read()
        if reply is EOF or reply.HasField("immediate_response"):
            raise StackError(f"the sidecar refused a benchmark stream: {reply}")
        return reply

    async def close(self) -> None:
        await self._outbox.put(None)
        assert await self._call.read() is EOF


async def _conversation(stub: Any, talk: Conversation) -> int:
    stream = Stream(stub)
    for message in (*talk.opening, *talk.chunks, talk.closing):
        await stream.exchange(message)
    await stream.close()
    return len(talk.chunks) + 1


async def chunk_rate(port: int, worker_pids: list[int], *, streams: int, concurrency: int,
                     chunks: int) -> dict[str, float]:  # fmt: skip
    """Chunks per second `concurrency` concurrent streams get through one worker."""
    talk = Conversation.build(chunks)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = ep_grpc.ExternalProcessorStub(channel)
        await _conversation(stub, talk)  # warm: imports, vocab, script load
        pending = iter(range(streams))
        done = 0

        async def lane() -> None:
            nonlocal done
            for _ in pending:
                chunks = await _conversation(stub, talk)
                done += chunks  # not `done += await …`: that reads `done` before awaiting

        cpu0, t0 = cpu_seconds(worker_pids), time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds(worker_pids) - cpu0
    return {
        "chunks": done,
        "seconds": round(elapsed, 3),
        "chunks_per_s": round(done / elapsed),
        "worker_busy": round(cpu / elapsed, 3),
        "chunks_per_worker_cpu_s": round(done / cpu) if cpu else 0.0,
    }


async def memory_per_stream(port: int, pids: list[int], *, streams: int) -> dict[str, float]:
    """Sidecar RSS with `streams` answers in flight (each past its first chunk). They are
    opened in one instant, the worst burst: every one must be admitted (a refusal raises)."""
    talk = Conversation.build(1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = ep_grpc.ExternalProcessorStub(channel)
        for _ in range(3):  # warm up, so the baseline holds what every request loads once
            await _conversation(stub, talk)
        baseline = rss_bytes(pids)
        opened = [Stream(stub) for _ in range(streams)]

        async def open_one(stream: Stream) -> None:
            for message in (*talk.opening, *talk.chunks):
                await stream.exchange(message)

        await asyncio.gather(*(open_one(s) for s in opened))
        loaded = rss_bytes(pids)
        await asyncio.gather(*(s.exchange(talk.closing) for s in opened))
        await asyncio.gather(*(s.close() for s in opened))
    return {
        "streams": streams,
        "rss_idle_mib": round(baseline / 2**20, 1),
        "rss_loaded_mib": round(loaded / 2**20, 1),
        "kib_per_stream": round((loaded - baseline) / streams / 1024, 1),
    }
