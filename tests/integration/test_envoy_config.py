"""The rendered Envoy bootstraps are accepted by the real Envoy binary, and say what the
gateway promises (what each setting does is measured in test_envoy_paths.py and
test_envoy_carriers.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from extproc.kube.envoy_config import LocalEnvoy, Upstream, render_local
from tests.envoy_check import envoy_validate

VARIANTS = {
    "mock-upstream": LocalEnvoy(openai=Upstream.local(8000), anthropic=Upstream.local(8000)),
    "providers-over-tls": LocalEnvoy(),
    "tls-by-address": LocalEnvoy(
        openai=Upstream.from_url("https://[fd00::0:7]:8443", what="openai"),
        anthropic=Upstream.from_url("https://10.0.0.7", what="anthropic"),
    ),
}


def _manager(values: LocalEnvoy) -> dict[str, Any]:
    config = json.loads(render_local(values))
    listener = config["static_resources"]["listeners"][0]
    manager: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def _clusters(values: LocalEnvoy) -> dict[str, dict[str, Any]]:
    config = json.loads(render_local(values))
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


@pytest.mark.parametrize("name", VARIANTS)
def test_envoy_validates_the_rendered_config(tmp_path: Path, name: str) -> None:
    envoy_validate(render_local(VARIANTS[name]), tmp_path)


def test_ext_proc_filter_fails_closed_and_only_asks_for_request_headers() -> None:
    filters = _manager(LocalEnvoy())["http_filters"]
    (ext_proc,) = [f["typed_config"] for f in filters if f["name"] == "envoy.filters.http.ext_proc"]
    assert ext_proc["failure_mode_allow"] is False
    assert ext_proc["allow_mode_override"] is True
    assert ext_proc["processing_mode"] == {
        "request_header_mode": "SEND",
        "response_header_mode": "SKIP",
        "request_body_mode": "NONE",
        "response_body_mode": "NONE",
        "request_trailer_mode": "SKIP",
        "response_trailer_mode": "SKIP",
    }


def test_filters_run_trailers_dropped_then_compressor_then_ext_proc_then_router() -> None:
    names = [f["name"].removeprefix("envoy.filters.http.") for f in _manager(LocalEnvoy())[
        "http_filters"]]  # fmt: skip
    assert names == ["header_mutation", "compressor", "ext_proc", "router"]


def test_one_canonical_path_and_no_underscore_headers() -> None:
    manager = _manager(LocalEnvoy())
    assert manager["normalize_path"] is True
    assert manager["merge_slashes"] is True
    assert manager["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
    assert manager["common_http_protocol_options"] == {
        "headers_with_underscores_action": "DROP_HEADER"
    }


def test_the_upstream_always_asks_for_identity() -> None:
    """Both routes: a model route's failover cluster, and the catch-all."""
    failover, catch_all = _manager(LocalEnvoy())["route_config"]["virtual_hosts"][0]["routes"]
    for route in (failover, catch_all):
        assert route["request_headers_to_add"] == [
            {
                "header": {"key": "accept-encoding", "value": "identity"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ]


def test_the_access_log_has_no_query_and_no_header() -> None:
    (log,) = _manager(LocalEnvoy())["access_log"]
    line = log["typed_config"]["log_format"]["text_format_source"]["inline_string"]
    assert "%PATH(NQ)%" in line
    logged = [part.partition(")")[0] for part in line.split("%REQ(")[1:]]
    assert logged == [":METHOD", "X-REQUEST-ID"]  # the id a client's error names, no other header


@pytest.mark.parametrize(
    ("values", "discovery", "sni", "san"),
    [
        (LocalEnvoy(), "LOGICAL_DNS", "api.openai.com", ("DNS", "api.openai.com")),
        (VARIANTS["tls-by-address"], "STATIC", None, ("IP_ADDRESS", "fd00::7")),
    ],
)
def test_provider_tls_checks_the_host_name_as_well_as_the_ca(
    values: LocalEnvoy, discovery: str, sni: str | None, san: tuple[str, str]
) -> None:
    openai = _clusters(values)["openai"]
    assert openai["type"] == discovery
    context = openai["transport_socket"]["typed_config"]
    assert context.get("sni") == sni
    validation = context["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"filename": "/etc/ssl/certs/ca-certificates.crt"}
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": san[0], "matcher": {"exact": san[1]}}
    ]


def test_no_tls_toward_the_sidecar_or_a_plain_http_upstream() -> None:
    clusters = _clusters(VARIANTS["mock-upstream"])
    assert "transport_socket" not in clusters["tokengate_ext_proc"]
    assert "transport_socket" not in clusters["openai"]
