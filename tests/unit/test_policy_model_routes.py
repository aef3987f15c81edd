"""ModelRoute documents: a model name as clients send it, mapped to the backends that serve
it in order. Valid fixtures (cluster-wide and namespaced), lookup precedence, one fixture per
invalid case, and clashes across documents and files."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

from extproc.ctl.output import validate_files
from extproc.errors import InvariantError, PolicyError
from extproc.policy import Backend, ModelRoute, PolicySnapshot, load_directory, parse_documents
from extproc.policy.loader import validate_file
from tests.unit.policy_fixtures import assert_one_case_per_fixture, assert_refused_as

FIXTURES = Path(__file__).parent / "fixtures" / "model_routes"
VALID = FIXTURES / "valid"
INVALID = FIXTURES / "invalid"

OPENAI_4O = Backend(provider="openai", model="gpt-4o", max_tokens=4096)
PLATFORM_4O = ModelRoute(
    name="gpt-4o-with-fallback",
    namespace=None,
    model="gpt-4o",
    backends=(OPENAI_4O, Backend(provider="anthropic", model="claude-sonnet-4-5", max_tokens=8192)),
    source="platform.yaml",
)
PLATFORM_SONNET = ModelRoute(
    name="sonnet",
    namespace=None,
    model="claude-sonnet-4-5",
    backends=(Backend(provider="anthropic", model="claude-sonnet-4-5-20250929", max_tokens=4096),),
    source="platform.yaml",
)
TEAM_A_4O = ModelRoute(
    name="gpt-4o-on-anthropic",
    namespace="team-a",
    model="gpt-4o",
    backends=(
        Backend(provider="anthropic", model="claude-sonnet-4-5", max_tokens=4096),
        Backend(provider="openai", model="gpt-4o-2024-08-06", max_tokens=1_000_000),
    ),
    source="team-a.yaml",
)
TEAM_A_FAST = ModelRoute(
    name="fast",
    namespace="team-a",
    model="team-a/fast",
    backends=(Backend(provider="openai", model="gpt-4o-mini", max_tokens=1),),
    source="team-a.yaml",
)


class Case(NamedTuple):
    fixture: str
    document: int
    field: str
    problem: str  # a substring of PolicyError.problem


BACKEND1 = "spec.backends[1]"

INVALID_CASES = [
    Case("spec-unknown-field.yaml", 1, "spec.backend", "did you mean 'backends'?"),
    Case("model-missing.yaml", 1, "spec.model", "is required"),
    Case("model-not-string.yaml", 1, "spec.model", "a model name (a string), got an integer 4"),
    Case("model-empty.yaml", 1, "spec.model", "must not be empty"),
    Case("model-whitespace.yaml", 1, "spec.model", "found ' ' at position 3"),
    Case("model-trailing-tab.yaml", 1, "spec.model", "found '\\t' at position 6"),
    Case("model-control-character.yaml", 1, "spec.model", "found '\\x01' at position 6"),
    Case("model-zero-width-space.yaml", 1, "spec.model", "found '\\u200b' at position 3"),
    Case("model-too-long.yaml", 1, "spec.model", "at most 200 characters, got 201"),
    Case("model-wildcard.yaml", 1, "spec.model", "'*' is not a wildcard here"),
    Case("backends-missing.yaml", 1, "spec.backends", "is required"),
    Case("backends-not-list.yaml", 1, "spec.backends", "must be a list, got a mapping"),
    Case("backends-empty.yaml", 1, "spec.backends", "must name at least one backend"),
    Case("backends-too-many.yaml", 1, "spec.backends", "at most 4 backends, got 5"),
    Case("backend-not-mapping.yaml", 1, "spec.backends[0]", "must be a mapping, got a string"),
    Case("backend-unknown-field.yaml", 1, f"{BACKEND1}.max_tokens", "did you mean 'maxTokens'?"),
    Case("backend-provider-missing.yaml", 1, "spec.backends[0].provider", "is required"),
    Case(
        "backend-provider-unknown.yaml",
        1,
        f"{BACKEND1}.provider",
        "must be one of openai, anthropic; got a string 'gemini'",
    ),
    Case("backend-provider-capitalised.yaml", 1, "spec.backends[0].provider", "'OpenAI'"),
    Case("backend-model-missing.yaml", 1, "spec.backends[0].model", "is required"),
    Case("backend-model-whitespace.yaml", 1, f"{BACKEND1}.model", "found ' ' at position 6"),
    Case(
        "backend-max-tokens-zero.yaml",
        1,
        f"{BACKEND1}.maxTokens",
        "must be an integer between 1 and 1000000, got an integer 0",
    ),
    Case(
        "backend-max-tokens-too-large.yaml",
        1,
        "spec.backends[0].maxTokens",
        "got an integer 1000001",
    ),
    Case("backend-max-tokens-string.yaml", 1, "spec.backends[0].maxTokens", "a string '4096'"),
    Case(
        "backend-repeated.yaml",
        1,
        "spec.backends[2]",
        "repeats spec.backends[0] (openai gpt-4o); a fallback must be another backend",
    ),
    Case("metadata-namespace-invalid.yaml", 1, "metadata.namespace", "DNS-1123 label"),
    Case(
        "duplicate-model-in-namespace.yaml",
        2,
        "spec.model",
        "a ModelRoute for model 'gpt-4o' (namespace 'team-a') is already defined as "
        "team-a/first in duplicate-model-in-namespace.yaml (document 1)",
    ),
    Case(
        "duplicate-model-cluster-wide.yaml",
        2,
        "spec.model",
        "a ModelRoute for model 'gpt-4o' (cluster-wide) is already defined as "
        "(cluster-wide)/first in duplicate-model-cluster-wide.yaml (document 1)",
    ),
    Case(
        "duplicate-name.yaml",
        2,
        "metadata.name",
        "ModelRoute team-a/gpt-4o is already defined as team-a/gpt-4o in duplicate-name.yaml",
    ),
]


def test_every_invalid_fixture_has_exactly_one_case() -> None:
    assert_one_case_per_fixture(INVALID, INVALID_CASES)


@pytest.mark.parametrize("case", INVALID_CASES, ids=[c.fixture for c in INVALID_CASES])
def test_invalid_fixture(case: Case, tmp_path: Path) -> None:
    assert_refused_as(INVALID, case, tmp_path)


def test_error_message_names_file_document_and_field() -> None:
    text = (INVALID / "backend-provider-unknown.yaml").read_text()
    with pytest.raises(PolicyError) as info:
        parse_documents(text, file="routes.yaml")
    assert str(info.value) == (
        "routes.yaml (document 1): spec.backends[1].provider: "
        "must be one of openai, anthropic; got a string 'gemini'"
    )


def test_cluster_wide_documents() -> None:
    docs = parse_documents((VALID / "platform.yaml").read_text(), file="platform.yaml")
    assert docs == [PLATFORM_4O, PLATFORM_SONNET]


def test_namespaced_documents_and_default_max_tokens() -> None:
    docs = parse_documents((VALID / "team-a.yaml").read_text(), file="team-a.yaml")
    assert docs == [TEAM_A_4O, TEAM_A_FAST]
    assert TEAM_A_4O.backends[0].max_tokens == 4096  # maxTokens omitted


def test_load_directory_keeps_file_order() -> None:
    snap = load_directory(VALID)
    assert snap.sources == ("platform.yaml", "team-a.yaml")
    assert snap.model_routes == (PLATFORM_4O, PLATFORM_SONNET, TEAM_A_4O, TEAM_A_FAST)
    assert (dict(snap.policies), snap.routes) == ({}, ())


def test_namespace_route_wins_over_cluster_wide() -> None:
    snap = load_directory(VALID)
    assert snap.model_route("team-a", "gpt-4o") == TEAM_A_4O
    assert snap.model_route("team-b", "gpt-4o") == PLATFORM_4O


def test_cluster_wide_route_applies_to_every_namespace() -> None:
    snap = load_directory(VALID)
    assert snap.model_route("team-a", "claude-sonnet-4-5") == PLATFORM_SONNET
    assert snap.model_route("team-z", "claude-sonnet-4-5") == PLATFORM_SONNET


def test_namespaced_route_applies_to_its_own_namespace_only() -> None:
    snap = load_directory(VALID)
    assert snap.model_route("team-a", "team-a/fast") == TEAM_A_FAST
    assert snap.model_route("team-b", "team-a/fast") is None


def test_lookup_miss_is_none() -> None:
    snap = load_directory(VALID)
    assert snap.model_route("team-a", "gpt-4o-mini") is None
    assert snap.model_route("team-a", "GPT-4o") is None  # exact, case-sensitive
    assert snap.model_route("team-a", "gpt-4o ") is None
    empty = PolicySnapshot(policies={}, keys_by_sha256={}, version="0", loaded_at=0.0)
    assert empty.model_routes == ()
    assert empty.model_route("team-a", "gpt-4o") is None


def test_same_model_in_other_scopes_is_no_clash(tmp_path: Path) -> None:
    text = (INVALID / "duplicate-model-in-namespace.yaml").read_text()
    (tmp_path / "a.yaml").write_text(text.replace("namespace: team-a}", "namespace: team-b}", 1))
    snap = load_directory(tmp_path)
    assert snap.model_route("team-a", "gpt-4o").name == "second"  # type: ignore[union-attr]
    assert snap.model_route("team-b", "gpt-4o").name == "first"  # type: ignore[union-attr]
    assert snap.model_route("team-c", "gpt-4o") is None


def test_clash_across_files_names_both_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text((VALID / "platform.yaml").read_text())
    (tmp_path / "b.yaml").write_text(
        (VALID / "platform.yaml").read_text().replace("name: sonnet", "name: sonnet-again")
    )
    with pytest.raises(PolicyError) as info:
        load_directory(tmp_path)
    err = info.value
    assert (err.file, err.document, err.field) == ("b.yaml", 1, "metadata.name")
    assert "ModelRoute (cluster-wide)/gpt-4o-with-fallback is already defined" in err.problem
    (tmp_path / "b.yaml").write_text(
        (VALID / "platform.yaml").read_text().replace("name: gpt-4o-with-fallback", "name: b")
    )
    with pytest.raises(PolicyError) as info:
        load_directory(tmp_path)
    err = info.value
    assert (err.file, err.document, err.field) == ("b.yaml", 1, "spec.model")
    assert err.problem == (
        "a ModelRoute for model 'gpt-4o' (cluster-wide) is already defined as "
        "(cluster-wide)/gpt-4o-with-fallback in a.yaml (document 1)"
    )


def test_validate_file_refuses_a_clash_in_one_file() -> None:
    """What the control API's ValidatePolicy and policy-sync run on one file."""
    text = (INVALID / "duplicate-model-in-namespace.yaml").read_text()
    assert len(parse_documents(text, file="x.yaml")) == 2  # each document is valid alone
    with pytest.raises(PolicyError, match="already defined as team-a/first"):
        validate_file(text, file="x.yaml")


def test_ctl_validate_knows_model_routes(tmp_path: Path) -> None:
    good, again = tmp_path / "good.yaml", tmp_path / "again.yaml"
    good.write_text((VALID / "team-a.yaml").read_text())
    again.write_text((VALID / "team-a.yaml").read_text().replace("name: fast", "name: quick"))
    assert [r.result.valid for r in validate_files([str(good)])] == [True]
    [first, second] = validate_files([str(good), str(again)])
    assert first.result.valid and not second.result.valid
    [problem] = second.result.problems
    assert (problem.file, problem.field) == (str(again), "metadata.name")
    assert f"in {good} (document 1)" in problem.problem


def test_unknown_kind_lists_model_route() -> None:
    text = "apiVersion: tokengate.dev/v1\nkind: ModelRoutes\nmetadata: {name: a}\nspec: {}\n"
    with pytest.raises(PolicyError) as info:
        parse_documents(text, file="k.yaml")
    assert info.value.field == "kind"
    assert "QuotaPolicy, ApiKey, Route, ModelRoute" in info.value.problem


def test_snapshot_refuses_two_routes_for_one_model_and_scope() -> None:
    """The index is built with the snapshot; the loader rules duplicates out, so one reaching
    the snapshot is a bug, not a policy error."""
    clash = ModelRoute(
        name="other", namespace="team-a", model="gpt-4o", backends=(OPENAI_4O,), source="x"
    )
    with pytest.raises(InvariantError, match="two ModelRoutes for model 'gpt-4o'"):
        PolicySnapshot(
            policies={},
            keys_by_sha256={},
            version="0",
            loaded_at=0.0,
            model_routes=(TEAM_A_4O, clash),
        )


def test_snapshot_index_is_read_only() -> None:
    snap = load_directory(VALID)
    with pytest.raises(AttributeError):
        snap.model_routes = ()  # type: ignore[misc]
    route = snap.model_route("team-a", "gpt-4o")
    assert route is not None
    with pytest.raises(AttributeError):
        route.model = "gpt-5"  # type: ignore[misc]
