"""ProviderKeyPool documents: the keys of one provider that a ModelRoute backend names with
`keyPool`. Valid fixtures, one fixture per invalid case, both expiry forms, the checks across
documents (a pool named twice, a backend naming a pool that is missing or holds another
provider's keys) and the snapshot's lookup."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import pytest

from extproc.ctl.output import validate_files
from extproc.errors import InvariantError, PolicyError
from extproc.policy import (
    Backend,
    KeyPool,
    ModelRoute,
    PolicySnapshot,
    PoolKey,
    load_directory,
    parse_documents,
)
from extproc.policy.loader import validate_file
from extproc.policy.model import Algorithm, Limit, Measure
from tests.unit.policy_fixtures import assert_one_case_per_fixture, assert_refused_as

FIXTURES = Path(__file__).parent / "fixtures" / "key_pools"
VALID = FIXTURES / "valid"
INVALID = FIXTURES / "invalid"
SECRETS = Path("/var/run/secrets/tokengate")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


OPENAI_MAIN = KeyPool(
    name="openai-main",
    provider="openai",
    keys=(
        PoolKey(name="primary", file=SECRETS / "openai/primary", expires_at=None),
        # A date: used until the end of that UTC day, so unusable from the next midnight.
        PoolKey(
            name="secondary",
            file=SECRETS / "openai/secondary",
            expires_at=utc(2027, 2, 1),
            limits=(
                Limit("daily-tokens", Measure.TOKENS, 2_000_000, 86400),
                Limit("rpm", Measure.REQUESTS, 60, 60, Algorithm.SLIDING),
            ),
        ),
        # 09:30 at +01:00 is 08:30 UTC.
        PoolKey(
            name="rotated-in", file=SECRETS / "openai/rotated-in", expires_at=utc(2027, 3, 1, 8, 30)
        ),
    ),
    warn_before_s=14 * 86400,
    source="pools.yaml",
)
ANTHROPIC_MAIN = KeyPool(
    name="anthropic-main",
    provider="anthropic",
    keys=(
        PoolKey(
            name="only",
            file=SECRETS / "anthropic/only",
            expires_at=utc(2026, 12, 31, 23),  # written unquoted: YAML's timestamp form
        ),
    ),
    warn_before_s=3 * 86400,
    source="pools.yaml",
)


class Case(NamedTuple):
    fixture: str
    document: int
    field: str
    problem: str  # a substring of PolicyError.problem


KEY0, KEY1 = "spec.keys[0]", "spec.keys[1]"
FORMS = "a date (2027-01-31: the key is used until the end of that UTC day) or an RFC 3339"

INVALID_CASES = [
    Case(
        "route-key-pool-namespaced.yaml",
        1,
        "spec.backends[0].keyPool",
        "only a cluster-wide ModelRoute (no metadata.namespace, written by the platform team) "
        "may name a provider key pool",
    ),
    Case("spec-unknown-field.yaml", 1, "spec.key", "did you mean 'keys'?"),
    Case(
        "metadata-namespace.yaml",
        1,
        "metadata.namespace",
        "a ProviderKeyPool is cluster-wide (its keys are the provider account's, which every "
        "namespace shares); remove metadata.namespace",
    ),
    Case("provider-missing.yaml", 1, "spec.provider", "is required"),
    Case(
        "provider-unknown.yaml",
        1,
        "spec.provider",
        "must be one of openai, anthropic; got a string 'gemini'",
    ),
    Case("keys-missing.yaml", 1, "spec.keys", "is required"),
    Case("keys-not-list.yaml", 1, "spec.keys", "must be a list, got a mapping"),
    Case("keys-empty.yaml", 1, "spec.keys", "must name at least one key"),
    Case("keys-too-many.yaml", 1, "spec.keys", "must name at most 50 keys, got 51"),
    Case("key-not-mapping.yaml", 1, KEY0, "must be a mapping, got a string"),
    Case("key-unknown-field.yaml", 1, f"{KEY1}.expiry", "did you mean 'expires'?"),
    Case("key-name-missing.yaml", 1, f"{KEY0}.name", "is required"),
    Case("key-name-invalid.yaml", 1, f"{KEY0}.name", "DNS-1123 label"),
    Case(
        "key-name-duplicate.yaml",
        1,
        f"{KEY1}.name",
        "duplicate key name 'primary' (also spec.keys[0])",
    ),
    Case("key-file-missing.yaml", 1, f"{KEY0}.file", "is required"),
    Case(
        "key-file-not-string.yaml",
        1,
        f"{KEY0}.file",
        "must be the absolute path of the file holding the key, got an integer 42",
    ),
    Case(
        "key-file-relative.yaml",
        1,
        f"{KEY0}.file",
        "must be an absolute path (starting with '/'), got 'secrets/openai/primary'",
    ),
    Case("key-file-dot-dot.yaml", 1, f"{KEY1}.file", "must not contain '..' segments"),
    Case("key-file-double-slash.yaml", 1, f"{KEY0}.file", "must be a normalised path"),
    Case("key-file-dot-segment.yaml", 1, f"{KEY0}.file", "no '//' or '.' segments"),
    Case("key-file-directory.yaml", 1, f"{KEY0}.file", "must name a file, not a directory"),
    Case(
        "key-file-control-character.yaml",
        1,
        f"{KEY0}.file",
        "must not contain control characters; found '\\n' at 41",
    ),
    Case(
        "key-file-duplicate.yaml",
        1,
        "spec.keys[2].file",
        "'/var/run/secrets/tokengate/openai/primary' is also the file of spec.keys[0] "
        "(primary); each key has its own file",
    ),
    Case(
        "key-budget-concurrent.yaml",
        1,
        f"{KEY1}.limits[0].concurrent",
        "a key's budget counts what it served over a window (requests, tokens or usd per "
        "period); concurrency is not a key budget",
    ),
    Case("key-budget-usd-without-prices.yaml", 1, f"{KEY1}.limits[0].usd", "price table"),
    Case(
        "key-budget-duplicate-limit.yaml",
        1,
        f"{KEY1}.limits[1].name",
        f"duplicate limit name 'daily' (also {KEY1}.limits[0])",
    ),
    Case("key-budget-not-list.yaml", 1, f"{KEY1}.limits", "must be a list, got a mapping"),
    Case("expires-not-a-date.yaml", 1, f"{KEY0}.expires", f"must be {FORMS}"),
    Case("expires-integer.yaml", 1, f"{KEY0}.expires", "; got an integer 1800000000"),
    Case(
        "expires-impossible-date.yaml",
        1,
        f"{KEY0}.expires",
        "must be a real calendar date, got '2027-02-30' (day is out of range for month)",
    ),
    Case(
        "expires-no-offset.yaml",
        1,
        f"{KEY0}.expires",
        "needs an offset (Z for UTC, or one like +01:00), got '2027-01-31T18:00:00'",
    ),
    Case(
        "expires-offset-out-of-range.yaml",
        1,
        f"{KEY0}.expires",
        "must be a real date and time, got '2027-01-31T18:00:00+24:00'",
    ),
    Case("expires-day-first.yaml", 1, f"{KEY0}.expires", "got a string '31.01.2027'"),
    Case(
        "warn-before-not-duration.yaml",
        1,
        "spec.warnBefore",
        "must be a duration like 30s, 1m, 1h or 14d (a number and s|m|h|d), got a string '2 weeks'",
    ),
    Case("warn-before-months.yaml", 1, "spec.warnBefore", "got a string '1mo'"),
    Case("warn-before-zero.yaml", 1, "spec.warnBefore", "must be between 1s and 366d, got 0d"),
    Case("warn-before-integer.yaml", 1, "spec.warnBefore", "got an integer 14"),
    Case(
        "duplicate-name.yaml",
        2,
        "metadata.name",
        "ProviderKeyPool (cluster-wide)/openai-main is already defined as "
        "(cluster-wide)/openai-main in duplicate-name.yaml (document 1)",
    ),
    Case("route-key-pool-invalid.yaml", 1, "spec.backends[0].keyPool", "DNS-1123 label"),
    Case(
        "route-key-pool-missing.yaml",
        2,
        "spec.backends[0].keyPool",
        "no ProviderKeyPool named 'openai-mian' is defined (defined: openai-main); "
        "did you mean 'openai-main'?",
    ),
    Case(
        "route-key-pool-wrong-provider.yaml",
        3,
        "spec.backends[1].keyPool",
        "ProviderKeyPool 'anthropic-main' (route-key-pool-wrong-provider.yaml, document 2) "
        "holds anthropic keys, but this backend's provider is openai",
    ),
]


def test_every_invalid_fixture_has_exactly_one_case() -> None:
    assert_one_case_per_fixture(INVALID, INVALID_CASES)


@pytest.mark.parametrize("case", INVALID_CASES, ids=[c.fixture for c in INVALID_CASES])
def test_invalid_fixture(case: Case, tmp_path: Path) -> None:
    assert_refused_as(INVALID, case, tmp_path)


def test_error_message_names_file_document_and_field() -> None:
    text = (INVALID / "key-file-dot-dot.yaml").read_text()
    with pytest.raises(PolicyError) as info:
        parse_documents(text, file="pools.yaml")
    assert str(info.value) == (
        "pools.yaml (document 1): spec.keys[1].file: must not contain '..' segments (name the "
        "file itself), got '/var/run/secrets/tokengate/openai/../../../../etc/shadow'"
    )


def test_valid_pools_with_both_expiry_forms_and_default_warning() -> None:
    docs = parse_documents((VALID / "pools.yaml").read_text(), file="pools.yaml")
    assert docs == [OPENAI_MAIN, ANTHROPIC_MAIN]


def test_a_date_expires_at_the_end_of_that_utc_day() -> None:
    [pool] = parse_documents(_pool_expiring("'2027-01-31'"), file="p.yaml")
    assert isinstance(pool, KeyPool)
    expires = pool.keys[0].expires_at
    assert expires == utc(2027, 1, 31, 23, 59, 59) + 1
    assert datetime.fromtimestamp(expires, UTC).isoformat() == "2027-02-01T00:00:00+00:00"


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("2027-01-31T18:00:00Z", utc(2027, 1, 31, 18)),
        ("'2027-01-31T18:00:00Z'", utc(2027, 1, 31, 18)),
        ("2027-01-31T18:00:00+01:00", utc(2027, 1, 31, 17)),
        ("'2027-01-31t18:00:00.5-02:30'", utc(2027, 1, 31, 20, 30) + 0.5),
        ("'2027-01-31 18:00:00z'", utc(2027, 1, 31, 18)),
        ("9999-12-31", utc(9999, 12, 31) + 86400),  # the last day there is
        ("2028-02-29", utc(2028, 3, 1)),  # a leap day
    ],
)
def test_expiry_forms(written: str, expected: float) -> None:
    [pool] = parse_documents(_pool_expiring(written), file="p.yaml")
    assert isinstance(pool, KeyPool)
    assert pool.keys[0].expires_at == expected


def test_load_directory_collects_pools_and_backend_pools() -> None:
    snap = load_directory(VALID)
    assert snap.sources == ("pools.yaml", "routes.yaml")
    assert snap.key_pools == (OPENAI_MAIN, ANTHROPIC_MAIN)
    platform = snap.model_route("team-b", "gpt-4o")
    assert platform is not None
    assert platform.backends == (
        Backend(provider="openai", model="gpt-4o", key_pool="openai-main"),
        Backend(provider="anthropic", model="claude-sonnet-4-5", key_pool="anthropic-main"),
    )
    fast = snap.model_route("team-a", "fast")
    assert fast is not None
    assert [b.key_pool for b in fast.backends] == ["openai-main", None]  # keyPool is optional


def test_key_pool_lookup() -> None:
    snap = load_directory(VALID)
    assert snap.key_pool("openai-main") == OPENAI_MAIN
    assert snap.key_pool("anthropic-main") == ANTHROPIC_MAIN
    assert snap.key_pool("openai") is None
    assert snap.key_pool("OpenAI-Main") is None  # names are exact
    empty = PolicySnapshot(policies={}, keys_by_sha256={}, version="0", loaded_at=0.0)
    assert (empty.key_pools, empty.key_pool("openai-main")) == ((), None)


def test_pool_and_route_in_different_files(tmp_path: Path) -> None:
    shutil.copy(VALID / "pools.yaml", tmp_path / "a-pools.yaml")
    shutil.copy(VALID / "routes.yaml", tmp_path / "b-routes.yaml")
    assert load_directory(tmp_path).key_pool("openai-main") is not None
    text = (VALID / "routes.yaml").read_text()
    (tmp_path / "b-routes.yaml").write_text(
        text.replace("gpt-4o, keyPool: openai-main", "gpt-4o, keyPool: anthropic-main")
    )
    with pytest.raises(PolicyError) as info:
        load_directory(tmp_path)
    err = info.value
    assert (err.file, err.document, err.field) == ("b-routes.yaml", 1, "spec.backends[0].keyPool")
    assert err.problem == (
        "ProviderKeyPool 'anthropic-main' (a-pools.yaml, document 2) holds anthropic keys, "
        "but this backend's provider is openai"
    )


def test_missing_pool_when_none_is_defined(tmp_path: Path) -> None:
    shutil.copy(VALID / "routes.yaml", tmp_path)
    with pytest.raises(PolicyError) as info:
        load_directory(tmp_path)
    err = info.value
    assert (err.file, err.document, err.field) == ("routes.yaml", 1, "spec.backends[0].keyPool")
    assert err.problem == "no ProviderKeyPool named 'openai-main' is defined (none is)"


def test_validate_file_checks_the_pools_it_can_see() -> None:
    """One file (ValidatePolicy, policy-sync) may name a pool another file defines; a pool
    it defines itself is checked."""
    routes = (VALID / "routes.yaml").read_text()
    assert len(validate_file(routes, file="routes.yaml")) == 2
    text = (INVALID / "route-key-pool-wrong-provider.yaml").read_text()
    with pytest.raises(PolicyError, match="holds anthropic keys") as info:
        validate_file(text, file="x.yaml")
    assert info.value.field == "spec.backends[1].keyPool"
    missing = (INVALID / "route-key-pool-missing.yaml").read_text()
    assert len(validate_file(missing, file="x.yaml")) == 2
    with pytest.raises(PolicyError, match="already defined"):
        validate_file((INVALID / "duplicate-name.yaml").read_text(), file="x.yaml")


def test_ctl_validate_knows_key_pools(tmp_path: Path) -> None:
    pools, routes = tmp_path / "pools.yaml", tmp_path / "routes.yaml"
    shutil.copy(VALID / "pools.yaml", pools)
    shutil.copy(VALID / "routes.yaml", routes)
    assert [r.result.valid for r in validate_files([str(pools), str(routes)])] == [True, True]
    # Alone, the routes name pools that the set does not define, as the server would say.
    [alone] = validate_files([str(routes)])
    assert not alone.result.valid
    [problem] = alone.result.problems
    assert (problem.file, problem.field) == (str(routes), "spec.backends[0].keyPool")


def test_unknown_kind_lists_provider_key_pool() -> None:
    text = "apiVersion: tokengate.dev/v1\nkind: KeyPool\nmetadata: {name: a}\nspec: {}\n"
    with pytest.raises(PolicyError) as info:
        parse_documents(text, file="k.yaml")
    assert info.value.field == "kind"
    assert "ModelRoute, ProviderKeyPool, Capacity; got a string 'KeyPool'" in info.value.problem


def test_unquoted_timestamps_elsewhere_are_text() -> None:
    """The loader keeps YAML timestamps as written, so a date-like value in another field is
    judged by that field's own rule, never a crash or a date object."""
    text = (VALID / "routes.yaml").read_text().replace("model: fast", "model: 2027-01-31", 1)
    docs = parse_documents(text, file="r.yaml")
    assert isinstance(docs[1], ModelRoute) and docs[1].model == "2027-01-31"


def test_snapshot_refuses_two_pools_with_one_name() -> None:
    with pytest.raises(InvariantError, match="two ProviderKeyPools named 'openai-main'"):
        PolicySnapshot(
            policies={},
            keys_by_sha256={},
            version="0",
            loaded_at=0.0,
            key_pools=(OPENAI_MAIN, OPENAI_MAIN),
        )


def test_pools_are_read_only() -> None:
    pool = load_directory(VALID).key_pool("openai-main")
    assert pool is not None
    with pytest.raises(AttributeError):
        pool.provider = "anthropic"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        pool.keys[0].expires_at = 0.0  # type: ignore[misc]


def _pool_expiring(written: str) -> str:
    return (
        "apiVersion: tokengate.dev/v1\nkind: ProviderKeyPool\nmetadata: {name: p}\nspec:\n"
        "  provider: openai\n"
        f"  keys: [{{name: k, file: /run/k, expires: {written}}}]\n"
    )
