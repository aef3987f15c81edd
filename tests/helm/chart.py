"""Rendering the chart with the real Helm SDK (helm-python-sdk), for the chart tests."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import helm_python
import yaml

from tests.jwt_issuer import Issuer

CHART = Path(__file__).resolve().parents[2] / "helm" / "tokengate"
NAMESPACE = "tokengate-system"
RELEASE = "tokengate"
# The Kubernetes versions every manifest is validated against: the oldest the chart
# supports (Chart.yaml kubeVersion) and a current one.
KUBE_VERSIONS = ("1.29.0", "1.34.0")

JWKS = Issuer().jwks

# One values overlay per mode/option the chart has; each is rendered, linted and validated.
MODES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "production": {
        "providers": {
            "openai": {"secretName": "openai"},
            "anthropic": {"secretName": "anthropic", "secretKey": "key"},
        },
        "quotaStore": {
            "type": "redis",
            "redis": {
                "url": "redis://redis.data.svc:6379/0",
                "passwordSecret": {"name": "redis"},
            },
        },
        "sidecar": {"workers": 2},
        "controlApi": {"tokenSecret": {"name": "tokengate-control"}},
        "quotas": {"namespaces": {"team-a": {"tokensPerMinute": 100000, "concurrent": 20}}},
    },
    "service-accounts-inline": {
        "serviceAccountTokens": {"enabled": True, "jwks": {"inline": JWKS}},
    },
    "service-accounts-remote": {
        "serviceAccountTokens": {
            "enabled": True,
            "issuer": "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE",
            "jwks": {"remoteUri": "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE/keys"},
        },
    },
    "listener-tls": {"envoy": {"tls": {"secretName": "gateway-tls"}}, "service": {"port": 443}},
    "service-monitor": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"a": "b"}}}},
    "all-namespaces": {"policyConfigMaps": {"allNamespaces": True}},
    "no-sync-no-netpol": {
        "policyConfigMaps": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "metrics": {"podAnnotations": False},
    },
    "usd-quotas": {
        "prices": [{"model": "gpt-4o*", "input": 2.5, "cachedInput": 1.25, "output": 10.0}],
        "quotas": {
            "namespaces": {
                "team-a": {"usdPerMonth": 50, "tokensPerDay": 5000000, "models": ["gpt-4o*"]},
                "team-b": {"requestsPerMinute": 60, "failMode": "open", "priority": "batch"},
            }
        },
    },
    "custom-upstream": {
        "providers": {"openai": {"host": "10.0.0.7", "port": 8080, "tls": False}},
        "envoy": {"listenPort": 8000, "probePort": 8001, "adminPort": 8002},
    },
    "tls-by-address": {
        "providers": {
            "openai": {"host": "fd00::7", "port": 8443, "tls": True},
            "anthropic": {"host": "10.0.0.8", "port": 8443, "tls": True},
        },
        "serviceAccountTokens": {
            "enabled": True,
            "issuer": "https://issuer.test",
            "jwks": {"remoteUri": "https://[fd00::9]:8443/keys"},
        },
    },
}


def merged(overlay: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    out = copy.deepcopy(base or {})
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(value, out[key])
        else:
            out[key] = copy.deepcopy(value)
    return out


def render(values: dict[str, Any]) -> dict[str, str]:
    """Template name -> rendered text (the real Helm engine, values schema included)."""
    chart = helm_python.Chart.load(CHART)
    rendered: dict[str, str] = chart.render(
        values, name=RELEASE, namespace=NAMESPACE, is_install=True
    )
    return rendered


def manifests(values: dict[str, Any]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name, text in sorted(render(values).items()):
        if name.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def mounted_policies(values: dict[str, Any], directory: Path) -> Path:
    """The sidecar's policy directory as the kubelet mounts it: the keys of the quota
    ConfigMap that the DaemonSet's `policies` volume selects."""
    docs = manifests(values)
    data = find(docs, "ConfigMap", f"{RELEASE}-quotas")["data"]
    pod = find(docs, "DaemonSet")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "policies"]
    directory.mkdir(parents=True, exist_ok=True)
    for item in volume["configMap"]["items"]:
        (directory / item["path"]).write_text(data[item["key"]])
    return directory


def envoy_bootstrap(values: dict[str, Any]) -> dict[str, Any]:
    config_map = find(manifests(values), "ConfigMap", f"{RELEASE}-envoy")
    bootstrap: dict[str, Any] = yaml.safe_load(config_map["data"]["envoy.yaml"])
    return bootstrap


# The example values shipped beside the chart (helm/tokengate/examples/), rendered like MODES.
EXAMPLES = CHART / "examples"
# Stands for the gateway key the quickstart generates into team-a's Secret; the values get
# only its sha256 (`--set-string apiKeys.team-a-quickstart.sha256=...`).
QUICKSTART_KEY = "tg-quickstart-5f0c6a1e9b2d4c7f8a3e6b1d0c9f2a7e4b5d8c1f"


def example_values(name: str) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return values


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def quickstart_values(key: str = QUICKSTART_KEY) -> dict[str, Any]:
    """quickstart-values.yaml plus the --set-string of quickstart.md."""
    overlay = {"apiKeys": {"team-a-quickstart": {"sha256": sha256_hex(key)}}}
    return merged(overlay, example_values("quickstart-values.yaml"))


MODES.update(
    {
        "gateway": example_values("gateway-values.yaml"),
        "gateway-one-replica": {
            "mode": "gateway",
            "gateway": {"replicas": 1, "autoscaling": {"enabled": False}},
        },
        "quickstart": quickstart_values(),
        "image-digests": {
            "image": {
                "tokengate": {"tag": "0.1.0-rc1", "digest": "sha256:" + "0" * 63 + "1"},
                "envoy": {"digest": "sha256:" + "e" * 64},
            }
        },
    }
)
