"""Policies: quotas, gateway keys, forwarded routes, model routes and provider key pools —
typed model, loader and validator (see `model` for the shapes)."""

from extproc.policy.loader import load_directories, load_directory, parse_documents
from extproc.policy.model import (
    ApiKey,
    Backend,
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
