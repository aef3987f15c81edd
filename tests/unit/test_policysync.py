"""policy-sync without a network: file naming, the namespace rule, and the kubelet-style
directory writer (checked against the Reloader's fingerprint and the real loader)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from extproc.errors import ConfigError, InvariantError
from extproc.kube.policysync import (
    ApiTarget,
    AtomicDirectory,
    Backoff,
    ConfigMap,
    KubeClient,
    evaluate,
    file_name,
)
from extproc.policy import load_directory
from extproc.serve.reload import fingerprint_directory

HOME = "tokengate"
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def quota(namespace: str, rpm: int = 60, name: str = "") -> str:
    return f"""apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: {name or namespace}, namespace: {namespace}}}
spec:
  limits: [{{name: rpm, requests: {rpm}, per: 1m}}]
"""


def api_key(namespace: str) -> str:
    return f"""apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: svc, namespace: {namespace}}}
spec: {{sha256: "{SHA}"}}
"""


def visible(root: Path) -> dict[str, str]:
    """What the loader would read: visible names, through their symlinks."""
    return {n: (root / n).read_text() for n in sorted(os.listdir(root)) if not n.startswith(".")}


def hidden_versions(root: Path) -> list[str]:
    return sorted(n for n in os.listdir(root) if n.startswith("..") and n[2:3].isdigit())


# --- naming ---------------------------------------------------------------------------------


def test_file_name_joins_namespace_configmap_and_key() -> None:
    assert file_name("team-a", "team-a-policy", "quota.yaml") == "team-a__team-a-policy__quota.yaml"


def test_only_yaml_yml_and_json_keys_become_files() -> None:
    cm = ConfigMap(
        namespace=HOME,
        name="mixed",
        data={
            "a.yaml": quota("a"),
            "b.yml": quota("b"),
            "c.json": '{"apiVersion": "tokengate.dev/v1"}',
            "README.md": "# not policy",
            "notes.txt": "x",
            "yaml": "no suffix",
        },
    )
    verdict = evaluate(cm, home_namespace=HOME)
    assert verdict.problem is None
    assert sorted(verdict.files) == [
        "tokengate__mixed__a.yaml",
        "tokengate__mixed__b.yml",
        "tokengate__mixed__c.json",
    ]
    assert verdict.files["tokengate__mixed__a.yaml"] == quota("a").encode()


@pytest.mark.parametrize(
    ("namespace", "name", "key"),
    [
        ("team-a", "x/../../etc", "p.yaml"),
        ("Team-A", "ok", "p.yaml"),
        ("team-a", "ok", "../p.yaml"),
        ("team-a", "ok", "a/b.yaml"),
        ("team-a", "n" * 200, "k" * 60 + ".yaml"),
    ],
)
def test_names_that_cannot_be_a_file_refuse_the_configmap(
    namespace: str, name: str, key: str
) -> None:
    verdict = evaluate(
        ConfigMap(namespace=namespace, name=name, data={key: ""}), home_namespace=namespace
    )
    assert verdict.files == {}
    assert verdict.problem is not None and "ConfigMap" in verdict.problem


# --- the namespace rule ---------------------------------------------------------------------


def test_the_tokengate_namespace_may_govern_any_namespace() -> None:
    cm = ConfigMap(
        namespace=HOME, name="base", data={"p.yaml": quota("team-a") + "---\n" + quota("team-b")}
    )
    verdict = evaluate(cm, home_namespace=HOME)
    assert verdict.problem is None
    assert list(verdict.files) == ["tokengate__base__p.yaml"]


def test_a_team_may_govern_its_own_namespace() -> None:
    text = "---\n" + quota("team-b") + "---\n" + api_key("team-b") + "---\n"
    cm = ConfigMap(namespace="team-b", name="mine", data={"p.yaml": text, "q.json": ""})
    verdict = evaluate(cm, home_namespace=HOME)
    assert verdict.problem is None
    assert sorted(verdict.files) == ["team-b__mine__p.yaml", "team-b__mine__q.json"]


def test_a_team_may_not_govern_another_namespace() -> None:
    cm = ConfigMap(
        namespace="team-b",
        name="sneaky",
        data={"ok.yaml": quota("team-b"), "p.yaml": quota("team-b") + "---\n" + api_key("team-a")},
    )
    verdict = evaluate(cm, home_namespace=HOME)
    assert verdict.files == {}  # the whole ConfigMap, not only the offending document
    assert verdict.problem == (
        "ConfigMap team-b/sneaky skipped: key p.yaml document 2 (ApiKey svc) governs namespace "
        "team-a; a ConfigMap in namespace team-b may only hold policies for namespace team-b"
    )
    assert SHA not in verdict.problem  # the message never carries ConfigMap data


def test_json_keys_are_checked_too() -> None:
    doc = '{"kind": "QuotaPolicy", "metadata": {"name": "x", "namespace": "team-a"}}'
    verdict = evaluate(
        ConfigMap(namespace="team-b", name="j", data={"p.json": doc}), home_namespace=HOME
    )
    assert verdict.files == {}
    assert verdict.problem is not None and "governs namespace team-a" in verdict.problem


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("kind: QuotaPolicy\nmetadata: {name: x}\n", "document 1 has no metadata.namespace"),
        ("- a list\n", "document 1 has no metadata.namespace"),
        ("metadata: {namespace: [team-b]}\n", "document 1 has no metadata.namespace"),
        ("metadata: {namespace: team-b\n", "is not valid YAML"),
    ],
)
def test_a_document_whose_namespace_cannot_be_checked_refuses_a_foreign_configmap(
    text: str, problem: str
) -> None:
    cm = ConfigMap(namespace="team-b", name="odd", data={"p.yaml": quota("team-b"), "q.yaml": text})
    verdict = evaluate(cm, home_namespace=HOME)
    assert verdict.files == {}
    assert verdict.problem is not None and problem in verdict.problem
    assert "ConfigMap team-b/odd skipped: key q.yaml" in verdict.problem


def test_keys_that_are_not_policy_are_not_checked() -> None:
    cm = ConfigMap(
        namespace="team-b", name="p", data={"p.yaml": quota("team-b"), "x.txt": quota("team-a")}
    )
    verdict = evaluate(cm, home_namespace=HOME)
    assert verdict.problem is None
    assert list(verdict.files) == ["team-b__p__p.yaml"]


# --- the writer -----------------------------------------------------------------------------


def test_first_write_lays_out_the_kubelet_structure(tmp_path: Path) -> None:
    root = tmp_path / "policies"
    writer = AtomicDirectory(root=root)
    assert writer.write({"a.yaml": b"A", "b.yaml": b"B"}) is True
    assert visible(root) == {"a.yaml": "A", "b.yaml": "B"}
    [version] = hidden_versions(root)
    assert os.readlink(root / "..data") == version
    for name in ("a.yaml", "b.yaml"):
        assert os.readlink(root / name) == f"..data/{name}"
    assert sorted(os.listdir(root)) == sorted(["..data", version, "a.yaml", "b.yaml"])
    assert oct(os.stat(root / version).st_mode & 0o777) == oct(0o755)
    assert oct(os.stat(root / "a.yaml").st_mode & 0o777) == oct(0o644)


def test_a_change_swaps_data_and_removes_the_old_version(tmp_path: Path) -> None:
    writer = AtomicDirectory(root=tmp_path)
    writer.write({"a.yaml": b"A", "b.yaml": b"B"})
    before = os.readlink(tmp_path / "..data")
    print_before = fingerprint_directory(tmp_path)
    assert writer.write({"a.yaml": b"A2", "c.yaml": b"C"}) is True
    after = os.readlink(tmp_path / "..data")
    assert after != before
    assert hidden_versions(tmp_path) == [after]  # the old version directory is gone
    assert visible(tmp_path) == {"a.yaml": "A2", "c.yaml": "C"}  # b.yaml's link removed
    assert fingerprint_directory(tmp_path) != print_before


def test_unchanged_content_does_not_swap(tmp_path: Path) -> None:
    writer = AtomicDirectory(root=tmp_path)
    writer.write({"a.yaml": b"A"})
    before = os.readlink(tmp_path / "..data")
    print_before = fingerprint_directory(tmp_path)
    assert writer.write({"a.yaml": b"A"}) is False
    assert os.readlink(tmp_path / "..data") == before
    assert fingerprint_directory(tmp_path) == print_before  # the Reloader sees no change


def test_a_restarted_writer_does_not_swap_for_the_same_content(tmp_path: Path) -> None:
    AtomicDirectory(root=tmp_path).write({"a.yaml": b"A"})
    before = os.readlink(tmp_path / "..data")
    again = AtomicDirectory(root=tmp_path)  # a container restart keeps the emptyDir
    assert again.write({"a.yaml": b"A"}) is False
    assert os.readlink(tmp_path / "..data") == before
    assert again.write({"a.yaml": b"changed"}) is True


def test_writing_nothing_removes_every_file(tmp_path: Path) -> None:
    writer = AtomicDirectory(root=tmp_path)
    writer.write({"a.yaml": b"A"})
    assert writer.write({}) is True
    assert visible(tmp_path) == {}
    assert len(hidden_versions(tmp_path)) == 1
    assert os.listdir(tmp_path / os.readlink(tmp_path / "..data")) == []


def test_a_leftover_data_tmp_from_a_crash_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "..data_tmp").symlink_to("nowhere")
    assert AtomicDirectory(root=tmp_path).write({"a.yaml": b"A"}) is True
    assert visible(tmp_path) == {"a.yaml": "A"}
    assert not os.path.lexists(tmp_path / "..data_tmp")


@pytest.mark.parametrize("name", ["", ".hidden.yaml", "..data", "a/b.yaml", "x\0.yaml"])
def test_names_the_writer_refuses(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvariantError, match="not a visible file name"):
        AtomicDirectory(root=tmp_path).write({name: b"x"})


def test_written_files_load_with_the_real_loader(tmp_path: Path) -> None:
    configmaps = [
        ConfigMap(
            namespace=HOME,
            name="base",
            data={"quotas.yaml": quota("team-a") + "---\n" + quota("demo")},
        ),
        ConfigMap(
            namespace="team-b",
            name="own",
            data={"p.yaml": quota("team-b", 7) + "---\n" + api_key("team-b")},
        ),
        ConfigMap(namespace="team-c", name="bad", data={"p.yaml": quota("team-a", 1, name="evil")}),
    ]
    files: dict[str, bytes] = {}
    for cm in configmaps:
        files.update(evaluate(cm, home_namespace=HOME).files)
    AtomicDirectory(root=tmp_path).write(files)
    snapshot = load_directory(tmp_path)
    assert sorted(snapshot.policies) == ["demo", "team-a", "team-b"]
    assert snapshot.policies["team-a"].name == "team-a"  # not team-c's "evil" one
    assert snapshot.policies["team-b"].source == "team-b__own__p.yaml"
    assert [k.namespace for k in snapshot.keys_by_sha256.values()] == ["team-b"]
    assert snapshot.sources == ("team-b__own__p.yaml", "tokengate__base__quotas.yaml")


# --- backoff --------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(first_s=1.0, cap_s=8.0)
    delays = [backoff.next() for _ in range(40)]
    for delay, nominal in zip(delays, [1.0, 2.0, 4.0, 8.0, 8.0], strict=False):
        assert nominal * 0.5 <= delay <= nominal
    assert all(4.0 <= d <= 8.0 for d in delays[3:])
    backoff.reset()
    assert 0.5 <= backoff.next() <= 1.0


def test_an_invalid_team_config_map_is_skipped_not_passed_to_the_loader() -> None:
    """One team's typo must not make the sidecar refuse everybody's reload."""
    broken = (
        "apiVersion: tokengate.dev/v1\nkind: QuotaPolicy\n"
        "metadata: {name: team-b, namespace: team-b}\n"
        "spec: {limits: [{name: rpm, requests: -5, per: 1m}]}\n"
    )
    verdict = evaluate(
        ConfigMap(namespace="team-b", name="own", data={"p.yaml": broken}), home_namespace=HOME
    )
    assert verdict.files == {}
    assert verdict.problem is not None
    assert "ConfigMap team-b/own skipped: invalid policy" in verdict.problem
    assert "requests" in verdict.problem
    # The platform's own ConfigMaps go to the loader as they are (it reports their errors).
    home = evaluate(
        ConfigMap(namespace=HOME, name="own", data={"p.yaml": broken}), home_namespace=HOME
    )
    assert list(home.files) == [f"{HOME}__own__p.yaml"]


@pytest.mark.parametrize("url", ["ftp://kubernetes", "https://", "kubernetes.default.svc:443"])
def test_a_client_refuses_an_api_url_it_cannot_use(url: str) -> None:
    """The same class of error as the flag check in `settings_from_args`: a ConfigError."""
    target = ApiTarget(url=url, token_file=None, ca_file=None, namespace="x", selector="a=b")
    with pytest.raises(ConfigError, match="API URL must be http"):
        KubeClient(target=target)
