"""`tokengate serve` settings: repeated policy directories, the Redis password file, the
health-only listener."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from extproc.errors import ConfigError
from extproc.policy import load_directories
from extproc.serve.settings import Address, ServeSettings, add_serve_arguments, serve_settings


def _settings(*argv: str) -> ServeSettings:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return serve_settings(parser.parse_args(list(argv)))


def test_policy_dirs_repeat_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENGATE_POLICY_DIR", raising=False)
    assert _settings().policy_dirs == (Path("examples/policies"),)
    two = _settings("--policy-dir", "/a", "--policy-dir", "/b")
    assert two.policy_dirs == (Path("/a"), Path("/b"))
    monkeypatch.setenv("TOKENGATE_POLICY_DIR", "/x:/y")
    assert _settings().policy_dirs == (Path("/x"), Path("/y"))


def test_health_listener_is_off_unless_asked() -> None:
    assert _settings().health is None
    on = _settings("--health-listen", "0.0.0.0:50053")
    assert on.health == Address("0.0.0.0", 50053)


def test_store_connections_default_and_bounds() -> None:
    assert _settings().store_connections == 32
    assert _settings("--store-connections", "8").store_connections == 8
    with pytest.raises(ConfigError, match="--store-connections"):
        _settings("--store-connections", "0")


def test_redis_password_comes_from_its_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    settings = _settings(
        "--quota-store", "redis://r:6379", "--quota-store-password-file", str(secret)
    )
    assert settings.quota_store_password() == "s3cret"
    missing = _settings("--quota-store-password-file", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="quota-store-password-file"):
        missing.quota_store_password()


def test_several_directories_make_one_snapshot_with_distinct_sources(tmp_path: Path) -> None:
    policy = (
        "apiVersion: tokengate.dev/v1\nkind: QuotaPolicy\n"
        "metadata: {{name: {ns}, namespace: {ns}}}\n"
        "spec: {{limits: [{{name: c, concurrent: 1}}]}}\n"
    )
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "p.yaml").write_text(policy.format(ns=f"team-{name}"))
    snapshot = load_directories([tmp_path / "a", tmp_path / "b"])
    assert set(snapshot.policies) == {"team-a", "team-b"}
    assert snapshot.sources == (f"{tmp_path}/a/p.yaml", f"{tmp_path}/b/p.yaml")
    (tmp_path / "b" / "p.yaml").write_text(policy.format(ns="team-a"))
    with pytest.raises(ConfigError, match="team-a"):
        load_directories([tmp_path / "a", tmp_path / "b"])  # one namespace, two policies


def test_event_loop_is_uvloop_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENGATE_EVENT_LOOP", raising=False)
    assert _settings().event_loop == "uvloop"
    assert _settings("--event-loop", "asyncio").event_loop == "asyncio"
    monkeypatch.setenv("TOKENGATE_EVENT_LOOP", "asyncio")
    assert _settings().event_loop == "asyncio"
    with pytest.raises(ConfigError, match="--event-loop"):
        _settings("--event-loop", "trio")
