"""Policies: quotas, gateway keys, forwarded routes, model routes, provider key pools and
shared capacity —
typed model, loader and validator (see `model` for the shapes)."""

from extproc.policy.loader import load_directories, load_directory, parse_documents
from extproc.policy.model import (
    ApiKey,
    Backend,
    Capacity,
    Degradation,
    FailMode,
    KeyPool,
    Limit,
    Measure,
    ModelRoute,
    PolicySnapshot,
    PoolKey,
    Priority,
    QuotaPolicy,
    Route,
)

__all__ = [
    "ApiKey",
    "Backend",
    "Capacity",
    "Degradation",
    "FailMode",
    "KeyPool",
    "Limit",
    "Measure",
    "ModelRoute",
    "PolicySnapshot",
    "PoolKey",
    "Priority",
    "QuotaPolicy",
    "Route",
    "load_directories",
    "load_directory",
    "parse_documents",
]
