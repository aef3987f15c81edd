"""`tokengate dev --openai-upstream URL`: a base URL becomes an Envoy cluster (TLS with SNI
for https, DNS for a name), and the local stack sends each provider where it was told."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from extproc.dev.stack import LocalStack, StackError
from extproc.errors import ConfigError
from extproc.kube.envoy_config import ANTHROPIC, OPENAI, LocalEnvoy, Upstream, render_local


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("http://127.0.0.1:8080", "127.0.0.1", 8080, False),
        ("http://127.0.0.1:8080/", "127.0.0.1", 8080, False),
        ("https://llm.internal", "llm.internal", 443, True),
        ("http://llm.internal", "llm.internal", 80, False),
        ("https://llm.internal:8443", "llm.internal", 8443, True),
        ("http://[::1]:9000", "::1", 9000, False),
    ],
)
def test_a_base_url_names_host_port_and_tls(url: str, host: str, port: int, tls: bool) -> None:
    upstream = Upstream.from_url(url, what="--openai-upstream")
    assert upstream == Upstream(host=host, port=port, tls=tls)
    assert Upstream.from_url(upstream.url, what="x") == upstream  # the ready line's form


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://127.0.0.1:21", "expected an http:// or https:// URL"),
        ("127.0.0.1:8080", "expected an http:// or https:// URL"),
        ("http://", "no host"),
        ("http://127.0.0.1:0", "bad port"),
        ("http://127.0.0.1:70000", "bad port"),
        ("http://127.0.0.1:port", "bad port"),
        ("https://api.openai.com/v1", "without path"),
        ("http://127.0.0.1:8080?x=1", "without path"),
        ("http://user:secret@127.0.0.1:8080", "without path, query or credentials"),
    ],
)
def test_what_is_not_a_base_url_is_refused_naming_the_flag(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="--openai-upstream") as refused:
        Upstream.from_url(url, what="--openai-upstream")
    assert problem in str(refused.value)


def _cluster(upstream: Upstream) -> dict[str, Any]:
    config = json.loads(render_local(LocalEnvoy(openai=upstream)))
    clusters = config["static_resources"]["clusters"]
    found: dict[str, Any] = next(c for c in clusters if c["name"] == "openai")
    return found


def test_https_by_name_is_resolved_and_verified_with_sni() -> None:
    cluster = _cluster(Upstream.from_url("https://llm.internal:8443", what="x"))
    assert cluster["type"] == "LOGICAL_DNS"
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert address["address"]["socket_address"] == {"address": "llm.internal", "port_value": 8443}
    tls = cluster["transport_socket"]["typed_config"]
    assert tls["sni"] == "llm.internal"
    assert tls["common_tls_context"]["validation_context"]["trusted_ca"]


def test_plain_http_by_name_is_resolved_without_tls() -> None:
    cluster = _cluster(Upstream.from_url("http://localhost:8080", what="x"))
    assert cluster["type"] == "LOGICAL_DNS"  # STATIC would refuse a name
    assert "transport_socket" not in cluster


def test_an_ip_address_is_a_static_cluster_and_never_an_sni() -> None:
    assert _cluster(Upstream.from_url("http://127.0.0.1:8080", what="x"))["type"] == "STATIC"
    cluster = _cluster(Upstream.from_url("https://10.1.2.3", what="x"))
    assert cluster["type"] == "STATIC"
    assert "sni" not in cluster["transport_socket"]["typed_config"]


def test_only_the_local_stack_asks_for_an_exclusive_listener() -> None:
    """The default rendering stays the chart's (no reuse-port setting: Envoy's default)."""
    exclusive = json.loads(render_local(LocalEnvoy(exclusive_listener=True)))
    shared = json.loads(render_local(LocalEnvoy()))
    assert exclusive["static_resources"]["listeners"][0]["enable_reuse_port"] is False
    assert "enable_reuse_port" not in shared["static_resources"]["listeners"][0]


def _stack(**options: Any) -> LocalStack:
    return LocalStack(policy_dir=Path("p"), run_dir=Path("r"), mock_port=4242, **options)


def test_each_provider_goes_where_it_was_told() -> None:
    here = Upstream.from_url("http://127.0.0.1:8080", what="x")
    mock = Upstream.local(4242)
    assert _stack().upstreams() == {"openai": mock, "anthropic": mock}
    assert _stack(openai_upstream=here).upstreams() == {"openai": here, "anthropic": mock}
    keyed = _stack(openai_api_key="sk-1", anthropic_api_key="sk-2")
    assert keyed.upstreams() == {"openai": OPENAI, "anthropic": ANTHROPIC}
    told = _stack(openai_api_key="sk-1", openai_upstream=here, anthropic_upstream=here)
    assert told.upstreams() == {"openai": here, "anthropic": here}


def test_two_parts_on_one_port_are_refused_before_anything_starts() -> None:
    with pytest.raises(StackError, match="same port"):
        _stack(listen_port=10000, admin_port=10000).check_ports()
