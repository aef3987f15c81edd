"""Quota accounting: one backend interface, pure window arithmetic and admission rules."""

from extproc.quota.admission import limits_for, ratelimit_headers, refusal_error
from extproc.quota.backend import Cost, Decision, LimitState, QuotaBackend, Refusal, Reservation
from extproc.quota.memory import MemoryBackend
from extproc.quota.windows import Scope, ScopedLimit

__all__ = [
    "Cost",
    "Decision",
    "LimitState",
    "MemoryBackend",
    "QuotaBackend",
    "Refusal",
    "Reservation",
    "Scope",
    "ScopedLimit",
    "limits_for",
    "ratelimit_headers",
    "refusal_error",
]
