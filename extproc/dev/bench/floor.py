"""The framework floor: ext_proc servers that decide nothing, behind the same Envoy.

They answer every message with the reply the sidecar sends for the benchmark's request
(the same header mutations byte for byte, the same processing mode, the same rate-limit
headers on the answer) and do no work of their own, so what they cost is what grpcio and
the event loop cost per request: the reference tokengate's ratios are taken against.
Comparing them chooses the process model: uvloop vs asyncio vs a thread pool, TCP vs a
Unix socket, four ext_proc messages per request vs three (response headers skipped).

    python -m extproc.dev.bench.floor {uvloop|asyncio|threads} READY_FILE [--unix PATH]
        [--phases 3|4]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import uvloop
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from extproc.gate import replies
from extproc.gate.credentials import CLIENT_CREDENTIAL_HEADERS

_Mode = processing_mode_pb2.ProcessingMode


def _replies(phases: int) -> dict[str, Any]:
    mode = _Mode()
    mode.CopyFrom(replies.GOVERNED_MODE)
    if phases == 3:
        mode.response_header_mode = _Mode.SKIP
    headers = replies.request_headers_reply(
        set_headers={"authorization": "Bearer sk-bench-upstream",
                     "x-tokengate-upstream": "openai", "accept-encoding": "identity"},
        remove=[h for h in CLIENT_CREDENTIAL_HEADERS if h != "authorization"],
        mode=mode,
        clear_route_cache=True,
    )  # fmt: skip
    ratelimit = {
        "x-ratelimit-limit-requests": "1000000000",
        "x-ratelimit-remaining-requests": "999999999",
        "x-ratelimit-reset-requests": "0ms",
        "x-ratelimit-limit-tokens": "1000000000000",
        "x-ratelimit-remaining-tokens": "999999999913",
        "x-ratelimit-reset-tokens": "0ms",
    }
    return {
        "request_headers": headers,
        "request_body": replies.REQUEST_BODY_CONTINUE,
        "response_headers": replies.response_headers_reply(set_headers=ratelimit),
        "response_body": replies.RESPONSE_BODY_CONTINUE,
    }


class AsyncFloor(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, replies: dict[str, Any]) -> None:
        self._replies = replies

    async def Process(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            yield self._replies[request.WhichOneof("request")]


class ThreadFloor(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, replies: dict[str, Any]) -> None:
        self._replies = replies

    def Process(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        for request in requests:
            yield self._replies[request.WhichOneof("request")]


def _address(unix: str | None) -> str:
    return f"unix:{unix}" if unix else "127.0.0.1:0"


async def _serve_asyncio(replies: dict[str, Any], unix: str | None, ready: Path) -> None:
    server = grpc.aio.server()
    ep_grpc.add_ExternalProcessorServicer_to_server(AsyncFloor(replies), server)
    port = server.add_insecure_port(_address(unix))
    await server.start()
    await asyncio.to_thread(ready.write_text, str(port))
    await server.wait_for_termination()


def _serve_threads(replies: dict[str, Any], unix: str | None, ready: Path, threads: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    ep_grpc.add_ExternalProcessorServicer_to_server(ThreadFloor(replies), server)
    port = server.add_insecure_port(_address(unix))
    server.start()
    ready.write_text(str(port))
    server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", choices=("uvloop", "asyncio", "threads"))
    parser.add_argument("ready_file", type=Path)
    parser.add_argument("--unix")
    parser.add_argument("--phases", type=int, choices=(3, 4), default=4)
    parser.add_argument("--threads", type=int, default=64,
                        help="the thread pool's size: one thread per open stream")  # fmt: skip
    args = parser.parse_args()
    replies = _replies(args.phases)
    if args.model == "uvloop":
        uvloop.run(_serve_asyncio(replies, args.unix, args.ready_file))
    elif args.model == "asyncio":
        asyncio.run(_serve_asyncio(replies, args.unix, args.ready_file))
    else:
        _serve_threads(replies, args.unix, args.ready_file, args.threads)


if __name__ == "__main__":
    main()
