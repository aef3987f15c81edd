"""A request to a path the gateway does not parse: identified, counted as one request
against the caller's limits (and holding a concurrency slot while it runs), forwarded with
the provider key. Envoy is asked for no body, so no token is counted here."""

from __future__ import annotations

from collections.abc import Mapping

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.gate import endpoints, replies
from extproc.gate.admission import Tenant
from extproc.gate.processor import Processor, header_map, succeeded
from extproc.gate.runtime import Runtime
from extproc.quota import Cost, Reservation


class PassthroughProcessor(Processor):
    upstream = endpoints.DEFAULT_UPSTREAM
    mode = replies.PASSTHROUGH_MODE

    def __init__(self, *, runtime: Runtime, request_headers: Mapping[str, str]) -> None:
        super().__init__(
            runtime=runtime, request_headers=request_headers, provider=endpoints.DEFAULT_PROVIDER
        )
        self._reservation: Reservation | None = None

    async def admit_headers(self, tenant: Tenant) -> None:
        self._reservation = await self.reserve(tenant, Cost(requests=1))

    async def on_response_headers(self, msg: ep.HttpHeaders) -> ep.ProcessingResponse:
        if self._reservation is not None and not succeeded(header_map(msg)):
            # The upstream refused or failed: give back all but the request itself.
            self.outcome = "upstream_error"
            reservation, self._reservation = self._reservation, None
            await self._rt.store.release(reservation)
            return replies.response_headers_reply(
                set_headers=self._headers, mode=replies.SKIP_RESPONSE_BODY_MODE
            )
        self.outcome = "passthrough"
        return replies.response_headers_reply(set_headers=self._headers, mode=None)

    async def settle_at_end(self) -> None:
        if self._reservation is not None:
            reservation, self._reservation = self._reservation, None
            await self._rt.store.settle(reservation, reservation.cost)
