"""Policies: quotas, gateway keys, forwarded routes and model routes — typed model, loader and
validator (see `model` for the shapes)."""

from extproc.policy.loader import load_directories, load_directory, parse_documents
from extproc.policy.model import (
    ApiKey,
    Backend,
    FailMode,
    Limit,
    Measure,
    ModelRoute,
    PolicySnapshot,
    Priority,
    QuotaPolicy,
    Route,
)

__all__ = [
    "ApiKey",
    "Backend",
    "FailMode",
    "Limit",
    "Measure",
    "ModelRoute",
    "PolicySnapshot",
    "Priority",
    "QuotaPolicy",
    "Route",
    "load_directories",
    "load_directory",
    "parse_documents",
]
