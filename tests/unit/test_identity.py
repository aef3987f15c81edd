"""Identity: service-account claims (only from Envoy's verified metadata) and gateway keys."""

from __future__ import annotations

import hashlib
from types import MappingProxyType
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

from extproc.errors import Unauthenticated
from extproc.gate.identity import (
    JWT_METADATA_NAMESPACE,
    JWT_PAYLOAD_KEY,
    ServiceAccount,
    identify,
    service_account_from,
    verified_claims,
)
from extproc.policy.model import ApiKey, PolicySnapshot

KEY = "tg-unit"
SNAPSHOT = PolicySnapshot(
    policies=MappingProxyType({}),
    keys_by_sha256=MappingProxyType(
        {hashlib.sha256(KEY.encode()).hexdigest(): ApiKey(name="k", namespace="team-k", sha256="")}
    ),
    version="v",
    loaded_at=0.0,
)
K8S_CLAIMS: dict[str, Any] = {
    "sub": "system:serviceaccount:team-a:app",
    "kubernetes.io": {"namespace": "team-a", "serviceaccount": {"name": "app", "uid": "u"}},
}


def _metadata(namespace: str, key: str, claims: dict[str, Any]) -> base_pb2.Metadata:
    payload = struct_pb2.Struct()
    payload.update({key: claims})
    metadata = base_pb2.Metadata()
    metadata.filter_metadata[namespace].CopyFrom(payload)
    return metadata


def test_claims_come_from_the_jwt_authn_namespace_and_key_only() -> None:
    assert verified_claims(_metadata(JWT_METADATA_NAMESPACE, JWT_PAYLOAD_KEY, K8S_CLAIMS)) == (
        K8S_CLAIMS
    )
    assert verified_claims(_metadata("tokengate", JWT_PAYLOAD_KEY, K8S_CLAIMS)) is None
    assert verified_claims(_metadata(JWT_METADATA_NAMESPACE, "other", K8S_CLAIMS)) is None
    assert verified_claims(base_pb2.Metadata()) is None
    assert verified_claims(None) is None


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        (K8S_CLAIMS, ServiceAccount("team-a", "app")),
        ({"sub": "system:serviceaccount:team-b:cron"}, ServiceAccount("team-b", "cron")),
        # The structured claim wins over the subject when both are present.
        (K8S_CLAIMS | {"sub": "system:serviceaccount:x:y"}, ServiceAccount("team-a", "app")),
    ],
)
def test_service_account_from_claims(claims: dict[str, Any], expected: ServiceAccount) -> None:
    assert service_account_from(claims) == expected


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "alice@example.com"},
        {"sub": "system:serviceaccount:only-namespace"},
        {"kubernetes.io": {"namespace": "team-a"}},
        {"kubernetes.io": "team-a"},
        {},
    ],
)
def test_verified_claims_without_a_service_account_are_refused(claims: dict[str, Any]) -> None:
    with pytest.raises(Unauthenticated, match="names no Kubernetes service account"):
        service_account_from(claims)


def test_a_service_account_is_the_caller_whatever_headers_say() -> None:
    caller = identify(
        SNAPSHOT, authorization=f"Bearer {KEY}", x_api_key=None,
        service_account=ServiceAccount("team-a", "app"),
    )  # fmt: skip
    assert (caller.namespace, caller.key, caller.service_account) == ("team-a", None, "app")


def test_gateway_keys_and_unverified_tokens() -> None:
    assert identify(SNAPSHOT, authorization=f"Bearer {KEY}", x_api_key=None).namespace == "team-k"
    assert identify(SNAPSHOT, authorization=None, x_api_key=KEY).key_name == "k"
    with pytest.raises(Unauthenticated) as unverified:
        identify(SNAPSHOT, authorization="Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig", x_api_key=None)
    assert unverified.value.code == "invalid_token"
    with pytest.raises(Unauthenticated) as unknown:
        identify(SNAPSHOT, authorization="Bearer nope", x_api_key=None)
    assert unknown.value.code == "invalid_api_key"
