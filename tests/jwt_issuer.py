"""A test Kubernetes service-account token issuer: an RSA key, its JWKS, and tokens shaped
like the kubelet's projected tokens (`kubernetes.io` claims, `system:serviceaccount:` sub)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "tokengate"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Issuer:
    issuer: str = ISSUER
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    key: rsa.RSAPrivateKey = field(default_factory=_key)

    @property
    def jwks(self) -> str:
        public: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        public.update(kid=self.kid, alg="RS256", use="sig")
        return json.dumps({"keys": [public]})

    def token(
        self,
        namespace: str,
        service_account: str,
        *,
        audience: str = AUDIENCE,
        lifetime_s: int = 600,
        issued_ago_s: int = 0,
        issuer: str | None = None,
        claims: dict[str, Any] | None = None,
    ) -> str:
        now = int(time.time()) - issued_ago_s
        payload: dict[str, Any] = {
            "iss": issuer or self.issuer,
            "aud": [audience],
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime_s,
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
                "pod": {"name": f"{service_account}-0", "uid": str(uuid.uuid4())},
            },
        }
        if claims is not None:
            payload = claims | {k: v for k, v in payload.items() if k in ("iss", "aud", "exp")}
        return jwt.encode(payload, self.key, algorithm="RS256", headers={"kid": self.kid})
