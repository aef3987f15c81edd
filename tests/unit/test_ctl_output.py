"""`tokengate ctl` without a server: formatting, JSON shapes, local `policy validate`, and
argument errors."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from extproc.control import control_pb2 as pb
from extproc.ctl import main as ctl
from extproc.ctl import output as out

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


# --- values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-3, "0s"),
        (0.2, "1s"),  # not reset yet: rounded up
        (42, "42s"),
        (59.5, "1m0s"),
        (360, "6m0s"),
        (3723, "1h2m3s"),
        (86400 * 2 + 5, "2d0h0m5s"),
        (float("inf"), "0s"),
    ],
)
def test_duration_is_humanised(seconds: float, text: str) -> None:
    assert out.duration(seconds) == text


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (0, "$0.00"),
        (12_340_000, "$12.34"),
        (50_000_000, "$50.00"),
        (1_234, "$0.001234"),  # a small spend never shows as $0.00
        (12_345_600, "$12.3456"),
        (-1_500_000, "-$1.50"),
    ],
)
def test_micro_dollars_are_shown_as_dollars(micro: int, text: str) -> None:
    assert out.dollars(micro) == text
    assert out.amount(micro, "usd") == text


def test_other_measures_are_plain_integers() -> None:
    assert out.amount(1234567, "tokens") == "1234567"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("0.5h", 1800)],
)
def test_durations_are_parsed(text: str, seconds: float) -> None:
    assert out.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "5x", "0s", "-1m", "1h 30m", "m"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        out.parse_duration(text)


def test_extra_amounts_in_the_limit_unit_or_dollars() -> None:
    assert out.parse_extra("tpm=50000") == out.Extra(limit="tpm", amount=50000, unit="")
    assert out.parse_extra("spend=$2.50") == out.Extra(limit="spend", amount=2_500_000, unit="usd")
    assert out.parse_extra("spend=$0.000001").amount == 1
    bad = ["tpm", "=5", "tpm=", "tpm=-1", "tpm=1.5", "tpm=²", "tpm=" + "9" * 20, "spend=$0"]
    bad += ["spend=$1e400", "spend=$0.0000001", "spend=$", "spend=5$"]
    for text in bad:
        with pytest.raises(ValueError):
            out.parse_extra(text)


# --- tables and JSON --------------------------------------------------------------------


def _usage() -> pb.GetUsageResponse:
    return pb.GetUsageResponse(
        limits=[
            pb.LimitUsage(
                name="tpm", scope="team-a", measure="tokens", algorithm="calendar", per="1m",
                used=1200, limit=100000, remaining=98800, reset_seconds=41.3,
            ),
            pb.LimitUsage(
                name="spend", scope="team-a/billing", measure="usd", algorithm="calendar",
                per="30d", used=12_340_000, limit=50_000_000, remaining=37_660_000,
                reset_seconds=3723,
            ),
            pb.LimitUsage(
                name="inflight", scope="team-a", measure="concurrent", algorithm="lease",
                used=0, limit=20, remaining=20,
            ),
        ],
        policy_version="abc123",
        store_up=True,
    )  # fmt: skip


def test_usage_table() -> None:
    lines = out.usage_table(_usage()).splitlines()
    assert lines[0].split() == [
        "LIMIT", "SCOPE", "MEASURE", "PER", "USED", "LIMIT", "REMAINING", "RESET",
    ]  # fmt: skip
    assert lines[1].split() == ["tpm", "team-a", "tokens", "1m", "1200", "100000", "98800", "42s"]
    assert lines[2].split() == [
        "spend", "team-a/billing", "usd", "30d", "$12.34", "$50.00", "$37.66", "1h2m3s",
    ]  # fmt: skip
    assert lines[3].split() == ["inflight", "team-a", "concurrent", "-", "0", "20", "20", "-"]
    # Columns line up: every row starts its SCOPE column where the header does.
    scope_at = lines[0].index("SCOPE")
    assert all(line[scope_at - 2 : scope_at] == "  " for line in lines)


def test_usage_json_keeps_proto_names_defaults_and_integers() -> None:
    data = json.loads(out.json_document(out.to_json(_usage())))
    assert set(data) == {"limits", "policy_version", "store_up"}
    spend = data["limits"][1]
    assert spend["used"] == 12_340_000  # micro-dollars, a JSON number (not a string)
    assert spend["reset_seconds"] == 3723
    inflight = data["limits"][2]
    assert inflight["per"] == "" and inflight["reset_seconds"] == 0  # defaults are printed
    assert set(inflight) == {
        "name", "scope", "measure", "algorithm", "per", "used", "limit", "remaining",
        "reset_seconds",
    }  # fmt: skip


def test_empty_message_json_has_every_field() -> None:
    assert out.to_json(pb.GetPolicyResponse()) == {
        "version": "",
        "loaded_at": 0,
        "sources": [],
        "namespaces": [],
        "keys": 0,
        "last_reload_error": "",
        "last_reload_at": 0,
    }


def test_top_table_in_the_measure_unit() -> None:
    response = pb.TopConsumersResponse(
        consumers=[
            pb.Consumer(caller=pb.Caller(namespace="team-a", key="billing"), amount=2_500_000),
            pb.Consumer(caller=pb.Caller(namespace="team-b"), amount=10_000),
        ],
        window="1h",
        measure="usd",
    )
    lines = out.top_table(response).splitlines()
    assert lines[0].split() == ["NAMESPACE", "KEY", "USD"]
    assert lines[1].split() == ["team-a", "billing", "$2.50"]
    assert lines[2].split() == ["team-b", "-", "$0.01"]


def test_policy_text() -> None:
    text = out.policy_text(
        pb.GetPolicyResponse(
            version="0123abcd", loaded_at=1_700_000_000.7, sources=["a.yaml", "b.yaml"],
            namespaces=["a", "b"], keys=3, last_reload_error="b.yaml (document 2): spec: bad",
            last_reload_at=1_700_000_060,
        )
    )  # fmt: skip
    assert "version:            0123abcd\n" in text
    assert "loaded at:          2023-11-14T22:13:20Z\n" in text
    assert "sources:            a.yaml, b.yaml\n" in text
    assert "namespaces:         2 (a, b)\n" in text
    assert "keys:               3\n" in text
    assert "last reload error:  b.yaml (document 2): spec: bad\n" in text
    assert "last reload error:  none" in out.policy_text(pb.GetPolicyResponse())


def test_override_and_reset_text() -> None:
    block = pb.SetOverrideRequest(
        caller=pb.Caller(namespace="team-a", key="billing"), kind=pb.SetOverrideRequest.BLOCK
    )
    expires = pb.SetOverrideResponse(expires_at=1_700_000_900)
    assert out.override_text(block, expires, now=1_700_000_000, unit="") == (
        "team-a/billing is blocked until 2023-11-14T22:28:20Z (in 15m0s)\n"
    )
    extra = pb.SetOverrideRequest(
        caller=pb.Caller(namespace="team-a"),
        kind=pb.SetOverrideRequest.EXTRA_QUOTA,
        limit="spend",
        amount=2_500_000,
    )
    assert out.override_text(extra, expires, now=1_700_000_000, unit="usd").startswith(
        "team-a has $2.50 extra on limit spend until "
    )
    reset = pb.ResetUsageRequest(caller=pb.Caller(namespace="team-a"))
    assert out.reset_text(reset, pb.ResetUsageResponse(limits_reset=1)) == (
        "reset 1 limit of team-a\n"
    )


def test_event_line_and_json_line() -> None:
    event = pb.Event(
        at=1_700_000_000.25,
        kind="refusal",
        caller=pb.Caller(namespace="team-a", key="billing"),
        limit="tpm",
        message="limit tpm:\nused 100",
    )
    line = out.event_line(event)
    assert line.endswith("\n") and line.count("\n") == 1
    assert line.split() == [
        "2023-11-14T22:13:20.250Z", "refusal", "team-a/billing", "tpm", "limit", "tpm:", "used",
        "100",
    ]  # fmt: skip
    assert out.event_line(pb.Event(at=1, kind="reload")).split()[1:3] == ["reload", "-"]
    # A sub-message that is not set still appears, with its defaults: the shape never varies.
    assert out.to_json(pb.Event(kind="reload"))["caller"] == {"namespace": "", "key": ""}
    data = json.loads(out.json_line(out.to_json(event)))
    assert data == {
        "at": 1_700_000_000.25,
        "kind": "refusal",
        "caller": {"namespace": "team-a", "key": "billing"},
        "limit": "tpm",
        "message": "limit tpm:\nused 100",
    }


# --- local `policy validate` ------------------------------------------------------------


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
    policy.write_text(VALID)
    parser = ctl._parser()
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
    args = ctl._parser().parse_args(["top"])
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


# --- gRPC failures and the event stream, with a fake connection -------------------------


class _Failure(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 1),
        (grpc.StatusCode.NOT_FOUND, 1),
        (grpc.StatusCode.FAILED_PRECONDITION, 1),
        (grpc.StatusCode.INTERNAL, 1),
        (grpc.StatusCode.UNAUTHENTICATED, 3),
        (grpc.StatusCode.PERMISSION_DENIED, 3),
        (grpc.StatusCode.UNAVAILABLE, 4),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 4),
    ],
)
def test_grpc_status_codes_map_to_exit_codes(code: grpc.StatusCode, exit_code: int) -> None:
    error = ctl.rpc_failure(
        _Failure(code, "line one\nline two"), server="h:1", timeout_s=2, sent_token=True
    )
    assert error.exit_code == exit_code
    assert "\n" not in str(error)


def _fake_events(monkeypatch: pytest.MonkeyPatch, stream: Iterator[pb.Event]) -> None:
    class Api:
        def WatchEvents(self, request: pb.WatchEventsRequest, **_: Any) -> Iterator[pb.Event]:
            assert list(request.kinds) == ["refusal"]
            return stream

    @contextmanager
    def connect(args: Any) -> Iterator[ctl.Connection]:
        api: Any = Api()
        yield ctl.Connection(api=api, server="fake:1", metadata=(), timeout_s=1)

    monkeypatch.setattr(ctl, "_connect", connect)


def _refusals(then: BaseException | None) -> Iterator[pb.Event]:
    for n in range(2):
        yield pb.Event(at=1_700_000_000 + n, kind="refusal", limit="tpm", message=f"no {n}")
    if then is not None:
        raise then


def test_events_ctrl_c_exits_0(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_events(monkeypatch, _refusals(then=KeyboardInterrupt()))
    assert ctl.main(["events", "--kind", "refusal", "-o", "json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["no 0", "no 1"]


def test_events_count_stops_the_tail(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_events(monkeypatch, _refusals(then=AssertionError("read past --count")))
    assert ctl.main(["events", "--kind", "refusal", "--count", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_events_stream_closed_or_failed_exits_4(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_events(monkeypatch, _refusals(then=None))
    assert ctl.main(["events", "--kind", "refusal"]) == 4
    assert capsys.readouterr().err == "tokengate ctl: the server closed the event stream\n"
    failure = _Failure(grpc.StatusCode.UNAVAILABLE, "socket closed")
    _fake_events(monkeypatch, _refusals(then=failure))
    assert ctl.main(["events", "--kind", "refusal"]) == 4
    assert capsys.readouterr().err == (
        "tokengate ctl: the control API at fake:1 is unavailable: socket closed\n"
    )
