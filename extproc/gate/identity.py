"""Who is calling: a namespace, and what proved it.

Two proofs are accepted, in this order:

- a Kubernetes service-account token that Envoy's `jwt_authn` filter already verified
  (signature against the cluster issuer's JWKS, issuer, audience, expiry). The filter writes
  the verified payload into dynamic metadata, which ext_proc forwards to us; a client cannot
  write dynamic metadata, so claims are taken from there only, never from a header.
- a gateway key, as `Authorization: Bearer <key>` (OpenAI SDKs) or `x-api-key: <key>`
  (Anthropic SDKs), matched by its sha256 against the snapshot's `ApiKey` documents; the key
  itself is never stored or logged.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from extproc.errors import Unauthenticated
from extproc.policy.model import ApiKey, PolicySnapshot

# Where the Envoy configs (envoy/, helm/) put the verified payload: the filter's namespace
# and its `payload_in_metadata` key.
JWT_METADATA_NAMESPACE = "envoy.filters.http.jwt_authn"
JWT_PAYLOAD_KEY = "tokengate_service_account"

_SUBJECT = re.compile(r"^system:serviceaccount:([a-z0-9.-]+):([a-z0-9.-]+)$")
# What Envoy's jwt_authn rules treat as a token to verify (a JSON header, three segments);
# anything else presented as a bearer is a gateway key.
JWT_SHAPE = r"eyJ[^.]*\.[^.]+\.[^.]*"
_JWT_SHAPE = re.compile(f"^{JWT_SHAPE}$")


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Caller:
    namespace: str
    key: ApiKey | None
    service_account: str | None = None

    @property
    def key_name(self) -> str | None:
        return None if self.key is None else self.key.name


def verified_claims(metadata: base_pb2.Metadata | None) -> dict[str, Any] | None:
    """The JWT payload Envoy's jwt_authn verified, forwarded by ext_proc's
    `metadata_options`; None when no token was verified."""
    if metadata is None or JWT_METADATA_NAMESPACE not in metadata.filter_metadata:
        return None
    fields = metadata.filter_metadata[JWT_METADATA_NAMESPACE].fields
    if JWT_PAYLOAD_KEY not in fields:
        return None
    claims: dict[str, Any] = json_format.MessageToDict(fields[JWT_PAYLOAD_KEY].struct_value)
    return claims


def service_account_from(claims: Mapping[str, Any] | None) -> ServiceAccount | None:
    """The verified payload's namespace and service account, or None when Envoy verified no
    token. A verified token that names no service account is refused: it came from the
    right issuer, but we cannot tell whose quota it spends."""
    if claims is None:
        return None
    k8s = claims.get("kubernetes.io")
    if isinstance(k8s, Mapping):
        namespace, account = k8s.get("namespace"), k8s.get("serviceaccount")
        name = account.get("name") if isinstance(account, Mapping) else None
        if isinstance(namespace, str) and isinstance(name, str) and namespace and name:
            return ServiceAccount(namespace, name)
    match = _SUBJECT.match(str(claims.get("sub", "")))
    if match:
        return ServiceAccount(match[1], match[2])
    raise Unauthenticated(
        "The verified token names no Kubernetes service account.", code="invalid_token"
    )


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    return None


def identify(
    snapshot: PolicySnapshot,
    *,
    authorization: str | None,
    x_api_key: str | None,
    service_account: ServiceAccount | None = None,
) -> Caller:
    if service_account is not None:
        return Caller(service_account.namespace, None, service_account.name)
    key = presented_key(authorization, x_api_key)
    if key is None:
        raise Unauthenticated(
            "Missing gateway key. Send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
        )
    digest = hashlib.sha256(key.encode()).hexdigest()
    found = snapshot.keys_by_sha256.get(digest)
    if found is not None:
        return Caller(found.namespace, found)
    if _JWT_SHAPE.match(key):
        # A token Envoy did not verify: service-account identity is off on this gateway.
        raise Unauthenticated(
            "Service-account tokens are not accepted by this gateway; use a gateway key.",
            code="invalid_token",
        )
    raise Unauthenticated("Incorrect gateway key provided.")
