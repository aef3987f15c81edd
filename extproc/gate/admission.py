"""Admission: who is calling, what governs them, and what they were let through with.

Two immutable values, one per step, instead of a dozen optional attributes on a processor:
- `Tenant` (request headers): the caller, the policy of their namespace and the limits that
  apply to them (policy, key and platform overrides, layered);
- `Admission` (a governed request the quota store said yes to): the tenant, the request as
  parsed (model, stream, …), how it is priced, the prompt as counted and the reservation that
  holds its estimated cost.

Everything here is pure (no I/O): the processor asks the store and builds these from the
answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from extproc.errors import PermissionDenied
from extproc.gate.identity import Caller, identify, service_account_from
from extproc.gate.key_ring import RingKey
from extproc.policy.model import PolicySnapshot, QuotaPolicy
from extproc.policy.overrides import OverrideBook
from extproc.providers import ParsedRequest
from extproc.quota import Reservation, limits_for
from extproc.quota.costing import Costing
from extproc.quota.windows import ScopedLimit


@dataclass(frozen=True, slots=True)
class Tenant:
    """A caller and the rules that govern them, fixed for the request's whole life (a policy
    reload mid-request does not change them)."""

    caller: Caller
    policy: QuotaPolicy
    limits: tuple[ScopedLimit, ...]

    @property
    def namespace(self) -> str:
        return self.caller.namespace


@dataclass(frozen=True, slots=True)
class Admission:
    """A request the quota store let through, and what its settlement needs."""

    tenant: Tenant
    request: ParsedRequest
    provider: str  # the provider family that serves it (a metrics label)
    costing: Costing
    prompt_tokens: int
    reservation: Reservation  # as granted at admission (a stream's budget grows its own)
    admitted_at: float  # perf_counter() when the store said yes
    key: RingKey | None = None  # the pool key that served it (its budget is charged too)

    @property
    def model(self) -> str:
        return self.request.model


def admit_tenant(
    snapshot: PolicySnapshot,
    overrides: OverrideBook,
    headers: Mapping[str, str],
    claims: Mapping[str, Any] | None,
) -> Tenant:
    """Identify the caller and find what governs them. Raises the `ClientError` the caller
    sees: 401 (no identity), 403 (no policy for the namespace, or blocked by an override)."""
    caller = identify(
        snapshot,
        authorization=headers.get("authorization"),
        x_api_key=headers.get("x-api-key"),
        service_account=service_account_from(claims),
    )
    policy = snapshot.policies.get(caller.namespace)
    if policy is None:
        raise PermissionDenied(
            f"No QuotaPolicy governs namespace '{caller.namespace}'.", code="no_policy"
        )
    applied = overrides.applied(caller.namespace, caller.key_name)
    if applied.block is not None:
        raise PermissionDenied(
            f"Blocked by the platform team until {applied.block.expires_iso}: "
            f"{applied.block.reason}",
            code="blocked",
        )
    return Tenant(
        caller=caller, policy=policy, limits=limits_for(policy, caller.key, applied.extra)
    )


def check_model(tenant: Tenant, model: str) -> None:
    if not tenant.policy.allows_model(model):
        raise PermissionDenied(
            f"Model '{model}' is not allowed for namespace '{tenant.namespace}'.",
        )


def expected_completion(policy: QuotaPolicy, *, asked: int | None, stream: bool) -> int:
    """The completion tokens to reserve up front: what the client asked for, else the
    policy's default; a stream reserves at most `streamReserveTokens` (it debits as it goes)."""
    expected = asked or policy.default_max_tokens
    if stream and policy.stream_reserve_tokens is not None:
        expected = min(expected, policy.stream_reserve_tokens)
    return expected
