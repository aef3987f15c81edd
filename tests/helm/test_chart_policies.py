"""Quotas from values become QuotaPolicy documents that tokengate's own loader accepts with
the intended limits; bad quota values are refused by the schema, naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from extproc.policy import load_directory
from extproc.policy.model import Algorithm, FailMode, Measure, Priority
from extproc.policy.prices import load_price_table
from tests.helm.chart import (
    KUBE_VERSIONS,
    MODES,
    RELEASE,
    find,
    manifests,
    mounted_policies,
    render,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "kubernetes"


def test_quotas_from_values_load_with_the_expected_limits(tmp_path: Path) -> None:
    values = MODES["usd-quotas"]
    price_file = tmp_path / "prices.yaml"  # its own volume, beside the policy directory
    price_file.write_text(
        find(manifests(values), "ConfigMap", f"{RELEASE}-quotas")["data"]["prices.yaml"]
    )
    prices = load_price_table(price_file)
    snapshot = load_directory(mounted_policies(values, tmp_path / "cm"), allow_usd=True)
    assert set(snapshot.policies) == {"team-a", "team-b"}
    team_a = snapshot.policies["team-a"]
    limits = {limit.name: limit for limit in team_a.limits}
    assert set(limits) == {"tokens-per-day", "usd-per-month"}
    assert (limits["tokens-per-day"].measure, limits["tokens-per-day"].amount) == (
        Measure.TOKENS,
        5_000_000,
    )
    assert limits["tokens-per-day"].algorithm is Algorithm.CALENDAR
    assert limits["usd-per-month"].measure is Measure.USD
    assert limits["usd-per-month"].months == 1
    assert team_a.model_patterns == ("gpt-4o*",)
    team_b = snapshot.policies["team-b"]
    assert [(x.name, x.amount, x.period_s) for x in team_b.limits] == [
        ("requests-per-minute", 60, 60)
    ]
    assert (team_b.fail_mode, team_b.priority) == (FailMode.OPEN, Priority.BATCH)
    assert prices.price_for("gpt-4o-mini") is not None


def test_every_shorthand_and_raw_limits_render_to_loadable_limits(tmp_path: Path) -> None:
    quota = {
        "requestsPerMinute": 1, "requestsPerDay": 2, "tokensPerMinute": 3, "tokensPerHour": 4,
        "tokensPerDay": 5, "tokensPerMonth": 6, "concurrent": 7, "timeZone": "Europe/Berlin",
        "defaultMaxTokens": 256, "streamReserveTokens": 64,
        "limits": [{"name": "burst", "tokens": 8, "per": "10s", "algorithm": "sliding"}],
    }  # fmt: skip
    values = {"quotas": {"namespaces": {"team-c": quota}}}
    snapshot = load_directory(mounted_policies(values, tmp_path / "cm"))
    policy = snapshot.policies["team-c"]
    assert {x.name: x.amount for x in policy.limits} == {
        "requests-per-minute": 1, "requests-per-day": 2, "tokens-per-minute": 3,
        "tokens-per-hour": 4, "tokens-per-day": 5, "tokens-per-month": 6, "concurrent": 7,
        "burst": 8,
    }  # fmt: skip
    assert (policy.time_zone, policy.default_max_tokens) == ("Europe/Berlin", 256)
    assert policy.stream_reserve_tokens == 64


def test_routes_from_values_load_as_cluster_wide_routes(tmp_path: Path) -> None:
    routes = [
        {"name": "models", "methods": ["GET"], "path": "/v1/models", "provider": "openai",
         "limits": [{"name": "models-rpm", "requests": 60, "per": "1m"}]},
        {"name": "team-files", "methods": ["GET", "DELETE"], "path": "/v1/files/*",
         "provider": "openai", "namespaces": ["team-a"]},
    ]  # fmt: skip
    values = {"quotas": {"namespaces": {"team-a": {"concurrent": 2}}, "routes": routes}}
    snapshot = load_directory(mounted_policies(values, tmp_path / "cm"))
    models, files = snapshot.routes
    assert (models.namespace, models.namespaces, models.path) == (None, ("*",), "/v1/models")
    assert [limit.name for limit in models.limits] == ["models-rpm"]
    assert (files.methods, files.namespaces) == (("GET", "DELETE"), ("team-a",))


def test_a_route_value_the_schema_refuses_names_the_field() -> None:
    route = {"name": "models", "methods": ["get"], "path": "/v1/models", "provider": "openai"}
    with pytest.raises(helm_python.HelmError) as refused:
        render({"quotas": {"routes": [route]}})
    assert "at '/quotas/routes/0/methods/0'" in str(refused.value)


def test_no_namespaces_renders_an_empty_but_loadable_policy_file(tmp_path: Path) -> None:
    assert load_directory(mounted_policies({}, tmp_path / "cm")).policies == {}


@pytest.mark.parametrize(
    ("quota", "field", "problem"),
    [
        ({"tokensPerMinute": 0}, "/quotas/namespaces/team-a/tokensPerMinute", "minimum"),
        ({"tokensPerMinute": "lots"}, "/quotas/namespaces/team-a/tokensPerMinute", "want integer"),
        ({"requestsPerMinute": 1.5}, "/quotas/namespaces/team-a/requestsPerMinute", "integer"),
        ({"tokensPerMinut": 5}, "/quotas/namespaces/team-a", "'tokensPerMinut' not allowed"),
        ({"usdPerMonth": -1}, "/quotas/namespaces/team-a/usdPerMonth", "exclusiveMinimum"),
        ({"concurrent": 1, "failMode": "maybe"}, "/quotas/namespaces/team-a/failMode", "value"),
        ({"concurrent": 1, "models": []}, "/quotas/namespaces/team-a/models", "minItems"),
        ({"models": ["gpt-4o"]}, "/quotas/namespaces/team-a", "missing property"),
    ],
)
def test_bad_quota_values_are_refused_naming_the_field(
    quota: dict[str, Any], field: str, problem: str
) -> None:
    with pytest.raises(helm_python.HelmError) as refused:
        render({"quotas": {"namespaces": {"team-a": quota}}})
    message = str(refused.value)
    assert f"at '{field}'" in message
    assert problem in message


def test_a_namespace_name_kubernetes_would_refuse_is_refused() -> None:
    with pytest.raises(helm_python.HelmError, match="'Team_A'"):
        render({"quotas": {"namespaces": {"Team_A": {"concurrent": 1}}}})


def test_usd_quotas_without_prices_name_the_namespace() -> None:
    with pytest.raises(helm_python.HelmError, match=r"quotas\.namespaces\.team-a: usd limits"):
        render({"quotas": {"namespaces": {"team-a": {"usdPerMonth": 5}}}})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"quotaStore": {"type": "redis"}}, "at '/quotaStore/redis/url'"),
        ({"sidecar": {"workers": 2}}, "at '/quotaStore/type'"),
        ({"serviceAccountTokens": {"enabled": True}}, "at '/serviceAccountTokens/jwks"),
        ({"providers": {"openai": {"apiKey": "sk-x"}}}, "'apiKey' not allowed"),
        ({"envoy": {"routeTimeout": "10m"}}, "at '/envoy/routeTimeout'"),
    ],
)
def test_other_bad_values_are_refused_naming_the_field(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm_python.HelmError) as refused:
        render(values)
    assert message in str(refused.value)


def test_example_team_policy_config_map_is_valid_and_loads(tmp_path: Path) -> None:
    config_map = yaml.safe_load((EXAMPLES / "team-b-policy.yaml").read_text())
    kubernetes_validate.validate(config_map, KUBE_VERSIONS[0], strict=True)
    assert config_map["metadata"]["labels"] == {"tokengate.dev/policy": "true"}
    for key, text in config_map["data"].items():
        (tmp_path / key).write_text(text)
    snapshot = load_directory(tmp_path)
    assert {x.name for x in snapshot.policies["team-b"].limits} == {
        "rpm", "tpm", "daily", "inflight"
    }  # fmt: skip
    assert [k.name for k in snapshot.keys_by_sha256.values()] == ["nightly-batch"]


def test_example_app_deployment_is_valid_kubernetes() -> None:
    docs = list(yaml.safe_load_all((EXAMPLES / "app-deployment.yaml").read_text()))
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSIONS[-1], strict=True)
    volume = docs[1]["spec"]["template"]["spec"]["volumes"][0]
    audience = volume["projected"]["sources"][0]["serviceAccountToken"]["audience"]
    chart_values = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "helm/tokengate/values.yaml").read_text()
    )
    assert audience in chart_values["serviceAccountTokens"]["audiences"]
