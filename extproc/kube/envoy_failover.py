"""The Envoy side of model routes: failover clusters, their route, their upstream filter.

Pure: values in, config fragments out; `render_local` and the Helm chart (through
`helm/tokengate/files/failover.json`, `make chart-files`) put the same fragments in place.

How a routed request travels (chosen by trying each mechanism against Envoy 1.40, see the
docs/model-routes.md):
- The sidecar, once it has read the body and found a `ModelRoute`, names a *failover
  cluster* in `x-tokengate-upstream` (`failover.openai.anthropic`: the providers of the
  route's backends, in order) and puts the backends themselves in dynamic metadata
  (`tokengate.route`).
- A failover cluster is Envoy's composite cluster: attempt N goes to its N-th sub-cluster,
  the ordinary provider cluster with its TLS settings. The route retries what cannot have
  produced an answer (connect failure, reset, 5xx, 429, no response headers within
  the sidecar's `--first-byte-timeout`, streams only); Envoy never retries once response
  headers went downstream, so a
  failure after the first byte reaches the client as it happened.
- The composite cluster carries an *upstream* ext_proc filter: one sidecar stream per
  attempt, which gets the route's metadata and the attempt count, and rewrites that
  attempt for its backend: model, translated body, path, credential; then translates the
  answer back. Envoy replays the original body on every attempt, but header changes made
  by one attempt's filter are still there for the next (measured): the upstream processor
  sets every header it relies on, every time.

Rejected after trying: the priority-group cluster specifier (Envoy 1.40 keeps the first
attempt's cluster for every retry, with or without its metadata override), and a header
carrying the backends (a header the filter removes is gone for the next attempt too, and
one it keeps reaches the provider).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

from extproc.gate.failover import (
    FAILOVER_PREFIX,
    HOST_METADATA_ATTRIBUTE,
    MAX_BACKENDS,
    PROVIDER_METADATA_NAMESPACE,
    ROUTE_METADATA_NAMESPACE,
    cluster_name,
)
from extproc.policy.routes import PROVIDERS

MAX_RETRIES_IN_FLIGHT = 100_000

_EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
_CODEC = "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_COMPOSITE = "type.googleapis.com/envoy.extensions.clusters.composite.v3.ClusterConfig"


def chains(
    providers: Sequence[str] = PROVIDERS, longest: int = MAX_BACKENDS
) -> Iterator[tuple[str, ...]]:
    """Every provider sequence a route may have: 2 + 4 + 8 + 16 = 30 for two providers.
    Rendered up front because routes change with policies and the bootstrap does not."""
    for length in range(1, longest + 1):
        yield from itertools.product(providers, repeat=length)


def upstream_filters(ext_proc_cluster: str) -> list[dict[str, Any]]:
    """The per-attempt filter chain: the sidecar's upstream phase, then the codec."""
    ext_proc = {
        "@type": _EXT_PROC,
        "grpc_service": {"envoy_grpc": {"cluster_name": ext_proc_cluster}, "timeout": "30s"},
        # No sidecar, no attempt: an untranslated body must never reach a provider.
        "failure_mode_allow": False,
        "processing_mode": {
            "request_header_mode": "SEND",
            "response_header_mode": "SEND",
            "request_body_mode": "BUFFERED",
            "response_body_mode": "NONE",
            "request_trailer_mode": "SKIP",
            "response_trailer_mode": "SKIP",
        },
        "allow_mode_override": True,
        "message_timeout": "1s",
        "max_message_timeout": "10s",
        "request_attributes": [HOST_METADATA_ATTRIBUTE],
        "metadata_options": {
            "forwarding_namespaces": {"untyped": [ROUTE_METADATA_NAMESPACE]},
            # The sidecar marks its own replies, so Envoy's local-reply mappers keep them.
            "receiving_namespaces": {"untyped": [PROVIDER_METADATA_NAMESPACE]},
        },
    }
    return [
        {"name": "envoy.filters.http.ext_proc", "typed_config": ext_proc},
        {"name": "envoy.filters.http.upstream_codec", "typed_config": {"@type": _CODEC}},
    ]


def failover_clusters(ext_proc_cluster: str) -> list[dict[str, Any]]:
    options: dict[str, Any] = {
        "@type": _OPTIONS,
        "explicit_http_config": {"http_protocol_options": {}},
        "http_filters": upstream_filters(ext_proc_cluster),
    }
    return [
        {
            "name": cluster_name(chain),
            "connect_timeout": "5s",
            "lb_policy": "CLUSTER_PROVIDED",
            "cluster_type": {
                "name": "envoy.clusters.composite",
                "typed_config": {"@type": _COMPOSITE, "clusters": [{"name": p} for p in chain]},
            },
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options
            },
            # Every request on a failover cluster may be retried: Envoy's default of 3
            # retries in flight per cluster turned most failovers of a provider outage into
            # 503s (measured: 32 of 60 concurrent requests, `upstream_rq_retry_overflow`).
            # The retries are bounded per request by the route's backends instead.
            "circuit_breakers": {"thresholds": [{"max_retries": MAX_RETRIES_IN_FLIGHT}]},
        }
        for chain in chains()
    ]


def failover_route(*, timeout: str) -> dict[str, Any]:
    """Matched before the catch-all: only the sidecar sets a `failover.` upstream (a client's
    `x-tokengate-upstream` is overwritten or removed on every request)."""
    return {
        "match": {
            "prefix": "/",
            "headers": [
                {"name": "x-tokengate-upstream", "string_match": {"prefix": FAILOVER_PREFIX}}
            ],
        },
        "request_headers_to_remove": ["x-tokengate-upstream", "trailer"],
        "request_headers_to_add": [
            {
                "header": {"key": "accept-encoding", "value": "identity"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
        "route": {
            "cluster_header": "x-tokengate-upstream",
            "timeout": timeout,
            "auto_host_rewrite": True,
            "retry_policy": {
                "retry_on": "connect-failure,refused-stream,reset,5xx,retriable-status-codes",
                # 401: the provider refused our key (a pool key, or the provider's own), not
                # the client; the next backend is tried with its own.
                "retriable_status_codes": [401, 429],
                # The sidecar sets x-envoy-max-retries to the route's backends minus one, and
                # for a stream x-envoy-upstream-rq-per-try-timeout-ms to its first-byte
                # timeout (Envoy ignores a per-try timeout once response headers went
                # downstream). Not for a plain answer: its headers come only once it is
                # all generated, so a per-try timeout would cut and re-buy long answers.
                "num_retries": MAX_BACKENDS - 1,
                "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.1s"},
            },
        },
    }


def provider_endpoint_metadata(provider: str) -> dict[str, Any]:
    """Marks a provider cluster's hosts, so the upstream phase knows which API it talks to
    (a composite cluster may skip a sub-cluster that has no host)."""
    return {"filter_metadata": {PROVIDER_METADATA_NAMESPACE: {"provider": provider}}}
