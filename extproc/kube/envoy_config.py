"""Render Envoy bootstraps from the templates in `envoy/`. Pure: text in, text out.

Every local reply that Envoy itself generates (a body over the buffer limit, the sidecar or
the provider unreachable, a malformed request or path, headers too large, and any other 4xx
or 5xx through a catch-all) is rewritten into the provider's error format — OpenAI's, or
Anthropic's under `/v1/messages` — so SDKs raise typed errors. Replies the sidecar makes are
marked with dynamic metadata (`tokengate.reply = sidecar`) and left alone: they are already
in the right format.
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

ENVOY_DIR = Path(__file__).resolve().parents[2] / "envoy"
REPLY_METADATA_NAMESPACE = "tokengate"
EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
ANTHROPIC_PATH_PREFIX = "/v1/messages"

_NOT_OURS = {
    "metadata_filter": {
        "matcher": {
            "filter": REPLY_METADATA_NAMESPACE,
            "path": [{"key": "reply"}],
            "value": {"string_match": {"exact": "envoy"}},
        },
        "match_if_key_not_found": True,
    }
}
_ANTHROPIC_PATH = {
    "header_filter": {
        "header": {"name": ":path", "string_match": {"prefix": ANTHROPIC_PATH_PREFIX}}
    }
}
_NO_PATH = {
    "header_filter": {"header": {"name": ":path", "present_match": True, "invert_match": True}}
}

# (status, extra filter, OpenAI type, OpenAI code, Anthropic type, message) for replies
# Envoy makes on its own; a status range is a catch-all, listed after the exact statuses
# (the first mapper that matches wins). `%RESPONSE_CODE_DETAILS%` is Envoy's reason, such as
# `path_normalization_failed` or `http1.codec_error`; json_format escapes whatever it holds.
_ENVOY_REPLIES: tuple[tuple[int | range, dict[str, Any] | None, str, str, str, str], ...] = (
    (413, None, "invalid_request_error", "request_too_large", "request_too_large",
     "Request body exceeds the gateway's size limit."),
    (503, {"response_flag_filter": {"flags": ["UH", "UF", "UO", "URX", "NC", "UC"]}},
     "api_error", "upstream_unavailable", "api_error",
     "The upstream provider is unreachable through the gateway."),
    (504, None, "api_error", "upstream_timeout", "api_error", "The upstream provider timed out."),
    (401, None, "invalid_request_error", "invalid_token", "authentication_error",
     "The service-account token was rejected (%RESPONSE_CODE_DETAILS%)."),
    (403, None, "invalid_request_error", "token_not_allowed", "permission_error",
     "The service-account token is not allowed here (%RESPONSE_CODE_DETAILS%)."),
    # Envoy cannot tell whether the sidecar failed before or after letting the request
    # through, so neither can this message: it must not invite a blind retry that pays twice.
    (503, None, "api_error", "gateway_unavailable", "overloaded_error",
     "The tokengate policy sidecar failed while handling this request (the gateway fails "
     "closed). If that happened after the request was let through, it may have reached the "
     "provider: look up request id %REQ(X-REQUEST-ID)% before retrying."),
    (400, None, "invalid_request_error", "invalid_request", "invalid_request_error",
     "The gateway refused a malformed request (%RESPONSE_CODE_DETAILS%)."),
    (431, None, "invalid_request_error", "request_too_large", "request_too_large",
     "Request headers exceed the gateway's size limit."),
    (range(400, 500), None, "invalid_request_error", "gateway_refused", "invalid_request_error",
     "The gateway refused the request (HTTP %RESPONSE_CODE%, %RESPONSE_CODE_DETAILS%)."),
    (range(500, 600), None, "api_error", "gateway_error", "api_error",
     "The gateway could not complete the request (HTTP %RESPONSE_CODE%, "
     "%RESPONSE_CODE_DETAILS%)."),
)  # fmt: skip


def _openai_body(error_type: str, code: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def _anthropic_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


# Every reply Envoy makes names the request id it logged, so a client can have it looked up.
_REQUEST_ID = {
    "header": {"key": "x-request-id", "value": "%REQ(X-REQUEST-ID)%"},
    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
}


def _mapper(filters: list[dict[str, Any]], body: dict[str, Any]) -> dict[str, Any]:
    return {
        "filter": {"and_filter": {"filters": filters}},
        "headers_to_add": [_REQUEST_ID],
        "body_format_override": {"json_format": body, "content_type": "application/json"},
    }


def _both_body(an_type: str, code: str, message: str) -> dict[str, Any]:
    """Anthropic's format plus the fields OpenAI's requires (`code`, `param`): for a request
    Envoy could not parse far enough to know its path, which SDK is calling is unknown."""
    body = _anthropic_body(an_type, message)
    body["error"] |= {"code": code, "param": None}
    return body


def local_reply_mappers() -> list[dict[str, Any]]:
    """Anthropic-path mappers first, then those for no path at all (an HTTP/1 codec error
    comes before Envoy has the request's headers; measured: `:path` is absent), then OpenAI:
    the first mapper whose filter matches wins."""
    anthropic, unknown, openai = [], [], []
    for status, extra, oa_type, oa_code, an_type, message in _ENVOY_REPLIES:
        filters: list[dict[str, Any]] = [*_status_is(status), _NOT_OURS]
        if extra is not None:
            filters.append(extra)
        anthropic.append(_mapper([*filters, _ANTHROPIC_PATH], _anthropic_body(an_type, message)))
        unknown.append(_mapper([*filters, _NO_PATH], _both_body(an_type, oa_code, message)))
        openai.append(_mapper(filters, _openai_body(oa_type, oa_code, message)))
    return anthropic + unknown + openai


def _status_is(status: int | range) -> list[dict[str, Any]]:
    if isinstance(status, int):
        return [_status_compare("EQ", status)]
    return [_status_compare("GE", status.start), _status_compare("LE", status.stop - 1)]


def _status_compare(op: str, status: int) -> dict[str, Any]:
    key = f"tokengate.status_{status}" if op == "EQ" else f"tokengate.status_{op.lower()}_{status}"
    value = {"default_value": status, "runtime_key": key}
    return {"status_code_filter": {"comparison": {"op": op, "value": value}}}


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


def render_local(values: LocalEnvoy, template: Path = ENVOY_DIR / "local.yaml") -> str:
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


def chart_mappers_text() -> str:
    """The Helm chart's copy of `local_reply_mappers()`, one source for both configs."""
    return json.dumps(local_reply_mappers(), separators=(",", ":")) + "\n"


if __name__ == "__main__":  # `make chart-files`
    CHART_MAPPERS.write_text(chart_mappers_text())
