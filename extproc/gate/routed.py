"""A governed request's model route, step by step, kept beside its `GovernedProcessor`:
the chain found (`routing.plan`), the backends health lets it use, the pool key of an
alias, the body reply that sends it (the provider route renamed, or a failover cluster),
what its answer says about who served, and the reports an alias owes backend health.

The processor decides when; this object knows how, and holds the route's state for the
one request (none of it outlives the stream).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.backends.health import Outcome
from extproc.errors import QuotaStoreError
from extproc.gate import replies
from extproc.gate.admission import Admission, Tenant, expected_completion
from extproc.gate.attempts import outcome_of, rejected, report
from extproc.gate.credentials import without_credential_query
from extproc.gate.failover import BACKEND_HEADER, MAX_RETRIES_HEADER, PER_TRY_TIMEOUT_HEADER
from extproc.gate.key_ring import RingKey
from extproc.gate.processor import UPSTREAM_HEADER
from extproc.gate.routing import (
    RoutePlan,
    backend_id,
    healthy,
    plan,
    served_by,
    served_key,
    with_keys,
)
from extproc.gate.runtime import Runtime
from extproc.policy.model import Backend
from extproc.providers import ParsedRequest, Provider
from extproc.quota.costing import Costing

log = logging.getLogger(__name__)

ROUTABLE = ("chat.completions", "messages")  # endpoints a ModelRoute can serve elsewhere


class RoutedRequest:
    def __init__(self, *, runtime: Runtime, provider: Provider) -> None:
        self._rt = runtime
        self._provider = provider  # the client's API
        self.plan: RoutePlan | None = None
        self._key: RingKey | None = None  # an alias's pool key
        self._unreported: Backend | None = None  # an alias's backend, until it answers

    def chain(
        self, tenant: Tenant, parsed: ParsedRequest, prompt: int, *, endpoint: str
    ) -> RoutePlan | None:
        """The route's backends this caller may use for this request; None without one."""
        if endpoint not in ROUTABLE:
            return None
        route = self._rt.policies.current.model_route(tenant.namespace, parsed.model)
        if route is None:
            return None
        completion = expected_completion(
            tenant.policy, asked=parsed.max_output_tokens, stream=False
        )
        return plan(
            route, client=self._provider.name, body=parsed.body,
            allows_model=tenant.policy.allows_model, prices=self._rt.prices,
            limits=tenant.limits, estimate=(prompt, completion),
        )  # fmt: skip

    async def claim(self, chain: RoutePlan, *, tokens: int) -> None:
        """Once the caller's own quota admitted it: the backends with a usable pool key
        (when they name a pool) that health lets it use (the first one claimed), and an
        alias's pool key. Raises the `ClientError` to refuse with when none is left."""
        ring, chooser, now = self._rt.keys.current, self._rt.key_chooser, time.time()
        chain = with_keys(chain, lambda pool: chooser.has_usable(ring, pool, now=now))
        self.plan = await self._healthy(chain, tokens=tokens)
        self._key = self._pool_key(self.direct_backend)

    async def _healthy(self, chain: RoutePlan, *, tokens: int) -> RoutePlan:
        """Skip backends whose breaker is open or whose provider limit is reached; with the
        health store unreachable (it lives in the quota store), every backend is tried and
        Envoy still fails over."""
        ids = [backend_id(b) for b in chain.backends]
        if not self._rt.store.up:  # the shared store is known down: no 250 ms wait to learn it
            return chain
        try:
            verdicts = await self._rt.health.admit(ids, tokens=tokens)
        except QuotaStoreError as exc:
            log.warning("backend health unavailable, trying every backend: %s", exc)
            return chain
        for backend, verdict in zip(ids, verdicts, strict=True):
            if not verdict.usable:
                self._rt.metrics.backend_skipped.labels(backend, verdict.verdict.value).inc()
        return healthy(chain, verdicts)

    def _pool_key(self, backend: Backend | None) -> RingKey | None:
        """An alias's pool key, chosen before anything is sent; none usable is a 503."""
        if backend is None or not backend.key_pool:
            return None
        return self._rt.key_chooser.require(
            self._rt.keys.current, backend.key_pool, now=time.time()
        )

    @property
    def direct_backend(self) -> Backend | None:
        """The one backend an alias route sends to directly (no upstream phase reports)."""
        if self.plan is None or not self.plan.direct(self._provider.name):
            return None
        return self.plan.backends[0]

    def body_reply(
        self,
        admission: Admission,
        cap: int | None,
        *,
        request_headers: Mapping[str, str],
        answer_headers: dict[str, str],
    ) -> ep.ProcessingResponse:
        """How the routed request goes on; `answer_headers` get who serves it."""
        direct = self.direct_backend
        if direct is not None:
            self._unreported = direct
            return self._direct(direct, admission.request, cap, answer_headers)
        assert self.plan is not None
        return self._failover(self.plan, admission, cap, request_headers)

    def _direct(
        self, backend: Backend, parsed: ParsedRequest, cap: int | None, answer: dict[str, str]
    ) -> ep.ProcessingResponse:
        """One backend speaking the client's API (an alias, or a fallback left alone): no
        failover cluster and no upstream phase, only the model rewritten here (measured:
        the upstream phase costs ~1 ms of gateway CPU per request; docs/model-routes.md)."""
        answer[BACKEND_HEADER] = backend_id(backend)
        renamed = dataclasses.replace(parsed, rewrites={**parsed.rewrites, "model": backend.model})
        body = renamed.body_with(cap)
        assert body is not None, "the model is always rewritten"
        key = self._key
        if key is None:
            return replies.request_body_reply(body)
        self._rt.metrics.key_uses.labels(key.pool, key.name).inc()
        answer[BACKEND_HEADER] += f";key={key.label}"
        value = self._provider.credential_value(key.secret.reveal())
        return replies.request_body_reply(
            body, set_headers={self._provider.credential_header: value}
        )

    def _failover(
        self, route: RoutePlan, admission: Admission, cap: int | None, request: Mapping[str, str]
    ) -> ep.ProcessingResponse:
        """Envoy's failover cluster for the route's backends; each attempt's upstream phase
        sets its own credential, so the path provider's key set earlier goes."""
        stream = admission.request.stream
        headers = {UPSTREAM_HEADER: route.cluster, MAX_RETRIES_HEADER: str(route.max_retries)}
        if stream:  # see envoy_failover.failover_route
            timeout_ms = round(self._rt.limits.first_byte_timeout_s * 1000)
            headers[PER_TRY_TIMEOUT_HEADER] = str(timeout_ms)
        path = request.get(":path", "/")
        metadata = route.metadata(
            client=self._provider.name,
            path=without_credential_query(path) or path,  # a `?api_key=` never goes on
            stream=stream,
            headers=request,
        )
        return replies.routed_body_reply(
            admission.request.body_with(cap), set_headers=headers,
            remove=(self._provider.credential_header,), metadata=metadata,
        )  # fmt: skip

    def answered(self, headers: Mapping[str, str]) -> None:
        """An alias's backend answered: its outcome to backend health, a refused pool key
        out of the rotation."""
        backend, self._unreported = self._unreported, None
        if backend is None:
            return
        status = int(headers.get(":status", "0") or 0)
        report(self._rt, backend_id(backend), outcome_of(backend.provider, status, headers))
        if status == 401 and self._key is not None:
            rejected(self._rt, self._key)

    def served(self, admission: Admission, headers: Mapping[str, str]) -> Admission:
        """The answer is charged, priced and labelled as the backend that served it."""
        assert self.plan is not None
        only = self.direct_backend
        found = (only.provider, only.model) if only is not None else served_by(headers)
        if found is None:
            return admission
        provider, model = found
        costing = Costing.for_request(self._rt.prices, admission.tenant.limits, model)
        request = dataclasses.replace(admission.request, model=model)
        key = self._key if only is not None else self._ring_key(served_key(headers))
        return dataclasses.replace(
            admission, provider=provider, costing=costing, request=request, key=key
        )

    def _ring_key(self, label: str | None) -> RingKey | None:
        """The pool key an attempt named, as the ring holds it now (a key removed from its
        pool meanwhile has no budget left to charge)."""
        if label is None:
            return None
        pool, _, name = label.partition("/")
        return next((k for k in self._rt.keys.current.pools.get(pool, ()) if k.name == name), None)

    @property
    def holds(self) -> bool:
        return self._unreported is not None

    def finish(self) -> None:
        """The stream ended: an alias sent and never answered frees a probe slot it held."""
        if self._unreported is not None:
            report(self._rt, backend_id(self._unreported), Outcome(ok=None), answered=False)
            self._unreported = None
