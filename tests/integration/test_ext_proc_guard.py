"""No route reaches a provider without passing the sidecar: the Envoy configs we ship (local
and every Helm mode) pass `ext_proc_guard.ungoverned`, and every way of doctoring a config
that we know of makes it fail."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from extproc.kube.envoy_config import LocalEnvoy, ServiceAccountTokens, Upstream, render_local
from tests.helm.chart import JWKS, MODES, envoy_bootstrap
from tests.integration.ext_proc_guard import ungoverned

LOCAL = {
    "providers-over-tls": LocalEnvoy(),
    "mock-upstream": LocalEnvoy(openai=Upstream.local(8000), anthropic=Upstream.local(8000)),
    "exclusive-ipv6": LocalEnvoy(
        openai=Upstream.from_url("https://[fd00::7]:8443", what="test"), exclusive_listener=True
    ),
    "service-accounts": LocalEnvoy(
        service_accounts=ServiceAccountTokens(issuer="https://i", audiences=("a",), jwks=JWKS)
    ),
}


@pytest.mark.parametrize("name", sorted(LOCAL))
def test_the_local_config_governs_every_route(name: str) -> None:
    assert ungoverned(json.loads(render_local(LOCAL[name]))) == []


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_chart_config_governs_every_route(mode: str) -> None:
    assert ungoverned(envoy_bootstrap(MODES[mode])) == []


_EXT_PROC = {
    "name": "envoy.filters.http.ext_proc",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": "tokengate_ext_proc"}},
        "failure_mode_allow": False,
        "processing_mode": {"request_header_mode": "SEND"},
    },
}
_ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}
_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"


def _bootstrap() -> dict[str, Any]:
    """The smallest governed gateway: one route by header, ext_proc then the router."""
    route = {"match": {"prefix": "/"}, "route": {"cluster_header": "x-tokengate-upstream"}}
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "route_config": {"virtual_hosts": [{"name": "llm", "domains": ["*"], "routes": [route]}]},
        "http_filters": [copy.deepcopy(_EXT_PROC), copy.deepcopy(_ROUTER)],
    }
    hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}
    return {
        "static_resources": {
            "listeners": [{"name": "llm", "filter_chains": [{"filters": [hcm]}]}],
            "clusters": [{"name": n} for n in ("tokengate_ext_proc", "openai", "envoy_admin")],
        }
    }


def _manager(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    manager: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def _route(config: dict[str, Any]) -> dict[str, Any]:
    route: dict[str, Any] = _manager(config)["route_config"]["virtual_hosts"][0]["routes"][0]
    return route


def _ext_proc(config: dict[str, Any]) -> dict[str, Any]:
    config_: dict[str, Any] = _manager(config)["http_filters"][0]["typed_config"]
    return config_


def _set(path: Callable[[dict[str, Any]], dict[str, Any]], **fields: Any) -> Callable[..., None]:
    return lambda config: path(config).update(fields)


def _plain_cluster(config: dict[str, Any]) -> None:
    _route(config)["route"] = {"cluster": "openai"}


def _per_route(where: str, value: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def doctor(config: dict[str, Any]) -> None:
        owner = {
            "route": _route(config),
            "virtual_host": _manager(config)["route_config"]["virtual_hosts"][0],
            "route_config": _manager(config)["route_config"],
        }[where]
        owner["typed_per_filter_config"] = {"envoy.filters.http.ext_proc": value}

    return doctor


def _filters(change: Callable[[list[dict[str, Any]]], object]) -> Callable[[dict[str, Any]], None]:
    def doctor(config: dict[str, Any]) -> None:
        change(_manager(config)["http_filters"])

    return doctor


def _no_ext_proc_and_plain_cluster(config: dict[str, Any]) -> None:
    _plain_cluster(config)
    _manager(config)["http_filters"].pop(0)


def _extra_listener(config: dict[str, Any]) -> None:
    proxy = {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {"stat_prefix": "raw", "cluster": "openai"},
    }
    listeners = config["static_resources"]["listeners"]
    listeners.append({"name": "raw", "filter_chains": [{"filters": [proxy]}]})


def _upgrade_without_ext_proc(config: dict[str, Any]) -> None:
    upgrade = {"upgrade_type": "websocket", "filters": [copy.deepcopy(_ROUTER)]}
    _manager(config)["upgrade_configs"] = [upgrade]


def _lua_calls(config: dict[str, Any]) -> None:
    lua = {"name": "envoy.filters.http.ext_authz", "typed_config": {"http_service": {
        "server_uri": {"uri": "http://x", "cluster": "openai", "timeout": "1s"}}}}  # fmt: skip
    _manager(config)["http_filters"].insert(0, lua)


# (what is doctored, how, a phrase the problem must contain)
DOCTORED: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "plain cluster": (_plain_cluster, "names ['openai'] itself"),
    "weighted clusters": (lambda c: _route(c).update(route={"weighted_clusters": {"clusters": [
        {"name": "openai", "weight": 1}]}}), "names ['openai'] itself"),
    "client's header chooses": (lambda c: _route(c)["route"].update(
        cluster_header="x-upstream"), "lets x-upstream choose"),
    "plugin chooses": (lambda c: _route(c).update(route={"cluster_specifier_plugin": "p"}),
        "lets a plugin choose"),
    "plain cluster, ext_proc gone": (_no_ext_proc_and_plain_cluster, "no ext_proc filter"),
    "ext_proc missing": (_filters(lambda f: f.pop(0)), "no ext_proc filter"),
    "ext_proc after the router": (_filters(lambda f: f.reverse()), "after the router"),
    "failure_mode_allow": (_set(_ext_proc, failure_mode_allow=True), "failure_mode_allow"),
    "observability_mode": (_set(_ext_proc, observability_mode=True), "observability_mode"),
    "no immediate response": (
        _set(_ext_proc, disable_immediate_response=True), "disable_immediate_response"),
    "request headers skipped": (
        _set(_ext_proc, processing_mode={"request_header_mode": "SKIP"}), "SKIP"),
    "another ext_proc server": (
        _set(_ext_proc, grpc_service={"envoy_grpc": {"cluster_name": "other"}}), "talks to other"),
    "filter disabled": (_filters(lambda f: f[0].update(disabled=True)), "disabled by default"),
    "filter from ECDS": (_filters(lambda f: f[0].update(config_discovery={})), "ECDS"),
    "per-route disabled": (
        _per_route("route", {"@type": _PER_ROUTE, "disabled": True}), "disabled per route"),
    "per-vhost disabled": (
        _per_route("virtual_host", {"@type": _PER_ROUTE, "disabled": True}), "disabled per route"),
    "route-config disabled": (
        _per_route("route_config", {"@type": _PER_ROUTE, "disabled": True}), "disabled per"),
    "FilterConfig disabled": (_per_route("route", {
        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}),
        "disabled per route"),
    "per-route fail open": (_per_route("route", {"@type": _PER_ROUTE, "overrides": {
        "failure_mode_allow": True}}), "failure_mode_allow"),
    "per-route async": (_per_route("route", {"@type": _PER_ROUTE, "overrides": {
        "async_mode": True}}), "async_mode"),
    "per-route header skip": (_per_route("route", {"@type": _PER_ROUTE, "overrides": {
        "processing_mode": {"request_header_mode": "SKIP"}}}), "SKIP"),
    "per-route other server": (_per_route("route", {"@type": _PER_ROUTE, "overrides": {
        "grpc_service": {"envoy_grpc": {"cluster_name": "openai"}}}}), "talks to openai"),
    "mirror to a provider": (lambda c: _route(c)["route"].update(
        request_mirror_policies=[{"cluster": "openai"}]), "mirror to openai"),
    "tcp_proxy listener": (_extra_listener, "tcp_proxy names provider"),
    "websocket chain without ext_proc": (_upgrade_without_ext_proc, "upgrade_configs[0]"),
    "ext_authz calling a provider": (_lua_calls, "names provider cluster(s) ['openai']"),
    "routes from RDS": (lambda c: _manager(c).update(rds={}), "RDS"),
    "xDS": (lambda c: c.update(dynamic_resources={"lds_config": {}}), "dynamic_resources"),
}  # fmt: skip


def test_the_smallest_governed_gateway_passes() -> None:
    """Guards the table below: each row fails because of its own change only."""
    assert ungoverned(_bootstrap()) == []


@pytest.mark.parametrize("name", sorted(DOCTORED))
def test_a_doctored_config_is_caught(name: str) -> None:
    doctor, phrase = DOCTORED[name]
    config = _bootstrap()
    doctor(config)
    problems = ungoverned(config)
    assert any(phrase in p for p in problems), problems


def test_a_route_to_a_non_provider_cluster_needs_no_sidecar() -> None:
    config = _bootstrap()
    _route(config)["route"] = {"cluster": "envoy_admin"}
    _manager(config)["http_filters"] = [copy.deepcopy(_ROUTER)]
    assert ungoverned(config) == []


def test_doctored_shipped_configs_are_caught() -> None:
    local = json.loads(render_local(LocalEnvoy()))
    _manager(local)["http_filters"][-2]["typed_config"]["failure_mode_allow"] = True
    assert ungoverned(local) == [
        "listener 'llm' chain 0 http_filters: ext_proc failure_mode_allow: true (route "
        "llm:{'prefix': '/', 'headers': [{'name': 'x-tokengate-upstream', 'string_match': "
        "{'prefix': 'failover.'}}]})"
    ]
    failover = json.loads(render_local(LocalEnvoy()))
    cluster = next(c for c in failover["static_resources"]["clusters"]
                   if c["name"] == "failover.openai.anthropic")  # fmt: skip
    options = cluster["typed_extension_protocol_options"]
    upstream = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    upstream["http_filters"][0]["typed_config"]["failure_mode_allow"] = True
    assert ungoverned(failover) == [
        "cluster 'failover.openai.anthropic' upstream http_filters: ext_proc "
        "failure_mode_allow: true"
    ]
    del upstream["http_filters"][0]
    assert ungoverned(failover) == [
        "cluster 'failover.openai.anthropic' upstream http_filters: no ext_proc first"
    ]
    chart = envoy_bootstrap({})
    routes = _manager(chart)["route_config"]["virtual_hosts"][0]["routes"]
    routes.insert(0, {"match": {"path": "/v1/files"}, "route": {"cluster": "openai"},
                      "typed_per_filter_config": {"envoy.filters.http.ext_proc": {
                          "@type": _PER_ROUTE, "disabled": True}}})  # fmt: skip
    assert ungoverned(chart) == [
        "listener 'llm' chain 0: route llm:{'path': '/v1/files'} names ['openai'] itself",
        "listener 'llm' chain 0: route config > virtual host 'llm' > route {'path': "
        "'/v1/files'}: envoy.filters.http.ext_proc disabled per route",
    ]
