"""Validation of `ProviderKeyPool` documents: the keys of one provider account that a
`ModelRoute` backend may be served with (`keyPool` on the backend).

A pool is cluster-wide: its keys belong to the provider account every namespace shares, so
only the platform team writes one. The policy names each key and the file that holds it (a
mounted Secret), never the key itself; the loader does not read those files (they exist in
the sidecar's pod, not where `ctl policy validate` runs). Paths are absolute and normalised,
so that two spellings of one file cannot pass as two keys. An expiry is a date (the key is
used until the end of that UTC day) or an RFC 3339 timestamp with an offset; a naive time
would mean something else on every machine. Whether a backend's pool exists and holds keys
of its provider is a check across documents: `key_pool_reference_problem`, from the loader.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path

from extproc.policy._fields import (
    Doc,
    check_fields,
    dns_label,
    duration_s,
    limit_list,
    list_,
    mapping,
    required,
    show,
)
from extproc.policy.model import DEFAULT_WARN_BEFORE_S, Backend, KeyPool, Limit, Measure, PoolKey
from extproc.policy.routes import PROVIDERS

MAX_KEYS = 50
PATH_MAX = 4096  # Linux PATH_MAX, terminating NUL included
DAY_S = 86400
_FIELDS = ("provider", "keys", "warnBefore")
_KEY_FIELDS = ("name", "file", "expires", "limits")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIME = r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
_TIMESTAMP = re.compile(_TIME + r"([Zz]|[+-][0-9]{2}:[0-9]{2})")
_NAIVE = re.compile(_TIME)
EXPIRES_FORMS = (
    "a date (2027-01-31: the key is used until the end of that UTC day) or an RFC 3339 "
    "timestamp with an offset (2027-01-31T18:00:00Z, 2027-01-31T18:00:00+01:00)"
)


def key_pool_document(
    doc: Doc, spec: Mapping[str, object], *, name: str, allow_usd: bool = False
) -> KeyPool:
    check_fields(doc, spec, _FIELDS, "spec.")
    provider = required(doc, spec, "provider", "spec.")
    if not isinstance(provider, str) or provider not in PROVIDERS:
        doc.fail("spec.provider", f"must be one of {', '.join(PROVIDERS)}; got {show(provider)}")
    warn_before = DEFAULT_WARN_BEFORE_S
    if "warnBefore" in spec:
        warn_before = duration_s(doc, spec["warnBefore"], "spec.warnBefore")
    return KeyPool(
        name=name,
        provider=provider,
        keys=_keys(doc, required(doc, spec, "keys", "spec."), allow_usd=allow_usd),
        warn_before_s=float(warn_before),
        source=doc.file,
    )


def expires_at(doc: Doc, value: object, field: str) -> float:
    """The unix time from which a key is no longer used. The loader hands timestamps over
    as the text written (see `loader._StrictLoader`), so both forms arrive as strings."""
    if not isinstance(value, str):
        doc.fail(field, f"must be {EXPIRES_FORMS}; got {show(value)}")
    if _DATE.fullmatch(value):
        try:
            day = date.fromisoformat(value)
        except ValueError as exc:
            doc.fail(field, f"must be a real calendar date, got {value!r} ({exc})")
        # The end of the day is the start of the next; adding seconds stays valid on 9999-12-31.
        return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() + DAY_S
    if _TIMESTAMP.fullmatch(value):
        try:
            return datetime.fromisoformat(value.upper()).timestamp()
        except ValueError as exc:
            doc.fail(field, f"must be a real date and time, got {value!r} ({exc})")
    if _NAIVE.fullmatch(value):
        doc.fail(
            field,
            f"needs an offset (Z for UTC, or one like +01:00), got {value!r}; must be "
            f"{EXPIRES_FORMS}",
        )
    doc.fail(field, f"must be {EXPIRES_FORMS}; got {show(value)}")


def key_file(doc: Doc, value: object, field: str) -> Path:
    """The absolute, normalised path of the file holding one key."""
    if not isinstance(value, str) or not value:
        doc.fail(field, f"must be the absolute path of the file holding the key, got {show(value)}")
    if len(value) > PATH_MAX:
        doc.fail(field, f"must be at most {PATH_MAX} characters, got {len(value)}")
    for position, char in enumerate(value):
        if not char.isprintable():
            doc.fail(field, f"must not contain control characters; found {char!r} at {position}")
    if not value.startswith("/"):
        doc.fail(field, f"must be an absolute path (starting with '/'), got {value!r}")
    segments = value.split("/")[1:]
    if ".." in segments:
        doc.fail(field, f"must not contain '..' segments (name the file itself), got {value!r}")
    if value.endswith("/"):
        doc.fail(field, f"must name a file, not a directory (no trailing '/'), got {value!r}")
    if "" in segments or "." in segments:
        doc.fail(field, f"must be a normalised path (no '//' or '.' segments), got {value!r}")
    return Path(value)


def key_pool_reference_problem(
    backend: Backend, pools: Mapping[str, KeyPool], *, where: Mapping[str, str]
) -> str | None:
    """What is wrong with the pool a backend names (None: nothing, or it names none).
    `pools` are every pool loaded, by name; `where` says where each is defined."""
    name = backend.key_pool
    if name is None:
        return None
    pool = pools.get(name)
    if pool is None:
        return _missing(name, sorted(pools))
    if pool.provider != backend.provider:
        return (
            f"ProviderKeyPool {name!r} ({where.get(name, pool.source)}) holds {pool.provider} "
            f"keys, but this backend's provider is {backend.provider}"
        )
    return None


def _missing(name: str, known: Sequence[str]) -> str:
    if not known:
        return f"no ProviderKeyPool named {name!r} is defined (none is)"
    hint = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    return f"no ProviderKeyPool named {name!r} is defined (defined: {', '.join(known)}){suggestion}"


def _keys(doc: Doc, value: object, *, allow_usd: bool) -> tuple[PoolKey, ...]:
    items = list_(doc, value, "spec.keys")
    if not items:
        doc.fail("spec.keys", "must name at least one key")
    if len(items) > MAX_KEYS:
        doc.fail("spec.keys", f"must name at most {MAX_KEYS} keys, got {len(items)}")
    keys: list[PoolKey] = []
    names: dict[str, int] = {}
    files: dict[Path, int] = {}
    for i, item in enumerate(items):
        key = _key(doc, item, f"spec.keys[{i}]", allow_usd=allow_usd)
        if key.name in names:
            doc.fail(
                f"spec.keys[{i}].name",
                f"duplicate key name {key.name!r} (also spec.keys[{names[key.name]}])",
            )
        if key.file in files:
            first = files[key.file]
            doc.fail(
                f"spec.keys[{i}].file",
                f"{str(key.file)!r} is also the file of spec.keys[{first}] "
                f"({keys[first].name}); each key has its own file",
            )
        names[key.name] = files[key.file] = i
        keys.append(key)
    return tuple(keys)


def _key(doc: Doc, value: object, field: str, *, allow_usd: bool) -> PoolKey:
    item = mapping(doc, value, field)
    check_fields(doc, item, _KEY_FIELDS, f"{field}.")
    name = dns_label(doc, required(doc, item, "name", f"{field}."), f"{field}.name")
    path = key_file(doc, required(doc, item, "file", f"{field}."), f"{field}.file")
    expires = item.get("expires")
    return PoolKey(
        name=name,
        file=path,
        expires_at=None if expires is None else expires_at(doc, expires, f"{field}.expires"),
        limits=_budget(doc, item.get("limits", []), f"{field}.limits", allow_usd=allow_usd),
    )


def _budget(doc: Doc, value: object, field: str, *, allow_usd: bool) -> tuple[Limit, ...]:
    """A key's budget counts what it served (charged when each answer settles, whichever
    namespace sent it); requests in flight are a capacity, not a key's budget."""
    limits = limit_list(doc, value, allow_usd=allow_usd, field=field)
    for i, limit in enumerate(limits):
        if limit.measure is Measure.CONCURRENT:
            doc.fail(
                f"{field}[{i}].concurrent",
                "a key's budget counts what it served over a window (requests, tokens or "
                "usd per period); concurrency is not a key budget",
            )
    return limits
