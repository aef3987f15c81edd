"""Who is calling: a namespace, and the gateway key that proved it.

A gateway key arrives as `Authorization: Bearer <key>` (OpenAI SDKs) or `x-api-key: <key>`
(Anthropic SDKs) and is matched by its sha256 against the snapshot's `ApiKey` documents; the
key itself is never stored or logged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from extproc.errors import Unauthenticated
from extproc.policy.model import ApiKey, PolicySnapshot


@dataclass(frozen=True, slots=True)
class Caller:
    namespace: str
    key: ApiKey | None

    @property
    def key_name(self) -> str | None:
        return None if self.key is None else self.key.name


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    return None


def identify(
    snapshot: PolicySnapshot, *, authorization: str | None, x_api_key: str | None
) -> Caller:
    key = presented_key(authorization, x_api_key)
    if key is None:
        raise Unauthenticated(
            "Missing gateway key. Send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
        )
    digest = hashlib.sha256(key.encode()).hexdigest()
    found = snapshot.keys_by_sha256.get(digest)
    if found is None:
        raise Unauthenticated("Incorrect gateway key provided.")
    return Caller(found.namespace, found)
