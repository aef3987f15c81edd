"""The chart's Grafana dashboard and PrometheusRule as queries: every PromQL expression they
hold, parsed by a real PromQL parser (promql-parser: the Rust `promql-parser` crate that
GreptimeDB uses, through pyo3), and the metric and label names each one reads. Shared by the
chart test (every expression parses) and the e2e test (every metric read exists on a real
sidecar's /metrics)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import promql_parser
import yaml

from tests.helm.chart import RELEASE, render

# Grafana's built-in interval variables, as a PromQL duration; every other `$var` or
# `${var}` (the dashboard's own variables, only ever used in a label matcher's value) as a
# regex that matches anything.
_GRAFANA_INTERVALS = re.compile(
    r"\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval|__range)\}"
)
_GRAFANA_VARIABLES = re.compile(r"\$\{?\w+\}?")
_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")

# Both the dashboard and the rules turned on, with every option they have.
OBSERVABILITY = {
    "dashboard": {"enabled": True, "labels": {"team": "platform"},
                  "annotations": {"grafana_folder": "LLM"}},
    "alerts": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
               "ruleLabels": {"team": "platform"}},
}  # fmt: skip


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it comes from (a panel, a variable, an alert)."""

    where: str
    promql: str  # as written, Grafana variables included
    # For a `label_values(selector, label)` variable: the label it lists.
    lists_label: str | None = None

    @property
    def expr(self) -> str:
        """The expression as Prometheus receives it once Grafana has filled in variables."""
        text = _GRAFANA_INTERVALS.sub("5m", self.promql)
        return _GRAFANA_VARIABLES.sub(".*", text)


@dataclass
class Reads:
    """The metric names one expression reads, the labels it names on each, and the labels
    each `by (...)` groups on with the metrics below it."""

    metrics: set[str] = field(default_factory=set)
    labels: dict[str, set[str]] = field(default_factory=dict)  # metric -> matcher labels
    groupings: list[tuple[set[str], set[str]]] = field(default_factory=list)  # labels, metrics


def parse(query: Query) -> promql_parser.Expr:
    """Raises ValueError (the parser's message) for an expression Prometheus would refuse."""
    return promql_parser.parse(query.expr)


def reads(query: Query) -> Reads:
    found = Reads()

    def selectors_below(node: promql_parser.Expr) -> set[str]:
        names: set[str] = set()

        def visit(inner: promql_parser.Expr) -> None:
            if isinstance(inner, promql_parser.VectorSelector):
                names.add(_metric_name(inner))

        promql_parser.walk(node, pre_visit=visit)
        return names

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            name = _metric_name(node)
            found.metrics.add(name)
            labels = {m.name for m in node.matchers.matchers if m.name != "__name__"}
            found.labels.setdefault(name, set()).update(labels)
        elif isinstance(node, promql_parser.AggregateExpr):
            modifier = node.modifier
            if modifier is not None and modifier.type == promql_parser.AggModifierType.By:
                found.groupings.append((set(modifier.labels), selectors_below(node)))

    promql_parser.walk(parse(query), pre_visit=visit)
    if query.lists_label is not None:
        for name in found.metrics:
            found.labels[name].add(query.lists_label)
    return found


def _metric_name(selector: promql_parser.VectorSelector) -> str:
    if selector.name:
        return str(selector.name)
    by_name = [m.value for m in selector.matchers.matchers if m.name == "__name__"]
    assert by_name, f"a selector without a metric name: {selector}"
    return str(by_name[0])


def dashboard_queries(dashboard: dict[str, Any]) -> list[Query]:
    """Every panel target's expression and every query variable's selector."""
    queries: list[Query] = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))  # a collapsed row holds its panels
        for target in panel.get("targets", []):
            queries.append(Query(f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        text = variable["query"]
        text = text["query"] if isinstance(text, dict) else text
        match = _LABEL_VALUES.match(text.strip())
        assert match, f"variable {variable['name']}: not a label_values() query: {text}"
        if match["selector"]:
            queries.append(Query(f"variable {variable['name']}", match["selector"], match["label"]))
    return queries


def rule_queries(rule: dict[str, Any]) -> list[Query]:
    return [
        Query(f"alert {r.get('alert') or r.get('record')}", r["expr"])
        for group in rule["spec"]["groups"]
        for r in group["rules"]
    ]


def rendered(values: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The dashboard (from its ConfigMap) and the PrometheusRule, as the chart renders them."""
    out = render(values if values is not None else OBSERVABILITY)
    config_map = yaml.safe_load(out[f"{RELEASE}/templates/dashboard.yaml"])
    rule = yaml.safe_load(out[f"{RELEASE}/templates/prometheusrule.yaml"])
    return json.loads(config_map["data"]["tokengate.json"]), rule


def all_queries(values: dict[str, Any] | None = None) -> list[Query]:
    dashboard, rule = rendered(values)
    return dashboard_queries(dashboard) + rule_queries(rule)
