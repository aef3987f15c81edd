"""Backend health through the real Envoy: a circuit breaker shared by two sidecars over one
Redis, and provider headroom that stops sending before the provider would answer 429."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from extproc.ctl import main as ctl
from extproc.dev.stack import LocalStack
from tests.e2e.harness import client, metric_value, mock_records, wait_until
from tests.e2e.test_model_routes import KEY, MESSAGES, POLICIES, PRICES
from tests.redis_server import RedisServer

FAILING_GPT = {"x-mock-only-model": "gpt-4o", "x-mock-status": "503"}
FAILURES = 3  # --breaker-failures
RPM = 4  # the mock's per-key requests per minute, for each provider


def _policies(root: Path) -> Path:
    directory = root / "policies"
    directory.mkdir(parents=True)
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    key = (
        "apiVersion: tokengate.dev/v1\nkind: ApiKey\n"
        f"metadata: {{name: client, namespace: routed}}\nspec: {{sha256: {digest}}}\n"
    )
    (directory / "policies.yaml").write_text(POLICIES + "---\n" + key)
    return directory


def _stack(root: Path, vocab_dir: Path, *serve: str, mock: tuple[str, ...] = ()) -> LocalStack:
    return LocalStack(
        policy_dir=_policies(root), run_dir=root / "run", vocab_dir=vocab_dir,
        extra_serve_args=("--price-table", str(PRICES), *serve), extra_mock_args=mock,
    ).start()  # fmt: skip


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path
) -> Iterator[tuple[LocalStack, LocalStack]]:
    """Two gateways (Envoy + sidecar + mock each) whose sidecars share one Redis."""
    root = tmp_path_factory.mktemp("fleet")
    redis = RedisServer(root).start()
    breaker = ("--quota-store", redis.url, "--breaker-failures", str(FAILURES),
               "--breaker-cooldown", "1")  # fmt: skip
    first = _stack(root / "a", vocab_dir, *breaker)
    second = _stack(root / "b", vocab_dir, *breaker)
    yield first, second
    first.stop()
    second.stop()
    redis.stop()


def _served(stack: LocalStack, tag: str, **headers: str) -> str:
    raw = client(stack, KEY, tag, **headers).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=10
    )
    return raw.headers["x-tokengate-backend"]


def _gpt_sends(stacks: tuple[LocalStack, ...], tag: str) -> int:
    return sum(1 for stack in stacks for r in mock_records(stack, tag) if r["model"] == "gpt-4o")


def _backends(stack: LocalStack, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    code = ctl.main(["--server", f"127.0.0.1:{stack.ports['control']}", "--token-file",
                     str(stack.control_token_file), "-o", "json", "backends"])  # fmt: skip
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    return {b["backend"]: b for b in document["backends"]}


def test_the_breaker_opens_for_the_fleet_and_a_probe_closes_it(
    fleet: tuple[LocalStack, LocalStack], tag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = fleet
    for _ in range(FAILURES):  # each fails over: the client never sees the failures
        assert _served(first, tag, **FAILING_GPT) == "anthropic/claude-sonnet-4-5"
    assert _gpt_sends(fleet, tag) == FAILURES
    assert _backends(second, capsys)["openai/gpt-4o"]["state"] == "open"
    for stack in (second, first, second, first):  # open: nobody sends to it any more
        assert _served(stack, tag, **FAILING_GPT) == "anthropic/claude-sonnet-4-5"
    assert _gpt_sends(fleet, tag) == FAILURES
    skipped = metric_value(
        second, "tokengate_backend_skipped_total", backend="openai/gpt-4o", reason="open"
    )
    assert skipped >= 2
    # Healthy again: once the cooldown is over, one request probes it and closes it.
    wait_until(lambda: _served(second, tag) == "openai/gpt-4o", seconds=10)
    assert _backends(first, capsys)["openai/gpt-4o"]["state"] == "closed"
    assert _served(first, tag) == "openai/gpt-4o"
    closed = metric_value(
        second, "tokengate_backend_transitions_total", backend="openai/gpt-4o",
        transition="closed",
    )  # fmt: skip
    assert closed == 1


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Iterator[LocalStack]:
    stack = _stack(tmp_path_factory.mktemp("headroom"), vocab_dir, mock=("--key-rpm", str(RPM)))
    yield stack
    stack.stop()


def test_headroom_moves_traffic_before_the_provider_says_429(limited: LocalStack, tag: str) -> None:
    """Twice the primary's rate limit within its minute: no 429 from any provider and no
    error for any client: the gateway moves to the fallback when the primary's headers say
    it has nothing left, and the fallback serves the rest."""
    served = [_served(limited, tag) for _ in range(2 * RPM)]
    assert served == ["openai/gpt-4o"] * RPM + ["anthropic/claude-sonnet-4-5"] * RPM
    for backend in ("openai/gpt-4o", "anthropic/claude-sonnet-4-5"):  # no 429 came back
        attempts = {
            outcome: metric_value(
                limited, "tokengate_backend_attempts_total", backend=backend, outcome=outcome
            )
            for outcome in ("ok", "failed")
        }
        assert attempts == {"ok": RPM, "failed": 0}
    records = mock_records(limited, tag)
    assert [r["model"] for r in records].count("gpt-4o") == RPM  # never asked past its limit
    skipped = metric_value(
        limited, "tokengate_backend_skipped_total", backend="openai/gpt-4o", reason="exhausted"
    )
    assert skipped == RPM
