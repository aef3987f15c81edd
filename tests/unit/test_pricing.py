"""The price table: parsing (one case per invalid input, with the message an operator reads),
which entry prices a model, and exact, rounded-up integer costs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.errors import ConfigError, InvariantError
from extproc.policy.prices import (
    CACHE_SIZE,
    MAX_FILE_BYTES,
    Price,
    PriceTable,
    PriceTableError,
    load_price_table,
)

EXAMPLE = Path(__file__).parents[2] / "examples" / "prices.yaml"
HEAD = "apiVersion: tokengate.dev/v1\nkind: PriceTable\n"
BRIEF = HEAD + (
    "prices:            # USD per 1 million tokens\n"
    '  - {model: "gpt-4o",       input: 2.50, cachedInput: 1.25, output: 10.00}\n'
    '  - {model: "gpt-4o-mini*", input: 0.15, cachedInput: 0.075, output: 0.60}\n'
    '  - {model: "claude-*",     input: 3.00, output: 15.00}\n'
)


def table(*entries: str) -> PriceTable:
    return PriceTable.parse(HEAD + "prices:\n" + "".join(f"  - {e}\n" for e in entries), file="t")


def price(input_usd: str, output_usd: str, cached_usd: str | None = None) -> Price:
    cached = "" if cached_usd is None else f", cachedInput: {cached_usd}"
    found = table(f"{{model: m, input: {input_usd}, output: {output_usd}{cached}}}").price_for("m")
    assert found is not None
    return found


# --- parsing -----------------------------------------------------------------------------


def test_parse_brief_example_exact_pico_dollars_per_token() -> None:
    t = PriceTable.parse(BRIEF, file="prices.yaml")
    assert t.source == "prices.yaml"
    assert t.price_for("gpt-4o") == Price(
        model="gpt-4o", input_pico=2_500_000, cached_input_pico=1_250_000, output_pico=10_000_000
    )
    assert t.price_for("gpt-4o-mini-2024-07-18") == Price(
        model="gpt-4o-mini*", input_pico=150_000, cached_input_pico=75_000, output_pico=600_000
    )
    # cachedInput defaults to input
    assert t.price_for("claude-sonnet-4-5") == Price(
        model="claude-*", input_pico=3_000_000, cached_input_pico=3_000_000, output_pico=15_000_000
    )


def test_integers_zero_six_decimals_and_stray_separators_are_accepted() -> None:
    text = "---\n" + HEAD + "metadata: {name: list-prices}\nprices:\n"
    text += (
        "  - {model: free, input: 0, output: 0}\n  - {model: tiny, input: 0.000001, output: 3}\n"
    )
    t = PriceTable.parse(text, file="t")
    assert t.price_for("free") == Price(
        model="free", input_pico=0, cached_input_pico=0, output_pico=0
    )
    assert t.price_for("tiny") == Price(
        model="tiny", input_pico=1, cached_input_pico=1, output_pico=3_000_000
    )


def test_example_file_loads_and_prices_real_model_names() -> None:
    t = load_price_table(EXAMPLE)
    assert t.source == str(EXAMPLE)
    expected = {
        "gpt-4o": "gpt-4o",
        "gpt-4o-2024-05-13": "gpt-4o-2024-05-13",
        "gpt-4o-2024-11-20": "gpt-4o-20*",
        "gpt-4o-mini-2024-07-18": "gpt-4o-mini*",
        "gpt-4.1-mini-2025-04-14": "gpt-4.1-mini*",
        "gpt-4.1-2025-04-14": "gpt-4.1*",
        "claude-opus-4-1-20250805": "claude-opus-4*",
        "claude-opus-4-5-20251101": "claude-opus-4-5*",
        "claude-sonnet-4-5-20250929": "claude-sonnet-4*",
        "claude-3-5-haiku-20241022": "claude-3-5-haiku*",
    }
    assert {m: getattr(t.price_for(m), "model", None) for m in expected} == expected
    assert t.price_for("gemini-2.5-pro") is None


INVALID = [
    # (prices entries or a whole document, field, message after "<file>: ")
    ("{model: m, output: 1}", "prices[0].input", "is required (USD per 1 million tokens)"),
    ("{model: m, input: 1}", "prices[0].output", "is required"),
    (
        "{model: m, input: -1.5, output: 1}",
        "prices[0].input",
        "must be a non-negative number, got -1.5",
    ),
    (
        "{model: m, input: 1, output: x}",
        "prices[0].output",
        "must be a non-negative number, got 'x'",
    ),
    ("{model: m, input: '1.0', output: 1}", "prices[0].input", "non-negative number, got '1.0'"),
    ("{model: m, input: true, output: 1}", "prices[0].input", "got a boolean"),
    ("{model: m, input: null, output: 1}", "prices[0].input", "got nothing (null)"),
    (
        "{model: m, input: .nan, output: 1}",
        "prices[0].input",
        "must be a finite number at most 1000000, got nan",
    ),
    (
        "{model: m, input: 1, output: .inf}",
        "prices[0].output",
        "finite number at most 1000000, got inf",
    ),
    ("{model: m, input: 1, output: -.inf}", "prices[0].output", "non-negative number, got -inf"),
    ("{model: m, input: 1000001, output: 1}", "prices[0].input", "at most 1000000, got 1000001"),
    (
        "{model: m, input: 0.0000001, output: 1}",
        "prices[0].input",
        "at most 6 decimal places, got 1e-07",
    ),
    (
        "{model: m, input: 1, cachedInput: 2, output: 1}",
        "prices[0].cachedInput",
        "must not exceed input",
    ),
    (
        "{model: m, input: 1, cachedinput: 0.5, output: 1}",
        "prices[0].cachedinput",
        "unknown field 'cachedinput' (known: model, input, cachedInput, cacheWrite, output)",
    ),
    ("{input: 1, output: 1}", "prices[0].model", "must be a non-empty string, got nothing (null)"),
    ("{model: '', input: 1, output: 1}", "prices[0].model", "must be a non-empty string, got ''"),
    ("{model: 4, input: 1, output: 1}", "prices[0].model", "must be a non-empty string, got 4"),
    ("[m, 1, 1]", "prices[0]", "must be a mapping, got a list"),
]


@pytest.mark.parametrize(("entry", "field", "problem"), INVALID)
def test_invalid_entry(entry: str, field: str, problem: str) -> None:
    with pytest.raises(PriceTableError) as info:
        table(entry)
    assert (info.value.file, info.value.field) == ("t", field)
    assert problem in str(info.value)
    assert str(info.value).startswith(f"t: {field}: ")


def test_message_names_file_index_and_field_exactly() -> None:
    text = HEAD + "prices:\n"
    text += "  - {model: a, input: 1, output: 1}\n  - {model: b, input: 1, output: 1}\n"
    text += "  - {model: c, input: 1, output: x}\n"
    with pytest.raises(ConfigError) as info:
        PriceTable.parse(text, file="prices.yaml")
    assert (
        str(info.value) == "prices.yaml: prices[2].output: must be a non-negative number, got 'x'"
    )


def test_duplicate_model_names_the_first_entry() -> None:
    with pytest.raises(PriceTableError) as info:
        table(
            "{model: a, input: 1, output: 1}",
            "{model: b*, input: 1, output: 1}",
            "{model: b*, input: 2, output: 2}",
        )
    assert str(info.value) == "t: prices[2].model: duplicate entry for 'b*' (first at prices[1])"


DOCUMENT_CASES = [
    (
        "kind: PriceTable\nprices: []\n",
        "apiVersion",
        "must be 'tokengate.dev/v1', got nothing (null)",
    ),
    (
        "apiVersion: tokengate.dev/v2\nkind: PriceTable\n",
        "apiVersion",
        "must be 'tokengate.dev/v1', got 'tokengate.dev/v2'",
    ),
    (
        "apiVersion: tokengate.dev/v1\nkind: QuotaPolicy\n",
        "kind",
        "must be 'PriceTable', got 'QuotaPolicy'",
    ),
    (
        HEAD + "prices: {model: m, input: 1, output: 1}\n",
        "prices",
        "must be a non-empty list of entries, got a mapping",
    ),
    (HEAD + "prices: []\n", "prices", "must be a non-empty list of entries, got a list"),
    (HEAD, "prices", "must be a non-empty list of entries, got nothing (null)"),
    (
        HEAD + "price: []\n",
        "price",
        "unknown field 'price' (known: apiVersion, kind, metadata, prices)",
    ),
    ("- 1\n- 2\n", None, "the document must be a mapping, got a list"),
    ("", None, "needs exactly one document, got 0"),
    (
        HEAD + "prices: [{model: m, input: 1, output: 1}]\n---\n" + HEAD,
        None,
        "needs exactly one document, got 2",
    ),
    (
        HEAD + "prices:\n  - {model: m, input: 1, output: 1\n",
        None,
        "invalid YAML at line 5, column 1:",
    ),
    (
        HEAD + "prices:\n  - model: m\n    input: 1\n    input: 2\n    output: 1\n",
        None,
        "invalid YAML at line 6, column 5: duplicate key 'input'",
    ),
]


@pytest.mark.parametrize(("text", "field", "problem"), DOCUMENT_CASES)
def test_invalid_document(text: str, field: str | None, problem: str) -> None:
    with pytest.raises(PriceTableError) as info:
        PriceTable.parse(text, file="prices.yaml")
    assert info.value.field == field
    prefix = f"prices.yaml: {field}: " if field else "prices.yaml: "
    assert str(info.value).startswith(prefix + problem)


def test_load_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PriceTableError, match=f"^{missing}: cannot be read: No such file"):
        load_price_table(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"kind: \xff\n")
    with pytest.raises(PriceTableError, match=r"bad.yaml: is not valid UTF-8 \(byte offset 6\)"):
        load_price_table(bad)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(PriceTableError, match=r"big\.yaml: is larger than 1 MiB"):
        load_price_table(big)


# --- which entry prices a model ----------------------------------------------------------


def chosen(t: PriceTable, model: str) -> str | None:
    found = t.price_for(model)
    return None if found is None else found.model


def test_exact_name_beats_any_pattern_whatever_the_order() -> None:
    t = table("{model: 'gpt-4o*', input: 9, output: 9}", "{model: gpt-4o, input: 1, output: 1}")
    assert chosen(t, "gpt-4o") == "gpt-4o"
    assert chosen(t, "gpt-4o-2024-08-06") == "gpt-4o*"


@pytest.mark.parametrize("reverse", [False, True])
def test_more_literal_characters_win_whatever_the_order(reverse: bool) -> None:
    entries = [
        "{model: 'gpt-4o*', input: 1, output: 1}",
        "{model: 'gpt-4o-mini*', input: 1, output: 1}",
    ]
    t = table(*(reversed(entries) if reverse else entries))
    assert chosen(t, "gpt-4o-mini-2024-07-18") == "gpt-4o-mini*"
    assert chosen(t, "gpt-4o-2024-08-06") == "gpt-4o*"


def test_wildcards_do_not_count_as_literal_characters() -> None:
    # 'g??????*' is the longer pattern, but has 1 literal character against 6.
    t = table("{model: 'g??????*', input: 1, output: 1}", "{model: 'gpt-4o*', input: 1, output: 1}")
    assert chosen(t, "gpt-4o-x") == "gpt-4o*"
    # a [...] class is one wildcard: 'claude-3-[57]-*' has 10 literal characters, 'claude-3*' 8
    t = table(
        "{model: 'claude-3*', input: 1, output: 1}",
        "{model: 'claude-3-[57]-*', input: 1, output: 1}",
    )
    assert chosen(t, "claude-3-5-haiku") == "claude-3-[57]-*"
    assert chosen(t, "claude-3-opus") == "claude-3*"


@pytest.mark.parametrize(("first", "second"), [("gpt-*", "*t-4o"), ("*t-4o", "gpt-*")])
def test_equal_literal_counts_go_to_the_entry_written_first(first: str, second: str) -> None:
    t = table(
        f"{{model: '{first}', input: 1, output: 1}}", f"{{model: '{second}', input: 1, output: 1}}"
    )
    assert chosen(t, "gpt-4o") == first


def test_no_match_is_none_and_matching_is_case_sensitive_and_whole_name() -> None:
    t = PriceTable.parse(BRIEF, file="t")
    assert t.price_for("gemini-2.5-pro") is None
    assert t.price_for("GPT-4o") is None
    assert t.price_for("gpt-4o-2024-08-06") is None  # 'gpt-4o' is an exact name, not a prefix
    assert t.price_for("x-claude-3") is None


def test_table_is_immutable_and_lookups_are_cached_within_a_bound() -> None:
    t = PriceTable.parse(BRIEF, file="t")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.source = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        t.exact["gpt-4o"] = t.exact["gpt-4o"]  # type: ignore[index]
    claude = t.price_for("claude-sonnet-4")  # miss
    for i in range(CACHE_SIZE + 100):  # misses, evicting the oldest
        assert t.price_for(f"claude-{i}") is claude
    assert t.price_for("claude-0") is claude  # evicted: miss
    assert t.price_for("claude-0") is claude  # hit
    info = cast(Any, t)._lookup.cache_info()
    assert (info.currsize, info.hits, info.misses) == (CACHE_SIZE, 1, CACHE_SIZE + 102)


# --- cost ----------------------------------------------------------------------------------


def test_one_token_at_a_fraction_of_a_micro_dollar_rounds_up_to_one() -> None:
    mini = price("0.15", "0.60", cached_usd="0.075")
    assert mini.cost_micros(1, 0, cached_prompt_tokens=1) == 1  # 0.075 micro-dollars
    assert mini.cost_micros(0, 0) == 0


def test_exact_costs_are_not_rounded_and_floats_would_be_wrong() -> None:
    o4 = price("1.10", "4.40", cached_usd="0.275")
    # 50 x 1.1 = 55 exactly; in floats 50 * 1.1 = 55.00000000000001, which would round up to 56
    assert o4.cost_micros(50, 0) == 55
    assert o4.cost_micros(200, 0, cached_prompt_tokens=200) == 55
    gpt4o = price("2.50", "10.00", cached_usd="1.25")
    assert gpt4o.cost_micros(1000, 500) == 7_500
    # the sum is rounded once, not each part: 1 x 2.5 + 1 x 10 = 12.5 -> 13 (not 3 + 10)
    assert gpt4o.cost_micros(1, 1) == 13


def test_cached_tokens_are_part_of_the_prompt_and_billed_at_cached_input() -> None:
    gpt4o = price("2.50", "10.00", cached_usd="1.25")
    assert gpt4o.cost_micros(1000, 0, cached_prompt_tokens=400) == 600 * 2.5 + 400 * 1.25 == 2_000
    assert gpt4o.cost_micros(1000, 100, cached_prompt_tokens=1000) == 1_250 + 1_000
    # more cached than prompt tokens is inconsistent: no discount rather than an under-charge
    assert gpt4o.cost_micros(10, 0, cached_prompt_tokens=20) == gpt4o.cost_micros(10, 0) == 25


def test_large_counts_are_exact() -> None:
    gpt4o = price("2.50", "10.00", cached_usd="1.25")
    assert gpt4o.cost_micros(10**9, 10**9) == 12_500_000_000  # $12,500.00
    mini = price("0.15", "0.60", cached_usd="0.075")
    assert mini.cost_micros(10**9 + 1, 0, cached_prompt_tokens=10**9 + 1) == 75_000_001
    assert mini.cost_micros(10**12, 10**12, cached_prompt_tokens=10**12) == 675_000_000_000


def test_negative_counts_are_a_bug() -> None:
    with pytest.raises(InvariantError, match="non-negative"):
        price("1", "1").cost_micros(-1, 0)
    with pytest.raises(InvariantError, match="non-negative"):
        price("1", "1").estimate_micros(1, -1)


def test_estimate_takes_no_cache_discount() -> None:
    gpt4o = price("2.50", "10.00", cached_usd="1.25")
    assert gpt4o.estimate_micros(1000, 500) == 7_500
    assert gpt4o.cost_micros(1000, 500, cached_prompt_tokens=1000) == 6_250


decimal6 = st.integers(min_value=0, max_value=200_000_000).map(lambda n: f"{n / 10**6:.6f}")


@given(
    input_usd=decimal6,
    output_usd=decimal6,
    cached_share=st.integers(min_value=0, max_value=100),
    prompt=st.integers(min_value=0, max_value=10**7),
    cached_frac=st.fractions(min_value=0, max_value=1),
    completion=st.integers(min_value=0, max_value=10**7),
)
def test_estimate_is_never_below_the_settled_cost(
    input_usd: str,
    output_usd: str,
    cached_share: int,
    prompt: int,
    cached_frac: Any,
    completion: int,
) -> None:
    cached_usd = f"{float(input_usd) * cached_share / 100:.6f}"
    p = price(input_usd, output_usd, cached_usd=min(cached_usd, input_usd, key=float))
    cached = int(prompt * cached_frac)
    settled = p.cost_micros(prompt, completion, cached_prompt_tokens=cached)
    assert p.estimate_micros(prompt, completion) >= settled
    # and the settled cost is the exact sum rounded up: never below, less than 1 above
    exact = (prompt - cached) * p.input_pico + cached * p.cached_input_pico
    exact += completion * p.output_pico
    assert settled * 10**6 >= exact > (settled - 1) * 10**6
