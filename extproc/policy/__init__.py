"""Policies: quotas, gateway keys and forwarded routes — typed model, loader and validator
(see `model` for the shapes)."""

from extproc.policy.loader import load_directories, load_directory, parse_documents
from extproc.policy.model import (
    ApiKey,
    FailMode,
    Limit,
    Measure,
    PolicySnapshot,
    Priority,
    QuotaPolicy,
    Route,
)

__all__ = [
    "ApiKey",
    "FailMode",
    "Limit",
    "Measure",
    "PolicySnapshot",
    "Priority",
    "QuotaPolicy",
    "Route",
    "load_directories",
    "load_directory",
    "parse_documents",
]
