"""Render Envoy bootstraps from the templates in `envoy/`. Pure: text in, text out.

Local replies that Envoy itself generates (a body over the buffer limit, the sidecar
unreachable, the provider unreachable) are rewritten into the provider's error format so SDKs
raise typed errors. Replies the sidecar makes are marked with dynamic metadata
(`tokengate.reply = sidecar`) and left alone: they are already in the right format.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENVOY_DIR = Path(__file__).resolve().parent.parent / "envoy"
REPLY_METADATA_NAMESPACE = "tokengate"

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

# (status, extra filter, error type, code, message) for replies Envoy makes on its own.
_ENVOY_REPLIES: tuple[tuple[int, dict[str, Any] | None, str, str, str], ...] = (
    (
        413,
        None,
        "invalid_request_error",
        "request_too_large",
        "Request body exceeds the gateway's size limit.",
    ),
    (
        503,
        {"response_flag_filter": {"flags": ["UH", "UF", "UO", "URX", "NC", "UC"]}},
        "api_error",
        "upstream_unavailable",
        "The upstream provider is unreachable through the gateway.",
    ),
    (504, None, "api_error", "upstream_timeout", "The upstream provider timed out."),
    (
        503,
        None,
        "api_error",
        "gateway_unavailable",
        "The tokengate policy sidecar is unavailable; the request was not forwarded "
        "(the gateway fails closed).",
    ),
)


def _openai_body(error_type: str, code: str, message: str) -> str:
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return json.dumps(body)


def local_reply_mappers() -> list[dict[str, Any]]:
    mappers = []
    for status, extra, error_type, code, message in _ENVOY_REPLIES:
        filters: list[dict[str, Any]] = [{"status_code_filter": _status_is(status)}, _NOT_OURS]
        if extra is not None:
            filters.append(extra)
        mappers.append(
            {
                "filter": {"and_filter": {"filters": filters}},
                "body_format_override": {
                    "text_format_source": {
                        "inline_string": _openai_body(error_type, code, message)
                    },
                    "content_type": "application/json",
                },
            }
        )
    return mappers


def _status_is(status: int) -> dict[str, Any]:
    return {
        "comparison": {
            "op": "EQ",
            "value": {"default_value": status, "runtime_key": f"tokengate.status_{status}"},
        }
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalEnvoy:
    """Values for `envoy/local.yaml`. Port 0 means 'pick a free one' (tests)."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 10000
    admin_port: int = 9901
    ext_proc_host: str = "127.0.0.1"
    ext_proc_port: int = 50051
    openai_host: str = "api.openai.com"
    openai_port: int = 443
    openai_tls: bool = True
    buffer_limit_bytes: int = 4 * 1024 * 1024 + 65536


def render_local(values: LocalEnvoy, template: Path = ENVOY_DIR / "local.yaml") -> str:
    text = string.Template(template.read_text()).substitute(
        listen_host=values.listen_host,
        listen_port=values.listen_port,
        admin_port=values.admin_port,
        ext_proc_host=values.ext_proc_host,
        ext_proc_port=values.ext_proc_port,
        openai_host=values.openai_host,
        openai_port=values.openai_port,
        openai_discovery="LOGICAL_DNS" if values.openai_tls else "STATIC",
        buffer_limit_bytes=values.buffer_limit_bytes,
        local_reply_mappers=json.dumps(local_reply_mappers()),
    )
    if values.openai_tls:
        text += _tls_socket("openai", values.openai_host)
    return text


def _tls_socket(cluster: str, sni: str) -> str:
    # Appended to the last cluster in the template (the provider cluster).
    return (
        "    transport_socket:\n"
        "      name: envoy.transport_sockets.tls\n"
        "      typed_config:\n"
        '        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.'
        "UpstreamTlsContext\n"
        f"        sni: {sni}\n"
        "        common_tls_context:\n"
        "          validation_context:\n"
        "            trusted_ca: {filename: /etc/ssl/certs/ca-certificates.crt}\n"
    )
