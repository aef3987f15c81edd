"""Model routes on the request path: which backends may serve this request, what they
cost, and what Envoy and each attempt's upstream phase need to know. Pure: the governed
processor asks, the quota store and Envoy do the rest.

A backend is dropped from a request's chain (never silently sent something else) when the
caller's allow-list does not name its model, when a caller with dollar limits would be
charged for a model without a price, or when its API cannot express the request (e.g. `n`
= 2 on Anthropic). With no backend left, the first reason is the answer: 403 or 400.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2

from extproc.backends.health import Admit, Verdict
from extproc.errors import BackendsDown, ClientError, PermissionDenied
from extproc.gate.failover import BACKEND_HEADER, ROUTE_METADATA_NAMESPACE, cluster_name
from extproc.gate.key_ring import no_usable_key
from extproc.policy.model import Backend, ModelRoute
from extproc.policy.prices import PriceTable
from extproc.providers.translate.registry import translation_for
from extproc.quota.costing import Costing
from extproc.quota.windows import ScopedLimit

# Client headers an Anthropic backend needs back on every attempt: an earlier attempt to
# another API may have removed them from the (shared) header map.
ANTHROPIC_CLIENT_HEADERS = ("anthropic-version", "anthropic-beta")


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """The backends that may serve one request, in order, and the costing it is reserved
    at: the costliest of them, so that a fallback never overruns a reservation."""

    route: ModelRoute
    backends: tuple[Backend, ...]
    costing: Costing

    @property
    def cluster(self) -> str:
        return cluster_name([b.provider for b in self.backends])

    def direct(self, client: str) -> bool:
        """One backend that speaks the client's API: Envoy's ordinary provider route serves
        it (no failover cluster, no upstream phase); only the model is rewritten."""
        return len(self.backends) == 1 and self.backends[0].provider == client

    @property
    def max_retries(self) -> int:
        return len(self.backends) - 1

    def metadata(
        self, *, client: str, path: str, stream: bool, headers: Mapping[str, str]
    ) -> struct_pb2.Struct:
        """What every attempt's upstream phase reads (`UpstreamProcessor`)."""
        route: dict[str, Any] = {
            "client": client,
            "path": path,
            "stream": stream,
            "backends": [f"{b.provider}/{b.model}/{b.max_tokens}" for b in self.backends],
            "pools": [b.key_pool or "" for b in self.backends],  # "": the provider's key
        }
        # An OpenAI client's anthropic-* headers are not the client's API: an anthropic-beta
        # could switch on billed features the price table does not know.
        kept = (
            {h: headers[h] for h in ANTHROPIC_CLIENT_HEADERS if h in headers}
            if client == "anthropic"
            else {}
        )
        if kept:
            route["headers"] = kept
        metadata = struct_pb2.Struct()
        metadata.update({ROUTE_METADATA_NAMESPACE: route})
        return metadata


def plan(
    route: ModelRoute,
    *,
    client: str,
    body: Mapping[str, Any],
    allows_model: Any,
    prices: PriceTable | None,
    limits: tuple[ScopedLimit, ...],
    estimate: tuple[int, int],
) -> RoutePlan:
    """The request's chain; raises the first reason when no backend can serve it.
    `allows_model(model) -> bool` is the caller's allow-list; `estimate` (prompt,
    completion) ranks the backends' costings."""
    usable: list[tuple[Backend, Costing]] = []
    first_error: ClientError | None = None
    for backend in route.backends:
        try:
            costing = _check(
                backend,
                client=client,
                body=body,
                allows_model=allows_model,
                prices=prices,
                limits=limits,
            )
            usable.append((backend, costing))
        except ClientError as error:
            first_error = first_error or error
    if not usable:
        assert first_error is not None
        raise first_error
    costliest = max(usable, key=lambda pair: pair[1].estimate(*estimate).usd_micros)[1]
    return RoutePlan(route=route, backends=tuple(b for b, _ in usable), costing=costliest)


def _check(
    backend: Backend,
    *,
    client: str,
    body: Mapping[str, Any],
    allows_model: Any,
    prices: PriceTable | None,
    limits: tuple[ScopedLimit, ...],
) -> Costing:
    if not allows_model(backend.model):
        raise PermissionDenied(
            f"The model route sends this request to '{backend.model}', which this "
            "namespace's policy does not allow."
        )
    costing = Costing.for_request(prices, limits, backend.model)
    translation = translation_for(client, backend.provider)
    if translation is not None:
        translation.request(body, model=backend.model, default_max_tokens=backend.max_tokens)
    return costing


def backend_id(backend: Backend) -> str:
    """How backend health names a backend (breaker, headroom, metrics labels)."""
    return f"{backend.provider}/{backend.model}"


def healthy(route: RoutePlan, verdicts: Sequence[Admit]) -> RoutePlan:
    """The chain without the backends health skips (in order; the first left is the one
    the store claimed). None left: 503 while breakers are open, 429 when every skipped
    backend's provider limit is reached, Retry-After the soonest wait."""
    kept = tuple(b for b, v in zip(route.backends, verdicts, strict=True) if v.usable)
    if kept:
        return dataclasses.replace(route, backends=kept)
    exhausted = all(v.verdict is Verdict.EXHAUSTED for v in verdicts)
    wait = min((v.wait_s for v in verdicts if v.wait_s > 0), default=1.0)
    names = ", ".join(backend_id(b) for b in route.backends)
    reason = "their providers' rate limits are reached" if exhausted else "they are failing"
    raise BackendsDown(
        f"Every backend of model route '{route.route.name}' ({names}) is skipped: {reason}. "
        f"Retry in {wait:.0f} s.",
        retry_after=wait,
        status=429 if exhausted else 503,
    )


def with_keys(route: RoutePlan, has_key: Callable[[str], bool]) -> RoutePlan:
    """The chain without backends whose key pool has no usable key left (all expired,
    refused or out of budget): skipped before sending, as an open breaker is, because an
    attempt's upstream phase cannot pass its turn on (Envoy does not retry a reply it
    makes itself). None left: 503."""
    kept = tuple(b for b in route.backends if not b.key_pool or has_key(b.key_pool))
    if kept:
        return (
            route if len(kept) == len(route.backends) else dataclasses.replace(route, backends=kept)
        )
    raise no_usable_key(", ".join(sorted({b.key_pool for b in route.backends if b.key_pool})))


def served_by(response_headers: Mapping[str, str]) -> tuple[str, str] | None:
    """(provider, model) from the upstream phase's answer header, if it set one."""
    provider, slash, model = response_headers.get(BACKEND_HEADER, "").partition("/")
    if not slash or not provider or not model:
        return None
    return provider, model.split(";", 1)[0].strip()


def served_key(response_headers: Mapping[str, str]) -> str | None:
    """The pool key's label (`pool/name`) from the same header, if the attempt carried one."""
    _, _, rest = response_headers.get(BACKEND_HEADER, "").partition(";")
    name, equals, label = rest.partition("=")
    return label.strip() if equals and name.strip() == "key" and label.strip() else None
