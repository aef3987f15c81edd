"""Turn one parsed YAML document into a `QuotaPolicy`, an `ApiKey`, a `Route`, a
`ModelRoute`, a `KeyPool` (kind `ProviderKeyPool`) or a `Capacity`, or say exactly what is
wrong with it.

Validation is strict and stops at the first problem: a policy file is written by a person, so
one precise message ("team-a.yaml (document 2): spec.limits[2].tokns: unknown field ...") is
worth more than a list of consequences. Unknown fields are rejected because a misspelt limit
that is silently ignored is a quota that silently does not exist. Everything checked here is
an invariant the data path relies on without re-checking.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from extproc.policy._fields import (
    Doc,
    check_fields,
    dns_label,
    limit_list,
    mapping,
    model_patterns,
    required,
    show,
    token_count,
)
from extproc.policy.capacity import capacity_document, degradations
from extproc.policy.key_pools import key_pool_document
from extproc.policy.model import (
    ApiKey,
    Capacity,
    FailMode,
    KeyPool,
    ModelRoute,
    Priority,
    QuotaPolicy,
    Route,
)
from extproc.policy.model_routes import model_route_document
from extproc.policy.routes import route_document

API_VERSION = "tokengate.dev/v1"
KINDS = ("QuotaPolicy", "ApiKey", "Route", "ModelRoute", "ProviderKeyPool", "Capacity")
# Kinds that belong to the platform team: what they govern every namespace shares.
_CLUSTER_WIDE = {
    "ProviderKeyPool": "its keys are the provider account's, which every namespace shares",
    "Capacity": "it is the provider tier's, which every namespace's requests share",
}

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")

_TOP_FIELDS = ("apiVersion", "kind", "metadata", "spec")
_METADATA_FIELDS = ("name", "namespace", "labels", "annotations")
_POLICY_FIELDS = (
    "priority", "models", "limits", "failMode", "defaultMaxTokens", "streamReserveTokens",
    "timeZone", "clampCompletion", "minCompletionTokens", "degrade",
)  # fmt: skip
_MODELS_FIELDS = ("allow",)
_KEY_FIELDS = ("sha256", "limits", "priority", "maxPriority", "substitution")
_SUBSTITUTION = ("allow", "forbid")

_E = TypeVar("_E", Priority, FailMode)


def validate_document(
    data: object, *, file: str, document: int, allow_usd: bool = False
) -> QuotaPolicy | ApiKey | Route | ModelRoute | KeyPool | Capacity:
    """Validate one document; `file` (also the object's `source`) and the 1-based `document`
    index name it in errors. `allow_usd` says a price table is configured: without one a
    dollar limit could never be charged, so accepting it would be a quota that never bites."""
    doc = Doc(file=file, index=document)
    top = mapping(doc, data, None)
    check_fields(doc, top, _TOP_FIELDS, "")
    api_version = required(doc, top, "apiVersion", "")
    if api_version != API_VERSION:
        doc.fail("apiVersion", f"must be {API_VERSION!r}, got {show(api_version)}")
    kind = required(doc, top, "kind", "")
    if kind not in KINDS:
        doc.fail("kind", f"must be one of {', '.join(KINDS)}; got {show(kind)}")
    meta = mapping(doc, required(doc, top, "metadata", ""), "metadata")
    spec = mapping(doc, required(doc, top, "spec", ""), "spec")
    if kind == "Route":
        name, scope = _metadata(doc, meta, namespace_required=False)
        return route_document(doc, spec, name=name, namespace=scope)
    if kind == "ModelRoute":
        name, scope = _metadata(doc, meta, namespace_required=False)
        return model_route_document(doc, spec, name=name, namespace=scope)
    if kind in _CLUSTER_WIDE:
        if meta.get("namespace") is not None:
            doc.fail(
                "metadata.namespace",
                f"a {kind} is cluster-wide ({_CLUSTER_WIDE[kind]}); remove metadata.namespace",
            )
        name, _ = _metadata(doc, meta, namespace_required=False)
        if kind == "Capacity":
            return capacity_document(doc, spec, name=name, allow_usd=allow_usd)
        return key_pool_document(doc, spec, name=name, allow_usd=allow_usd)
    name, namespace = _metadata(doc, meta, namespace_required=True)
    assert namespace is not None
    if kind == "QuotaPolicy":
        return _quota_policy(doc, spec, name=name, namespace=namespace, allow_usd=allow_usd)
    return _api_key(doc, spec, name=name, namespace=namespace, allow_usd=allow_usd)


def _metadata(
    doc: Doc, meta: Mapping[str, object], *, namespace_required: bool
) -> tuple[str, str | None]:
    """Name and namespace are DNS-1123 labels because they become Kubernetes namespaces and
    store keys; labels and annotations are accepted (kubectl tooling adds them) and ignored.
    A Route or ModelRoute without a namespace is cluster-wide; a ProviderKeyPool or a
    Capacity always is."""
    check_fields(doc, meta, _METADATA_FIELDS, "metadata.")
    for extra in ("labels", "annotations"):
        if extra in meta:
            for key, value in mapping(doc, meta[extra], f"metadata.{extra}").items():
                if not isinstance(value, str):
                    doc.fail(f"metadata.{extra}.{key}", f"must be a string, got {show(value)}")
    name = dns_label(doc, required(doc, meta, "name", "metadata."), "metadata.name")
    if not namespace_required and meta.get("namespace") is None:
        return name, None
    namespace = dns_label(doc, required(doc, meta, "namespace", "metadata."), "metadata.namespace")
    return name, namespace


def _quota_policy(
    doc: Doc, spec: Mapping[str, object], *, name: str, namespace: str, allow_usd: bool
) -> QuotaPolicy:
    check_fields(doc, spec, _POLICY_FIELDS, "spec.")
    patterns: tuple[str, ...] = ("*",)
    if "models" in spec:
        models = mapping(doc, spec["models"], "spec.models")
        check_fields(doc, models, _MODELS_FIELDS, "spec.models.")
        allow = required(doc, models, "allow", "spec.models.")
        empty = "use ['*'] to allow every model"
        patterns = model_patterns(doc, allow, "spec.models.allow", empty=empty)
    max_tokens = token_count(doc, spec.get("defaultMaxTokens", 1024), "spec.defaultMaxTokens")
    reserve = spec.get("streamReserveTokens")
    if reserve is not None:
        reserve = token_count(doc, reserve, "spec.streamReserveTokens")
    limits = limit_list(doc, spec.get("limits", []), allow_usd=allow_usd)
    return QuotaPolicy(
        name=name,
        namespace=namespace,
        limits=limits,
        model_patterns=patterns,
        priority=_enum(doc, spec, "priority", Priority, Priority.STANDARD),
        fail_mode=_enum(doc, spec, "failMode", FailMode, FailMode.CLOSED),
        default_max_tokens=max_tokens,
        stream_reserve_tokens=reserve,
        time_zone=_time_zone(doc, spec.get("timeZone", "UTC")),
        clamp_completion=_boolean(doc, spec.get("clampCompletion", True), "spec.clampCompletion"),
        min_completion_tokens=token_count(
            doc, spec.get("minCompletionTokens", 16), "spec.minCompletionTokens"
        ),
        source=doc.file,
        degrade=degradations(doc, spec["degrade"], limits) if "degrade" in spec else (),
    )


def _boolean(doc: Doc, value: object, field: str) -> bool:
    if not isinstance(value, bool):
        doc.fail(field, f"must be true or false, got {show(value)}")
    return value


def _api_key(
    doc: Doc, spec: Mapping[str, object], *, name: str, namespace: str, allow_usd: bool
) -> ApiKey:
    """The hash is normalised to lower case so lookups by the hex digest of a bearer token
    match however the operator pasted it. A key is validated alone, and the class it gets
    when `priority` is left out is its namespace's policy's, which may be in another file:
    so `maxPriority` is checked against `priority` only when both are written."""
    check_fields(doc, spec, _KEY_FIELDS, "spec.")
    sha = required(doc, spec, "sha256", "spec.")
    if not isinstance(sha, str) or not _SHA256_HEX.fullmatch(sha):
        got = show(sha)
        if isinstance(sha, str):
            got = f"{len(sha)} characters" if len(sha) != 64 else "a non-hex character"
        doc.fail("spec.sha256", f"must be 64 hex digits (the sha256 of the key), got {got}")
    limits = limit_list(doc, spec.get("limits", []), allow_usd=allow_usd)
    priority = _enum(doc, spec, "priority", Priority, Priority.STANDARD)
    highest = _enum(doc, spec, "maxPriority", Priority, Priority.STANDARD)
    if "priority" in spec and "maxPriority" in spec and highest.rank > priority.rank:
        doc.fail(
            "spec.maxPriority",
            f"{highest.value} is lower than spec.priority ({priority.value}); it is the "
            "highest class the key's x-tokengate-priority header may ask for, so at least "
            "the key's own",
        )
    substitution = spec.get("substitution", "allow")
    if not isinstance(substitution, str) or substitution not in _SUBSTITUTION:
        doc.fail(
            "spec.substitution",
            f"must be one of {', '.join(_SUBSTITUTION)}; got {show(substitution)}",
        )
    return ApiKey(
        name=name,
        namespace=namespace,
        sha256=sha.lower(),
        limits=limits,
        source=doc.file,
        priority=priority if "priority" in spec else None,
        max_priority=highest if "maxPriority" in spec else None,
        allow_substitution=substitution == "allow",
    )


def _time_zone(doc: Doc, value: object) -> str:
    if not isinstance(value, str) or not value:
        doc.fail("spec.timeZone", f"must be an IANA time zone name, got {show(value)}")
    try:
        ZoneInfo(value)
    except (ValueError, ZoneInfoNotFoundError):
        doc.fail("spec.timeZone", f"unknown time zone {value!r} (an IANA name: Europe/Berlin)")
    return value


def _enum(doc: Doc, spec: Mapping[str, object], key: str, enum: type[_E], default: _E) -> _E:
    if key not in spec:
        return default
    value = spec[key]
    choices = [e.value for e in enum]
    if not isinstance(value, str) or value not in choices:
        doc.fail(f"spec.{key}", f"must be one of {', '.join(choices)}; got {show(value)}")
    return enum(value)
