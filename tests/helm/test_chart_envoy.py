"""The chart's Envoy bootstrap: accepted by the real Envoy for every mode, and the same as
the one the local stack and the e2e tests run (extproc/kube/envoy_config.py), so what the e2e
tests prove holds for the chart."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import helm_python
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from extproc.kube.envoy_config import (
    CHART_FAILOVER,
    CHART_MAPPERS,
    LocalEnvoy,
    ServiceAccountTokens,
    Upstream,
    chart_failover_text,
    chart_mappers_text,
    render_local,
)
from tests.envoy_check import envoy_validate
from tests.helm.chart import JWKS, MODES, envoy_bootstrap, merged


def _self_signed(directory: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokengate.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.mark.parametrize("mode", sorted(MODES))
def test_real_envoy_accepts_the_chart_config(mode: str, tmp_path: Path) -> None:
    config = json.dumps(envoy_bootstrap(MODES[mode]))
    if "/etc/envoy/tls/" in config:
        # The pod mounts the listener's Secret there; here, a certificate made for the test.
        _self_signed(tmp_path)
        config = config.replace("/etc/envoy/tls/", f"{tmp_path}/")
    envoy_validate(config, tmp_path)


def test_real_envoy_refuses_a_broken_chart_config(tmp_path: Path) -> None:
    """Guards the test above: validation must be able to fail."""
    bootstrap = envoy_bootstrap({})
    bootstrap["static_resources"]["clusters"][0]["type"] = "NOT_A_TYPE"
    with pytest.raises(AssertionError):
        envoy_validate(json.dumps(bootstrap), tmp_path)


def test_chart_reply_mappers_are_generated_from_python() -> None:
    assert CHART_MAPPERS.read_text() == chart_mappers_text(), (
        "helm/tokengate/files/local-reply-mappers.json is stale: run `make chart-files`"
    )


def test_chart_failover_clusters_are_generated_from_python() -> None:
    assert CHART_FAILOVER.read_text() == chart_failover_text(), (
        "helm/tokengate/files/failover.json is stale: run `make chart-files`"
    )


# The same gateway described twice: as LocalEnvoy (the local stack, e2e tests) and as
# chart values. Only what a pod needs and a laptop does not may differ (see _chart_only).
_PAIRS: dict[str, tuple[LocalEnvoy, dict[str, Any]]] = {
    "providers-over-tls": (LocalEnvoy(listen_port=10000, admin_port=9901), {}),
    "mock-upstream-service-accounts": (
        LocalEnvoy(
            listen_port=10000,
            admin_port=9901,
            openai=Upstream.local(8000),
            anthropic=Upstream.local(8000),
            service_accounts=ServiceAccountTokens(
                issuer="https://issuer.test", audiences=("tokengate", "other"), jwks=JWKS
            ),
        ),
        {
            "providers": {
                "openai": {"host": "127.0.0.1", "port": 8000, "tls": False},
                "anthropic": {"host": "127.0.0.1", "port": 8000, "tls": False},
            },
            "serviceAccountTokens": {
                "enabled": True,
                "issuer": "https://issuer.test",
                "audiences": ["tokengate", "other"],
                "jwks": {"inline": JWKS},
            },
        },
    ),
    "tls-by-address": (
        LocalEnvoy(
            listen_port=10000,
            admin_port=9901,
            openai=Upstream.from_url("https://[fd00::7]:8443", what="openai"),
            anthropic=Upstream.from_url("https://10.0.0.8:8443", what="anthropic"),
        ),
        {
            "providers": {
                "openai": {"host": "fd00::7", "port": 8443, "tls": True},
                "anthropic": {"host": "10.0.0.8", "port": 8443, "tls": True},
            }
        },
    ),
}


def _chart_only(bootstrap: dict[str, Any]) -> dict[str, Any]:
    """Drop what only the pod has: the kubelet's probe listener and its admin cluster, and
    the listener's address (all interfaces in a pod, loopback on a laptop)."""
    resources = bootstrap["static_resources"]
    resources["listeners"] = [x for x in resources["listeners"] if x["name"] != "probe"]
    resources["clusters"] = [c for c in resources["clusters"] if c["name"] != "envoy_admin"]
    resources["listeners"][0]["address"]["socket_address"]["address"] = "<any>"
    return bootstrap


@pytest.mark.parametrize("pair", sorted(_PAIRS))
def test_chart_and_local_envoy_configs_agree(pair: str) -> None:
    local, values = _PAIRS[pair]
    ours = _chart_only(json.loads(render_local(local)))
    chart = _chart_only(envoy_bootstrap(values))
    assert chart == ours


def test_the_agreement_check_notices_a_difference() -> None:
    local, values = _PAIRS["providers-over-tls"]
    changed = merged({"envoy": {"retries": {"numRetries": 3}}}, values)
    assert _chart_only(envoy_bootstrap(changed)) != _chart_only(json.loads(render_local(local)))


def _clusters(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in envoy_bootstrap(values)["static_resources"]["clusters"]}


def _tls(cluster: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
    context = cluster["transport_socket"]["typed_config"]
    validation = context["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"filename": "/etc/ssl/certs/ca-certificates.crt"}
    return context.get("sni"), validation["match_typed_subject_alt_names"]


@pytest.mark.parametrize(
    ("mode", "cluster", "discovery", "sni", "san"),
    [
        ("defaults", "openai", "LOGICAL_DNS", "api.openai.com", ("DNS", "api.openai.com")),
        ("defaults", "anthropic", "LOGICAL_DNS", "api.anthropic.com",
         ("DNS", "api.anthropic.com")),
        ("tls-by-address", "openai", "STATIC", None, ("IP_ADDRESS", "fd00::7")),
        ("tls-by-address", "anthropic", "STATIC", None, ("IP_ADDRESS", "10.0.0.8")),
        ("tls-by-address", "jwks", "STATIC", None, ("IP_ADDRESS", "fd00::9")),
        ("service-accounts-remote", "jwks", "LOGICAL_DNS", "oidc.eks.eu-west-1.amazonaws.com",
         ("DNS", "oidc.eks.eu-west-1.amazonaws.com")),
    ],
)  # fmt: skip
def test_upstream_tls_checks_the_host_name_and_addresses_get_no_sni(
    mode: str, cluster: str, discovery: str, sni: str | None, san: tuple[str, str]
) -> None:
    """An IPv6 address is an address, not a DNS name (RFC 6066: SNI names hosts only)."""
    found = _clusters(MODES[mode])[cluster]
    assert found["type"] == discovery
    assert _tls(found) == (sni, [{"san_type": san[0], "matcher": {"exact": san[1]}}])


def test_the_jwks_cluster_reaches_the_port_of_its_uri() -> None:
    (endpoint,) = _clusters(MODES["tls-by-address"])["jwks"]["load_assignment"]["endpoints"]
    address = endpoint["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert address == {"address": "fd00::9", "port_value": 8443}


@pytest.mark.parametrize("host", ["[fd00::7]", "https://api.openai.com", "a host", "-x"])
def test_the_schema_refuses_a_provider_host_that_is_not_a_name_or_an_address(host: str) -> None:
    with pytest.raises(helm_python.HelmError, match="providers/openai/host"):
        envoy_bootstrap({"providers": {"openai": {"host": host}}})
