"""The route registry: which processor serves a request, chosen from its request line.

A governed endpoint (a POST to a path in `endpoints.ENDPOINTS`) gets a `GovernedProcessor`;
anything else the fallback, today a `PassthroughProcessor` (identified, counted as a request,
forwarded). Adding a kind of route is one processor class and one entry here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.gate.endpoints import ENDPOINTS, normalise
from extproc.gate.governed import GovernedProcessor
from extproc.gate.passthrough import PassthroughProcessor
from extproc.gate.processor import Processor, header_map
from extproc.gate.runtime import Runtime

ProcessorFactory = Callable[..., Processor]  # (runtime=, request_headers=) -> a processor

ROUTES: dict[tuple[str, str], ProcessorFactory] = {
    ("POST", path): functools.partial(GovernedProcessor, endpoint=endpoint)
    for path, endpoint in ENDPOINTS.items()
}
FALLBACK: ProcessorFactory = PassthroughProcessor


def open_processor(runtime: Runtime, request: ep.ProcessingRequest) -> Processor:
    """The processor for the stream that `request` (its first message: the request headers)
    opens."""
    headers: Mapping[str, str] = (
        header_map(request.request_headers) if request.HasField("request_headers") else {}
    )
    key = (headers.get(":method", ""), normalise(headers.get(":path", "/")))
    factory = ROUTES.get(key, FALLBACK)
    return factory(runtime=runtime, request_headers=headers)
