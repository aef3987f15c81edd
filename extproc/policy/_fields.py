"""Field-level checks shared by every policy kind's validator: one precise `PolicyError`
naming file, document and field at the first problem (see `validate` for why strict)."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from typing import NoReturn, TypeGuard

from extproc.errors import PolicyError
from extproc.policy.model import Algorithm, Limit, Measure

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_LABEL_MAX = 63
_DURATION = re.compile(r"([0-9]{1,12})(mo|[smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PERIOD_MIN_S = 1
_PERIOD_MAX_S = 366 * 86400
# Counters live in Redis Lua, whose numbers are doubles: integers stay exact up to 2**53.
_AMOUNT_MAX = 2**53 - 1
_MEASURES = tuple(m.value for m in Measure)
_LIMIT_FIELDS = ("name", *_MEASURES, "per", "algorithm")
_MONTHS_MAX = 12
_WINDOWED = tuple(a.value for a in Algorithm if a is not Algorithm.LEASE)
TOKEN_COUNT_MAX = 1_000_000


class Doc:
    """Where we are (file and 1-based document index), so every helper can fail precisely."""

    def __init__(self, *, file: str, index: int) -> None:
        self.file = file
        self.index = index

    def fail(self, field: str | None, problem: str) -> NoReturn:
        raise PolicyError(file=self.file, document=self.index, field=field, problem=problem)


def limit_list(
    doc: Doc, value: object, *, allow_usd: bool, field: str = "spec.limits"
) -> tuple[Limit, ...]:
    """Limit names are unique per list because they name the counters and the 429s."""
    limits: list[Limit] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(list_(doc, value, field)):
        limit = parse_limit(doc, item, f"{field}[{i}]", allow_usd=allow_usd)
        if limit.name in seen:
            doc.fail(
                f"{field}[{i}].name",
                f"duplicate limit name {limit.name!r} (also {field}[{seen[limit.name]}])",
            )
        seen[limit.name] = i
        limits.append(limit)
    return tuple(limits)


def parse_limit(doc: Doc, value: object, field: str, *, allow_usd: bool) -> Limit:
    item = mapping(doc, value, field)
    check_fields(doc, item, _LIMIT_FIELDS, f"{field}.")
    name = dns_label(doc, required(doc, item, "name", f"{field}."), f"{field}.name")
    present = [m for m in _MEASURES if m in item]
    if len(present) != 1:
        got = " and ".join(present) if present else "none"
        doc.fail(field, f"needs exactly one of {', '.join(_MEASURES)}; got {got}")
    measure = Measure(present[0])
    amount = parse_amount(doc, measure, item[measure.value], f"{field}.{measure.value}", allow_usd)
    if measure is Measure.CONCURRENT:
        if "per" in item:
            doc.fail(f"{field}.per", "concurrent limits count requests in flight; remove 'per'")
        if "algorithm" in item:
            doc.fail(f"{field}.algorithm", "concurrent limits always use leases; remove it")
        return Limit(name=name, measure=measure, amount=amount, period_s=None)
    if "per" not in item:
        doc.fail(f"{field}.per", f"is required for {measure.value} limits (e.g. 1m, 1h, 1d)")
    period, months = parse_period(doc, item["per"], field)
    algorithm = parse_algorithm(doc, item.get("algorithm"), period, months, field)
    return Limit(
        name=name, measure=measure, amount=amount, period_s=period, algorithm=algorithm,
        months=months,
    )  # fmt: skip


def parse_algorithm(doc: Doc, value: object, period: int, months: int, field: str) -> Algorithm:
    """Default: a token bucket for rates under a day, calendar windows for longer budgets."""
    if value is None:
        return Algorithm.CALENDAR if months or period >= 86400 else Algorithm.BUCKET
    if not isinstance(value, str) or value not in _WINDOWED:
        doc.fail(f"{field}.algorithm", f"must be one of {', '.join(_WINDOWED)}; got {show(value)}")
    algorithm = Algorithm(value)
    if months and algorithm is not Algorithm.CALENDAR:
        doc.fail(f"{field}.algorithm", "month periods need the calendar algorithm")
    return algorithm


def parse_amount(doc: Doc, measure: Measure, value: object, field: str, allow_usd: bool) -> int:
    """Dollars become integer micro-dollars so counters never accumulate float error."""
    if measure is not Measure.USD:
        if not is_int(value) or value <= 0:
            doc.fail(field, f"must be a positive integer, got {show(value)}")
        amount = value
    else:
        if not allow_usd:
            doc.fail(field, "usd limits need a price table; none is configured")
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            doc.fail(field, f"must be a positive number of dollars, got {show(value)}")
        if not math.isfinite(value):
            doc.fail(field, f"must be a finite number of dollars, got {show(value)}")
        amount = round(value * 1_000_000)
        if amount <= 0:
            doc.fail(field, f"{value} dollars rounds to zero micro-dollars")
    if amount > _AMOUNT_MAX:
        doc.fail(field, f"must be at most {_AMOUNT_MAX} (in {unit(measure)}), got {amount}")
    return amount


def parse_period(doc: Doc, value: object, field: str) -> tuple[int, int]:
    """(seconds, months): months > 0 for calendar months, whose length varies."""
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        shape = "a duration like 30s, 1m, 1h, 1d or 1mo (a number and s|m|h|d|mo)"
        doc.fail(f"{field}.per", f"must be {shape}, got {show(value)}")
    count = int(match.group(1))
    if match.group(2) == "mo":
        if not 1 <= count <= _MONTHS_MAX:
            doc.fail(f"{field}.per", f"must be between 1mo and {_MONTHS_MAX}mo, got {value}")
        return count * 30 * 86400, count
    seconds = count * _UNIT_SECONDS[match.group(2)]
    if not _PERIOD_MIN_S <= seconds <= _PERIOD_MAX_S:
        doc.fail(f"{field}.per", f"must be between 1s and 366d, got {value}")
    return seconds, 0


def duration_s(doc: Doc, value: object, field: str) -> int:
    """A duration written like a limit's `per`, in whole seconds, between 1s and 366d;
    months are refused (their length varies), so `30d` says what `1mo` would mean."""
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if match is None or match.group(2) == "mo":
        shape = "a duration like 30s, 1m, 1h or 14d (a number and s|m|h|d)"
        doc.fail(field, f"must be {shape}, got {show(value)}")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not _PERIOD_MIN_S <= seconds <= _PERIOD_MAX_S:
        doc.fail(field, f"must be between 1s and 366d, got {value}")
    return seconds


def wait_s(doc: Doc, value: object, field: str, *, low_s: int, high_s: int) -> int:
    """A short wait written like a limit's `per` (`0s`, `2s`, `1m`), in whole seconds between
    `low_s` and `high_s`; months are refused. Unlike `duration_s`, zero may be allowed: a
    class that may not wait at all is a choice, not a typo."""
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if match is None or match.group(2) == "mo":
        shape = f"a duration like {low_s}s, 2s, 30s or 1m (a number and s|m|h)"
        doc.fail(field, f"must be {shape}, got {show(value)}")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not low_s <= seconds <= high_s:
        doc.fail(field, f"must be between {low_s}s and {high_s}s, got {value}")
    return seconds


def model_patterns(doc: Doc, value: object, field: str, *, empty: str) -> tuple[str, ...]:
    """A list of fnmatch patterns of model names. An empty list would match nothing, which is
    never what someone meant; `empty` says what to write instead."""
    items = list_(doc, value, field)
    if not items:
        doc.fail(field, f"must not be empty; {empty}")
    for i, pattern in enumerate(items):
        if not isinstance(pattern, str) or not pattern:
            doc.fail(f"{field}[{i}]", f"must be a non-empty string, got {show(pattern)}")
    return tuple(str(p) for p in items)


def token_count(doc: Doc, value: object, field: str) -> int:
    """A number of completion tokens a policy writes or reserves. A million is beyond any
    model's completion limit, so a larger value is a typo (an extra zero), not a wish."""
    if not is_int(value) or not 1 <= value <= TOKEN_COUNT_MAX:
        doc.fail(field, f"must be an integer between 1 and {TOKEN_COUNT_MAX}, got {show(value)}")
    return value


def dns_label(doc: Doc, value: object, field: str) -> str:
    """DNS-1123 label: what Kubernetes accepts as a namespace name."""
    if not isinstance(value, str):
        doc.fail(field, f"must be a string, got {show(value)}")
    if len(value) > _DNS_LABEL_MAX:
        doc.fail(field, f"must be at most {_DNS_LABEL_MAX} characters, got {len(value)}")
    if not _DNS_LABEL.fullmatch(value):
        doc.fail(
            field,
            f"must be a DNS-1123 label (lower-case letters, digits and '-', starting and "
            f"ending with a letter or digit), got {value!r}",
        )
    return value


def check_fields(doc: Doc, data: Mapping[str, object], allowed: Sequence[str], at: str) -> None:
    """Reject unknown fields, suggesting the closest known one to make typos obvious."""
    for key in data:
        if key not in allowed:
            hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            doc.fail(
                f"{at}{key}",
                f"unknown field {key!r} (known: {', '.join(allowed)}){suggestion}",
            )


def required(doc: Doc, data: Mapping[str, object], key: str, at: str) -> object:
    if key not in data or data[key] is None:
        doc.fail(f"{at}{key}", "is required")
    return data[key]


def mapping(doc: Doc, value: object, field: str | None) -> dict[str, object]:
    """`field` None means the document itself."""
    if not isinstance(value, dict):
        subject = "must be a mapping" if field else "the document must be a mapping"
        doc.fail(field, f"{subject}, got {show(value)}")
    for key in value:
        if not isinstance(key, str):
            doc.fail(field, f"keys must be strings, got {show(key)}")
    return value


def list_(doc: Doc, value: object, field: str) -> list[object]:
    if not isinstance(value, list):
        doc.fail(field, f"must be a list, got {show(value)}")
    return value


def is_int(value: object) -> TypeGuard[int]:
    """YAML `true` is a Python bool, which is an int subclass; a bool is never an amount."""
    return isinstance(value, int) and not isinstance(value, bool)


def unit(measure: Measure) -> str:
    return "micro-dollars" if measure is Measure.USD else measure.value


def show(value: object) -> str:
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
