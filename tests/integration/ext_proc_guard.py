"""Can anything reach a provider without passing the sidecar? A check of a rendered Envoy
bootstrap (local or Helm), by reading it the way Envoy would.

A provider cluster is any cluster not named in `NOT_PROVIDERS`, so a cluster added later is
guarded until someone says it is not a provider. Only the sidecar chooses a provider (by the
routing header it sets), so a route may reach one only through that header, and its
connection manager needs an ext_proc filter talking to the sidecar, before the router,
failing closed, asked for request headers, and not disabled, skipped or made asynchronous
by any per-route override. No other filter or network filter may name a provider cluster.
A model route's failover cluster must run the sidecar's upstream phase, failing closed,
before anything else on every attempt. Anything this check cannot see through (xDS, RDS,
ECDS) counts as a problem too."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

SIDECAR_CLUSTER = "tokengate_ext_proc"
ROUTING_HEADER = "x-tokengate-upstream"  # set by the sidecar on every request it lets through
NOT_PROVIDERS = frozenset({SIDECAR_CLUSTER, "envoy_admin", "jwks"})
EXT_PROC = "envoy.filters.http.ext_proc"
ROUTER = "envoy.filters.http.router"
HCM = "envoy.filters.network.http_connection_manager"
_TYPE_PREFIX = "type.googleapis.com/"
_EXT_PROC_PACKAGE = "envoy.extensions.filters.http.ext_proc."
_EXT_PROC_TYPE = _EXT_PROC_PACKAGE + "v3.ExternalProcessor"
_ROUTER_TYPE = "envoy.extensions.filters.http.router.v3.Router"
_HCM_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def ungoverned(bootstrap: dict[str, Any]) -> list[str]:
    """Every way a request could reach a provider cluster without the sidecar; [] if none."""
    problems: list[str] = []
    if bootstrap.get("dynamic_resources"):
        problems.append("dynamic_resources: xDS may add listeners or routes not checked here")
    resources = bootstrap.get("static_resources", {})
    providers = {c["name"] for c in resources.get("clusters", [])} - NOT_PROVIDERS
    for listener in resources.get("listeners", []):
        chains = [*listener.get("filter_chains", []), listener.get("default_filter_chain")]
        for index, chain in enumerate(c for c in chains if c):
            where = f"listener {listener.get('name')!r} chain {index}"
            for network_filter in chain.get("filters", []):
                problems += _network_filter(network_filter, where, providers)
    for cluster in resources.get("clusters", []):
        problems += _upstream_phase(cluster)
    return problems


def _upstream_phase(cluster: dict[str, Any]) -> list[str]:
    """A model route's failover cluster must send every attempt through the sidecar's
    upstream phase (which sets that backend's credential and body), failing closed."""
    if cluster.get("cluster_type", {}).get("name") != "envoy.clusters.composite":
        return []
    options = cluster.get("typed_extension_protocol_options", {}).get(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions", {}
    )
    filters = options.get("http_filters", [])
    where = f"cluster {cluster.get('name')!r} upstream http_filters"
    if not filters or not _is(filters[0], EXT_PROC, _EXT_PROC_TYPE):
        return [f"{where}: no ext_proc first"]
    return [f"{where}: {p}" for p in _ext_proc_settings(filters[0]["typed_config"], "ext_proc")]


def _type_of(config: dict[str, Any]) -> str:
    return str(config.get("@type", "")).removeprefix(_TYPE_PREFIX)


def _kind(entry: dict[str, Any]) -> str:
    """A filter's type: its typed_config's @type, else its name."""
    return _type_of(entry.get("typed_config", {})) or str(entry.get("name", ""))


def _is(entry: dict[str, Any], name: str, type_name: str) -> bool:
    return entry.get("name") == name or _kind(entry) == type_name


def _network_filter(entry: dict[str, Any], where: str, providers: set[str]) -> list[str]:
    if not _is(entry, HCM, _HCM_TYPE):
        named = _mentioned(entry, providers)
        return [f"{where}: {_kind(entry)} names provider cluster(s) {named}"] if named else []
    manager = entry.get("typed_config", {})
    if "rds" in manager or "scoped_routes" in manager:
        return [f"{where}: routes come from RDS/SRDS and cannot be checked"]
    found = list(_reaching_routes(manager.get("route_config", {}), providers))
    problems = [f"{where}: {problem}" for _, problem in found if problem]
    reach = [route for route, _ in found]
    chains = [("http_filters", manager.get("http_filters", []))]
    chains += [
        (f"upgrade_configs[{i}] ({u.get('upgrade_type')})", u["filters"])
        for i, u in enumerate(manager.get("upgrade_configs", []))
        if u.get("filters")
    ]
    for label, filters in chains:
        problems += [f"{where} {label}: {p}" for p in _other_filters(filters, providers)]
        if reach:
            problems += [f"{where} {label}: {p} (route {reach[0]})" for p in _governed(filters)]
    if reach:
        names = {
            str(f.get("name"))
            for _, filters in chains
            for f in filters
            if _is(f, EXT_PROC, _EXT_PROC_TYPE)
        }
        route_config = manager.get("route_config", {})
        problems += [f"{where}: {p}" for p in _overrides(route_config, names | {EXT_PROC})]
    return problems


def _reaching_routes(
    route_config: dict[str, Any], providers: set[str]
) -> Iterator[tuple[str, str | None]]:
    """(route, problem or None) for each route that can forward to a provider. Only the
    sidecar chooses the provider (it sets ROUTING_HEADER with the credential it injects), so
    a route that names one itself, or lets another header or a plugin choose, is a problem
    even behind ext_proc: a key could go to the wrong provider. So is a mirror to one: the
    copy is never counted."""
    for host in route_config.get("virtual_hosts", []):
        for route in host.get("routes", []):
            action = route.get("route")
            if action is None:
                continue  # direct_response, redirect, filter_action: nothing forwarded
            label = f"{host.get('name')}:{route.get('match')}"
            for mirror in action.get("request_mirror_policies", []):
                if mirror.get("cluster") in providers or "cluster_header" in mirror:
                    yield label, f"mirror to {mirror.get('cluster') or 'a header'} from {label}"
            named = {action.get("cluster")} | {
                c.get("name") for c in action.get("weighted_clusters", {}).get("clusters", [])
            }
            if named & providers:
                yield label, f"route {label} names {sorted(named & providers)} itself"
            chooser = action.get("cluster_header") or (
                "a plugin"
                if {"cluster_specifier_plugin", "inline_cluster_specifier_plugin"} & action.keys()
                else None
            )
            if chooser == ROUTING_HEADER:
                yield label, None
            elif chooser is not None:
                yield label, f"route {label} lets {chooser} choose the cluster, not the sidecar"


def _governed(filters: list[dict[str, Any]]) -> list[str]:
    """What keeps this filter chain from governing every request; [] when it does."""
    routers = [i for i, f in enumerate(filters) if _is(f, ROUTER, _ROUTER_TYPE)]
    end = routers[0] if routers else len(filters)
    before = [f for f in filters[:end] if _is(f, EXT_PROC, _EXT_PROC_TYPE)]
    if not before:
        after = any(_is(f, EXT_PROC, _EXT_PROC_TYPE) for f in filters[end:])
        return ["ext_proc placed after the router" if after else "no ext_proc filter"]
    problems: list[str] = []
    for entry in before:
        if "config_discovery" in entry:
            problems.append("ext_proc config comes from ECDS and cannot be checked")
        if entry.get("disabled"):
            problems.append("ext_proc disabled by default (HttpFilter.disabled)")
        problems += _ext_proc_settings(entry.get("typed_config", {}), "ext_proc")
    return problems


def _ext_proc_settings(config: dict[str, Any], label: str) -> list[str]:
    problems = []
    for flag in (
        "failure_mode_allow", "observability_mode", "disable_immediate_response", "async_mode"
    ):  # fmt: skip
        if config.get(flag) in (True, "true"):
            problems.append(f"{label} {flag}: true")
    if config.get("processing_mode", {}).get("request_header_mode") == "SKIP":
        problems.append(f"{label} request_header_mode: SKIP")
    if "http_service" in config:
        problems.append(f"{label} http_service instead of the sidecar's gRPC")
    service = config.get("grpc_service")
    if service is not None:
        cluster = service.get("envoy_grpc", {}).get("cluster_name")
        if cluster != SIDECAR_CLUSTER:
            problems.append(f"{label} talks to {cluster or 'google_grpc'}, not {SIDECAR_CLUSTER}")
    elif label == "ext_proc":
        problems.append("ext_proc has no grpc_service")
    return problems


def _overrides(route_config: dict[str, Any], names: set[str]) -> Iterator[str]:
    """Per-route ext_proc settings anywhere in the route table (route config, virtual host,
    route, weighted cluster) that switch it off or weaken it. `names`: the ext_proc filters'
    names, which is how per-route configs refer to them."""
    for owner, name, value in _per_filter_configs(route_config):
        config = value
        if _type_of(value) == "envoy.config.route.v3.FilterConfig":
            config = value.get("config", {})
        if name not in names and not _type_of(config).startswith(_EXT_PROC_PACKAGE):
            continue
        if value.get("disabled") or config.get("disabled"):
            yield f"{owner}: {name} disabled per route"
        for problem in _ext_proc_settings(config.get("overrides", {}), "ExtProcPerRoute"):
            yield f"{owner}: {problem}"


def _per_filter_configs(node: Any, owner: str = "route config") -> Iterator[tuple[str, str, Any]]:
    if isinstance(node, list):
        for child in node:
            yield from _per_filter_configs(child, owner)
        return
    if not isinstance(node, dict):
        return
    if "domains" in node:
        owner = f"{owner} > virtual host {node.get('name')!r}"
    elif "match" in node:
        owner = f"{owner} > route {node['match']}"
    for name, value in node.get("typed_per_filter_config", {}).items():
        yield owner, name, value
    for key, child in node.items():
        if key != "typed_per_filter_config":
            yield from _per_filter_configs(child, owner)


def _other_filters(filters: list[dict[str, Any]], providers: set[str]) -> Iterator[str]:
    """Filters that can call a cluster themselves (ext_authz, lua, a second ext_proc…) must
    not name a provider: their call would carry the client's request with no governance."""
    for entry in filters:
        if _is(entry, ROUTER, _ROUTER_TYPE):
            continue
        named = _mentioned(entry, providers)
        if named:
            yield f"{entry.get('name')} names provider cluster(s) {named}"


def _mentioned(node: Any, providers: set[str]) -> list[str]:
    if isinstance(node, str):
        return [node] if node in providers else []
    values = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    return sorted({name for child in values for name in _mentioned(child, providers)})
