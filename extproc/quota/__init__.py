"""Quota accounting: one backend interface, pure window arithmetic and admission rules."""

from extproc.quota.admission import limits_for, ratelimit_headers, refusal_error, route_limits
from extproc.quota.backends.memory import MemoryBackend
from extproc.quota.store import Cost, Decision, LimitState, QuotaStore, Refusal, Reservation
from extproc.quota.windows import Scope, ScopedLimit

__all__ = [
    "Cost",
    "Decision",
    "LimitState",
    "MemoryBackend",
    "QuotaStore",
    "Refusal",
    "Reservation",
    "Scope",
    "ScopedLimit",
    "limits_for",
    "ratelimit_headers",
    "refusal_error",
    "route_limits",
]
