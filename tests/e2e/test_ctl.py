"""`tokengate ctl` against a real running stack (Envoy + sidecar + mock provider): every
command in table and JSON output, driven in-process through `extproc.ctl.main.main` and, for the
live `events` tail, as real `python -m extproc ctl` processes."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from extproc.control import control_pb2 as pb
from extproc.control import control_pb2_grpc as pb_grpc
from extproc.ctl import main as ctl
from extproc.dev.stack import LocalStack
from tests.e2e.conftest import KEYS, POLICIES, make_stack
from tests.e2e.harness import client, wait_until

REPO = Path(__file__).resolve().parents[2]
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
INVALID_POLICY = """\
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


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Iterator[LocalStack]:
    """A stack of this module's own: overrides and resets must not leak into other tests."""
    running = make_stack(tmp_path_factory.mktemp("ctl"), vocab_dir)
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "TOKENGATE_CONTROL_SERVER",
        "TOKENGATE_CONTROL_TOKEN",
        "TOKENGATE_CONTROL_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tg(stack: LocalStack, capsys: pytest.CaptureFixture[str]) -> Any:
    """`tg("usage", "e2e")` runs `tokengate ctl --server … --token-file … usage e2e`."""

    def run(*args: str, token_file: Path | None = stack.control_token_file) -> Run:
        capsys.readouterr()
        auth = ["--token-file", str(token_file)] if token_file is not None else []
        code = ctl.main(["--server", server(stack), *auth, *args])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


@pytest.fixture
def unreachable() -> Iterator[str]:
    """A port bound but not listening: connections are refused, and no one can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def server(stack: LocalStack) -> str:
    return f"127.0.0.1:{stack.ports['control']}"


def rows(table: str) -> list[list[str]]:
    return [line.split() for line in table.splitlines()[1:]]


def spend(stack: LocalStack, key: str, tag: str, *, completion: int = 5) -> int:
    """One plain call; returns the tokens it cost (the provider's usage, which is settled)."""
    answer = client(stack, key, tag).chat.completions.create(
        model="gpt-4o",
        messages=HI,
        max_tokens=10,
        extra_headers={"x-mock-completion-tokens": str(completion)},
    )
    assert answer.usage is not None
    return answer.usage.total_tokens


# --- usage ------------------------------------------------------------------------------


def test_usage_equals_what_the_calls_spent(stack: LocalStack, tg: Any, tag: str) -> None:
    # stream-budget counts tokens over 366 days, so no window rolls over during the test.
    spent = sum(spend(stack, "tg-stream-budget", tag, completion=n) for n in (3, 7))
    assert spent > 0

    data = tg("usage", "stream-budget", "--output", "json").json()
    assert set(data) == {"limits", "policy_version", "store_up"}
    assert data["store_up"] is True and data["policy_version"]
    [limit] = data["limits"]
    assert limit == {
        "name": "stream-tokens",
        "scope": "stream-budget",
        "measure": "tokens",
        "algorithm": "calendar",
        "per": limit["per"],
        "used": spent,
        "limit": 150,
        "remaining": 150 - spent,
        "reset_seconds": limit["reset_seconds"],
    }
    assert limit["reset_seconds"] > 0

    table = tg("usage", "stream-budget")
    assert table.code == 0 and table.err == ""
    assert table.out.splitlines()[0].split() == [
        "LIMIT", "SCOPE", "MEASURE", "PER", "USED", "LIMIT", "REMAINING", "RESET",
    ]  # fmt: skip
    [row] = rows(table.out)
    assert row[:7] == ["stream-tokens", "stream-budget", "tokens", limit["per"], str(spent), "150",
                       str(150 - spent)]  # fmt: skip
    assert re.fullmatch(r"(\d+d)?(\d+h)?(\d+m)?\d+s", row[7])


def test_usage_of_a_key_after_gateway_calls(stack: LocalStack, tg: Any, tag: str) -> None:
    """e2e's per-minute limits are token buckets refilling 100M tokens a minute, so what the
    calls took is back within microseconds: bounded by what was spent, never more."""
    spent = sum(spend(stack, "tg-e2e", tag) for _ in range(3))
    data = tg("usage", "e2e", "--key", "main", "--output", "json").json()
    by_name = {item["name"]: item for item in data["limits"]}
    assert list(by_name) == ["rpm", "tpm", "inflight"]
    assert 0 <= by_name["tpm"]["used"] <= spent
    assert by_name["tpm"]["limit"] == 100_000_000
    assert (by_name["tpm"]["scope"], by_name["tpm"]["algorithm"]) == ("e2e", "bucket")
    assert by_name["inflight"] == {
        "name": "inflight", "scope": "e2e", "measure": "concurrent", "algorithm": "lease",
        "per": "", "used": 0, "limit": 200, "remaining": 200, "reset_seconds": 0,
    }  # fmt: skip
    table = tg("usage", "e2e", "--key", "main")
    assert table.code == 0
    assert [r[0] for r in rows(table.out)] == ["rpm", "tpm", "inflight"]
    assert rows(table.out)[2] == ["inflight", "e2e", "concurrent", "-", "0", "200", "200", "-"]


def test_usage_of_an_unknown_namespace_exits_1(tg: Any) -> None:
    run = tg("usage", "no-such-namespace")
    assert run.code == 1 and run.out == ""
    assert run.err.startswith("tokengate ctl: ") and "no-such-namespace" in run.err
    assert "NOT_FOUND" in run.err and run.err.count("\n") == 1


# --- top --------------------------------------------------------------------------------


def test_top_lists_the_callers_that_spent(stack: LocalStack, tg: Any, tag: str) -> None:
    spend(stack, "tg-e2e", tag)
    data = tg("top", "--window", "1h", "--output", "json").json()
    assert data["window"] == "1h" and data["measure"] == "tokens"
    e2e = [c for c in data["consumers"] if c["caller"] == {"namespace": "e2e", "key": "main"}]
    assert len(e2e) == 1 and e2e[0]["amount"] > 0

    table = tg("top", "--measure", "requests", "--count", "50")
    assert table.code == 0
    assert table.out.splitlines()[0].split() == ["NAMESPACE", "KEY", "REQUESTS"]
    e2e_row = next(r for r in rows(table.out) if r[:2] == ["e2e", "main"])
    assert int(e2e_row[2]) >= 1

    one = tg("top", "--count", "1", "-o", "json").json()
    assert len(one["consumers"]) == 1


# --- policy -----------------------------------------------------------------------------


def test_policy_show_matches_get_policy(stack: LocalStack, tg: Any) -> None:
    token = stack.control_token_file.read_text().strip()
    with grpc.insecure_channel(server(stack)) as channel:
        direct: pb.GetPolicyResponse = pb_grpc.ControlStub(channel).GetPolicy(  # type: ignore[no-untyped-call]
            pb.GetPolicyRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=10
        )
    assert direct.version

    data = tg("policy", "show", "--output", "json").json()
    assert data["version"] == direct.version
    assert data["sources"] == ["keys.yaml", "policies.yaml"]
    assert "e2e" in data["namespaces"] and data["keys"] == len(KEYS)
    assert data["last_reload_error"] == ""
    assert abs(data["loaded_at"] - direct.loaded_at) < 1e-6

    table = tg("policy", "show")
    assert table.code == 0
    lines = table.out.splitlines()
    fields = dict(line.split(":  ", 1) for line in lines if not line.startswith("  "))
    assert fields["routes opened"].strip() == "1"
    assert "  GET /v1/models -> openai for passthrough (models, namespace passthrough)" in lines
    assert data["routes"] == [
        {"name": "models", "namespace": "passthrough", "methods": ["GET"], "path": "/v1/models",
         "provider": "openai", "namespaces": ["passthrough"], "limits": []}
    ]  # fmt: skip
    assert fields["version"].strip() == direct.version
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", fields["loaded at"].strip())
    assert fields["sources"].strip() == "keys.yaml, policies.yaml"
    assert fields["last reload error"].strip() == "none"


def test_policy_validate_locally_and_remotely(tmp_path: Path, tg: Any) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(POLICIES)
    bad.write_text(INVALID_POLICY)

    local = tg("policy", "validate", str(good))
    remote = tg("policy", "validate", "--remote", str(good))
    assert local.code == remote.code == 0
    assert local.out == remote.out == f"ok       {good} (11 documents)\n"

    local_bad = tg("policy", "validate", "-o", "json", str(good), str(bad))
    remote_bad = tg("policy", "validate", "--remote", "-o", "json", str(good), str(bad))
    assert local_bad.code == remote_bad.code == 1
    assert json.loads(local_bad.out) == json.loads(remote_bad.out)  # one validator
    [problem] = json.loads(remote_bad.out)["files"][1]["problems"]
    assert problem == {
        "file": str(bad),
        "document": 2,
        "field": "spec.limits[0].tokens",
        "problem": problem["problem"],
    }
    table = tg("policy", "validate", "--remote", str(bad))
    assert table.code == 1
    assert table.out.startswith(f"invalid  {bad} (document 2): spec.limits[0].tokens: ")
    assert table.err == "tokengate ctl: 1 of 1 policy files invalid\n"


def test_remote_validation_finds_clashes_inside_a_file(tg: Any) -> None:
    """Two ApiKeys of one name in one file: the loader refuses the file, so the server's
    ValidatePolicy must say so too, as local validation does."""
    clash = str(REPO / "tests/unit/fixtures/policy/invalid/duplicate-apikey-name.yaml")
    local = tg("policy", "validate", "-o", "json", clash)
    remote = tg("policy", "validate", "--remote", "-o", "json", clash)
    assert local.code == 1
    assert (remote.code, json.loads(remote.out)) == (1, json.loads(local.out))


def test_local_validation_needs_no_server(
    tmp_path: Path, unreachable: str, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(POLICIES)
    assert ctl.main(["--server", unreachable, "policy", "validate", str(good)]) == 0
    assert capsys.readouterr().out.startswith("ok ")


# --- override ---------------------------------------------------------------------------


def test_override_block_refuses_the_next_call(stack: LocalStack, tg: Any, tag: str) -> None:
    api = client(stack, "tg-big", tag)
    api.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=5)

    run = tg("override", "big", "--block", "--ttl", "1h", "--reason", "incident 4711")
    assert run.code == 0, run.err
    assert re.fullmatch(
        r"big is blocked until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(in (1h0m0s|59m\d+s)\)\n", run.out
    )
    with pytest.raises((openai.PermissionDeniedError, openai.RateLimitError)) as refused:
        api.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=5)
    assert "incident 4711" in refused.value.message
    assert "blocked" in refused.value.message.lower()


def test_override_block_of_one_key_json(stack: LocalStack, tg: Any, tag: str) -> None:
    before = time.time()
    data = tg(
        "override", "solo", "--key", "client", "--block", "--ttl", "15m", "--reason", "runaway",
        "--output", "json",
    ).json()  # fmt: skip
    assert set(data) == {"expires_at"}
    assert before + 900 - 5 <= data["expires_at"] <= time.time() + 900 + 5
    with pytest.raises((openai.PermissionDeniedError, openai.RateLimitError)) as refused:
        client(stack, "tg-solo", tag).chat.completions.create(model="gpt-4o", messages=HI)
    assert "runaway" in refused.value.message


def test_override_extra_raises_the_limit(stack: LocalStack, tg: Any, tag: str) -> None:
    api = client(stack, "tg-tight-tokens", tag)
    api.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=40)
    with pytest.raises(openai.RateLimitError):  # 60 tokens: the second reservation is too big
        api.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=40)

    run = tg(
        "override", "tight-tokens", "--extra", "token-budget=1000", "--ttl", "10m",
        "--reason", "quarter end",
    )  # fmt: skip
    assert run.code == 0, run.err
    assert run.out.startswith("tight-tokens has 1000 extra on limit token-budget until ")

    [limit] = tg("usage", "tight-tokens", "-o", "json").json()["limits"]
    assert limit["limit"] == 1060
    api.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=40)  # now it fits


def test_override_of_an_unknown_namespace_exits_1(tg: Any) -> None:
    run = tg("override", "no-such-namespace", "--block", "--ttl", "1m", "--reason", "x")
    assert run.code == 1 and "NOT_FOUND" in run.err


# --- reset ------------------------------------------------------------------------------


def test_reset_brings_usage_back_to_zero(stack: LocalStack, tg: Any, tag: str) -> None:
    for output in ("table", "json"):
        spend(stack, "tg-shared", tag)
        [before] = tg("usage", "shared-budget", "-o", "json").json()["limits"]
        assert before["used"] > 0

        run = tg("reset", "shared-budget", "--reason", "test reset", "--output", output)
        assert run.code == 0, run.err
        if output == "json":
            assert run.json() == {"limits_reset": 1}
        else:
            assert run.out == "reset 1 limit of shared-budget\n"

        [after] = tg("usage", "shared-budget", "-o", "json").json()["limits"]
        assert after["used"] == 0 and after["remaining"] == after["limit"]


# --- events -----------------------------------------------------------------------------


def test_events_stream_refusals_as_they_happen(stack: LocalStack, tag: str) -> None:
    """Two real `tokengate ctl events --count 1` processes (JSON Lines and table) see the
    refusal; refusals are repeated until they exit, since nothing says when a fresh
    subscription is in place."""
    base = [sys.executable, "-m", "extproc", "ctl", "--server", server(stack),
            "--token-file", str(stack.control_token_file)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENGATE_CONTROL_")}
    procs = {
        output: subprocess.Popen(
            [*base, "events", "--kind", "refusal", "--count", "1", "--output", output],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for output in ("json", "table")
    }
    try:
        api = client(stack, "tg-tight-requests", tag)
        for _ in range(3):
            api.chat.completions.create(model="gpt-4o-mini", messages=HI)

        def refused_and_seen() -> bool:
            with pytest.raises(openai.RateLimitError):
                api.chat.completions.create(model="gpt-4o-mini", messages=HI)
            return all(proc.poll() is not None for proc in procs.values())

        wait_until(refused_and_seen, seconds=60)
        results = {output: proc.communicate(timeout=10) for output, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert {output: proc.returncode for output, proc in procs.items()} == {"json": 0, "table": 0}

    json_out, json_err = results["json"]
    assert json_err == ""
    [line] = json_out.splitlines()
    event = json.loads(line)
    assert set(event) == {"at", "kind", "caller", "limit", "message"}
    assert event["kind"] == "refusal"
    assert event["caller"] == {"namespace": "tight-requests", "key": "client"}
    assert event["limit"] == "three-requests"
    assert "three-requests" in event["message"]
    assert abs(event["at"] - time.time()) < 120

    table_out, _ = results["table"]
    [row] = table_out.splitlines()
    assert row.split()[1:4] == ["refusal", "tight-requests/client", "three-requests"]


# --- authentication and reachability ----------------------------------------------------


def test_no_token_exits_3(tg: Any) -> None:
    run = tg("policy", "show", token_file=None)
    assert run.code == 3 and run.out == ""
    assert run.err.startswith("tokengate ctl: authentication failed: ")
    assert "--token-file" in run.err and run.err.count("\n") == 1


def test_wrong_token_exits_3(tg: Any, tmp_path: Path) -> None:
    wrong = tmp_path / "token"
    wrong.write_text("tgc-not-the-token\n")
    for args in (["policy", "show"], ["usage", "e2e"], ["events", "--count", "1"]):
        run = tg(*args, token_file=wrong)
        assert run.code == 3, args
        assert run.err.startswith("tokengate ctl: authentication failed: ")


def test_token_from_the_environment(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch, tg: Any
) -> None:
    monkeypatch.setenv("TOKENGATE_CONTROL_TOKEN", stack.control_token_file.read_text().strip())
    assert tg("policy", "show", token_file=None).code == 0
    monkeypatch.setenv("TOKENGATE_CONTROL_TOKEN_FILE", str(stack.control_token_file))
    monkeypatch.setenv("TOKENGATE_CONTROL_TOKEN", "tgc-wrong")  # the file comes first
    monkeypatch.setenv("TOKENGATE_CONTROL_SERVER", server(stack))
    assert ctl.main(["policy", "show"]) == 0


@pytest.mark.parametrize(
    "args", [["policy", "show"], ["events"], ["policy", "validate", "--remote", __file__]]
)
def test_unreachable_server_exits_4(
    args: list[str], unreachable: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = ctl.main(["--server", unreachable, "--timeout", "5", *args])
    err = capsys.readouterr().err
    assert code == 4
    assert err.startswith(f"tokengate ctl: the control API at {unreachable} is unavailable: ")
    assert err.count("\n") == 1


def test_silent_server_times_out_with_exit_4(capsys: pytest.CaptureFixture[str]) -> None:
    """A listener that never speaks HTTP/2: the call's deadline ends it."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        code = ctl.main(["--server", address, "--timeout", "0.5", "top"])
    assert code == 4
    assert capsys.readouterr().err == (
        f"tokengate ctl: the control API at {address} did not answer within 0.5s\n"
    )
