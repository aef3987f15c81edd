"""The chart's Grafana dashboard (a ConfigMap for Grafana's dashboard sidecar) and its
PrometheusRule alerts: off by default, rendered by the real Helm SDK when asked for, valid
manifests (kubernetes-validate for the ConfigMap, the CRD's fields for the rule, and
`kubectl apply --dry-run=client` for both), and every PromQL expression parsed by a real
PromQL parser. That every metric they read exists is tests/e2e/test_dashboard_metrics.py's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.helm import test_chart_gateway as gateway
from tests.helm.chart import (
    CHART,
    KUBE_VERSIONS,
    MODES,
    NAMESPACE,
    RELEASE,
    find,
    manifests,
    merged,
    render,
)
from tests.helm.observability import (
    OBSERVABILITY,
    all_queries,
    dashboard_queries,
    parse,
    reads,
    rendered,
    rule_queries,
)

DASHBOARD_FILE = CHART / "files" / "dashboard.json"
ALERTS = {
    "TokengateBudgetAlmostUsed", "TokengateBudgetUsedUp", "TokengateQuotaStoreDown",
    "TokengateFailOpenActive", "TokengateStreamCutSpike", "TokengateSidecarRestarting",
    "TokengateWorkerRestarting",
}  # fmt: skip
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_DURATION = {"type": "string", "pattern": "^(0|([0-9]+(ms|s|m|h|d|w|y))+)$"}
# The monitoring.coreos.com/v1 PrometheusRule fields the chart renders (a CRD: absent from
# the Kubernetes schemas); additional properties are refused, so a misspelt field fails.
PROMETHEUS_RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {
            "type": "object", "required": ["name", "namespace"], "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                           "labels": _STRINGS},
        },
        "spec": {
            "type": "object", "required": ["groups"], "additionalProperties": False,
            "properties": {"groups": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "rules": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["alert", "expr"],
                        "additionalProperties": False,
                        "properties": {
                            "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                            "expr": {"type": "string", "minLength": 1},
                            "for": _DURATION,
                            "labels": _STRINGS,
                            "annotations": _STRINGS,
                        },
                    }},
                },
            }}},
        },
    },
}  # fmt: skip


def _kinds(values: dict[str, Any]) -> set[str]:
    return {d["kind"] for d in manifests(values)}


def test_neither_is_rendered_by_default() -> None:
    docs = manifests({})
    assert "PrometheusRule" not in {d["kind"] for d in docs}
    assert not [d for d in docs if "grafana_dashboard" in d["metadata"].get("labels", {})]


def test_the_dashboard_config_map_carries_the_sidecar_label_and_the_file() -> None:
    docs = manifests(OBSERVABILITY)
    config_map = find(docs, "ConfigMap", f"{RELEASE}-dashboard")
    labels = config_map["metadata"]["labels"]
    assert labels["grafana_dashboard"] == "1"
    assert labels["team"] == "platform"
    assert labels["app.kubernetes.io/instance"] == RELEASE
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    assert config_map["metadata"]["namespace"] == NAMESPACE
    (name,) = config_map["data"]
    assert name.endswith(".json")
    assert json.loads(config_map["data"][name]) == json.loads(DASHBOARD_FILE.read_text())
    for kube_version in KUBE_VERSIONS:
        kubernetes_validate.validate(config_map, kube_version, strict=True)


def test_the_dashboard_is_well_formed() -> None:
    """What Grafana needs to import it: unique panel ids inside a 24-column grid, every query
    on the selectable Prometheus data source, and the sections the issue asks for."""
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    assert dashboard["uid"] == "tokengate"
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]
            assert panel.get("description"), panel["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "key", "model", "pod"} <= set(variables)
    text = json.dumps(dashboard)
    for metric in ("tokengate_spend_usd_micros_total", "tokengate_tokens_total",
                   "tokengate_refusals_total", "tokengate_streams_cut_total",
                   "gen_ai_server_time_to_first_token_seconds_bucket",
                   "gen_ai_server_request_duration_seconds_bucket",
                   "tokengate_quota_store_up", "container_cpu_usage_seconds_total"):  # fmt: skip
        assert metric in text


def test_the_rule_has_every_alert_and_is_a_valid_prometheus_rule() -> None:
    rule = find(manifests(OBSERVABILITY), "PrometheusRule")
    jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert {a["alert"] for a in alerts} == ALERTS
    for alert in alerts:
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert alert["labels"]["team"] == "platform"
        assert alert["annotations"]["summary"]
        # Helm left Prometheus's own template syntax for it to fill in.
        assert (
            "{{ $labels." in alert["annotations"]["description"]
            or "$value" in (alert["annotations"]["description"])
        )


def test_the_validator_refuses_a_misspelt_rule() -> None:
    rule = find(manifests(OBSERVABILITY), "PrometheusRule")
    rule["spec"]["groups"][0]["rules"][0]["exprr"] = "up"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)


def test_every_expression_parses_with_a_real_promql_parser() -> None:
    queries = all_queries()
    assert len(queries) > 30
    failures = []
    for query in queries:
        try:
            parse(query)
        except ValueError as error:
            failures.append(f"{query.where}: {error}: {query.expr}")
    assert failures == []


def test_the_parser_refuses_broken_promql() -> None:
    """Guards the test above: the parser is strict, not a tokenizer."""
    dashboard, rule = rendered()
    (query, *_) = dashboard_queries(dashboard)
    broken = type(query)(query.where, query.promql.replace(")", "", 1))
    with pytest.raises(ValueError, match="parenthesis"):
        parse(broken)
    with pytest.raises(ValueError):
        parse(type(query)("x", "sum by (namespace) rate(tokengate_tokens_total[5m])"))
    assert rule_queries(rule)


def test_alert_thresholds_come_from_the_values() -> None:
    values = merged(
        {"alerts": {"budget": {"warningRatio": 0.7, "activeWithin": "2h"},
                    "streamCuts": {"ratio": 0.1, "minimum": 9}, "storeDownFor": "3m"}},
        OBSERVABILITY,
    )  # fmt: skip
    rule = find(manifests(values), "PrometheusRule")
    by_name = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    warning = by_name["TokengateBudgetAlmostUsed"]["expr"]
    assert ">= 0.7 < 1" in warning
    assert "increase(tokengate_requests_total[2h])" in warning
    assert "70 %" in by_name["TokengateBudgetAlmostUsed"]["annotations"]["summary"]
    cuts = by_name["TokengateStreamCutSpike"]["expr"]
    assert "> 0.1" in cuts
    assert ">= 9" in cuts
    assert by_name["TokengateQuotaStoreDown"]["for"] == "3m"
    restarts = reads(next(q for q in rule_queries(rule) if "SidecarRestarting" in q.where))
    assert restarts.metrics == {"kube_pod_container_status_restarts_total"}
    restart_expr = by_name["TokengateSidecarRestarting"]["expr"]
    assert f'namespace="{NAMESPACE}"' in restart_expr
    assert f'pod=~"{RELEASE}-.*"' in restart_expr


def test_the_service_monitor_keeps_the_callers_namespace_label() -> None:
    """The sidecar's `namespace` label is the caller's: with honorLabels Prometheus keeps it
    instead of renaming it exported_namespace, which every dashboard query would miss."""
    monitor = find(manifests(MODES["service-monitor"]), "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    off = {"metrics": {"serviceMonitor": {"enabled": True, "honorLabels": False}}}
    assert find(manifests(off), "ServiceMonitor")["spec"]["endpoints"][0]["honorLabels"] is False


@pytest.mark.parametrize(
    ("values", "at"),
    [
        ({"dashboard": {"enabled": "yes"}}, "/dashboard/enabled"),
        ({"dashboard": {"labels": {"grafana_dashboard": 1}}},
         "/dashboard/labels/grafana_dashboard"),
        ({"dashboard": {"folder": "x"}}, "/dashboard"),
        ({"alerts": {"budget": {"warningRatio": 80}}}, "/alerts/budget/warningRatio"),
        ({"alerts": {"budget": {"activeWithin": "1 hour"}}}, "/alerts/budget/activeWithin"),
        ({"alerts": {"streamCuts": {"minimum": 0}}}, "/alerts/streamCuts/minimum"),
        ({"alerts": {"storeDownFor": "soon"}}, "/alerts/storeDownFor"),
        ({"alerts": {"ruleLabels": {"page": True}}}, "/alerts/ruleLabels/page"),
        ({"metrics": {"serviceMonitor": {"honorLabels": "true"}}},
         "/metrics/serviceMonitor/honorLabels"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_naming_the_field(values: dict[str, Any], at: str) -> None:
    with pytest.raises(helm_python.HelmError) as refused:
        render(values)
    assert f"at '{at}'" in str(refused.value)


def test_helm_lint_is_clean_with_both() -> None:
    for kube_version in KUBE_VERSIONS:
        report = helm_python.lint(CHART, OBSERVABILITY, strict=True, namespace=NAMESPACE,
                                  kube_version=f"v{kube_version}")  # fmt: skip
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] > 1] == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_kubectl_dry_run_accepts_both(
    kube_version: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the same fake API server as every other manifest (test_chart_gateway), whose
    discovery then also serves the Prometheus operator's PrometheusRule CRD."""
    monitoring = ("monitoring.coreos.com", "v1")
    monkeypatch.setitem(gateway.CRDS, monitoring, gateway.CRDS[monitoring] | {"PrometheusRule"})
    values = merged({"metrics": {"serviceMonitor": {"enabled": True}}}, OBSERVABILITY)
    text = "".join(
        f"---\n# Source: {name}\n{body}\n"
        for name, body in sorted(render(values).items())
        if not name.endswith("NOTES.txt")
    )
    run = gateway.kubectl_dry_run(text, tmp_path, kube_version)
    assert run.returncode == 0, run.stderr
    out = set(run.stdout.splitlines())
    assert f"prometheusrule.monitoring.coreos.com/{RELEASE} created (dry run)" in out
    assert f"configmap/{RELEASE}-dashboard created (dry run)" in out
    assert len(out) == len(manifests(values))
    rule_path = f"/apis/monitoring.coreos.com/v1/namespaces/{NAMESPACE}/prometheusrules/{RELEASE}"
    assert rule_path in run.lookups


def test_kubectl_dry_run_refuses_a_rule_without_the_crd(tmp_path: Path) -> None:
    """Guards the test above: without the CRD in discovery kubectl cannot map the kind."""
    text = "---\n" + yaml.safe_dump(find(manifests(OBSERVABILITY), "PrometheusRule"))
    run = gateway.kubectl_dry_run(text, tmp_path, KUBE_VERSIONS[-1])
    assert run.returncode != 0
    assert 'no matches for kind "PrometheusRule"' in run.stderr
