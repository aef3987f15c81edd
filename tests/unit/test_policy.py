"""Policy validation and loading: one fixture per invalid case, valid fixtures, and directory
loading the way a kubelet lays out a mounted ConfigMap."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import pytest

from extproc.errors import ConfigError, PolicyError
from extproc.policy import (
    ApiKey,
    FailMode,
    Limit,
    Measure,
    Priority,
    QuotaPolicy,
    load_directory,
    parse_documents,
)
from extproc.policy.loader import MAX_FILE_BYTES
from extproc.policy.model import Algorithm
from tests.unit.policy_fixtures import assert_one_case_per_fixture, assert_refused_as

BUCKET = Algorithm.BUCKET

FIXTURES = Path(__file__).parent / "fixtures" / "policy"
VALID = FIXTURES / "valid"
INVALID = FIXTURES / "invalid"

SHA_A = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
SHA_B = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"
SHA_UPPER = "2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824"


class Case(NamedTuple):
    fixture: str
    document: int | None
    field: str | None
    problem: str  # a substring of PolicyError.problem
    allow_usd: bool = True


LIMIT0 = "spec.limits[0]"

INVALID_CASES = [
    Case("document-not-mapping.yaml", 1, None, "the document must be a mapping, got a list"),
    Case("api-version-missing.yaml", 1, "apiVersion", "is required"),
    Case("api-version-wrong.yaml", 1, "apiVersion", "must be 'tokengate.dev/v1'"),
    Case("kind-unknown.yaml", 1, "kind", "must be one of QuotaPolicy, ApiKey"),
    Case("top-level-unknown-field.yaml", 1, "specs", "did you mean 'spec'?"),
    Case("metadata-missing.yaml", 1, "metadata", "is required"),
    Case("metadata-not-mapping.yaml", 1, "metadata", "must be a mapping"),
    Case("metadata-name-missing.yaml", 1, "metadata.name", "is required"),
    Case("metadata-namespace-missing.yaml", 1, "metadata.namespace", "is required"),
    Case("metadata-namespace-not-dns-label.yaml", 1, "metadata.namespace", "DNS-1123 label"),
    Case("metadata-name-ends-with-dash.yaml", 1, "metadata.name", "DNS-1123 label"),
    Case("metadata-name-too-long.yaml", 1, "metadata.name", "at most 63 characters, got 64"),
    Case("metadata-name-not-string.yaml", 1, "metadata.name", "must be a string"),
    Case("metadata-unknown-field.yaml", 1, "metadata.labls", "did you mean 'labels'?"),
    Case("metadata-label-not-string.yaml", 1, "metadata.labels.tier", "must be a string"),
    Case("spec-missing.yaml", 1, "spec", "is required"),
    Case("spec-not-mapping.yaml", 1, "spec", "must be a mapping"),
    Case("spec-unknown-field.yaml", 1, "spec.failmode", "did you mean 'failMode'?"),
    Case("priority-invalid.yaml", 1, "spec.priority", "interactive, standard, batch, background"),
    Case("fail-mode-invalid.yaml", 1, "spec.failMode", "must be one of closed, open"),
    Case("fail-mode-yaml-boolean.yaml", 1, "spec.failMode", "got a boolean false"),
    Case("models-not-mapping.yaml", 1, "spec.models", "must be a mapping"),
    Case("models-unknown-field.yaml", 1, "spec.models.deny", "unknown field 'deny'"),
    Case("models-allow-missing.yaml", 1, "spec.models.allow", "is required"),
    Case("models-allow-empty.yaml", 1, "spec.models.allow", "must not be empty"),
    Case("models-allow-not-list.yaml", 1, "spec.models.allow", "must be a list"),
    Case("models-allow-empty-pattern.yaml", 1, "spec.models.allow[1]", "non-empty string"),
    Case("default-max-tokens-zero.yaml", 1, "spec.defaultMaxTokens", "between 1 and 1000000"),
    Case("default-max-tokens-too-large.yaml", 1, "spec.defaultMaxTokens", "got an integer 1000001"),
    Case("default-max-tokens-string.yaml", 1, "spec.defaultMaxTokens", "got a string '1024'"),
    Case("stream-reserve-tokens-zero.yaml", 1, "spec.streamReserveTokens", "between 1 and"),
    Case("limit-algorithm-unknown.yaml", 1, "spec.limits[0].algorithm", "must be one of bucket"),
    Case("limit-months-not-calendar.yaml", 1, "spec.limits[0].algorithm", "calendar algorithm"),
    Case("limit-per-13-months.yaml", 1, "spec.limits[0].per", "between 1mo and 12mo"),
    Case("time-zone-unknown.yaml", 1, "spec.timeZone", "unknown time zone"),
    Case("limit-concurrent-with-algorithm.yaml", 1, "spec.limits[0].algorithm", "leases"),
    Case("limits-not-list.yaml", 1, "spec.limits", "must be a list, got a mapping"),
    Case("limit-not-mapping.yaml", 1, LIMIT0, "must be a mapping"),
    Case("limit-name-missing.yaml", 1, f"{LIMIT0}.name", "is required"),
    Case("limit-name-invalid.yaml", 1, f"{LIMIT0}.name", "DNS-1123 label"),
    Case("limit-name-duplicate.yaml", 1, "spec.limits[2].name", "duplicate limit name 'rpm'"),
    Case("limit-unknown-field.yaml", 1, "spec.limits[2].tokns", "did you mean 'tokens'?"),
    Case("limit-two-measures.yaml", 1, LIMIT0, "exactly one of requests, tokens, usd, concurrent"),
    Case("limit-no-measure.yaml", 1, LIMIT0, "exactly one of requests, tokens, usd, concurrent"),
    Case("limit-requests-zero.yaml", 1, f"{LIMIT0}.requests", "must be a positive integer"),
    Case("limit-concurrent-negative.yaml", 1, f"{LIMIT0}.concurrent", "positive integer"),
    Case("limit-tokens-boolean.yaml", 1, f"{LIMIT0}.tokens", "got a boolean true"),
    Case("limit-tokens-float.yaml", 1, f"{LIMIT0}.tokens", "got a number 1.5"),
    Case("limit-tokens-string.yaml", 1, f"{LIMIT0}.tokens", "got a string '1000'"),
    Case("limit-tokens-too-large.yaml", 1, f"{LIMIT0}.tokens", "at most 9007199254740991"),
    Case("limit-per-missing.yaml", 1, f"{LIMIT0}.per", "is required for tokens limits"),
    Case("limit-per-on-concurrent.yaml", 1, f"{LIMIT0}.per", "remove 'per'"),
    Case("limit-per-bad-format.yaml", 1, f"{LIMIT0}.per", "duration like 30s"),
    Case("limit-per-unknown-unit.yaml", 1, f"{LIMIT0}.per", "got a string '1w'"),
    Case("limit-per-integer.yaml", 1, f"{LIMIT0}.per", "got an integer 60"),
    Case("limit-per-zero.yaml", 1, f"{LIMIT0}.per", "between 1s and 366d, got 0s"),
    Case("limit-per-too-long.yaml", 1, f"{LIMIT0}.per", "between 1s and 366d, got 367d"),
    Case(
        "limit-usd-without-price-table.yaml",
        1,
        f"{LIMIT0}.usd",
        "usd limits need a price table; none is configured",
        allow_usd=False,
    ),
    Case("limit-usd-negative.yaml", 1, f"{LIMIT0}.usd", "positive number of dollars"),
    Case("limit-usd-string.yaml", 1, f"{LIMIT0}.usd", "got a string '$50'"),
    Case("limit-usd-infinite.yaml", 1, f"{LIMIT0}.usd", "finite number"),
    Case("limit-usd-rounds-to-zero.yaml", 1, f"{LIMIT0}.usd", "rounds to zero micro-dollars"),
    Case("apikey-spec-missing.yaml", 1, "spec", "is required"),
    Case("apikey-sha256-missing.yaml", 1, "spec.sha256", "is required"),
    Case("apikey-sha256-too-short.yaml", 1, "spec.sha256", "64 hex digits (the sha256 of the"),
    Case("apikey-sha256-not-hex.yaml", 1, "spec.sha256", "got a non-hex character"),
    Case("apikey-unknown-spec-field.yaml", 1, "spec.priorty", "did you mean 'priority'?"),
    Case("apikey-limit-per-missing.yaml", 1, f"{LIMIT0}.per", "is required for requests"),
    Case("second-document-invalid.yaml", 2, "spec.sha256", "got 10 characters"),
    Case("document-index-counts-empty-documents.yaml", 2, "spec.sha256", "got 0 characters"),
    Case("json-unknown-field.json", 1, "spec.defaultMaxToken", "did you mean 'defaultMaxTokens'"),
    Case("yaml-syntax-error.yaml", None, None, "invalid YAML at line 6, column 3"),
    Case("yaml-duplicate-key.yaml", None, None, "line 6, column 3: duplicate key 'limits'"),
    Case(
        "duplicate-policy-for-namespace.yaml",
        2,
        "metadata.namespace",
        "a QuotaPolicy for namespace 'team-a' is already defined as team-a/team-a "
        "in duplicate-policy-for-namespace.yaml (document 1)",
    ),
    Case(
        "duplicate-apikey-sha256.yaml",
        2,
        "spec.sha256",
        "already defined as team-a/billing-svc in duplicate-apikey-sha256.yaml (document 1)",
    ),
    Case(
        "duplicate-apikey-name.yaml",
        2,
        "metadata.name",
        "ApiKey team-a/billing-svc is already defined",
    ),
    Case("route-path-dot-segment.yaml", 1, "spec.path", "must be a normalised absolute path"),
    Case("route-path-query.yaml", 1, "spec.path", "no query"),
    Case("route-path-escaped.yaml", 1, "spec.path", "'%'"),
    Case("route-path-wildcard-inside.yaml", 1, "spec.path", "a prefix such as /v1/files/*"),
    Case("route-provider-unknown.yaml", 1, "spec.provider", "must be one of openai, anthropic"),
    Case("route-method-lower-case.yaml", 1, "spec.methods[0]", "must be one of GET, HEAD"),
    Case("route-methods-empty.yaml", 1, "spec.methods", "at least one method"),
    Case("route-token-limit.yaml", 1, "spec.limits[0]", "only requests and concurrent"),
    Case("route-namespaced-opens-others.yaml", 1, "spec.namespaces", "that namespace only"),
    Case("route-duplicate-name.yaml", 2, "metadata.name", "Route (cluster-wide)/models is already"),
]


def test_every_invalid_fixture_has_exactly_one_case() -> None:
    assert_one_case_per_fixture(INVALID, INVALID_CASES)


@pytest.mark.parametrize("case", INVALID_CASES, ids=[c.fixture for c in INVALID_CASES])
def test_invalid_fixture(case: Case, tmp_path: Path) -> None:
    assert_refused_as(INVALID, case, tmp_path, allow_usd=case.allow_usd)


def test_error_message_names_file_document_and_field() -> None:
    text = (INVALID / "limit-per-missing.yaml").read_text()
    with pytest.raises(PolicyError) as info:
        parse_documents(text, file="team-a.yaml")
    assert str(info.value) == (
        "team-a.yaml (document 1): spec.limits[0].per: "
        "is required for tokens limits (e.g. 1m, 1h, 1d)"
    )


def test_yaml_syntax_error_reports_line_without_document() -> None:
    text = "apiVersion: tokengate.dev/v1\nkind: ApiKey\nmetadata: {name: a\nspec: {}\n"
    with pytest.raises(PolicyError) as info:
        parse_documents(text, file="bad.yaml")
    assert info.value.document is None
    assert info.value.field is None
    assert info.value.problem.startswith("invalid YAML at line 4, column 5:")


def test_multi_document_file() -> None:
    docs = parse_documents((VALID / "team-a.yaml").read_text(), file="team-a.yaml")
    assert [type(d).__name__ for d in docs] == ["QuotaPolicy", "ApiKey", "QuotaPolicy", "ApiKey"]
    assert docs[0] == QuotaPolicy(
        name="team-a",
        namespace="team-a",
        limits=(
            # Sub-day rates default to a token bucket, longer budgets to calendar windows.
            Limit(name="rpm", measure=Measure.REQUESTS, amount=600, period_s=60, algorithm=BUCKET),
            Limit(
                name="tpm", measure=Measure.TOKENS, amount=100_000, period_s=60, algorithm=BUCKET
            ),
            Limit(name="daily", measure=Measure.TOKENS, amount=5_000_000, period_s=86_400),
            Limit(name="burst", measure=Measure.REQUESTS, amount=20, period_s=30, algorithm=BUCKET),
            Limit(name="month", measure=Measure.TOKENS, amount=90_000_000, period_s=2_592_000),
            Limit(
                name="hourly",
                measure=Measure.REQUESTS,
                amount=5000,
                period_s=3600,
                algorithm=BUCKET,
            ),
            Limit(name="inflight", measure=Measure.CONCURRENT, amount=20, period_s=None),
        ),
        model_patterns=("gpt-4o*", "claude-*"),
        priority=Priority.INTERACTIVE,
        fail_mode=FailMode.OPEN,
        default_max_tokens=4096,
        source="team-a.yaml",
    )
    assert docs[1] == ApiKey(
        name="billing-svc",
        namespace="team-a",
        sha256=SHA_A,
        limits=(
            Limit(name="rpm", measure=Measure.REQUESTS, amount=60, period_s=60, algorithm=BUCKET),
        ),
        source="team-a.yaml",
    )
    assert docs[3] == ApiKey(
        name="billing-svc", namespace="team-b", sha256=SHA_B, source="team-a.yaml"
    )


def test_defaults_applied() -> None:
    [policy] = parse_documents((VALID / "defaults.yaml").read_text(), file="defaults.yaml")
    assert policy == QuotaPolicy(
        name="minimal",
        namespace="team-c",
        limits=(),
        model_patterns=("*",),
        priority=Priority.STANDARD,
        fail_mode=FailMode.CLOSED,
        default_max_tokens=1024,
        source="defaults.yaml",
    )
    assert isinstance(policy, QuotaPolicy)
    assert policy.allows_model("anything-at-all")


def test_apikey_hash_normalised_to_lower_case() -> None:
    [key] = parse_documents((VALID / "apikey-uppercase.yaml").read_text(), file="k.yaml")
    assert isinstance(key, ApiKey)
    assert key.sha256 == SHA_UPPER.lower()


def test_usd_limits_stored_as_micro_dollars_when_allowed() -> None:
    text = (VALID / "usd.yaml").read_text()
    [policy] = parse_documents(text, file="usd.yaml", allow_usd=True)
    assert isinstance(policy, QuotaPolicy)
    assert [(lim.name, lim.amount, lim.period_s) for lim in policy.limits] == [
        ("spend", 50_000_000, 30 * 86_400),
        ("daily-spend", 250_000, 86_400),
        ("tiny", 1, 3600),
    ]
    assert {lim.measure for lim in policy.limits} == {Measure.USD}
    with pytest.raises(PolicyError, match="need a price table"):
        parse_documents(text, file="usd.yaml")


def test_empty_text_gives_no_documents() -> None:
    assert parse_documents("# only a comment\n---\n", file="empty.yaml") == []


def test_load_valid_directory() -> None:
    snap = load_directory(VALID, allow_usd=True, now=lambda: 1234.5)
    assert snap.sources == (
        "apikey-uppercase.yaml",
        "defaults.yaml",
        "policy.json",
        "routes.yaml",
        "team-a.yaml",
        "usd.yaml",
    )
    assert sorted(snap.policies) == ["team-a", "team-b", "team-c", "team-d", "team-e"]
    assert sorted(snap.keys_by_sha256) == sorted([SHA_A, SHA_B, SHA_UPPER.lower()])
    assert snap.policies["team-e"].source == "policy.json"
    assert snap.keys_by_sha256[SHA_B].namespace == "team-b"
    assert snap.loaded_at == 1234.5
    models, files = snap.routes
    assert (models.namespace, models.namespaces, models.allows("team-z")) == (None, ("*",), True)
    assert (files.methods, files.namespaces, files.allows("team-b")) == (
        ("GET", "DELETE"), ("team-a",), False
    )  # fmt: skip
    assert files.matches_path("/v1/files/f-1") and not files.matches_path("/v1/files")
    assert len(snap.version) == 16
    int(snap.version, 16)


def test_snapshot_mappings_are_read_only() -> None:
    snap = load_directory(VALID, allow_usd=True)
    with pytest.raises(TypeError):
        snap.policies["x"] = snap.policies["team-a"]  # type: ignore[index]
    with pytest.raises(TypeError):
        del snap.keys_by_sha256[SHA_A]  # type: ignore[attr-defined]


def _write_kubelet_version(root: Path, stamp: str, files: dict[str, str]) -> None:
    """Lay out one ConfigMap version the way the kubelet does: a hidden timestamped
    directory, `..data` swapped atomically to point at it, and each key a symlink through
    `..data`."""
    version_dir = root / f"..{stamp}"
    version_dir.mkdir()
    for name, text in files.items():
        (version_dir / name).write_text(text)
        link = root / name
        if not link.is_symlink():
            link.symlink_to(Path("..data") / name)
    tmp_link = root / "..data_tmp"
    tmp_link.symlink_to(version_dir.name)
    os.replace(tmp_link, root / "..data")


def test_kubelet_configmap_layout(tmp_path: Path) -> None:
    team_a = (VALID / "team-a.yaml").read_text()
    defaults = (VALID / "defaults.yaml").read_text()
    _write_kubelet_version(tmp_path, "2024_05_01_10_00_00.000000001", {"team-a.yaml": team_a})
    (tmp_path / ".hidden.yaml").write_text("not: [valid")
    (tmp_path / "notes.txt").write_text("not: [valid")
    (tmp_path / "subdir.yaml").mkdir()

    first = load_directory(tmp_path, now=lambda: 1.0)
    assert first.sources == ("team-a.yaml",)
    assert sorted(first.policies) == ["team-a", "team-b"]

    _write_kubelet_version(
        tmp_path,
        "2024_05_01_10_05_00.000000002",
        {"team-a.yaml": team_a.replace("requests: 600", "requests: 700"), "z.yaml": defaults},
    )
    second = load_directory(tmp_path, now=lambda: 2.0)
    assert second.sources == ("team-a.yaml", "z.yaml")
    assert second.policies["team-a"].limits[0].amount == 700
    assert second.policies["team-c"].source == "z.yaml"
    assert second.version != first.version
    assert second.loaded_at == 2.0


def test_dangling_symlink_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "gone.yaml").symlink_to(tmp_path / "..data" / "gone.yaml")
    with pytest.raises(PolicyError) as info:
        load_directory(tmp_path)
    assert (info.value.file, info.value.problem) == ("gone.yaml", "is a dangling symlink")


def test_version_depends_only_on_names_and_content(tmp_path: Path) -> None:
    one, two, three, four = (tmp_path / n for n in ("one", "two", "three", "four"))
    for d in (one, two, three, four):
        d.mkdir()
    text = (VALID / "defaults.yaml").read_text()
    (one / "a.yaml").write_text(text)
    (two / "a.yaml").write_text(text)
    (three / "a.yaml").write_text(text.replace("team-c", "team-x"))
    (four / "b.yaml").write_text(text)
    v1 = load_directory(one, now=lambda: 1.0).version
    assert load_directory(two, now=lambda: 99.0).version == v1
    assert load_directory(one).version == v1
    assert load_directory(three).version != v1
    assert load_directory(four).version != v1


def test_file_over_one_mib_rejected(tmp_path: Path) -> None:
    line = "#" * 1023 + "\n"
    (tmp_path / "exact.yaml").write_text(line * (MAX_FILE_BYTES // len(line)))
    assert load_directory(tmp_path).sources == ("exact.yaml",)
    (tmp_path / "huge.yaml").write_text(line * (MAX_FILE_BYTES // len(line)) + "#")
    with pytest.raises(PolicyError) as info:
        load_directory(tmp_path)
    assert info.value.file == "huge.yaml"
    assert "larger than 1 MiB" in info.value.problem


def test_non_utf8_file_rejected(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes(b"# caf\xe9\n")
    with pytest.raises(PolicyError, match="not valid UTF-8"):
        load_directory(tmp_path)


def test_missing_directory_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_directory(tmp_path / "absent")
    assert not isinstance(info.value, PolicyError)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        load_directory(tmp_path / "file")


def test_clash_across_files_names_the_later_file(tmp_path: Path) -> None:
    text = (VALID / "defaults.yaml").read_text()
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yaml").write_text(text.replace("name: minimal", "name: other"))
    with pytest.raises(PolicyError) as info:
        load_directory(tmp_path)
    err = info.value
    assert (err.file, err.document, err.field) == ("b.yaml", 1, "metadata.namespace")
    assert "in a.yaml (document 1)" in err.problem


def test_empty_directory_gives_empty_snapshot(tmp_path: Path) -> None:
    snap = load_directory(tmp_path, now=lambda: 5.0)
    assert (dict(snap.policies), dict(snap.keys_by_sha256), snap.sources) == ({}, {}, ())
