"""The ext_proc gRPC service: one stream per HTTP request, one processor per stream.

The first message (the request headers) opens the processor `routes` chooses; every message
is then handed to it by phase, timed, and answered. When the stream ends — answered, refused,
or the client gone — what is still reserved is settled in a task the shutdown waits for, so
a client that disconnects mid-request still has its usage settled (a plain answer has
settled before its last reply: nothing is left, and no task is started).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from extproc.gate import replies
from extproc.gate.capacity import MAX_SLEEP_S
from extproc.gate.processor import Processor
from extproc.gate.routes import open_processor
from extproc.gate.runtime import Runtime

log = logging.getLogger(__name__)

TIMED_PHASES = ("request_headers", "request_body", "response_headers", "response_body")


class ExternalProcessor(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._phase_seconds = {p: runtime.metrics.phase_seconds.labels(p) for p in TIMED_PHASES}
        self.settling: set[asyncio.Task[None]] = set()

    async def Process(
        self, request_iterator: AsyncIterator[ep.ProcessingRequest], context: Any
    ) -> AsyncIterator[ep.ProcessingResponse]:
        processor: Processor | None = None
        self._rt.metrics.streams_open.inc()
        try:
            async for request in request_iterator:
                if processor is None:
                    processor = open_processor(self._rt, request)
                phase = request.WhichOneof("request")
                if phase == "request_body" and processor.needs_more_time(request.request_body):
                    yield replies.extend_timeout_reply(self._more_time_s())
                started = time.perf_counter()
                try:
                    reply = await processor.dispatch(phase, request)
                except Exception as exc:  # noqa: BLE001 - a bug must still answer the client
                    reply = processor.internal_error(exc)
                timer = self._phase_seconds.get(phase)
                if timer is not None:  # a queued request's wait is timed by the queue
                    timer.observe(time.perf_counter() - started)
                if isinstance(reply, replies.Deferred):
                    yield reply.first
                    reply = await _later(processor, reply)
                if reply is not None:
                    yield reply
        finally:
            self._rt.metrics.streams_open.dec()
            if processor is not None:
                self._finish(processor)

    def _more_time_s(self) -> float:
        """A large body's count off-thread, and its longest possible wait for a shared
        capacity after it: Envoy may honour only the first override of a message."""
        waits = [max(c.max_wait_s.values()) for c in self._rt.policies.current.capacities]
        queued = max(waits) + MAX_SLEEP_S + 1 if waits else 0.0
        return self._rt.limits.slow_count_timeout_s + queued

    def _finish(self, processor: Processor) -> None:
        if not processor.holds:
            processor.count_finished()
            return
        task = asyncio.get_running_loop().create_task(processor.finish())
        self.settling.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self.settling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("settling a request failed", exc_info=task.exception())


async def _later(processor: Processor, deferred: replies.Deferred) -> ep.ProcessingResponse:
    try:
        return await deferred.then
    except Exception as exc:  # noqa: BLE001 - a bug must still answer the client
        return processor.internal_error(exc)
