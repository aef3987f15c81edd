"""policy-sync against a fake Kubernetes API server: LIST, a chunked WATCH stream the test
drives, resourceVersions, compaction (410), bearer tokens, outages.

The fake keeps a history of events like the real server's watch cache, so a watch that
starts after a change still receives it; every test waits on what the syncer wrote (or
asked for) with a bounded `wait_until`, never on a timer.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from extproc import cli
from extproc.kube.policysync import ApiTarget, AtomicDirectory, Backoff, KubeClient, PolicySync
from extproc.kube.policysync import _settings as settings_module
from extproc.policy import load_directory
from tests.kube_api import FakeApi
from tests.waiting import wait_until

HOME = "tokengate"
LABEL = "tokengate.dev/policy=true"


def quota(namespace: str, rpm: int = 60) -> str:
    return f"""apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: {namespace}, namespace: {namespace}}}
spec:
  limits: [{{name: rpm, requests: {rpm}, per: 1m}}]
"""


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[FakeApi]:
    server = FakeApi(tokens={"t1"})
    server.put(HOME, "base", {"quotas.yaml": quota("team-a"), "README.md": "not policy"})
    server.put(HOME, "unlabelled", {"x.yaml": quota("x")}, labelled=False)
    server.put("team-b", "own", {"p.yaml": quota("team-b")})
    yield server
    server.close()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("t1\n")
    return path


def visible(root: Path) -> dict[str, str] | None:
    """What the loader would read; None while a swap is half done (the kubelet's layout has
    that window too: a removed name dangles until its link is unlinked, just after)."""
    try:
        names = [n for n in sorted(os.listdir(root)) if not n.startswith(".")]
        return {n: (root / n).read_text() for n in names}
    except FileNotFoundError:
        return None


def eventually(root: Path, expected: dict[str, str]) -> None:
    wait_until(lambda: visible(root) == expected, detail=lambda: visible(root))


def failures(api: FakeApi) -> int:
    return sum(s.status == 503 for s in api.seen())


def messages(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in list(caplog.records) if needle in r.getMessage()]


class Running:
    """A PolicySync loop in a thread; leaving the block stops it and proves it stopped."""

    def __init__(self, api: FakeApi, token_file: Path, dest: Path, *, cluster: bool = False):
        target = ApiTarget(
            url=api.url,
            token_file=token_file,
            ca_file=None,
            namespace=None if cluster else HOME,
            selector=LABEL,
        )
        self.sync = PolicySync(
            client=KubeClient(target=target),
            writer=AtomicDirectory(root=dest),
            home_namespace=HOME,
            resync_s=300,
            backoff=Backoff(first_s=0.01, cap_s=0.05),
        )
        self._thread = threading.Thread(target=self.sync.run, daemon=True)

    def __enter__(self) -> PolicySync:
        self._thread.start()
        return self.sync

    def __exit__(self, *exc: object) -> None:
        self.sync.stop()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "stop() did not end the loop"


BASE = {"tokengate__base__quotas.yaml": quota("team-a")}


def cli_args(api: FakeApi, token_file: Path, dest: Path, *extra: str) -> list[str]:
    url, token = ["--api-url", api.url], ["--token-file", str(token_file)]
    return ["policy-sync", *url, *token, "--namespace", HOME, "--dest", str(dest), *extra]


# --- --once and the CLI ---------------------------------------------------------------------


def test_once_lists_the_own_namespace_by_label(
    api: FakeApi, token_file: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "policies"
    assert cli.main([*cli_args(api, token_file, dest), "--once"]) == 0
    assert visible(dest) == BASE  # not team-b's (another namespace), not the unlabelled one
    [request] = api.seen()
    assert request.path == "/api/v1/namespaces/tokengate/configmaps"
    assert request.query == {"labelSelector": LABEL}
    assert request.auth == "Bearer t1"


def test_once_all_namespaces_applies_the_namespace_rule(
    api: FakeApi, token_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api.put("team-c", "sneaky", {"p.yaml": quota("team-c") + "---\n" + quota("team-a")})
    dest = tmp_path / "policies"
    assert cli.main([*cli_args(api, token_file, dest), "--once", "--all-namespaces"]) == 0
    assert api.seen()[0].path == "/api/v1/configmaps"
    assert visible(dest) == {**BASE, "team-b__own__p.yaml": quota("team-b")}
    [refusal] = messages(caplog, "team-c/sneaky")
    assert "key p.yaml document 2 (QuotaPolicy team-a) governs namespace team-a" in refusal
    snapshot = load_directory(dest)  # what the sidecar will load
    assert sorted(snapshot.policies) == ["team-a", "team-b"]
    assert snapshot.policies["team-a"].source == "tokengate__base__quotas.yaml"


def test_once_forbidden_names_the_missing_rbac_rule(
    api: FakeApi, token_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api.forbidden = True
    assert cli.main([*cli_args(api, token_file, tmp_path / "p"), "--once"]) == 1
    [error] = messages(caplog, "403")
    assert "may not list configmaps" in error
    assert "in namespace tokengate (a Role and RoleBinding there)" in error


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--token-file", "/nonexistent/token"], "--token-file /nonexistent/token does not exist"),
        (["--api-url", "ftp://x"], "--api-url must be https://host[:port]"),
        (["--api-url", "https://x", "--ca-file", "/nonexistent/ca"], "--ca-file /nonexistent/ca"),
        (["--namespace", ""], "cannot read the pod's namespace from"),
        (["--selector", ""], "--selector must not be empty"),
        (["--resync-seconds", "0"], "--resync-seconds must be at least 1"),
    ],
)
def test_bad_flags_exit_2_with_one_line(
    api: FakeApi,
    token_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    message: str,
) -> None:
    monkeypatch.setattr(settings_module, "NAMESPACE_FILE", tmp_path / "no-namespace")
    assert cli.main([*cli_args(api, token_file, tmp_path / "p"), "--once", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tokengate: ") and message in err
    assert err.count("\n") == 1
    assert api.seen() == []


# --- the watch loop -------------------------------------------------------------------------


def test_watch_applies_added_modified_and_deleted(
    api: FakeApi, token_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    dest = tmp_path / "policies"
    with Running(api, token_file, dest):
        eventually(dest, BASE)
        api.put(HOME, "extra", {"e.yaml": quota("team-e")})
        eventually(dest, {**BASE, "tokengate__extra__e.yaml": quota("team-e")})
        api.put(HOME, "extra", {"e.yaml": quota("team-e", 99)})
        eventually(dest, {**BASE, "tokengate__extra__e.yaml": quota("team-e", 99)})
        api.delete(HOME, "base")
        eventually(dest, {"tokengate__extra__e.yaml": quota("team-e", 99)})
    [request] = api.seen(watch=True)[:1]
    assert request.query["allowWatchBookmarks"] == "true"
    assert request.query["timeoutSeconds"] == "300"
    assert request.query["resourceVersion"] == "103"  # the list's, after the fixture's 3 puts
    synced = messages(caplog, "synced")
    assert synced[0].startswith("policy-sync: synced 1 ConfigMaps (tokengate/base) into ")
    assert synced[-1].startswith("policy-sync: synced 1 ConfigMaps (tokengate/extra) into ")
    assert len(synced) == 4
    assert not any("requests: 99" in r.getMessage() for r in caplog.records)  # no data logged


def test_a_change_without_new_content_does_not_swap(
    api: FakeApi, token_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    dest = tmp_path / "policies"
    with Running(api, token_file, dest):
        eventually(dest, BASE)
        data_before = os.readlink(dest / "..data")
        api.put(HOME, "base", {"quotas.yaml": quota("team-a"), "README.md": "edited"})
        api.put(HOME, "unlabelled", {"x.yaml": quota("x", 5)}, labelled=False)
        api.put(HOME, "later", {"l.yaml": quota("team-l")})  # applied after the two above
        eventually(dest, {**BASE, "tokengate__later__l.yaml": quota("team-l")})
    assert len(messages(caplog, "synced")) == 2  # the first list and "later": nothing between
    assert os.readlink(dest / "..data") != data_before


def test_a_bookmark_moves_the_watch_position(
    api: FakeApi, token_file: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "policies"
    with Running(api, token_file, dest):
        eventually(dest, BASE)
        wait_until(lambda: len(api.seen(watch=True)) == 1)
        version = api.bookmark()
        api.end_streams()  # after sending the bookmark
        wait_until(lambda: len(api.seen(watch=True)) >= 2)
    first, second = api.seen(watch=True)[:2]
    assert first.query["resourceVersion"] == "103"
    assert second.query["resourceVersion"] == version == "104"
    assert len(api.seen(watch=False)) == 1  # a bookmark needs no new LIST


def test_an_expired_watch_lists_again(
    api: FakeApi, token_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    dest = tmp_path / "policies"
    with Running(api, token_file, dest):
        eventually(dest, BASE)
        wait_until(lambda: len(api.seen(watch=True)) == 1)
        api.change_unseen(HOME, "base", {"quotas.yaml": quota("team-a", 2)})
        eventually(dest, {"tokengate__base__quotas.yaml": quota("team-a", 2)})
    assert len(api.seen(watch=False)) == 2  # only a new LIST could see that change
    assert messages(caplog, "410 Gone), listing again")
    assert not messages(caplog, "retrying")  # expected, not a failure to back off from


def test_a_410_answer_to_watch_lists_again(
    api: FakeApi, token_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    dest = tmp_path / "policies"
    with Running(api, token_file, dest):
        eventually(dest, BASE)
        wait_until(lambda: len(api.seen(watch=True)) == 1)
        api.watch_statuses.append(410)
        with api._cond:  # a change no watch will ever report
            api._objects[(HOME, "base")]["data"] = {"quotas.yaml": quota("team-a", 3)}
        api.end_streams()
        eventually(dest, {"tokengate__base__quotas.yaml": quota("team-a", 3)})
    assert [s.status for s in api.seen(watch=True)][:2] == [200, 410]
    assert len(api.seen(watch=False)) == 2
    assert messages(caplog, "410 Gone), listing again")
    assert not messages(caplog, "retrying")


def test_the_token_is_read_again_on_reconnect(
    api: FakeApi, token_file: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "policies"
    with Running(api, token_file, dest):
        eventually(dest, BASE)
        wait_until(lambda: len(api.seen(watch=True)) == 1)
        token_file.write_text("t2\n")  # the kubelet rotated the projected token
        api.tokens = {"t2"}  # and the old one no longer works
        api.end_streams()
        wait_until(lambda: len(api.seen()) >= 3)  # a new connection
        api.put(HOME, "after", {"a.yaml": quota("team-z")})  # seen only with the new token
        eventually(dest, {**BASE, "tokengate__after__a.yaml": quota("team-z")})
    auths = [s.auth for s in api.seen()]
    assert auths[:2] == ["Bearer t1", "Bearer t1"]
    assert auths[2:] and set(auths[2:]) == {"Bearer t2"}


def test_an_outage_keeps_the_files_and_recovers(
    api: FakeApi, token_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dest = tmp_path / "policies"
    with Running(api, token_file, dest):
        eventually(dest, BASE)
        data_before = os.readlink(dest / "..data")
        api.down_status = 503
        api.end_streams()
        wait_until(lambda: failures(api) >= 1)
        api.put(HOME, "during", {"d.yaml": quota("team-d")})  # no stream is open to see it
        seen_failures = failures(api)
        wait_until(lambda: failures(api) >= seen_failures + 2)
        assert visible(dest) == BASE  # retried with backoff, never wiped
        assert os.readlink(dest / "..data") == data_before
        assert messages(caplog, "keeping the policy files already written")
        api.down_status = None
        eventually(dest, {**BASE, "tokengate__during__d.yaml": quota("team-d")})


def test_an_unreachable_api_keeps_the_files(
    api: FakeApi, token_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dest = tmp_path / "policies"
    with Running(api, token_file, dest):
        eventually(dest, BASE)
        data_before = os.readlink(dest / "..data")
        api.close()
        wait_until(lambda: len(messages(caplog, "cannot reach the API server")) >= 2)
        assert visible(dest) == BASE
        assert os.readlink(dest / "..data") == data_before


def test_a_foreign_configmap_is_refused_until_fixed(
    api: FakeApi, token_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dest = tmp_path / "policies"
    own = {"team-b__own__p.yaml": quota("team-b")}
    with Running(api, token_file, dest, cluster=True):
        eventually(dest, {**BASE, **own})
        api.put("team-b", "grab", {"p.yaml": quota("team-a", 1_000_000)})
        wait_until(lambda: bool(messages(caplog, "team-b/grab skipped")))
        api.put("team-b", "grab", {"p.yaml": quota("team-b", 5)})
        eventually(dest, {**BASE, **own, "team-b__grab__p.yaml": quota("team-b", 5)})
    assert len(messages(caplog, "team-b/grab skipped")) == 1  # once per version
