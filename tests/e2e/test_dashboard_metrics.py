"""Every metric the chart's Grafana dashboard and PrometheusRule read exists on a real
sidecar's /metrics. The real stack (Envoy, the sidecar in prometheus-client's multiprocess
mode, the mock provider) serves a plain answer, a streamed one, a stream cut by its budget
and a refusal, so that the series the panels and alerts query exist; then every expression
of the rendered dashboard and rule is parsed by a real PromQL parser (promql-parser), and
each metric name it reads must be on /metrics (a family /metrics declares counts: a
histogram by its _bucket/_sum/_count samples, a counter by its _total) or on the allow-list
of standard Kubernetes metrics below, with the labels it names."""

from __future__ import annotations

import hashlib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from extproc.dev.stack import LocalStack
from tests.e2e.harness import client, metric_value, wait_until
from tests.helm.observability import Query, all_queries, parse, reads

PRICES = Path(__file__).resolve().parents[2] / "examples" / "prices.yaml"
KEYS = {"tg-obs": ("obs", "app"), "tg-obs-tight": ("obs-tight", "batch")}
POLICIES = """
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {name: obs, namespace: obs}
spec:
  models: {allow: ["gpt-4o*"]}
  limits:
    - {name: rpm, requests: 100000, per: 1m}
    - {name: tokens-per-day, tokens: 100000000, per: 1d}
    - {name: monthly-usd, usd: 1000, per: 30d}
    - {name: inflight, concurrent: 50}
---
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {name: obs-tight, namespace: obs-tight}
spec:
  clampCompletion: false  # the stream must outgrow its reservation and be cut
  defaultMaxTokens: 10
  limits:
    - {name: small-budget, tokens: 150, per: 366d}
"""
# Metrics that are not the sidecar's: standard ones a Kubernetes cluster's Prometheus
# scrapes from elsewhere. Each is read by at least one panel or alert (checked).
STANDARD_METRICS = {
    "kube_pod_container_status_restarts_total": "kube-state-metrics",
    "container_cpu_usage_seconds_total": "cAdvisor (the kubelet's /metrics/cadvisor)",
}
# Labels Prometheus adds to every series from its scrape target (Kubernetes service
# discovery, ServiceMonitor), never on /metrics itself. `namespace` is the sidecar's own
# (honorLabels keeps it) and is checked like any other.
TARGET_LABELS = {"pod", "instance", "job", "container", "service", "endpoint"}
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "unknown": ("",),
}
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("dashboard")
    policies = root / "policies"
    policies.mkdir()
    keys = "".join(
        "---\napiVersion: tokengate.dev/v1\nkind: ApiKey\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\n"
        f"spec: {{sha256: {hashlib.sha256(key.encode()).hexdigest()}}}\n"
        for key, (namespace, name) in KEYS.items()
    )
    (policies / "policies.yaml").write_text(POLICIES + keys)
    running = LocalStack(
        policy_dir=policies,
        run_dir=root / "run",
        vocab_dir=vocab_dir,
        extra_serve_args=("--price-table", str(PRICES)),
    ).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def scraped(stack: LocalStack) -> str:
    """/metrics after a plain answer, a streamed one, a cut stream and a refusal."""
    api = client(stack, "tg-obs", "dashboard")
    api.chat.completions.create(
        model="gpt-4o", messages=HELLO,
        extra_headers={"x-mock-completion-tokens": "12"},
    )  # fmt: skip
    chunks = list(
        api.chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-mock-completion-tokens": "40", "x-mock-chunk-delay-ms": "2"},
        )
    )  # fmt: skip
    assert chunks[-1].usage is not None
    tight = client(stack, "tg-obs-tight", "dashboard")
    with pytest.raises(openai.APIError, match="small-budget"):
        for _ in tight.chat.completions.create(
            model="gpt-4o", messages=HELLO, stream=True,
            extra_headers={"x-mock-completion-tokens": "2000", "x-mock-chunk-delay-ms": "2"},
        ):  # fmt: skip
            pass
    with pytest.raises(openai.RateLimitError):
        tight.chat.completions.create(model="gpt-4o", messages=HELLO)
    # Every request counted (a stream's end is counted once Envoy closed its ext_proc stream).
    wait_until(lambda: metric_value(stack, "tokengate_requests_total", namespace="obs") == 2)
    wait_until(lambda: metric_value(stack, "tokengate_requests_total", namespace="obs-tight") == 2)
    url = f"http://127.0.0.1:{stack.ports['metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text: str = response.read().decode()
    return text


class Exposed:
    """What /metrics offers: each sample name with the label names it carries, and the
    families it declares (with their type)."""

    def __init__(self, text: str) -> None:
        self.labels: dict[str, set[str]] = {}
        self.declared: dict[str, str] = {}
        self.samples: list[tuple[str, dict[str, str]]] = []
        for family in text_string_to_metric_families(text):
            self.declared[family.name] = family.type
            for sample in family.samples:
                self.labels.setdefault(sample.name, set()).update(sample.labels)
                self.samples.append((sample.name, sample.labels))

    def has(self, name: str) -> bool:
        if name in self.labels:
            return True
        return any(
            name == family + suffix
            for family, kind in self.declared.items()
            for suffix in _SUFFIXES.get(kind, ("",))
        )

    def series(self, name: str, **labels: str) -> list[dict[str, str]]:
        return [
            got for sample, got in self.samples
            if sample == name and labels.items() <= got.items()
        ]  # fmt: skip


@pytest.fixture(scope="module")
def exposed(scraped: str) -> Exposed:
    return Exposed(scraped)


@pytest.fixture(scope="module")
def queries() -> list[Query]:
    return all_queries()


def test_every_expression_parses(queries: list[Query]) -> None:
    failures = []
    for query in queries:
        try:
            parse(query)
        except ValueError as error:
            failures.append(f"{query.where}: {error}: {query.expr}")
    assert failures == []


def test_every_metric_a_panel_or_alert_reads_exists(queries: list[Query], exposed: Exposed) -> None:
    missing = sorted(
        f"{name} (read by {query.where})"
        for query in queries
        for name in reads(query).metrics
        if not exposed.has(name) and name not in STANDARD_METRICS
    )
    assert missing == [], "\n".join(missing)
    read = {name for query in queries for name in reads(query).metrics}
    assert set(STANDARD_METRICS) <= read, "an allow-listed metric nothing reads: drop it"
    assert not any(name.startswith(("tokengate_", "gen_ai_")) for name in STANDARD_METRICS)


def test_every_label_a_panel_or_alert_names_exists(queries: list[Query], exposed: Exposed) -> None:
    """Matchers (`{namespace=~…}`) and groupings (`sum by (…)`) name labels the metrics they
    read really carry: a label spelt wrong selects nothing and never fails on its own."""
    wrong = []
    for query in queries:
        found = reads(query)
        for name, labels in found.labels.items():
            if name in STANDARD_METRICS or name not in exposed.labels:
                continue
            for label in sorted(labels - exposed.labels[name] - TARGET_LABELS):
                wrong.append(f"{query.where}: {name} has no label {label!r}")
        for grouping, names in found.groupings:
            carried = set().union(*(exposed.labels.get(n, set()) for n in names))
            if names & set(STANDARD_METRICS) or not carried:
                continue
            for label in sorted(grouping - carried - TARGET_LABELS):
                wrong.append(f"{query.where}: by ({label}) on {sorted(names)}, which lack it")
    assert wrong == [], "\n".join(wrong)


def test_the_opentelemetry_genai_metrics_are_there_as_prometheus_names_them(
    exposed: Exposed,
) -> None:
    chat = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai"}
    for token_type in ("input", "output"):
        assert exposed.series(
            "gen_ai_client_token_usage_bucket", gen_ai_token_type=token_type,
            gen_ai_request_model="gpt-4o", namespace="obs", **chat,
        )  # fmt: skip
    mini = {**chat, "gen_ai_request_model": "gpt-4o-mini"}
    assert exposed.series("gen_ai_server_time_to_first_token_seconds_count", **mini)
    assert exposed.series("gen_ai_server_time_per_output_token_seconds_count", **mini)
    assert exposed.series("gen_ai_server_request_duration_seconds_bucket", error_type="", **mini)
    failed = {
        s["error_type"] for s in exposed.series("gen_ai_server_request_duration_seconds_count")
    }
    assert {"cut", "rate_limited"} <= failed
    # The governance metrics carry namespace, key, provider and model alike.
    for name in ("tokengate_requests_total", "tokengate_tokens_total",
                 "tokengate_spend_usd_micros_total", "tokengate_refusals_total",
                 "tokengate_streams_cut_total"):  # fmt: skip
        assert {"namespace", "key", "provider", "model"} <= exposed.labels[name], name
    assert exposed.series("tokengate_streams_cut_total", namespace="obs-tight", key="batch",
                          limit="small-budget", model="gpt-4o")  # fmt: skip
    usage = exposed.series("tokengate_limit_usage_ratio", namespace="obs", limit="monthly-usd")
    assert usage and usage[0]["measure"] == "usd" and usage[0]["key"] == "-"
    assert exposed.series("tokengate_fail_mode_decisions_total", mode="open")  # at 0


def test_the_checks_above_would_catch_a_misspelt_name(exposed: Exposed) -> None:
    """Guards them: a name /metrics lacks is missing, a declared family's samples exist, a
    label a metric lacks is told apart."""
    assert not exposed.has("tokengate_token_total")
    assert not exposed.has("gen_ai_client_token_usage")  # a histogram is read by its samples
    assert exposed.has("tokengate_worker_restarts_total")  # declared; no restart happened
    assert "gen_ai_token_type" not in exposed.labels["tokengate_tokens_total"]
