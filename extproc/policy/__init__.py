"""Quota policies: typed model, loader and validator (see `model` for the shapes)."""

from extproc.policy.loader import load_directories, load_directory, parse_documents
from extproc.policy.model import (
    ApiKey,
    FailMode,
    Limit,
    Measure,
    PolicySnapshot,
    Priority,
    QuotaPolicy,
)

__all__ = [
    "ApiKey",
    "FailMode",
    "Limit",
    "Measure",
    "PolicySnapshot",
    "Priority",
    "QuotaPolicy",
    "load_directories",
    "load_directory",
    "parse_documents",
]
