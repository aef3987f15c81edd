"""Names shared by the sidecar and the Envoy config for model routes (see
`extproc/kube/envoy_failover.py` for how a routed request travels through Envoy)."""

from __future__ import annotations

from collections.abc import Sequence

FAILOVER_PREFIX = "failover."
# Dynamic metadata the sidecar sets on a routed request; Envoy forwards it to every attempt's
# upstream phase. Nothing of it reaches a provider.
ROUTE_METADATA_NAMESPACE = "tokengate.route"
# Endpoint metadata on every provider host: which API the host speaks.
PROVIDER_METADATA_NAMESPACE = "tokengate"
HOST_METADATA_ATTRIBUTE = "xds.upstream_host_metadata"
MAX_BACKENDS = 4  # per model route; `ModelRoute` validation enforces the same bound
ATTEMPT_HEADER = "x-envoy-attempt-count"  # set by Envoy on each attempt (1, 2, …)
MAX_RETRIES_HEADER = "x-envoy-max-retries"
PER_TRY_TIMEOUT_HEADER = "x-envoy-upstream-rq-per-try-timeout-ms"  # streams: first byte
BACKEND_HEADER = "x-tokengate-backend"  # on the answer: provider/model that served


def cluster_name(providers: Sequence[str]) -> str:
    """The failover cluster for backends of these providers, in this order."""
    return FAILOVER_PREFIX + ".".join(providers)
