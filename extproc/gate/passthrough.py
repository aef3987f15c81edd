"""A request on a route that a `Route` policy opened (default deny lets nothing else through
ungoverned): identified, counted as one request against the caller's limits and the route's
own (holding a concurrency slot while it runs), forwarded to the route's provider with that
provider's key. Envoy is asked for no body, so no token is counted here."""

from __future__ import annotations

from collections.abc import Mapping

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.errors import NotFound
from extproc.gate import replies
from extproc.gate.admission import Tenant
from extproc.gate.endpoints import PROVIDERS, provider_for_path
from extproc.gate.processor import Processor, header_map, succeeded
from extproc.gate.runtime import Runtime
from extproc.policy.model import Route
from extproc.quota import Cost, Reservation, route_limits


class PassthroughProcessor(Processor):
    mode = replies.PASSTHROUGH_MODE

    def __init__(
        self,
        *,
        runtime: Runtime,
        request_headers: Mapping[str, str],
        routes: tuple[Route, ...],
    ) -> None:
        path = request_headers.get(":path", "/")
        super().__init__(
            runtime=runtime, request_headers=request_headers, provider=provider_for_path(path)
        )
        self._routes = routes  # those matching the method and path, in policy order
        self.upstream = routes[0].provider
        self._reservation: Reservation | None = None

    async def admit_headers(self, tenant: Tenant, *, has_body: bool) -> None:
        route = next((r for r in self._routes if r.allows(tenant.namespace)), None)
        if route is None:
            raise NotFound(
                f"{self._request_headers.get(':method')} {self._routes[0].path} is not opened "
                f"for namespace '{tenant.namespace}' on this gateway.",
            )
        self.upstream, self._provider = route.provider, PROVIDERS[route.provider]
        limits = tenant.limits + route_limits(route, tenant.policy)
        self._reservation = await self.reserve(
            Tenant(caller=tenant.caller, policy=tenant.policy, limits=limits), Cost(requests=1)
        )

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

    @property
    def holds(self) -> bool:
        return self._reservation is not None

    async def settle_at_end(self) -> None:
        if self._reservation is not None:
            reservation, self._reservation = self._reservation, None
            await self._rt.store.settle(reservation, reservation.cost)
