"""The route registry: which processor serves a request, chosen from its request line.

An upstream attempt of a model route (Envoy's upstream filter on a failover cluster, known
by the route metadata it forwards) gets an `UpstreamProcessor`. Otherwise default deny: a
governed endpoint (a POST to a path in `endpoints.ENDPOINTS`) gets a
`GovernedProcessor`; a method and path that a `Route` policy opens gets a
`PassthroughProcessor` (whether it is opened for the caller's namespace is checked once the
caller is known); anything else a `RefusedProcessor`: 405 naming the allowed methods when
the path is known, 404 otherwise. Governed endpoints win over routes. Adding a kind of
route is one processor class and one entry here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.errors import MethodNotAllowed, NotFound
from extproc.gate.endpoints import ENDPOINTS, path_of
from extproc.gate.governed import GovernedProcessor
from extproc.gate.passthrough import PassthroughProcessor
from extproc.gate.processor import Processor, header_map
from extproc.gate.refused import RefusedProcessor
from extproc.gate.runtime import Runtime
from extproc.gate.upstream import UpstreamProcessor, is_upstream_attempt
from extproc.policy.model import Route

MAX_SHOWN_PATH = 200  # of a client's path echoed in a refusal
ProcessorFactory = Callable[..., Processor]  # (runtime=, request_headers=) -> a processor

# Forwarded for every namespace without a policy: Anthropic's token counter is not billed, so
# it is governed by request and concurrency limits only, and only ever reaches Anthropic.
BUILT_IN_ROUTES = (
    Route(
        name="count-tokens", namespace=None, methods=("POST",),
        path="/v1/messages/count_tokens", provider="anthropic",
    ),
)  # fmt: skip

GOVERNED: dict[tuple[str, str], ProcessorFactory] = {
    ("POST", path): functools.partial(GovernedProcessor, endpoint=endpoint)
    for path, endpoint in ENDPOINTS.items()
}


def open_processor(runtime: Runtime, request: ep.ProcessingRequest) -> Processor:
    """The processor for the stream that `request` (its first message: the request headers)
    opens."""
    headers: Mapping[str, str] = (
        header_map(request.request_headers) if request.HasField("request_headers") else {}
    )
    if is_upstream_attempt(request):  # an attempt of a model route, after Envoy's router
        return UpstreamProcessor(runtime=runtime, request_headers=headers, first=request)
    method, path = headers.get(":method", ""), path_of(headers.get(":path", "/"))
    governed = GOVERNED.get((method, path))
    if governed is not None:
        return governed(runtime=runtime, request_headers=headers)
    routes = tuple(
        r for r in BUILT_IN_ROUTES + runtime.policies.current.routes if r.matches_path(path)
    )
    usable = tuple(r for r in routes if method in r.methods)
    if usable:
        return PassthroughProcessor(runtime=runtime, request_headers=headers, routes=usable)
    return RefusedProcessor(
        runtime=runtime, request_headers=headers, error=_refusal(method, path, routes)
    )


def _refusal(method: str, path: str, routes: tuple[Route, ...]) -> NotFound | MethodNotAllowed:
    allowed = sorted(
        {m for (m, p) in GOVERNED if p == path} | {m for r in routes for m in r.methods}
    )
    shown = path if len(path) <= MAX_SHOWN_PATH else path[:MAX_SHOWN_PATH] + "…"
    if allowed:
        return MethodNotAllowed(
            f"{method[:16]} is not allowed on {shown}; allowed: {', '.join(allowed)}.",
            allowed=tuple(allowed),
        )
    return NotFound(
        f"{method[:16]} {shown} is not forwarded by this gateway: it governs generation "
        "endpoints only, and the platform team has not opened this route.",
    )
