"""Plays Envoy's part for the gate without Envoy: open a stream's processor the way the
ext_proc service does, from the request headers."""

from __future__ import annotations

from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.gate.processor import Processor
from extproc.gate.routes import open_processor
from extproc.gate.runtime import Runtime


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
