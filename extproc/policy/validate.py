"""Turn one parsed YAML document into a `QuotaPolicy` or an `ApiKey`, or say exactly what is
wrong with it.

Validation is strict and stops at the first problem: a policy file is written by a person, so
one precise message ("team-a.yaml (document 2): spec.limits[2].tokns: unknown field ...") is
worth more than a list of consequences. Unknown fields are rejected because a misspelt limit
that is silently ignored is a quota that silently does not exist. Everything checked here is
an invariant the data path relies on without re-checking.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from typing import NoReturn, TypeGuard, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from extproc.errors import PolicyError
from extproc.policy.model import (
    Algorithm,
    ApiKey,
    FailMode,
    Limit,
    Measure,
    Priority,
    QuotaPolicy,
)

API_VERSION = "tokengate.dev/v1"
KINDS = ("QuotaPolicy", "ApiKey")

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_LABEL_MAX = 63
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_DURATION = re.compile(r"([0-9]{1,12})(mo|[smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PERIOD_MIN_S = 1
_PERIOD_MAX_S = 366 * 86400
_DEFAULT_MAX_TOKENS_MAX = 1_000_000
# Counters live in Redis Lua, whose numbers are doubles: integers stay exact up to 2**53.
_AMOUNT_MAX = 2**53 - 1

_TOP_FIELDS = ("apiVersion", "kind", "metadata", "spec")
_METADATA_FIELDS = ("name", "namespace", "labels", "annotations")
_POLICY_FIELDS = (
    "priority", "models", "limits", "failMode", "defaultMaxTokens", "streamReserveTokens",
    "timeZone",
)  # fmt: skip
_MODELS_FIELDS = ("allow",)
_KEY_FIELDS = ("sha256", "limits")
_MEASURES = tuple(m.value for m in Measure)
_LIMIT_FIELDS = ("name", *_MEASURES, "per", "algorithm")
_MONTHS_MAX = 12
_WINDOWED = tuple(a.value for a in Algorithm if a is not Algorithm.LEASE)

_E = TypeVar("_E", Priority, FailMode)


class _Doc:
    """Where we are (file and 1-based document index), so every helper can fail precisely."""

    def __init__(self, *, file: str, index: int) -> None:
        self.file = file
        self.index = index

    def fail(self, field: str | None, problem: str) -> NoReturn:
        raise PolicyError(file=self.file, document=self.index, field=field, problem=problem)


def validate_document(
    data: object, *, file: str, document: int, allow_usd: bool = False
) -> QuotaPolicy | ApiKey:
    """Validate one document; `file` (also the object's `source`) and the 1-based `document`
    index name it in errors. `allow_usd` says a price table is configured: without one a
    dollar limit could never be charged, so accepting it would be a quota that never bites."""
    doc = _Doc(file=file, index=document)
    top = _mapping(doc, data, None)
    _check_fields(doc, top, _TOP_FIELDS, "")
    api_version = _required(doc, top, "apiVersion", "")
    if api_version != API_VERSION:
        doc.fail("apiVersion", f"must be {API_VERSION!r}, got {_show(api_version)}")
    kind = _required(doc, top, "kind", "")
    if kind not in KINDS:
        doc.fail("kind", f"must be one of {', '.join(KINDS)}; got {_show(kind)}")
    name, namespace = _metadata(doc, _mapping(doc, _required(doc, top, "metadata", ""), "metadata"))
    spec = _mapping(doc, _required(doc, top, "spec", ""), "spec")
    if kind == "QuotaPolicy":
        return _quota_policy(doc, spec, name=name, namespace=namespace, allow_usd=allow_usd)
    return _api_key(doc, spec, name=name, namespace=namespace, allow_usd=allow_usd)


def _metadata(doc: _Doc, meta: Mapping[str, object]) -> tuple[str, str]:
    """Name and namespace are DNS-1123 labels because they become Kubernetes namespaces and
    store keys; labels and annotations are accepted (kubectl tooling adds them) and ignored."""
    _check_fields(doc, meta, _METADATA_FIELDS, "metadata.")
    for extra in ("labels", "annotations"):
        if extra in meta:
            for key, value in _mapping(doc, meta[extra], f"metadata.{extra}").items():
                if not isinstance(value, str):
                    doc.fail(f"metadata.{extra}.{key}", f"must be a string, got {_show(value)}")
    name = _dns_label(doc, _required(doc, meta, "name", "metadata."), "metadata.name")
    namespace = _dns_label(
        doc, _required(doc, meta, "namespace", "metadata."), "metadata.namespace"
    )
    return name, namespace


def _quota_policy(
    doc: _Doc, spec: Mapping[str, object], *, name: str, namespace: str, allow_usd: bool
) -> QuotaPolicy:
    _check_fields(doc, spec, _POLICY_FIELDS, "spec.")
    patterns: tuple[str, ...] = ("*",)
    if "models" in spec:
        models = _mapping(doc, spec["models"], "spec.models")
        _check_fields(doc, models, _MODELS_FIELDS, "spec.models.")
        allow = _required(doc, models, "allow", "spec.models.")
        patterns = _model_patterns(doc, allow, "spec.models.allow")
    max_tokens = _token_count(doc, spec.get("defaultMaxTokens", 1024), "spec.defaultMaxTokens")
    reserve = spec.get("streamReserveTokens")
    if reserve is not None:
        reserve = _token_count(doc, reserve, "spec.streamReserveTokens")
    return QuotaPolicy(
        name=name,
        namespace=namespace,
        limits=_limits(doc, spec.get("limits", []), allow_usd=allow_usd),
        model_patterns=patterns,
        priority=_enum(doc, spec, "priority", Priority, Priority.STANDARD),
        fail_mode=_enum(doc, spec, "failMode", FailMode, FailMode.CLOSED),
        default_max_tokens=max_tokens,
        stream_reserve_tokens=reserve,
        time_zone=_time_zone(doc, spec.get("timeZone", "UTC")),
        source=doc.file,
    )


def _token_count(doc: _Doc, value: object, field: str) -> int:
    if not _is_int(value) or not 1 <= value <= _DEFAULT_MAX_TOKENS_MAX:
        doc.fail(
            field, f"must be an integer between 1 and {_DEFAULT_MAX_TOKENS_MAX}, got {_show(value)}"
        )
    return value


def _api_key(
    doc: _Doc, spec: Mapping[str, object], *, name: str, namespace: str, allow_usd: bool
) -> ApiKey:
    """The hash is normalised to lower case so lookups by the hex digest of a bearer token
    match however the operator pasted it."""
    _check_fields(doc, spec, _KEY_FIELDS, "spec.")
    sha = _required(doc, spec, "sha256", "spec.")
    if not isinstance(sha, str) or not _SHA256_HEX.fullmatch(sha):
        got = _show(sha)
        if isinstance(sha, str):
            got = f"{len(sha)} characters" if len(sha) != 64 else "a non-hex character"
        doc.fail("spec.sha256", f"must be 64 hex digits (the sha256 of the key), got {got}")
    limits = _limits(doc, spec.get("limits", []), allow_usd=allow_usd)
    return ApiKey(
        name=name, namespace=namespace, sha256=sha.lower(), limits=limits, source=doc.file
    )


def _model_patterns(doc: _Doc, allow: object, field: str) -> tuple[str, ...]:
    """An empty allow list would refuse every model; that is never what someone meant."""
    items = _list(doc, allow, field)
    if not items:
        doc.fail(field, "must not be empty; use ['*'] to allow every model")
    for i, pattern in enumerate(items):
        if not isinstance(pattern, str) or not pattern:
            doc.fail(f"{field}[{i}]", f"must be a non-empty string, got {_show(pattern)}")
    return tuple(str(p) for p in items)


def _limits(doc: _Doc, value: object, *, allow_usd: bool) -> tuple[Limit, ...]:
    """Limit names are unique per document because they name the counters and the 429s."""
    limits: list[Limit] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(_list(doc, value, "spec.limits")):
        limit = _limit(doc, item, f"spec.limits[{i}]", allow_usd=allow_usd)
        if limit.name in seen:
            doc.fail(
                f"spec.limits[{i}].name",
                f"duplicate limit name {limit.name!r} (also spec.limits[{seen[limit.name]}])",
            )
        seen[limit.name] = i
        limits.append(limit)
    return tuple(limits)


def _limit(doc: _Doc, value: object, field: str, *, allow_usd: bool) -> Limit:
    item = _mapping(doc, value, field)
    _check_fields(doc, item, _LIMIT_FIELDS, f"{field}.")
    name = _dns_label(doc, _required(doc, item, "name", f"{field}."), f"{field}.name")
    present = [m for m in _MEASURES if m in item]
    if len(present) != 1:
        got = " and ".join(present) if present else "none"
        doc.fail(field, f"needs exactly one of {', '.join(_MEASURES)}; got {got}")
    measure = Measure(present[0])
    amount = _amount(doc, measure, item[measure.value], f"{field}.{measure.value}", allow_usd)
    if measure is Measure.CONCURRENT:
        if "per" in item:
            doc.fail(f"{field}.per", "concurrent limits count requests in flight; remove 'per'")
        if "algorithm" in item:
            doc.fail(f"{field}.algorithm", "concurrent limits always use leases; remove it")
        return Limit(name=name, measure=measure, amount=amount, period_s=None)
    if "per" not in item:
        doc.fail(f"{field}.per", f"is required for {measure.value} limits (e.g. 1m, 1h, 1d)")
    period, months = _period(doc, item["per"], field)
    algorithm = _algorithm(doc, item.get("algorithm"), period, months, field)
    return Limit(
        name=name, measure=measure, amount=amount, period_s=period, algorithm=algorithm,
        months=months,
    )  # fmt: skip


def _algorithm(doc: _Doc, value: object, period: int, months: int, field: str) -> Algorithm:
    """Default: a token bucket for rates under a day, calendar windows for longer budgets."""
    if value is None:
        return Algorithm.CALENDAR if months or period >= 86400 else Algorithm.BUCKET
    if not isinstance(value, str) or value not in _WINDOWED:
        doc.fail(f"{field}.algorithm", f"must be one of {', '.join(_WINDOWED)}; got {_show(value)}")
    algorithm = Algorithm(value)
    if months and algorithm is not Algorithm.CALENDAR:
        doc.fail(f"{field}.algorithm", "month periods need the calendar algorithm")
    return algorithm


def _amount(doc: _Doc, measure: Measure, value: object, field: str, allow_usd: bool) -> int:
    """Dollars become integer micro-dollars so counters never accumulate float error."""
    if measure is not Measure.USD:
        if not _is_int(value) or value <= 0:
            doc.fail(field, f"must be a positive integer, got {_show(value)}")
        amount = value
    else:
        if not allow_usd:
            doc.fail(field, "usd limits need a price table; none is configured")
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            doc.fail(field, f"must be a positive number of dollars, got {_show(value)}")
        if not math.isfinite(value):
            doc.fail(field, f"must be a finite number of dollars, got {_show(value)}")
        amount = round(value * 1_000_000)
        if amount <= 0:
            doc.fail(field, f"{value} dollars rounds to zero micro-dollars")
    if amount > _AMOUNT_MAX:
        doc.fail(field, f"must be at most {_AMOUNT_MAX} (in {_unit(measure)}), got {amount}")
    return amount


def _period(doc: _Doc, value: object, field: str) -> tuple[int, int]:
    """(seconds, months): months > 0 for calendar months, whose length varies."""
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        shape = "a duration like 30s, 1m, 1h, 1d or 1mo (a number and s|m|h|d|mo)"
        doc.fail(f"{field}.per", f"must be {shape}, got {_show(value)}")
    count = int(match.group(1))
    if match.group(2) == "mo":
        if not 1 <= count <= _MONTHS_MAX:
            doc.fail(f"{field}.per", f"must be between 1mo and {_MONTHS_MAX}mo, got {value}")
        return count * 30 * 86400, count
    seconds = count * _UNIT_SECONDS[match.group(2)]
    if not _PERIOD_MIN_S <= seconds <= _PERIOD_MAX_S:
        doc.fail(f"{field}.per", f"must be between 1s and 366d, got {value}")
    return seconds, 0


def _time_zone(doc: _Doc, value: object) -> str:
    if not isinstance(value, str) or not value:
        doc.fail("spec.timeZone", f"must be an IANA time zone name, got {_show(value)}")
    try:
        ZoneInfo(value)
    except (ValueError, ZoneInfoNotFoundError):
        doc.fail("spec.timeZone", f"unknown time zone {value!r} (an IANA name: Europe/Berlin)")
    return value


def _enum(doc: _Doc, spec: Mapping[str, object], key: str, enum: type[_E], default: _E) -> _E:
    if key not in spec:
        return default
    value = spec[key]
    choices = [e.value for e in enum]
    if not isinstance(value, str) or value not in choices:
        doc.fail(f"spec.{key}", f"must be one of {', '.join(choices)}; got {_show(value)}")
    return enum(value)


def _dns_label(doc: _Doc, value: object, field: str) -> str:
    """DNS-1123 label: what Kubernetes accepts as a namespace name."""
    if not isinstance(value, str):
        doc.fail(field, f"must be a string, got {_show(value)}")
    if len(value) > _DNS_LABEL_MAX:
        doc.fail(field, f"must be at most {_DNS_LABEL_MAX} characters, got {len(value)}")
    if not _DNS_LABEL.fullmatch(value):
        doc.fail(
            field,
            f"must be a DNS-1123 label (lower-case letters, digits and '-', starting and "
            f"ending with a letter or digit), got {value!r}",
        )
    return value


def _check_fields(doc: _Doc, data: Mapping[str, object], allowed: Sequence[str], at: str) -> None:
    """Reject unknown fields, suggesting the closest known one to make typos obvious."""
    for key in data:
        if key not in allowed:
            hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            doc.fail(
                f"{at}{key}",
                f"unknown field {key!r} (known: {', '.join(allowed)}){suggestion}",
            )


def _required(doc: _Doc, data: Mapping[str, object], key: str, at: str) -> object:
    if key not in data or data[key] is None:
        doc.fail(f"{at}{key}", "is required")
    return data[key]


def _mapping(doc: _Doc, value: object, field: str | None) -> dict[str, object]:
    """`field` None means the document itself."""
    if not isinstance(value, dict):
        subject = "must be a mapping" if field else "the document must be a mapping"
        doc.fail(field, f"{subject}, got {_show(value)}")
    for key in value:
        if not isinstance(key, str):
            doc.fail(field, f"keys must be strings, got {_show(key)}")
    return value


def _list(doc: _Doc, value: object, field: str) -> list[object]:
    if not isinstance(value, list):
        doc.fail(field, f"must be a list, got {_show(value)}")
    return value


def _is_int(value: object) -> TypeGuard[int]:
    """YAML `true` is a Python bool, which is an int subclass; a bool is never an amount."""
    return isinstance(value, int) and not isinstance(value, bool)


def _unit(measure: Measure) -> str:
    return "micro-dollars" if measure is Measure.USD else measure.value


def _show(value: object) -> str:
    """Name a YAML value for a message: its type, and its text when short."""
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    kind = names.get(type(value), type(value).__name__)
    text = repr(value) if isinstance(value, str) else str(value).lower()
    return f"{kind} {text}" if len(text) <= 40 else kind
