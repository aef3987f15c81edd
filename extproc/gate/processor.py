"""What every per-stream processor shares: the phase dispatch, the request-headers step
(identify the caller, strip client credentials, inject the provider key), reserving,
refusing and the last-resort answer to a bug.

One processor object serves one ext_proc stream (= one HTTP request). Which class serves it
is chosen by `routes.open_processor` from the request line; each class has one method per
phase and keeps the request's state on itself. Phases, as Envoy sends them (only those a
request asks for, via `mode_override`):
request headers -> request body -> response headers -> response body -> (stream end).
Processors decide; the quota store and the token counter do the I/O; `replies` builds what
goes back to Envoy.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Mapping

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.errors import ClientError, InternalFailure, RateLimited, Unavailable
from extproc.gate import replies
from extproc.gate.admission import Tenant, admit_tenant
from extproc.gate.credentials import credential_headers, without_credential_query
from extproc.gate.endpoints import ENDPOINTS, path_of
from extproc.gate.identity import verified_claims
from extproc.gate.runtime import Runtime
from extproc.providers import Provider
from extproc.quota import Cost, Decision, Refusal, Reservation, ratelimit_headers, refusal_error
from extproc.telemetry.metrics import GEN_AI_OPERATIONS, Finished

log = logging.getLogger(__name__)

UPSTREAM_HEADER = "x-tokengate-upstream"
# Headers Envoy's router obeys (x-envoy-retry-on, -max-retries, -upstream-rq-timeout-ms, …):
# a client could make Envoy retry a billed request or stretch its timeouts. Only the sidecar
# sets them (a model route's retries).
_ENVOY_CONTROL = "x-envoy-"
# Headers a client sends to the gateway itself, never to the provider.
PRIORITY_HEADER = "x-tokengate-priority"
# gen_ai.operation.name of a request to a governed endpoint (a POST: `routes.GOVERNED`).
_OPERATIONS = {path: GEN_AI_OPERATIONS.get(e.name, e.name) for path, e in ENDPOINTS.items()}
_TRAILERS = {
    "request_trailers": ep.ProcessingResponse(request_trailers=ep.TrailersResponse()),
    "response_trailers": ep.ProcessingResponse(response_trailers=ep.TrailersResponse()),
}


def header_map(headers: ep.HttpHeaders) -> dict[str, str]:
    return {
        h.key: (h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value)
        for h in headers.headers.headers
    }


def succeeded(response_headers: Mapping[str, str]) -> bool:
    """The upstream answered 2xx (anything else is settled as an upstream error)."""
    return response_headers.get(":status", "0").startswith("2")


class Processor(abc.ABC):
    """Base of the processors `routes` chooses from. Subclasses say which provider schema
    answers, which upstream gets the request, what Envoy should send next (`mode`), and
    implement the phases they ask for."""

    def __init__(
        self, *, runtime: Runtime, request_headers: Mapping[str, str], provider: Provider
    ) -> None:
        self._rt = runtime
        self._request_headers = request_headers
        self._provider = provider
        self._tenant: Tenant | None = None  # set once the caller is known
        self._headers: dict[str, str] = {}  # the caller's x-ratelimit-* headers
        self.outcome = "incomplete"  # the `outcome` label of tokengate_requests_total
        self._began = time.perf_counter()  # for gen_ai_server_request_duration_seconds

    # -- dispatch -------------------------------------------------------------------------

    async def dispatch(
        self, phase: str, request: ep.ProcessingRequest
    ) -> ep.ProcessingResponse | replies.Deferred | None:
        """One ext_proc message -> its reply, by phase (`request.WhichOneof("request")`);
        None for a message that needs none."""
        if phase == "request_headers":
            return await self.on_request_headers(request.request_headers, request.metadata_context)
        if phase == "request_body":
            return await self.on_request_body(request.request_body)
        if phase == "response_headers":
            return await self.on_response_headers(request.response_headers)
        if phase == "response_body":
            return await self.on_response_body(request.response_body)
        return _TRAILERS.get(phase)  # trailers are never asked for; answered if Envoy sends them

    # -- phases -----------------------------------------------------------------------------

    upstream: str  # the Envoy cluster this request goes to
    mode: ep.ProcessingMode  # what Envoy sends next once the headers are let through

    async def on_request_headers(
        self, msg: ep.HttpHeaders, metadata: base_pb2.Metadata | None
    ) -> ep.ProcessingResponse:
        try:
            self._tenant = admit_tenant(
                self._rt.policies.current,
                self._rt.overrides,
                self._request_headers,
                verified_claims(metadata),
            )
            await self.admit_headers(self._tenant, has_body=not msg.end_of_stream)
        except ClientError as error:
            return self.refuse(error)
        secret = self._rt.credentials.current.get(self.upstream)
        if secret is None:
            missing = Unavailable(f"no provider credential configured for {self.upstream}")
            return self.refuse(missing)
        remove = [h for h in credential_headers(self._request_headers) if h != self._key_header]
        return replies.request_headers_reply(
            set_headers=self.upstream_headers(secret.reveal()),
            remove=remove
            + [h for h in self._request_headers if h.startswith(_ENVOY_CONTROL)]
            + ([PRIORITY_HEADER] if PRIORITY_HEADER in self._request_headers else []),
            mode=self.mode,
            clear_route_cache=True,
        )

    @property
    def _key_header(self) -> str:
        return self._provider.credential_header

    def upstream_headers(self, key: str) -> dict[str, str]:
        """What the upstream request gets set: the provider key (the only credential it
        carries), the cluster to route to, and the path without credential parameters."""
        headers = {
            self._key_header: self._provider.credential_value(key),
            UPSTREAM_HEADER: self.upstream,
        }
        clean = without_credential_query(self._request_headers.get(":path", "/"))
        if clean is not None:
            headers[":path"] = clean
        return headers

    @abc.abstractmethod
    async def admit_headers(self, tenant: Tenant, *, has_body: bool) -> None:
        """What this kind of route checks or reserves before the request goes on; raises the
        `ClientError` to refuse it with."""

    def needs_more_time(self, msg: ep.HttpBody) -> bool:
        """Whether to ask Envoy for a longer timeout before answering this body."""
        return False

    async def on_request_body(self, msg: ep.HttpBody) -> ep.ProcessingResponse | replies.Deferred:
        return replies.REQUEST_BODY_CONTINUE

    @abc.abstractmethod
    async def on_response_headers(self, msg: ep.HttpHeaders) -> ep.ProcessingResponse: ...

    async def on_response_body(self, msg: ep.HttpBody) -> ep.ProcessingResponse:
        return replies.RESPONSE_BODY_CONTINUE

    async def finish(self) -> None:
        """The stream is over (answered, refused, or the client went away): settle what is
        still held, exactly once, and count the request."""
        await self.settle_at_end()
        self.count_finished()

    @property
    @abc.abstractmethod
    def holds(self) -> bool:
        """Something is still reserved: `finish` has store work to do. When not (a plain
        answer settles before its last reply), the service counts the request directly
        instead of starting a settling task per stream."""

    def count_finished(self) -> None:
        """Count the request by outcome; a governed endpoint's duration is observed too."""
        headers, tenant = self._request_headers, self._tenant
        operation = None
        if headers.get(":method") == "POST":
            operation = _OPERATIONS.get(path_of(headers.get(":path", "")))
        self._rt.metrics.record_finished(
            Finished(
                namespace=tenant.namespace if tenant else "-",
                key=_key_label(tenant), provider=self.served_provider, model=self.model,
                outcome=self.outcome, operation=operation,
                seconds=time.perf_counter() - self._began,
            )
        )  # fmt: skip

    @property
    def model(self) -> str:
        return "-"

    @property
    def served_provider(self) -> str:
        """The provider family a request's metrics name: the one whose API the client
        called. (A model route may be served by another backend: a processor that knows
        which one answers with its provider instead.)"""
        return self._provider.name

    @abc.abstractmethod
    async def settle_at_end(self) -> None: ...

    # -- shared steps ----------------------------------------------------------------------

    async def reserve(self, tenant: Tenant, cost: Cost) -> Reservation:
        """Reserve `cost` against every limit of the tenant; raises the provider-format 429
        (or 503) on refusal."""
        decision = await self.decide(tenant, cost)
        if decision.refusal is not None:
            raise self.refused(tenant, decision.refusal)
        assert decision.reservation is not None
        return decision.reservation

    async def decide(self, tenant: Tenant, cost: Cost) -> Decision:
        """The store's answer to reserving `cost`, keeping its rate-limit headers for the
        reply; a refusal is returned, not raised (the caller may ask for less)."""
        decision = await self._rt.store.reserve(
            self._rt.next_request_id(), tenant.limits, cost, tenant.policy.fail_mode
        )
        self._headers.update(ratelimit_headers(decision.states))  # keeps what else it says
        self._rt.metrics.record_limits(decision.states)
        return decision

    def refused(self, tenant: Tenant, refusal: Refusal) -> RateLimited:
        """The 429 for a final refusal, counted and published."""
        limit = refusal.scoped.limit.name
        metrics = self._rt.metrics
        metrics.refusals.labels(
            tenant.namespace, _key_label(tenant), self.served_provider,
            metrics.model_label(self.model), limit,
        ).inc()  # fmt: skip
        error = refusal_error(refusal)
        self._rt.publish("refusal", error.message, tenant.caller, limit)
        return error

    async def count_refused(self, tenant: Tenant) -> None:
        """A malformed request refused before its reservation still counts against the
        caller's request limits (so that a flood of them is rate limited like any other)."""
        reservation = await self.reserve(tenant, Cost(requests=1))
        await self._rt.store.settle(reservation, Cost(requests=1))

    def refuse(self, error: ClientError) -> ep.ProcessingResponse:
        self.outcome = error.outcome
        return replies.immediate_reply(
            status=error.status,
            body=self._provider.error_body(error),
            headers={**self._headers, **error.headers()},
            details=f"tokengate_{self.outcome}",
        )

    def internal_error(self, exc: Exception) -> ep.ProcessingResponse:
        """Last resort for a bug: a generic 500 in the provider's format, no internals."""
        log.error("internal error while processing a request", exc_info=exc)
        return self.refuse(InternalFailure("The gateway failed to process this request."))


def _key_label(tenant: Tenant | None) -> str:
    """The `key` label: the caller's gateway key, "-" without one (or before identity)."""
    key = tenant.caller.key_name if tenant is not None else None
    return key or "-"
