"""Validation of `Capacity` documents and of a QuotaPolicy's `degrade` thresholds: what a
policy says should happen, short of a plain 429, when something runs short.

A Capacity is cluster-wide (the provider tier every namespace's requests share), so only the
platform team writes one. Its limits are the tier's requests, tokens and concurrency, never
dollars: money is a namespace's budget (QuotaPolicy), not what the provider can serve. Its
queue serves the earliest deadline (arrival + the class's maximum wait) first, so a higher
class may never wait longer than a lower one, or the lower class would overtake it; background
is the exception that may not queue at all (0s). Shedding goes in order as the estimated wait
grows: background first (never queued), then batch is refused, then standard is downgraded to
a cheaper model, so a threshold that could never fire in that order is refused here rather
than discovered in an incident.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from itertools import pairwise
from types import MappingProxyType

from extproc.policy._fields import (
    Doc,
    check_fields,
    dns_label,
    limit_list,
    list_,
    mapping,
    model_patterns,
    required,
    show,
    wait_s,
)
from extproc.policy.model import (
    DEFAULT_MAX_WAIT_S,
    Capacity,
    Degradation,
    Limit,
    Measure,
    Priority,
)
from extproc.policy.model_routes import model_name
from extproc.policy.routes import PROVIDERS

# Nothing waits in the queue longer than five minutes: Envoy holds the request that long
# (its ext_proc max_message_timeout, 310 s, must exceed it: envoy/local.yaml, the chart).
_FIELDS = ("provider", "models", "keyPool", "limits", "maxWait", "shedding")
MAX_WAIT_S = 300
_SHEDDING_FIELDS = ("refuseBatchAfter", "downgradeStandardAfter", "cheaper")
_DEGRADE_FIELDS = ("limit", "at", "models", "refuse")
_CLASSES = tuple(p.value for p in Priority)
# Classes whose maximum waits order the queue; background either never waits or goes last.
_QUEUED = (Priority.INTERACTIVE, Priority.STANDARD, Priority.BATCH)
_PERCENT = re.compile(r"([0-9]{1,3})%")
_GLOB = ("*", "?")


def capacity_document(
    doc: Doc, spec: Mapping[str, object], *, name: str, allow_usd: bool
) -> Capacity:
    """`allow_usd` is taken like every kind's, but a Capacity never counts dollars, with or
    without a price table."""
    del allow_usd
    check_fields(doc, spec, _FIELDS, "spec.")
    provider = required(doc, spec, "provider", "spec.")
    if not isinstance(provider, str) or provider not in PROVIDERS:
        doc.fail("spec.provider", f"must be one of {', '.join(PROVIDERS)}; got {show(provider)}")
    patterns: tuple[str, ...] = ("*",)
    if "models" in spec:
        empty = "leave spec.models out to cover every model of the provider"
        patterns = model_patterns(doc, spec["models"], "spec.models", empty=empty)
    key_pool = None
    if "keyPool" in spec:
        key_pool = dns_label(doc, spec["keyPool"], "spec.keyPool")
    limits = _limits(doc, required(doc, spec, "limits", "spec."))
    waits = _max_wait(doc, spec["maxWait"]) if "maxWait" in spec else DEFAULT_MAX_WAIT_S
    refuse_batch, downgrade, cheaper = _shedding(doc, spec.get("shedding", {}), waits)
    return Capacity(
        name=name,
        provider=provider,
        limits=limits,
        model_patterns=patterns,
        max_wait_s=waits,
        refuse_batch_after_s=refuse_batch,
        downgrade_standard_after_s=downgrade,
        cheaper=cheaper,
        source=doc.file,
        key_pool=key_pool,
    )


def _limits(doc: Doc, value: object) -> tuple[Limit, ...]:
    """usd is refused before the limit is parsed, so the message is about what a Capacity
    is rather than about the dollar amount or the price table."""
    for i, item in enumerate(list_(doc, value, "spec.limits")):
        if isinstance(item, dict) and Measure.USD.value in item:
            doc.fail(
                f"spec.limits[{i}].usd",
                "a Capacity is the provider's tier (requests, tokens, concurrency), not money; "
                "put dollar budgets in a QuotaPolicy",
            )
    limits = limit_list(doc, value, allow_usd=False)
    if not limits:
        doc.fail(
            "spec.limits",
            "must name at least one limit (a Capacity without limits is never short, so it "
            "would do nothing)",
        )
    return limits


def _max_wait(doc: Doc, value: object) -> Mapping[Priority, float]:
    written = mapping(doc, value, "spec.maxWait")
    check_fields(doc, written, _CLASSES, "spec.maxWait.")
    waits = dict(DEFAULT_MAX_WAIT_S)
    for key, item in written.items():
        field = f"spec.maxWait.{key}"
        waits[Priority(key)] = float(wait_s(doc, item, field, low_s=0, high_s=MAX_WAIT_S))
    for higher, lower in pairwise(_QUEUED):
        if waits[higher] > waits[lower]:
            at = lower if lower.value in written else higher
            doc.fail(
                f"spec.maxWait.{at.value}",
                f"{_wait(waits, higher, written)} is longer than {_wait(waits, lower, written)}: "
                "a higher class must not wait longer than a lower one (the queue serves the "
                f"earliest deadline first, so {lower.value} would overtake {higher.value})",
            )
    background, batch = waits[Priority.BACKGROUND], waits[Priority.BATCH]
    if 0 < background < batch:
        doc.fail(
            "spec.maxWait.background",
            f"{_wait(waits, Priority.BACKGROUND, written)} is shorter than "
            f"{_wait(waits, Priority.BATCH, written)}: background either never waits (0s) "
            "or waits at least as long as batch, so it never overtakes batch",
        )
    return MappingProxyType({p: waits[p] for p in Priority})


def _wait(waits: Mapping[Priority, float], cls: Priority, written: Mapping[str, object]) -> str:
    default = "" if cls.value in written else " (the default)"
    return f"{cls.value}'s {waits[cls]:.0f}s{default}"


def _shedding(
    doc: Doc, value: object, waits: Mapping[Priority, float]
) -> tuple[float | None, float | None, tuple[tuple[str, str], ...]]:
    item = mapping(doc, value, "spec.shedding")
    check_fields(doc, item, _SHEDDING_FIELDS, "spec.shedding.")
    refuse, downgrade = (_after(doc, item, key) for key in _SHEDDING_FIELDS[:2])
    cheaper: tuple[tuple[str, str], ...] = ()
    if "cheaper" in item:
        cheaper = substitutions(doc, item["cheaper"], "spec.shedding.cheaper")
    batch = waits[Priority.BATCH]
    if refuse is not None and refuse >= batch:
        doc.fail(
            "spec.shedding.refuseBatchAfter",
            f"{refuse:.0f}s is not shorter than maxWait.batch ({batch:.0f}s): a batch request "
            "that would wait longer than its maximum is refused anyway, so this would never "
            "fire; make it shorter or remove it",
        )
    standard = waits[Priority.STANDARD]
    if downgrade is not None and downgrade >= standard:
        doc.fail(
            "spec.shedding.downgradeStandardAfter",
            f"{downgrade:.0f}s is not shorter than maxWait.standard ({standard:.0f}s): a "
            "standard request that would wait longer than its maximum is refused, so it "
            "would never be sent to its cheaper model; make it shorter",
        )
    if refuse is not None and downgrade is not None and downgrade <= refuse:
        doc.fail(
            "spec.shedding.downgradeStandardAfter",
            f"{downgrade:.0f}s must be longer than refuseBatchAfter ({refuse:.0f}s): shedding "
            "goes in order (background, then batch, then standard's downgrade), so standard "
            "is not sent to a cheaper model while batch is still queued",
        )
    if downgrade is not None and not cheaper:
        doc.fail(
            "spec.shedding.cheaper",
            "is required with downgradeStandardAfter: map model patterns to the cheaper "
            "model standard requests are sent to, e.g. {'gpt-4o*': gpt-4o-mini}",
        )
    if cheaper and downgrade is None:
        doc.fail(
            "spec.shedding.cheaper",
            "is used only past downgradeStandardAfter, which is not set; set it or remove cheaper",
        )
    return refuse, downgrade, cheaper


def _after(doc: Doc, item: Mapping[str, object], key: str) -> float | None:
    if key not in item:
        return None
    field = f"spec.shedding.{key}"
    return float(wait_s(doc, item[key], field, low_s=1, high_s=MAX_WAIT_S))


def substitutions(doc: Doc, value: object, field: str) -> tuple[tuple[str, str], ...]:
    """An ordered mapping of model pattern -> the cheaper model sent instead (the first
    pattern matching wins). The target is sent to the provider as written, so a glob
    character in it is a mistake, not a wildcard."""
    items = mapping(doc, value, field)
    if not items:
        doc.fail(field, "must map at least one model pattern to its cheaper model")
    pairs: list[tuple[str, str]] = []
    for pattern, target in items.items():
        at = f"{field}.{pattern}"
        model_name(doc, pattern, at)
        model = model_name(doc, target, at)
        for char in _GLOB:
            if char in model:
                doc.fail(
                    at,
                    f"is the model requests are sent to, so {char!r} is not a wildcard "
                    f"here; got {model!r}",
                )
        pairs.append((pattern, model))
    return tuple(pairs)


def degradations(doc: Doc, value: object, limits: tuple[Limit, ...]) -> tuple[Degradation, ...]:
    """A QuotaPolicy's `spec.degrade`, lowest threshold first (the order they take effect
    as a budget runs down). Each names one of the policy's own windowed limits."""
    own = {limit.name: limit for limit in limits}
    seen: dict[tuple[str, int], int] = {}
    found: list[Degradation] = []
    for i, item in enumerate(list_(doc, value, "spec.degrade")):
        entry = _degradation(doc, item, f"spec.degrade[{i}]", own)
        key = (entry.limit, entry.at_percent)
        if key in seen:
            doc.fail(
                f"spec.degrade[{i}].at",
                f"repeats spec.degrade[{seen[key]}] ({entry.limit} at {entry.at_percent}%); "
                "write both actions in one entry",
            )
        seen[key] = i
        found.append(entry)
    return tuple(sorted(found, key=lambda entry: entry.at_percent))


def _degradation(doc: Doc, value: object, field: str, own: Mapping[str, Limit]) -> Degradation:
    entry = mapping(doc, value, field)
    check_fields(doc, entry, _DEGRADE_FIELDS, f"{field}.")
    limit = _own_limit(doc, required(doc, entry, "limit", f"{field}."), f"{field}.limit", own)
    at = _percent(doc, required(doc, entry, "at", f"{field}."), f"{field}.at")
    if "models" not in entry and "refuse" not in entry:
        doc.fail(
            field,
            "needs models (the cheaper model for each pattern), refuse (the classes to "
            "refuse), or both; otherwise the threshold does nothing",
        )
    models = substitutions(doc, entry["models"], f"{field}.models") if "models" in entry else ()
    refuse = _classes(doc, entry["refuse"], f"{field}.refuse") if "refuse" in entry else ()
    return Degradation(limit=limit, at_percent=at, models=models, refuse=refuse)


def _own_limit(doc: Doc, value: object, field: str, own: Mapping[str, Limit]) -> str:
    if not isinstance(value, str):
        doc.fail(field, f"must name one of this policy's spec.limits, got {show(value)}")
    limit = own.get(value)
    if limit is None:
        if not own:
            doc.fail(field, f"no limit named {value!r}: this policy's spec.limits is empty")
        hint = difflib.get_close_matches(value, list(own), n=1, cutoff=0.6)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        doc.fail(
            field,
            f"no limit named {value!r} in this policy's spec.limits "
            f"(defined: {', '.join(own)}){suggestion}",
        )
    if limit.measure is Measure.CONCURRENT:
        doc.fail(
            field,
            f"{value!r} is a concurrent limit: it counts requests in flight, not a budget "
            "that runs down; name a requests, tokens or usd limit",
        )
    return value


def _percent(doc: Doc, value: object, field: str) -> int:
    match = _PERCENT.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        doc.fail(field, f"must be a whole percentage like 80% (1% to 100%), got {show(value)}")
    percent = int(match.group(1))
    if not 1 <= percent <= 100:
        doc.fail(field, f"must be between 1% and 100%, got {value}")
    return percent


def _classes(doc: Doc, value: object, field: str) -> tuple[Priority, ...]:
    items = list_(doc, value, field)
    if not items:
        doc.fail(field, f"must name at least one class ({', '.join(_CLASSES)})")
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if not isinstance(item, str) or item not in _CLASSES:
            doc.fail(f"{field}[{i}]", f"must be one of {', '.join(_CLASSES)}; got {show(item)}")
        if item in seen:
            doc.fail(f"{field}[{i}]", f"repeats {item!r} ({field}[{seen[item]}])")
        seen[item] = i
    return tuple(Priority(str(item)) for item in items)
