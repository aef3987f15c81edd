"""The price table behind `usd` limits: what one model's tokens cost, in exact integers.

Money never touches a float after parsing. A price written as USD per million tokens is
numerically equal to micro-dollars per token, so we store it as integer **pico-dollars per
token** (USD/M * 10**6): 0.075 $/M is exactly 75_000 p$/token. The YAML number is read back
through its shortest decimal text (`repr`), which is the text the operator wrote; more than 6
decimal places cannot be represented and is rejected rather than rounded. A cost is the exact
sum in pico-dollars, rounded UP once to whole micro-dollars (the unit quota counters use), so
a request is never under-charged and counters never drift.

Which entry prices a model (documented for operators in examples/prices.yaml):
  1. an entry without wildcards (`*`, `?`, `[...]`) whose name equals the model exactly;
  2. else the matching pattern with the most literal characters (wildcards don't count);
  3. ties go to the entry written first in the file.
Matching is case-sensitive (`fnmatchcase`), like the policy's `models.allow` patterns.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from extproc.errors import ConfigError, InvariantError

API_VERSION = "tokengate.dev/v1"
KIND = "PriceTable"
MAX_FILE_BYTES = 1 << 20
MAX_USD_PER_MILLION = 1_000_000  # far above any list price: a larger value is a typo
PICO_PER_MICRO = 10**6
CACHE_SIZE = 4096  # distinct model names remembered per table; requests name few models

_TOP_FIELDS = ("apiVersion", "kind", "metadata", "prices")
_ENTRY_FIELDS = ("model", "input", "cachedInput", "cacheWrite", "output")
_WILDCARD = re.compile(r"\*|\?|\[!?\]?[^\]]*\]")
_Fail = Callable[[str | None, str], "PriceTableError"]


_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_BaseLoader):  # type: ignore[valid-type,misc]
    """Safe loading where a repeated key is an error: YAML would keep the last value silently.
    (Own copy, not the policy loader's: the policy validator may import this module.)"""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue  # not a field name: rejected later as an unknown field
            if key.value in seen:
                msg = f"duplicate key {key.value!r}"
                raise yaml.constructor.ConstructorError(None, None, msg, key.start_mark)
            seen.add(key.value)
        result: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return result


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where (1-based line and column) and what, without PyYAML's multi-line layout."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is None or problem is None:
        return f"invalid YAML: {exc}"
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"


class PriceTableError(ConfigError):
    """A price table is unusable. The message names the file and, when known, the field."""

    def __init__(self, *, file: str, field: str | None, problem: str) -> None:
        super().__init__(f"{file}: {field}: {problem}" if field else f"{file}: {problem}")
        self.file = file
        self.field = field
        self.problem = problem


@dataclass(frozen=True, slots=True, kw_only=True)
class Price:
    """One entry's prices in pico-dollars per token; `model` is the entry (name or pattern)."""

    model: str
    input_pico: int
    cached_input_pico: int
    output_pico: int
    # Anthropic bills writing a prompt to its cache above the input rate (1.25x for the
    # 5-minute cache); absent from the table: charged at the input rate.
    cache_write_pico: int | None = None

    def cost_micros(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cached_prompt_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> int:
        """Settled cost. Cached and cache-write tokens are part of `prompt_tokens`.
        Inconsistent provider numbers (more cached than prompt tokens) forfeit the discount:
        never under-charge. A negative count is a bug (the codecs refuse negative usage,
        the tokenizer cannot produce one): `InvariantError`, answered as a logged 500."""
        if min(prompt_tokens, completion_tokens, cached_prompt_tokens, cache_write_tokens) < 0:
            raise InvariantError("token counts must be non-negative")
        if cached_prompt_tokens + cache_write_tokens > prompt_tokens:
            cached_prompt_tokens = cache_write_tokens = 0
        write_pico = self.input_pico if self.cache_write_pico is None else self.cache_write_pico
        pico = (
            (prompt_tokens - cached_prompt_tokens - cache_write_tokens) * self.input_pico
            + cached_prompt_tokens * self.cached_input_pico
            + cache_write_tokens * write_pico
            + completion_tokens * self.output_pico
        )
        return -(-pico // PICO_PER_MICRO)

    def estimate_micros(self, prompt_tokens: int, expected_completion_tokens: int) -> int:
        """What to reserve: no cache discount (unknown before the answer), and the table
        guarantees cachedInput <= input, so an estimate is never below the settled cost."""
        return self.cost_micros(prompt_tokens, expected_completion_tokens)


@dataclass(frozen=True, slots=True, kw_only=True)
class PriceTable:
    """An immutable table, replaced whole on reload; `price_for` runs per request, cached."""

    source: str
    exact: Mapping[str, Price]
    patterns: tuple[tuple[re.Pattern[str], Price], ...]  # in precedence order
    _lookup: Callable[[str], Price | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lookup", functools.lru_cache(CACHE_SIZE)(self._resolve))

    @classmethod
    def parse(cls, text: str, *, file: str) -> PriceTable:
        """Validate one YAML document; every problem raises `PriceTableError`."""
        try:
            docs = [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]
        except yaml.YAMLError as exc:
            raise PriceTableError(file=file, field=None, problem=_yaml_problem(exc)) from exc
        if len(docs) != 1:
            raise PriceTableError(
                file=file, field=None, problem=f"needs exactly one document, got {len(docs)}"
            )
        return _build(docs[0], file)

    def price_for(self, model: str) -> Price | None:
        """The entry pricing `model`, or None: the caller must refuse, never charge zero."""
        return self._lookup(model)

    def _resolve(self, model: str) -> Price | None:
        if (price := self.exact.get(model)) is not None:
            return price
        return next((price for rx, price in self.patterns if rx.match(model)), None)


def load_price_table(path: Path) -> PriceTable:
    """Read and parse a price table file; errors name the path."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PriceTableError(
            file=str(path), field=None, problem=f"cannot be read: {exc.strerror}"
        ) from exc
    if len(raw) > MAX_FILE_BYTES:
        raise PriceTableError(file=str(path), field=None, problem="is larger than 1 MiB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PriceTableError(
            file=str(path), field=None, problem=f"is not valid UTF-8 (byte offset {exc.start})"
        ) from exc
    return PriceTable.parse(text, file=str(path))


def _build(doc: object, file: str) -> PriceTable:
    def fail(where: str | None, problem: str) -> PriceTableError:
        return PriceTableError(file=file, field=where, problem=problem)

    if not isinstance(doc, dict):
        raise fail(None, f"the document must be a mapping, got {_show(doc)}")
    _check_fields(doc, _TOP_FIELDS, "", fail)
    if doc.get("apiVersion") != API_VERSION:
        raise fail("apiVersion", f"must be {API_VERSION!r}, got {_show(doc.get('apiVersion'))}")
    if doc.get("kind") != KIND:
        raise fail("kind", f"must be {KIND!r}, got {_show(doc.get('kind'))}")
    entries = doc.get("prices")
    if not isinstance(entries, list) or not entries:
        raise fail("prices", f"must be a non-empty list of entries, got {_show(entries)}")
    first_at: dict[str, int] = {}
    exact: dict[str, Price] = {}
    ranked: list[tuple[int, int, str, Price]] = []
    for i, entry in enumerate(entries):
        price = _entry(entry, f"prices[{i}]", fail)
        if price.model in first_at:
            first = f"prices[{first_at[price.model]}]"
            raise fail(
                f"prices[{i}].model", f"duplicate entry for {price.model!r} (first at {first})"
            )
        first_at[price.model] = i
        literal = len(_WILDCARD.sub("", price.model))
        if literal == len(price.model):
            exact[price.model] = price
        else:
            ranked.append((-literal, i, price.model, price))
    patterns = tuple((re.compile(fnmatch.translate(m)), p) for _, _, m, p in sorted(ranked))
    return PriceTable(source=file, exact=MappingProxyType(exact), patterns=patterns)


def _entry(entry: object, at: str, fail: _Fail) -> Price:
    if not isinstance(entry, dict):
        raise fail(at, f"must be a mapping, got {_show(entry)}")
    _check_fields(entry, _ENTRY_FIELDS, f"{at}.", fail)
    model = entry.get("model")
    if not isinstance(model, str) or not model.strip():
        raise fail(f"{at}.model", f"must be a non-empty string, got {_show(model)}")
    for name in ("input", "output"):
        if name not in entry:
            raise fail(f"{at}.{name}", "is required (USD per 1 million tokens)")
    pico = {name: _pico(entry[name], f"{at}.{name}", fail) for name in entry if name != "model"}
    cached = pico.get("cachedInput", pico["input"])
    if cached > pico["input"]:
        raise fail(f"{at}.cachedInput", "must not exceed input (reservations assume input)")
    return Price(
        model=model, input_pico=pico["input"], cached_input_pico=cached,
        output_pico=pico["output"], cache_write_pico=pico.get("cacheWrite"),
    )  # fmt: skip


def _check_fields(data: dict[object, object], known: tuple[str, ...], at: str, fail: _Fail) -> None:
    for key in data:
        if key not in known:
            raise fail(f"{at}{key}", f"unknown field {key!r} (known: {', '.join(known)})")


def _pico(value: object, where: str, fail: _Fail) -> int:
    """USD per million tokens -> integer pico-dollars per token, exactly or not at all."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise fail(where, f"must be a non-negative number, got {_show(value)}")
    if not math.isfinite(value) or value > MAX_USD_PER_MILLION:
        raise fail(where, f"must be a finite number at most {MAX_USD_PER_MILLION}, got {value}")
    scaled = Decimal(repr(value)) * PICO_PER_MICRO
    if scaled != scaled.to_integral_value():
        raise fail(where, f"must have at most 6 decimal places, got {value}")
    return int(scaled)


def _show(value: object) -> str:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return repr(value)
    return {type(None): "nothing (null)", bool: "a boolean", dict: "a mapping", list: "a list"}.get(
        type(value), type(value).__name__
    )
