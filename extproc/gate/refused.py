"""Default deny: a request to a route the gateway neither governs nor has been opened by a
`Route` policy. The caller is still identified first (401 before 404, so that routes are
not probed anonymously), then refused in the provider's format before any upstream call."""

from __future__ import annotations

from collections.abc import Mapping

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.errors import ClientError
from extproc.gate import replies
from extproc.gate.admission import Tenant
from extproc.gate.endpoints import provider_for_path
from extproc.gate.processor import Processor
from extproc.gate.runtime import Runtime


class RefusedProcessor(Processor):
    upstream = "-"  # never reached: every request is refused at its headers
    mode = replies.PASSTHROUGH_MODE

    def __init__(
        self, *, runtime: Runtime, request_headers: Mapping[str, str], error: ClientError
    ) -> None:
        path = request_headers.get(":path", "/")
        super().__init__(
            runtime=runtime, request_headers=request_headers, provider=provider_for_path(path)
        )
        self._error = error

    async def admit_headers(self, tenant: Tenant, *, has_body: bool) -> None:
        raise self._error

    async def on_response_headers(self, msg: ep.HttpHeaders) -> ep.ProcessingResponse:
        return replies.RESPONSE_HEADERS_CONTINUE  # never sent: the request went nowhere

    @property
    def holds(self) -> bool:
        return False

    async def settle_at_end(self) -> None:
        """Nothing was reserved."""
