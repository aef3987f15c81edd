"""From ConfigMaps to the files of the policy directory, and the rule that keeps one team's
ConfigMap from governing another team's namespace.

No I/O here, so every rule is unit-tested directly. The sidecar's loader refuses a whole
reload when any file is invalid (it keeps the last good snapshot), so a team's ConfigMap is
also checked here with the loader's own validator and skipped when invalid: one team's typo
must not freeze every other team's policy updates. The platform's own ConfigMaps (in the
tokengate namespace) are left to the loader, whose refusal they should see.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from extproc.errors import ConfigError
from extproc.policy.loader import SUFFIXES, validate_file

# What the API server accepts as a namespace / object name, and as a ConfigMap data key. The
# server enforces these; checking again keeps a path separator out of a file name even if a
# proxy or a bug hands us something else.
_OBJECT_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_DATA_KEY = re.compile(r"[-._a-zA-Z0-9]+")
MAX_FILE_NAME = 255  # bytes, the usual file-system limit for one path component
SEPARATOR = "__"  # cannot occur in a namespace or ConfigMap name, so names never collide

_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigMap:
    """The parts of a ConfigMap that policy-sync uses (binaryData is not policy)."""

    namespace: str
    name: str
    resource_version: str = ""
    data: Mapping[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """What one ConfigMap contributes: its files, or why it contributes nothing."""

    files: Mapping[str, bytes]
    problem: str | None = None


def file_name(namespace: str, configmap: str, key: str) -> str:
    """`<namespace>__<configmap>__<key>`: unique per key, and the file's origin is readable
    in the loader's error messages."""
    return f"{namespace}{SEPARATOR}{configmap}{SEPARATOR}{key}"


def is_policy_key(key: str) -> bool:
    """The keys the loader would read; any other key (a README, a script) is ignored."""
    return key.endswith(SUFFIXES)


def evaluate(cm: ConfigMap, *, home_namespace: str) -> Verdict:
    """The files `cm` contributes. A ConfigMap outside the tokengate namespace that claims
    another namespace contributes nothing at all: a partial set would be just as wrong."""
    problem = _name_problem(cm)
    if problem is None and cm.namespace != home_namespace:
        problem = foreign_problem(cm) or invalid_problem(cm)
    if problem is not None:
        return Verdict(files={}, problem=problem)
    files = {
        file_name(cm.namespace, cm.name, key): text.encode("utf-8")
        for key, text in sorted(cm.data.items())
        if is_policy_key(key)
    }
    return Verdict(files=files)


def _name_problem(cm: ConfigMap) -> str | None:
    for what, value in (("namespace", cm.namespace), ("name", cm.name)):
        if not _OBJECT_NAME.fullmatch(value):
            return f"ConfigMap {cm.ref}: {what} {_short(value)} is not a valid object name"
    for key in filter(is_policy_key, cm.data):
        if not _DATA_KEY.fullmatch(key):
            return f"ConfigMap {cm.ref}: key {_short(key)} is not a valid data key"
        if len(file_name(cm.namespace, cm.name, key).encode()) > MAX_FILE_NAME:
            return (
                f"ConfigMap {cm.ref}: key {key}: '<namespace>__<name>__<key>' is longer than "
                f"{MAX_FILE_NAME} bytes; use a shorter ConfigMap name or key"
            )
    return None


def foreign_problem(cm: ConfigMap) -> str | None:
    """None when every document of every policy key governs `cm.namespace` itself. A
    document we cannot read, or that does not say which namespace it governs, is refused
    too: what we cannot check we do not let through."""
    for key in sorted(filter(is_policy_key, cm.data)):
        try:
            documents = list(yaml.load_all(cm.data[key], Loader=_SafeLoader))
        except yaml.YAMLError:
            return _refusal(cm, key, None, "is not valid YAML, so its namespaces cannot be checked")
        for index, doc in enumerate(documents, start=1):
            if doc is None:
                continue  # an empty document (a stray `---`), as the loader counts them
            claimed = _claimed_namespace(doc)
            if claimed is None:
                return _refusal(cm, key, index, "has no metadata.namespace")
            if claimed != cm.namespace:
                what = f"({_describe(doc)}) governs namespace {_short(claimed)}"
                return _refusal(cm, key, index, what)
    return None


def invalid_problem(cm: ConfigMap) -> str | None:
    """The loader's verdict on each policy key on its own (usd limits allowed: whether the
    sidecar has a price table is its own check)."""
    for key in sorted(filter(is_policy_key, cm.data)):
        try:
            validate_file(cm.data[key], file=key, allow_usd=True)
        except ConfigError as exc:
            return f"ConfigMap {cm.ref} skipped: invalid policy: {exc}"
    return None


def _claimed_namespace(doc: object) -> str | None:
    metadata = doc.get("metadata") if isinstance(doc, dict) else None
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    return namespace if isinstance(namespace, str) else None


def _refusal(cm: ConfigMap, key: str, index: int | None, what: str) -> str:
    where = f"key {key}" if index is None else f"key {key} document {index}"
    return (
        f"ConfigMap {cm.ref} skipped: {where} {what}; a ConfigMap in namespace "
        f"{cm.namespace} may only hold policies for namespace {cm.namespace}"
    )


def _describe(doc: dict[Any, Any]) -> str:
    """Kind and name, to find the document; nothing from `spec` (keys hashes, limits)."""
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return f"{_short(doc.get('kind', '?'))} {_short(name or '?')}"


def _short(value: object) -> str:
    """A user-supplied value for a log line: printable, bounded."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 64 else text[:61] + "..."
