"""What the benchmark runs: the two gateways under test, the upstream they share, the policy
and the requests.

Bare and governed are rendered from the same bootstrap (`envoy/local.yaml`, what `make run`
uses): bare is that config with the ext_proc filter taken out and the route pinned to the
upstream, so the only difference measured is governance.

The upstream is a second Envoy answering plain requests with `direct_response` (a canned
chat completion with usage), so neither path is capped by the Python mock provider. Requests
carrying `x-bench-upstream: mock` are proxied to the real mock provider instead: streamed
answers, chunk by chunk, for time-to-first-token and store round trips.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from extproc.kube.envoy_config import LocalEnvoy, Upstream, render_local

API_KEY = "tg-bench"
NAMESPACE = "bench"
MODEL = "gpt-4o-mini"
ALIAS_MODEL = "bench-alias"  # a ModelRoute with one backend: the provider route, renamed
FAILOVER_MODEL = "bench-failover"  # a ModelRoute with a fallback: the upstream phase
CAPACITY_MODEL = "bench-capacity"  # a Capacity covers it, with room: no queue ever forms
PROMPT = "Summarise the quarterly platform report in three short bullet points for the team."
MOCK_HEADER = "x-bench-upstream"
# What a provider returns for the plain request: about 50 tokens of answer plus usage.
CANNED_ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "- Revenue grew in every region.\n- Cloud spend fell after the "
                "migration.\n- Two incidents, both resolved within the target; follow-ups "
                "are tracked in the platform backlog.",
            },
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 24, "completion_tokens": 38, "total_tokens": 62},
}

POLICY = f"""\
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: bench, namespace: {NAMESPACE}}}
spec:
  models: {{allow: ["*"]}}
  limits:
    - {{name: rpm, requests: 1000000000, per: 1m}}
    - {{name: tpm, tokens: 1000000000000, per: 1m}}
    - {{name: daily, tokens: 1000000000000, per: 1d}}
    - {{name: inflight, concurrent: 100000}}
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: bench-key, namespace: {NAMESPACE}}}
spec: {{sha256: "{hashlib.sha256(API_KEY.encode()).hexdigest()}"}}
---
apiVersion: tokengate.dev/v1
kind: ModelRoute
metadata: {{name: alias}}
spec:
  model: {ALIAS_MODEL}
  backends: [{{provider: openai, model: {MODEL}}}]
---
apiVersion: tokengate.dev/v1
kind: ModelRoute
metadata: {{name: with-fallback}}
spec:
  model: {FAILOVER_MODEL}
  backends: [{{provider: openai, model: {MODEL}}}, {{provider: openai, model: gpt-4o}}]
---
apiVersion: tokengate.dev/v1
kind: Capacity
metadata: {{name: bench-tier}}
spec:
  provider: openai
  models: [{CAPACITY_MODEL}]
  limits:
    - {{name: rpm, requests: 1000000000, per: 1m, algorithm: bucket}}
    - {{name: tpm, tokens: 1000000000000, per: 1m, algorithm: bucket}}
"""


def write_policy(directory: Path) -> Path:
    """Limits the benchmark never reaches: every request is checked and debited, none
    refused, as for a team well inside its budget."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bench.yaml").write_text(POLICY)
    return directory


def governed(upstream_port: int, ext_proc_port: int) -> str:
    return render_local(
        LocalEnvoy(
            listen_port=0,
            admin_port=0,
            ext_proc_port=ext_proc_port,
            openai=Upstream.local(upstream_port),
            anthropic=Upstream.local(upstream_port),
        )
    )


def over_unix(config_text: str, path: Path) -> str:
    """The same bootstrap with Envoy reaching the sidecar over a Unix socket."""
    config: dict[str, Any] = json.loads(config_text)
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == "tokengate_ext_proc":
            endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            endpoint["address"] = {"pipe": {"path": str(path)}}
    return json.dumps(config, indent=1)


def _without_filters(manager: dict[str, Any], *names: str) -> None:
    manager["http_filters"] = [f for f in manager["http_filters"] if f["name"] not in names]


# Features of the governed listener the benchmark prices one by one (behind the floor
# server, so that only Envoy's share moves): what each costs decides whether it stays.
TRIMS: dict[str, Callable[[dict[str, Any]], object]] = {
    "access log": lambda manager: manager.pop("access_log"),
    "local-reply mappers": lambda manager: manager.pop("local_reply_config"),
    "header-mutation and compressor filters": lambda manager: _without_filters(
        manager, "envoy.filters.http.header_mutation", "envoy.filters.http.compressor"
    ),
}


def trimmed(config_text: str, trim: str) -> str:
    """The bootstrap with one feature of the listener taken out (`TRIMS`)."""
    config: dict[str, Any] = json.loads(config_text)
    TRIMS[trim](config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                ["typed_config"])  # fmt: skip
    return json.dumps(config, indent=1)


def bare(upstream_port: int) -> str:
    """The governed bootstrap without ext_proc: routed straight to the upstream."""
    config: dict[str, Any] = json.loads(governed(upstream_port, ext_proc_port=1))
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    typed = manager["typed_config"]
    typed["http_filters"] = [
        f for f in typed["http_filters"] if f["name"] != "envoy.filters.http.ext_proc"
    ]
    for host in typed["route_config"]["virtual_hosts"]:
        for route in host["routes"]:
            route["route"].pop("cluster_header", None)
            route["route"]["cluster"] = "openai"
    config["static_resources"]["clusters"] = [
        c for c in config["static_resources"]["clusters"] if c["name"] != "tokengate_ext_proc"
    ]
    return json.dumps(config, indent=1)


def upstream(mock_port: int) -> str:
    """A provider stand-in that costs almost no CPU: canned answers from Envoy itself."""
    answer = json.dumps(CANNED_ANSWER, separators=(",", ":"))
    manager = {
        "stat_prefix": "upstream",
        "codec_type": "AUTO",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "upstream",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {
                                "prefix": "/",
                                "headers": [
                                    {"name": MOCK_HEADER, "string_match": {"exact": "mock"}}
                                ],
                            },
                            "route": {"cluster": "mock", "timeout": "600s"},
                        },
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": answer}},
                            "response_headers_to_add": [
                                {"header": {"key": "content-type", "value": "application/json"}}
                            ],
                        },
                    ],
                }
            ]
        },
        # Read the whole request before answering: a direct_response sent while the body is
        # still arriving makes Envoy close the connection, one TCP handshake per request.
        "http_filters": [
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                    "max_request_bytes": 1048576,
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    manager["@type"] = (
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager"
    )
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "upstream",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": copy.deepcopy(manager),
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "mock",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "mock",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                            "socket_address": {"address": "127.0.0.1", "port_value": mock_port}
                        }}}]}],
                    },
                }
            ],
        },
    }  # fmt: skip
    return json.dumps(config, indent=1)


def http_request(
    *, stream: bool, completion_tokens: int = 60, chunk_delay_ms: int = 0, model: str = MODEL
) -> bytes:
    """One chat completion request as raw HTTP/1.1 bytes (what the load generator sends).
    A streamed one goes to the mock provider, which answers `completion_tokens` tokens, 3 to
    a chunk, `chunk_delay_ms` apart (apart, each chunk reaches the sidecar on its own)."""
    body: dict[str, Any] = {
        "model": model,  # another than MODEL: one a ModelRoute serves (the upstream is the same)
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max(64, completion_tokens),
    }
    headers = {
        "host": "bench",
        "authorization": f"Bearer {API_KEY}",
        "content-type": "application/json",
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        headers |= {MOCK_HEADER: "mock", "x-mock-completion-tokens": str(completion_tokens)}
        if chunk_delay_ms:
            headers["x-mock-chunk-delay-ms"] = str(chunk_delay_ms)
    raw = json.dumps(body, separators=(",", ":")).encode()
    headers["content-length"] = str(len(raw))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"POST /v1/chat/completions HTTP/1.1\r\n{head}\r\n".encode() + raw
