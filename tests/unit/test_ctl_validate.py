"""`tokengate ctl policy validate` offline: the server's own loader on local files, every
file reported, documents and fields named."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from extproc.ctl import main as ctl

REPO = Path(__file__).resolve().parents[2]

VALID = """\
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {name: team-a, namespace: team-a}
spec:
  limits:
    - {name: rpm, requests: 600, per: 1m}
    - {name: spend, usd: 50, per: 30d}
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {name: billing, namespace: team-a}
spec: {sha256: "%s"}
""" % ("ab" * 32)

INVALID_SECOND_DOCUMENT = """\
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {name: ok, namespace: ok}
spec:
  limits: [{name: rpm, requests: 10, per: 1m}]
---
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {name: bad, namespace: bad}
spec:
  limits: [{name: tpm, tokens: -5, per: 1m}]
"""


def test_validate_valid_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.yaml").write_text(VALID)
    (tmp_path / "b.yaml").write_text("---\n")
    code = ctl.main(["policy", "validate", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out.splitlines() == [
        f"ok       {tmp_path / 'a.yaml'} (2 documents)",
        f"ok       {tmp_path / 'b.yaml'} (0 documents)",
    ]
    assert captured.err == ""


def test_validate_reports_every_file_and_names_document_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad, missing = tmp_path / "good.yaml", tmp_path / "bad.yaml", tmp_path / "nope.yaml"
    good.write_text(VALID)
    bad.write_text(INVALID_SECOND_DOCUMENT)
    code = ctl.main(["policy", "validate", str(good), str(bad), str(missing)])
    captured = capsys.readouterr()
    assert code == 1
    lines = captured.out.splitlines()
    assert lines[0] == f"ok       {good} (2 documents)"
    assert lines[1].startswith(f"invalid  {bad} (document 2): spec.limits[0].tokens: ")
    assert "positive integer" in lines[1]
    assert lines[2].startswith(f"invalid  {missing}: cannot be read: ")
    assert captured.err == "tokengate ctl: 2 of 3 policy files invalid\n"


def test_validate_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(VALID)
    bad.write_text("kind: [unclosed\n")
    code = ctl.main(["policy", "validate", "--output", "json", str(good), str(bad)])
    data = json.loads(capsys.readouterr().out)
    assert code == 1
    assert data["valid"] is False
    assert data["files"][0] == {"file": str(good), "valid": True, "problems": [], "documents": 2}
    [problem] = data["files"][1]["problems"]
    assert data["files"][1]["valid"] is False
    assert problem["file"] == str(bad)
    assert problem["document"] == 0 and problem["field"] == ""
    assert problem["problem"].startswith("invalid YAML at line ")


def test_validate_checks_like_the_server_loader(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Duplicate keys, non-UTF-8 and oversized files fail exactly as the loader fails them."""
    dup = tmp_path / "dup.yaml"
    dup.write_text(VALID.replace("spec:\n  limits:", "spec:\n  limits: []\n  limits:", 1))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"kind: caf\xe9\n")
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (1024 * 1024 + 1))
    code = ctl.main(["policy", "validate", str(dup), str(latin), str(huge)])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    assert "duplicate key 'limits'" in lines[0]
    assert lines[1] == f"invalid  {latin}: is not valid UTF-8 (byte offset 9)"
    assert lines[2].startswith(f"invalid  {huge}: is larger than 1 MiB")


def test_validate_reports_clashes_within_and_across_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Loaded together as the server loads its directory: the later document is named."""
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(VALID)
    quota_policy = VALID.split("---", maxsplit=1)[0]
    second.write_text(quota_policy.replace("name: team-a,", "name: other,"))
    assert ctl.main(["policy", "validate", str(first), str(second)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"ok       {first} (2 documents)"
    assert lines[1] == (
        f"invalid  {second} (document 1): metadata.namespace: a QuotaPolicy for namespace "
        f"'team-a' is already defined as team-a/team-a in {first} (document 1)"
    )
    twice = tmp_path / "twice.yaml"
    twice.write_text(VALID + "---\n" + VALID.split("---")[1])
    assert ctl.main(["policy", "validate", str(twice)]) == 1
    line = capsys.readouterr().out
    assert line.startswith(f"invalid  {twice} (document 3): metadata.name: ApiKey team-a/billing")


def test_validate_reads_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = io.TextIOWrapper(io.BytesIO(VALID.encode()))
    monkeypatch.setattr("sys.stdin", fake)
    assert ctl.main(["policy", "validate", "-"]) == 0
    assert capsys.readouterr().out == "ok       - (2 documents)\n"


def test_validate_the_shipped_examples(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in (REPO / "examples" / "policies").glob("*.yaml"))
    assert files
    assert ctl.main(["policy", "validate", *files]) == 0
    assert capsys.readouterr().out.count("ok ") == len(files)


def test_validate_fails_every_invalid_fixture(capsys: pytest.CaptureFixture[str]) -> None:
    """One call per file (clashes inside a file are found too). usd limits are the exception:
    offline there is no server configuration to say whether a price table exists."""
    files = sorted((REPO / "tests/unit/fixtures/policy/invalid").iterdir())
    assert files
    for path in files:
        code = ctl.main(["policy", "validate", str(path)])
        text = capsys.readouterr().out
        if path.name == "limit-usd-without-price-table.yaml":
            assert (code, text.split()[0]) == (0, "ok")
        else:
            assert (code, text.split()[0]) == (1, "invalid"), path.name
            assert text.startswith(f"invalid  {path}")
