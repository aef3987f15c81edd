"""Render Envoy bootstraps from the templates in `envoy/`. Pure: text in, text out.

The error-reply mappers live in `envoy_replies`, the model-route failover fragments in
`envoy_failover`; this module fills the template and adds TLS, failover and identity.
"""

from __future__ import annotations

import ipaddress
import json
import string
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from extproc.errors import ConfigError
from extproc.gate.identity import JWT_METADATA_NAMESPACE, JWT_PAYLOAD_KEY, JWT_SHAPE
from extproc.kube import envoy_failover
from extproc.kube.envoy_replies import local_reply_mappers
from extproc.policy.routes import PROVIDERS

ENVOY_DIR = Path(__file__).resolve().parents[2] / "envoy"
EXT_PROC_FILTER = "envoy.filters.http.ext_proc"


@dataclass(frozen=True, slots=True, kw_only=True)
class Upstream:
    """Where a provider cluster points: the real provider over TLS, or a local one."""

    host: str
    port: int
    tls: bool

    @classmethod
    def local(cls, port: int) -> Upstream:
        return cls(host="127.0.0.1", port=port, tls=False)

    @classmethod
    def from_url(cls, url: str, *, what: str) -> Upstream:
        """A base URL such as `http://127.0.0.1:8080` or `https://llm.internal`.

        No path: Envoy forwards the client's path (`/v1/…`) unchanged, so a path here could
        only be silently ignored; refusing it is clearer than a provider's 404 later.
        """
        parts = urllib.parse.urlsplit(url)
        problem = _base_url_problem(parts)
        if problem:
            raise ConfigError(f"{what}: {problem}, got {url!r} (e.g. http://127.0.0.1:8080)")
        tls = parts.scheme == "https"
        return cls(host=parts.hostname or "", port=parts.port or (443 if tls else 80), tls=tls)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def is_address(self) -> bool:
        """An IP literal: a STATIC cluster, and no SNI (RFC 6066 names hosts only)."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def _base_url_problem(parts: urllib.parse.SplitResult) -> str:
    if parts.scheme not in ("http", "https"):
        return "expected an http:// or https:// URL"
    if not parts.hostname:
        return "no host"
    try:
        port = parts.port  # None when absent; raises when out of range or not a number
    except ValueError:
        port = 0
    if port == 0:
        return "bad port"
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return "expected a base URL without path, query or credentials (clients keep /v1/…)"
    return ""


OPENAI = Upstream(host="api.openai.com", port=443, tls=True)
ANTHROPIC = Upstream(host="api.anthropic.com", port=443, tls=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceAccountTokens:
    """Accept Kubernetes service-account tokens, verified by Envoy against this issuer."""

    issuer: str
    audiences: tuple[str, ...]
    jwks: str  # the issuer's JWKS document (public keys), inlined into the bootstrap


def jwt_authn_filter(tokens: ServiceAccountTokens) -> dict[str, Any]:
    """Verify a bearer that looks like a JWT; leave gateway keys to the sidecar.

    A rule per header applies the provider only when that header carries a JWT-shaped
    value, so a gateway key never reaches the verifier and a token never bypasses it. The
    verified payload goes to dynamic metadata, which ext_proc forwards to the sidecar; the
    token itself is removed (`forward: false`) before anything else sees it.
    """
    provider = {
        "issuer": tokens.issuer,
        "audiences": list(tokens.audiences),
        "local_jwks": {"inline_string": tokens.jwks},
        "from_headers": [
            {"name": "authorization", "value_prefix": "Bearer "},
            {"name": "x-api-key"},
        ],
        "forward": False,
        "payload_in_metadata": JWT_PAYLOAD_KEY,
        "clock_skew_seconds": 60,
    }
    rules = [
        {
            "match": {
                "prefix": "/",
                "headers": [{"name": name, "string_match": {"safe_regex": {"regex": regex}}}],
            },
            "requires": {"provider_name": "kubernetes"},
        }
        for name, regex in (
            ("authorization", f"^[Bb]earer +{JWT_SHAPE}$"),
            ("x-api-key", f"^{JWT_SHAPE}$"),
        )
    ]
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3."
            "JwtAuthentication",
            "providers": {"kubernetes": provider},
            "rules": rules,
        },
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalEnvoy:
    """Values for `envoy/local.yaml`. Port 0 means 'pick a free one' (tests)."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 10000
    admin_port: int = 9901
    ext_proc_host: str = "127.0.0.1"
    ext_proc_port: int = 50051
    openai: Upstream = OPENAI
    anthropic: Upstream = ANTHROPIC
    buffer_limit_bytes: int = 4 * 1024 * 1024 + 65536
    service_accounts: ServiceAccountTokens | None = None
    # Bind the listener without SO_REUSEPORT (see `_make_listener_exclusive`). Off by
    # default, as in the chart: in a pod nobody else can hold the port, and SO_REUSEPORT
    # spreads connections over Envoy's worker threads.
    exclusive_listener: bool = False


# The local Envoy bootstrap: envoy/local.yaml, reached through the package's symlink to it
# so that an installed package (a wheel copies the file) finds it as a source tree does.
LOCAL_TEMPLATE = Path(__file__).with_name("local.yaml")


def render_local(values: LocalEnvoy, template: Path = LOCAL_TEMPLATE) -> str:
    """The bootstrap as JSON (valid YAML, which Envoy reads by the file's .yaml name)."""
    upstreams = {"openai": values.openai, "anthropic": values.anthropic}
    fields: dict[str, object] = {
        "listen_host": values.listen_host,
        "listen_port": values.listen_port,
        "admin_port": values.admin_port,
        "ext_proc_host": values.ext_proc_host,
        "ext_proc_port": values.ext_proc_port,
        "buffer_limit_bytes": values.buffer_limit_bytes,
        "local_reply_mappers": json.dumps(local_reply_mappers()),
    }
    for name, upstream in upstreams.items():
        fields[f"{name}_host"] = upstream.host
        fields[f"{name}_port"] = upstream.port
        fields[f"{name}_discovery"] = "STATIC" if upstream.is_address else "LOGICAL_DNS"
    config = yaml.safe_load(string.Template(template.read_text()).substitute(fields))
    _add_tls(config, upstreams.get)
    _add_failover(config)
    if values.service_accounts is not None:
        _add_jwt_authn(config, values.service_accounts)
    if values.exclusive_listener:
        _make_listener_exclusive(config)
    return json.dumps(config, indent=1)


def _make_listener_exclusive(config: dict[str, Any]) -> None:
    """Measured with Envoy 1.40: with its default SO_REUSEPORT, a second Envoy binds the
    same listener port beside a running one and the kernel splits the connections between
    them (two stacks, two budgets, half the traffic each, no error). Without it, the second
    Envoy exits with `cannot bind '…': Address already in use`, and an Envoy bound this way
    also keeps out any later one that does use SO_REUSEPORT."""
    config["static_resources"]["listeners"][0]["enable_reuse_port"] = False


def _add_failover(config: dict[str, Any]) -> None:
    """Model routes (`envoy_failover`): provider hosts say which API they speak, the
    failover clusters join them, and their route goes before the catch-all."""
    resources = config["static_resources"]
    for cluster in resources["clusters"]:
        if cluster["name"] in PROVIDERS:
            for group in cluster["load_assignment"]["endpoints"]:
                for endpoint in group["lb_endpoints"]:
                    endpoint["metadata"] = envoy_failover.provider_endpoint_metadata(
                        cluster["name"]
                    )
    resources["clusters"] += envoy_failover.failover_clusters("tokengate_ext_proc")
    manager = resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    timeout = routes[-1]["route"]["timeout"]
    routes.insert(len(routes) - 1, envoy_failover.failover_route(timeout=timeout))


def _add_jwt_authn(config: dict[str, Any], tokens: ServiceAccountTokens) -> None:
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters: list[dict[str, Any]] = manager["typed_config"]["http_filters"]
    (ext_proc,) = [f["typed_config"] for f in filters if f["name"] == EXT_PROC_FILTER]
    ext_proc["metadata_options"]["forwarding_namespaces"] = {"untyped": [JWT_METADATA_NAMESPACE]}
    filters.insert(0, jwt_authn_filter(tokens))


def _add_tls(config: dict[str, Any], upstream_of: Callable[[str], Upstream | None]) -> None:
    for cluster in config["static_resources"]["clusters"]:
        upstream = upstream_of(cluster["name"])
        if upstream is not None and upstream.tls:
            context: dict[str, Any] = {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                "UpstreamTlsContext",
                "sni": upstream.host,
                "common_tls_context": {
                    "validation_context": {
                        "trusted_ca": {"filename": "/etc/ssl/certs/ca-certificates.crt"},
                        # The CA chain alone accepts any publicly trusted certificate: the
                        # certificate must also name the host we meant to reach.
                        "match_typed_subject_alt_names": [_subject_alt_name(upstream)],
                    }
                },
            }
            if upstream.is_address:
                del context["sni"]
            cluster["transport_socket"] = {
                "name": "envoy.transport_sockets.tls",
                "typed_config": context,
            }


def _subject_alt_name(upstream: Upstream) -> dict[str, Any]:
    """The SAN the provider's certificate must carry. Envoy compares an IP SAN in its
    canonical text form (RFC 5952 for IPv6), so an address is written that way."""
    if upstream.is_address:
        address = str(ipaddress.ip_address(upstream.host))
        return {"san_type": "IP_ADDRESS", "matcher": {"exact": address}}
    return {"san_type": "DNS", "matcher": {"exact": upstream.host}}


CHART_MAPPERS = ENVOY_DIR.parent / "helm" / "tokengate" / "files" / "local-reply-mappers.json"
CHART_FAILOVER = CHART_MAPPERS.with_name("failover.json")


def chart_mappers_text() -> str:
    """The Helm chart's copy of `local_reply_mappers()`, one source for both configs."""
    return json.dumps(local_reply_mappers(), separators=(",", ":")) + "\n"


def chart_failover_text() -> str:
    """The chart's copy of the failover clusters and route (`envoy_failover`); the chart
    sets the route's timeout from its values."""
    fragments = {
        "clusters": envoy_failover.failover_clusters("tokengate_ext_proc"),
        "route": envoy_failover.failover_route(timeout="set-by-the-chart"),
    }
    return json.dumps(fragments, separators=(",", ":")) + "\n"


if __name__ == "__main__":  # `make chart-files`
    CHART_MAPPERS.write_text(chart_mappers_text())
    CHART_FAILOVER.write_text(chart_failover_text())
