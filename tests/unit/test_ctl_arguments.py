"""`tokengate ctl`'s command line: value converters, usage errors (exit 2), options before
or after the command, the environment, and the bearer token (exit 3)."""

from __future__ import annotations

from argparse import ArgumentTypeError
from pathlib import Path

import pytest

from extproc.ctl import main as ctl
from extproc.ctl import values

# --- values as read ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("0.5h", 1800)],
)
def test_durations_are_parsed(text: str, seconds: float) -> None:
    assert values.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "5x", "0s", "-1m", "1h 30m", "m"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ArgumentTypeError, match="duration"):
        values.parse_duration(text)


def test_extra_amounts_in_the_limit_unit_or_dollars() -> None:
    assert values.parse_extra("tpm=50000") == values.Extra(limit="tpm", amount=50000, unit="")
    assert values.parse_extra("spend=$2.50") == values.Extra(
        limit="spend", amount=2_500_000, unit="usd"
    )
    assert values.parse_extra("spend=$0.000001").amount == 1
    bad = ["tpm", "=5", "tpm=", "tpm=-1", "tpm=1.5", "tpm=²", "tpm=" + "9" * 20, "spend=$0"]
    bad += ["spend=$1e400", "spend=$0.0000001", "spend=$", "spend=5$"]
    for text in bad:
        with pytest.raises(ArgumentTypeError):
            values.parse_extra(text)


# --- arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["usage"],
        ["policy"],
        ["policy", "validate"],
        ["top", "--window", "2h"],
        ["top", "--count", "0"],
        ["events", "--kind", "nonsense"],
        ["override", "team-a", "--ttl", "1h", "--reason", "x"],  # neither --block nor --extra
        ["override", "team-a", "--block", "--extra", "tpm=5", "--ttl", "1h", "--reason", "x"],
        ["override", "team-a", "--block", "--ttl", "soon", "--reason", "x"],
        ["override", "team-a", "--block", "--ttl", "1h", "--reason", "  "],
        ["override", "team-a", "--block", "--ttl", "1h"],  # no reason
        ["override", "team-a", "--extra", "tpm", "--ttl", "1h", "--reason", "x"],
        ["reset", "team-a"],
        ["usage", "team-a", "--output", "yaml"],
        ["usage", "team-a", "--timeout", "0"],
    ],
)
def test_argument_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(["--help"]) == 0
    text = capsys.readouterr().out
    for line in ("0  success", "2  usage error", "3  authentication failed", "4  control API"):
        assert line in text


def test_global_options_go_before_or_after_the_command(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("---\n")
    parser = ctl.parser()
    after = parser.parse_args(["policy", "validate", str(policy), "-o", "json", "--timeout", "3"])
    before = parser.parse_args(["-o", "json", "--timeout", "3", "policy", "validate", str(policy)])
    default = parser.parse_args(["policy", "validate", str(policy)])
    assert (after.output, after.timeout) == (before.output, before.timeout) == ("json", 3.0)
    assert (default.output, default.timeout, default.server) == ("table", 10.0, "127.0.0.1:50052")


def test_server_and_token_file_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOKENGATE_CONTROL_SERVER", "10.0.0.1:7000")
    monkeypatch.setenv("TOKENGATE_CONTROL_TOKEN_FILE", "/run/secrets/token")
    args = ctl.parser().parse_args(["top"])
    assert (args.server, args.token_file) == ("10.0.0.1:7000", "/run/secrets/token")


def test_unreadable_token_file_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "token"
    assert ctl.main(["top", "--token-file", str(missing)]) == 3
    assert capsys.readouterr().err.startswith(f"tokengate ctl: cannot read token file {missing}")
    missing.write_text("\n")
    assert ctl.main(["top", "--token-file", str(missing)]) == 3
    assert capsys.readouterr().err == f"tokengate ctl: token file {missing} is empty\n"
    missing.write_text("two\nlines\n")
    assert ctl.main(["top", "--token-file", str(missing)]) == 3
    assert "has spaces or non-ASCII characters" in capsys.readouterr().err


def test_token_from_the_environment_must_fit_a_header(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TOKENGATE_CONTROL_TOKEN_FILE", raising=False)
    monkeypatch.setenv("TOKENGATE_CONTROL_TOKEN", "tök")
    assert ctl.main(["top"]) == 3
    assert capsys.readouterr().err == (
        "tokengate ctl: the token in env TOKENGATE_CONTROL_TOKEN has spaces or non-ASCII "
        "characters\n"
    )
