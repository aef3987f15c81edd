"""Priorities, shared capacity and budget degradation in policies: `Capacity` documents, a
QuotaPolicy's `degrade` thresholds and an ApiKey's priority fields. Valid fixtures, one fixture
per invalid case, the snapshot's `capacity_for` lookup and `ctl policy validate`."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

import pytest

from extproc.ctl.output import validate_files
from extproc.errors import PolicyError
from extproc.policy import (
    ApiKey,
    Capacity,
    Degradation,
    Priority,
    QuotaPolicy,
    load_directory,
    parse_documents,
)
from extproc.policy.loader import validate_file
from extproc.policy.model import DEFAULT_MAX_WAIT_S, Algorithm, Limit, Measure
from tests.unit.policy_fixtures import assert_one_case_per_fixture, assert_refused_as

FIXTURES = Path(__file__).parent / "fixtures" / "capacity"
VALID = FIXTURES / "valid"
INVALID = FIXTURES / "invalid"

BUCKET = Algorithm.BUCKET
HI, S, B, BG = Priority.INTERACTIVE, Priority.STANDARD, Priority.BATCH, Priority.BACKGROUND

OPENAI_TIER = Capacity(
    name="openai-tier",
    provider="openai",
    limits=(
        Limit("rpm", Measure.REQUESTS, 500, 60, BUCKET),
        Limit("tpm", Measure.TOKENS, 800_000, 60, BUCKET),
        Limit("inflight", Measure.CONCURRENT, 40, None),
    ),
    model_patterns=("gpt-4o*",),
    max_wait_s=MappingProxyType({HI: 2.0, S: 40.0, B: 60.0, BG: 0.0}),
    refuse_batch_after_s=20.0,
    downgrade_standard_after_s=30.0,
    cheaper=(("gpt-4o*", "gpt-4o-mini"), ("claude-sonnet-*", "claude-haiku-4-5")),
    source="capacity.yaml",
)
OPENAI_REST = Capacity(
    name="openai-rest",
    provider="openai",
    limits=(Limit("rpm", Measure.REQUESTS, 100, 60, BUCKET),),
    # Classes not written keep their defaults.
    max_wait_s=MappingProxyType({HI: 5.0, S: 10.0, B: 60.0, BG: 120.0}),
    refuse_batch_after_s=45.0,
    source="capacity.yaml",
)
ANTHROPIC_TIER = Capacity(
    name="anthropic-tier",
    provider="anthropic",
    limits=(Limit("inflight", Measure.CONCURRENT, 10, None),),
    model_patterns=("claude-*", "*-haiku-*"),
    source="capacity.yaml",
)
SHA_A = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
SHA_B = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"
SHA_C = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"


class Case(NamedTuple):
    fixture: str
    field: str
    problem: str  # a substring of PolicyError.problem
    document: int = 1


SHED = "spec.shedding"
D0, D1 = "spec.degrade[0]", "spec.degrade[1]"
CLASSES = "interactive, standard, batch, background"

INVALID_CASES = [
    Case(
        "key-pool-missing.yaml",
        "spec.keyPool",
        "no ProviderKeyPool named 'openai-mian' is defined (defined: openai-main); "
        "did you mean 'openai-main'?",
    ),
    Case(
        "key-pool-wrong-provider.yaml",
        "spec.keyPool",
        "holds anthropic keys, but this backend's provider is openai",
        document=2,
    ),
    Case("key-pool-invalid.yaml", "spec.keyPool", "DNS-1123 label"),
    Case(
        "metadata-namespace.yaml",
        "metadata.namespace",
        "a Capacity is cluster-wide (it is the provider tier's, which every namespace's "
        "requests share); remove metadata.namespace",
    ),
    Case("spec-unknown-field.yaml", "spec.maxWaits", "did you mean 'maxWait'?"),
    Case("provider-missing.yaml", "spec.provider", "is required"),
    Case(
        "provider-unknown.yaml",
        "spec.provider",
        "one of openai, anthropic; got a string 'azure'",
    ),
    Case(
        "models-empty.yaml",
        "spec.models",
        "must not be empty; leave spec.models out to cover every model of the provider",
    ),
    Case("models-empty-pattern.yaml", "spec.models[1]", "must be a non-empty string"),
    Case("limits-missing.yaml", "spec.limits", "is required"),
    Case("limits-empty.yaml", "spec.limits", "must name at least one limit"),
    Case(
        "limit-usd.yaml",
        "spec.limits[1].usd",
        "a Capacity is the provider's tier (requests, tokens, concurrency), not money; put "
        "dollar budgets in a QuotaPolicy",
    ),
    Case("limit-per-missing.yaml", "spec.limits[0].per", "is required for tokens limits"),
    Case("max-wait-not-mapping.yaml", "spec.maxWait", "must be a mapping, got a string"),
    Case(
        "max-wait-unknown-class.yaml",
        "spec.maxWait.interactve",
        f"unknown field 'interactve' (known: {CLASSES}); did you mean 'interactive'?",
    ),
    Case(
        "max-wait-integer.yaml",
        "spec.maxWait.standard",
        "must be a duration like 0s, 2s, 30s or 1m (a number and s|m|h), got an integer 10",
    ),
    Case("max-wait-too-long.yaml", "spec.maxWait.batch", "must be between 0s and 300s, got 11m"),
    Case("max-wait-months.yaml", "spec.maxWait.batch", "got a string '1mo'"),
    Case(
        "max-wait-interactive-over-default.yaml",
        "spec.maxWait.interactive",
        "interactive's 20s is longer than standard's 10s (the default): a higher class must "
        "not wait longer than a lower one (the queue serves the earliest deadline first, so "
        "standard would overtake interactive)",
    ),
    Case(
        "max-wait-batch-under-standard.yaml",
        "spec.maxWait.batch",
        "standard's 30s is longer than batch's 20s: a higher class must not wait longer",
    ),
    Case(
        "max-wait-background-under-batch.yaml",
        "spec.maxWait.background",
        "background's 30s is shorter than batch's 60s (the default): background either never "
        "waits (0s) or waits at least as long as batch",
    ),
    Case("shedding-not-mapping.yaml", SHED, "must be a mapping, got a list"),
    Case("shedding-unknown-field.yaml", f"{SHED}.refuseBatch", "did you mean 'refuseBatchAfter'?"),
    Case("refuse-batch-zero.yaml", f"{SHED}.refuseBatchAfter", "between 1s and 300s, got 0s"),
    Case(
        "refuse-batch-never-fires.yaml",
        f"{SHED}.refuseBatchAfter",
        "30s is not shorter than maxWait.batch (30s): a batch request that would wait longer "
        "than its maximum is refused anyway, so this would never fire",
    ),
    Case(
        "shedding-out-of-order.yaml",
        f"{SHED}.downgradeStandardAfter",
        "20s must be longer than refuseBatchAfter (30s): shedding goes in order (background, "
        "then batch, then standard's downgrade)",
    ),
    Case(
        "downgrade-never-fires.yaml",
        f"{SHED}.downgradeStandardAfter",
        "10s is not shorter than maxWait.standard (10s): a standard request",
    ),
    Case(
        "downgrade-without-cheaper.yaml",
        f"{SHED}.cheaper",
        "required with downgradeStandardAfter",
    ),
    Case(
        "cheaper-without-downgrade.yaml",
        f"{SHED}.cheaper",
        "used only past downgradeStandardAfter",
    ),
    Case("cheaper-empty.yaml", f"{SHED}.cheaper", "at least one model pattern"),
    Case("cheaper-not-mapping.yaml", f"{SHED}.cheaper", "must be a mapping, got a list"),
    Case(
        "cheaper-target-glob.yaml",
        f"{SHED}.cheaper.gpt-4o*",
        "is the model requests are sent to, so '*' is not a wildcard here; got 'gpt-4o-mini*'",
    ),
    Case(
        "cheaper-target-not-string.yaml",
        f"{SHED}.cheaper.gpt-4o*",
        "a model name (a string), got an integer 4",
    ),
    Case(
        "cheaper-pattern-whitespace.yaml",
        f"{SHED}.cheaper.gpt-4o *",
        "must not contain whitespace or control characters; found ' ' at position 6",
    ),
    Case(
        "duplicate-name.yaml",
        "metadata.name",
        "Capacity (cluster-wide)/openai-tier is already defined as (cluster-wide)/openai-tier "
        "in duplicate-name.yaml (document 1)",
        document=2,
    ),
    Case("degrade-not-list.yaml", "spec.degrade", "must be a list, got a mapping"),
    Case("degrade-entry-not-mapping.yaml", D0, "must be a mapping, got a string"),
    Case("degrade-unknown-field.yaml", f"{D0}.refuses", "did you mean 'refuse'?"),
    Case("degrade-limit-missing.yaml", f"{D0}.limit", "is required"),
    Case(
        "degrade-limit-unknown.yaml",
        f"{D1}.limit",
        "no limit named 'montly-usd' in this policy's spec.limits (defined: monthly-usd, "
        "inflight); did you mean 'monthly-usd'?",
    ),
    Case("degrade-limit-none-defined.yaml", f"{D0}.limit", "this policy's spec.limits is empty"),
    Case(
        "degrade-limit-concurrent.yaml",
        f"{D0}.limit",
        "'inflight' is a concurrent limit: it counts requests in flight, not a budget that "
        "runs down; name a requests, tokens or usd limit",
    ),
    Case("degrade-at-missing.yaml", f"{D0}.at", "is required"),
    Case(
        "degrade-at-integer.yaml",
        f"{D0}.at",
        "percentage like 80% (1% to 100%), got an integer 80",
    ),
    Case("degrade-at-fraction.yaml", f"{D0}.at", "got a string '80.5%'"),
    Case("degrade-at-zero.yaml", f"{D0}.at", "must be between 1% and 100%, got 0%"),
    Case("degrade-at-over-100.yaml", f"{D0}.at", "must be between 1% and 100%, got 120%"),
    Case(
        "degrade-no-action.yaml",
        D0,
        "needs models (the cheaper model for each pattern), refuse (the classes to refuse), "
        "or both",
    ),
    Case("degrade-models-empty.yaml", f"{D0}.models", "must map at least one model pattern"),
    Case("degrade-models-target-glob.yaml", f"{D0}.models.gpt-4o", "'?' is not a wildcard here"),
    Case("degrade-refuse-empty.yaml", f"{D0}.refuse", f"must name at least one class ({CLASSES})"),
    Case(
        "degrade-refuse-unknown-class.yaml",
        f"{D0}.refuse[1]",
        f"one of {CLASSES}; got a string 'bulk'",
    ),
    Case("degrade-refuse-duplicate.yaml", f"{D0}.refuse[2]", f"repeats 'batch' ({D0}.refuse[0])"),
    Case(
        "degrade-duplicate-threshold.yaml",
        f"{D1}.at",
        "repeats spec.degrade[0] (monthly-usd at 80%); write both actions in one entry",
    ),
    Case(
        "apikey-priority-invalid.yaml",
        "spec.priority",
        f"one of {CLASSES}; got a string 'urgent'",
    ),
    Case("apikey-max-priority-invalid.yaml", "spec.maxPriority", "got a string 'High'"),
    Case(
        "apikey-max-priority-below-priority.yaml",
        "spec.maxPriority",
        "batch is lower than spec.priority (standard); it is the highest class the key's "
        "x-tokengate-priority header may ask for, so at least the key's own",
    ),
    Case(
        "apikey-substitution-boolean.yaml",
        "spec.substitution",
        "allow, forbid; got a boolean false",
    ),
    Case(
        "apikey-substitution-unknown.yaml",
        "spec.substitution",
        "allow, forbid; got a string 'never'",
    ),
]


def test_every_invalid_fixture_has_exactly_one_case() -> None:
    assert_one_case_per_fixture(INVALID, INVALID_CASES)


@pytest.mark.parametrize("case", INVALID_CASES, ids=[c.fixture for c in INVALID_CASES])
def test_invalid_fixture(case: Case, tmp_path: Path) -> None:
    assert_refused_as(INVALID, case, tmp_path, allow_usd=True)


def test_error_message_names_file_document_and_field() -> None:
    text = (INVALID / "refuse-batch-never-fires.yaml").read_text()
    with pytest.raises(PolicyError) as info:
        parse_documents(text, file="capacity.yaml")
    assert str(info.value) == (
        "capacity.yaml (document 1): spec.shedding.refuseBatchAfter: 30s is not shorter than "
        "maxWait.batch (30s): a batch request that would wait longer than its maximum is "
        "refused anyway, so this would never fire; make it shorter or remove it"
    )


def test_valid_capacities_parse_exactly() -> None:
    docs = parse_documents((VALID / "capacity.yaml").read_text(), file="capacity.yaml")
    assert docs == [OPENAI_TIER, OPENAI_REST, ANTHROPIC_TIER]
    assert ANTHROPIC_TIER.max_wait_s == DEFAULT_MAX_WAIT_S  # maxWait left out
    assert (ANTHROPIC_TIER.refuse_batch_after_s, ANTHROPIC_TIER.cheaper) == (None, ())
    assert list(OPENAI_REST.max_wait_s) == list(Priority)  # highest class first


def test_a_usd_capacity_limit_is_refused_even_with_a_price_table() -> None:
    text = (INVALID / "limit-usd.yaml").read_text()
    for allow_usd in (False, True):
        with pytest.raises(PolicyError, match="not money") as info:
            parse_documents(text, file="c.yaml", allow_usd=allow_usd)
        assert info.value.field == "spec.limits[1].usd"


def test_load_directory_collects_capacities_in_file_order() -> None:
    snap = load_directory(VALID, allow_usd=True)
    assert snap.sources == ("capacity.yaml", "team.yaml")
    assert snap.capacities == (OPENAI_TIER, OPENAI_REST, ANTHROPIC_TIER)


@pytest.mark.parametrize(
    ("provider", "model", "expected"),
    [
        ("openai", "gpt-4o", "openai-tier"),
        ("openai", "gpt-4o-mini", "openai-tier"),
        ("openai", "gpt-4.1", "openai-rest"),  # the first covering one wins; overlap is fine
        ("anthropic", "claude-sonnet-4-5", "anthropic-tier"),
        ("anthropic", "old-haiku-1", "anthropic-tier"),
        ("anthropic", "gpt-4o", None),  # the provider is part of what a capacity covers
        ("azure", "gpt-4o", None),
    ],
)
def test_capacity_for(provider: str, model: str, expected: str | None) -> None:
    capacity = load_directory(VALID, allow_usd=True).capacity_for(provider, model)
    assert (capacity.name if capacity else None) == expected


def test_cheaper_model_of_a_capacity() -> None:
    assert OPENAI_TIER.cheaper_model("gpt-4o") == "gpt-4o-mini"
    assert OPENAI_TIER.cheaper_model("gpt-4o-mini") is None  # already the cheaper one
    assert OPENAI_TIER.cheaper_model("claude-sonnet-4-5") == "claude-haiku-4-5"
    assert OPENAI_TIER.cheaper_model("o3") is None


def test_degrade_is_sorted_by_threshold() -> None:
    snap = load_directory(VALID, allow_usd=True)
    policy = snap.policies["team-a"]
    assert policy.priority is Priority.BATCH
    assert policy.degrade == (
        Degradation(
            limit="monthly-usd",
            at_percent=80,
            models=(("gpt-4o*", "gpt-4o-mini"), ("claude-sonnet-*", "claude-haiku-4-5")),
        ),
        Degradation(
            limit="daily", at_percent=80, models=(("gpt-4o", "gpt-4o-mini"),), refuse=(BG,)
        ),
        Degradation(limit="monthly-usd", at_percent=95, refuse=(B, BG)),
        Degradation(limit="daily", at_percent=100, models=(("*", "gpt-4o-mini"),)),
    )
    assert policy.degrade[0].cheaper("gpt-4o-2024-08-06") == "gpt-4o-mini"


def test_degrade_left_out_is_empty() -> None:
    text = (
        "apiVersion: tokengate.dev/v1\nkind: QuotaPolicy\nmetadata: {name: a, namespace: a}\n"
        "spec: {limits: [{name: rpm, requests: 1, per: 1m}], degrade: []}\n"
    )
    [policy] = parse_documents(text, file="p.yaml")
    assert isinstance(policy, QuotaPolicy)
    assert policy.degrade == ()


def test_api_key_priority_fields() -> None:
    keys = load_directory(VALID, allow_usd=True).keys_by_sha256
    source = "team.yaml"
    assert keys[SHA_A] == ApiKey(
        name="chat-ui", namespace="team-a", sha256=SHA_A, source=source,
        priority=S, max_priority=HI,
    )  # fmt: skip
    assert keys[SHA_B] == ApiKey(
        name="nightly", namespace="team-a", sha256=SHA_B, source=source,
        priority=BG, allow_substitution=False,
    )  # fmt: skip
    # Without its own priority the key's class is the policy's (batch, in another document),
    # so a maxPriority alone is not compared with anything here.
    assert keys[SHA_C] == ApiKey(
        name="plain", namespace="team-a", sha256=SHA_C, source=source, max_priority=B
    )


@pytest.mark.parametrize(
    ("priority", "highest"), [("standard", "standard"), ("batch", "interactive")]
)
def test_max_priority_may_equal_or_exceed_priority(priority: str, highest: str) -> None:
    text = (
        "apiVersion: tokengate.dev/v1\nkind: ApiKey\nmetadata: {name: k, namespace: a}\n"
        f"spec: {{sha256: '{SHA_A}', priority: {priority}, maxPriority: {highest}}}\n"
    )
    [key] = parse_documents(text, file="k.yaml")
    assert isinstance(key, ApiKey)
    assert (key.priority, key.max_priority, key.allow_substitution) == (
        Priority(priority), Priority(highest), True
    )  # fmt: skip


def test_validate_file_refuses_a_capacity_named_twice() -> None:
    assert len(validate_file((VALID / "capacity.yaml").read_text(), file="c.yaml")) == 3
    with pytest.raises(PolicyError, match="already defined") as info:
        validate_file((INVALID / "duplicate-name.yaml").read_text(), file="c.yaml")
    assert (info.value.document, info.value.field) == (2, "metadata.name")


def test_unknown_kind_lists_capacity() -> None:
    text = "apiVersion: tokengate.dev/v1\nkind: Capacities\nmetadata: {name: a}\nspec: {}\n"
    with pytest.raises(PolicyError) as info:
        parse_documents(text, file="k.yaml")
    assert info.value.field == "kind"
    assert "ProviderKeyPool, Capacity; got a string 'Capacities'" in info.value.problem


def test_ctl_validate_knows_capacities(tmp_path: Path) -> None:
    capacity, team = tmp_path / "capacity.yaml", tmp_path / "team.yaml"
    shutil.copy(VALID / "capacity.yaml", capacity)
    shutil.copy(VALID / "team.yaml", team)
    results = validate_files([str(capacity), str(team)])
    assert [(r.result.valid, r.result.documents) for r in results] == [(True, 3), (True, 4)]
    bad = tmp_path / "bad.yaml"
    shutil.copy(INVALID / "shedding-out-of-order.yaml", bad)
    [result] = validate_files([str(bad)])
    [problem] = result.result.problems
    assert (problem.file, problem.field) == (str(bad), "spec.shedding.downgradeStandardAfter")


def test_capacities_are_read_only() -> None:
    [capacity, *_] = load_directory(VALID, allow_usd=True).capacities
    with pytest.raises(AttributeError):
        capacity.provider = "anthropic"  # type: ignore[misc]
    with pytest.raises(TypeError):
        capacity.max_wait_s[Priority.BATCH] = 1.0  # type: ignore[index]


def test_a_capacity_of_a_key_pool_covers_only_what_that_pool_serves(tmp_path: Path) -> None:
    text = (INVALID / "key-pool-missing.yaml").read_text().replace("openai-mian", "openai-main")
    (tmp_path / "pool.yaml").write_text(text)
    snapshot = load_directory(tmp_path)
    [capacity] = snapshot.capacities
    assert capacity.key_pool == "openai-main"
    assert snapshot.capacity_for("openai", "gpt-4o", "openai-main") is capacity
    assert snapshot.capacity_for("openai", "gpt-4o") is None  # the provider's own key
    assert snapshot.capacity_for("openai", "gpt-4o", "other-pool") is None
