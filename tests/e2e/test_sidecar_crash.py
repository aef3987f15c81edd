"""The whole sidecar SIGKILLed behind the real Envoy (node trouble, the OOM killer taking the
pod) while requests it admitted are at the provider: what the clients got, what reached the
upstream, what was charged, and how long the namespace stayed locked out."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from extproc.dev.stack import LocalStack
from extproc.policy import parse_documents
from extproc.policy.model import QuotaPolicy
from extproc.quota import limits_for
from extproc.quota.backends.redis import RedisBackend, connect
from tests.e2e.harness import mock_records
from tests.redis_server import RedisServer
from tests.waiting import wait_until
from tests.worker_fleet import children, worker_pids

INSTANCE_TTL_S = 2.0
SLOTS = 3
KEY = "tg-crash"
POLICY = f"""
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: crash, namespace: crash}}
spec:
  limits:
    - {{name: inflight, concurrent: {SLOTS}}}
    - {{name: tokens, tokens: 1000000, per: 366d}}
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: client, namespace: crash}}
spec: {{sha256: {hashlib.sha256(KEY.encode()).hexdigest()}}}
"""


@pytest.fixture
def fleet(tmp_path: Path, vocab_dir: Path) -> Iterator[tuple[LocalStack, RedisServer]]:
    redis = RedisServer(tmp_path).start()
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "crash.yaml").write_text(POLICY)
    stack = LocalStack(
        policy_dir=tmp_path / "policies", run_dir=tmp_path / "run", vocab_dir=vocab_dir,
        extra_serve_args=("--quota-store", redis.url, "--workers", "2",
                          "--instance-ttl", str(INSTANCE_TTL_S)),
    ).start()  # fmt: skip
    yield stack, redis
    stack.stop()
    redis.stop()


def _descendants(pid: int) -> set[int]:
    """Every process under `pid`: the supervisor's fork server, its workers, the tracker."""
    found = children(pid)
    for child in set(found):
        found |= _descendants(child)
    return found


def _api(stack: LocalStack) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.base_url}/v1", api_key=KEY, max_retries=0, timeout=60,
        default_headers={"x-request-tag": "crash"},
    )  # fmt: skip


def _charged(redis_url: str) -> tuple[int, int]:
    """The namespace's (leases held, tokens charged), read from the store itself."""
    (policy,) = [
        d for d in parse_documents(POLICY, file="crash.yaml") if isinstance(d, QuotaPolicy)
    ]

    async def peek() -> tuple[int, int]:
        backend = RedisBackend(connect(redis_url, timeout_s=2.0), lease_ttl_s=600)
        try:
            inflight, tokens = await backend.peek(limits_for(policy, None))
            return inflight.used, tokens.used
        finally:
            await backend.aclose()

    return asyncio.run(peek())


def test_a_killed_sidecar_locks_nobody_out_and_refunds_nothing(
    fleet: tuple[LocalStack, RedisServer],
) -> None:
    stack, redis = fleet
    outcomes: list[int] = []
    billed: list[int] = []  # what the provider reported for the answers that arrived

    def call() -> None:  # admitted, then held 3 s at the provider
        try:
            answer = _api(stack).chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "slow"}], max_tokens=50,
                extra_headers={"x-mock-delay-ms": "3000", "x-mock-completion-tokens": "40"},
            )  # fmt: skip
            outcomes.append(200)
            billed.append(answer.usage.total_tokens if answer.usage else 0)
        except openai.APIStatusError as exc:
            outcomes.append(exc.status_code)
        except openai.APIError:
            outcomes.append(0)

    threads = [threading.Thread(target=call) for _ in range(SLOTS)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(mock_records(stack, "crash")) == SLOTS)  # all at the provider
    assert _charged(redis.url)[0] == SLOTS  # every slot held
    sidecar = stack.children["sidecar"].proc.pid
    tree = _descendants(sidecar) | {sidecar}
    assert len(worker_pids(sidecar) & tree) == 2
    for pid in sorted(tree, reverse=True):  # the whole tree at once: no drain, no settlement
        os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    for thread in threads:
        thread.join(60)
    stack.children.pop("sidecar").proc.wait(10)
    # What the clients got. Measured: Envoy delivers an answer whose request phases were
    # done when the sidecar died (the ext_proc stream is gone, so nobody reads it): the
    # answer is the provider's, bounded by the cap the gateway wrote, and is charged below
    # as its whole reservation. Anything else is a 5xx, never a refusal.
    assert len(outcomes) == SLOTS and all(s in (0, 200) or s >= 500 for s in outcomes), outcomes
    stack.start_sidecar()  # what the kubelet does; a new instance, the old one is silent

    admitted_at: list[float] = []

    def admitted() -> bool:
        try:
            _api(stack).chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "fast"}], max_tokens=5
            )
        except openai.RateLimitError:
            return False  # the dead instance's leases still hold the slots
        admitted_at.append(time.monotonic())
        return True

    wait_until(admitted, seconds=INSTANCE_TTL_S + 10)
    lockout = admitted_at[0] - killed_at
    assert lockout <= INSTANCE_TTL_S + 3.0, f"locked out {lockout:.1f} s"  # the liveness bound
    # What was charged: the three reservations as recorded, never given back. Each could
    # have produced at most prompt + 50 tokens (the cap the provider enforces): charged
    # >= produced. (Plus the one request admitted after recovery.)
    # The dead sidecar's two workers were two instances whose liveness ran out a heartbeat
    # apart (further apart on a loaded machine): the first admission may come when only one
    # of them has been swept, the other's leases go at its own deadline.
    wait_until(lambda: _charged(redis.url)[0] == 0, seconds=INSTANCE_TTL_S + 5)
    leases, tokens = _charged(redis.url)
    assert leases == 0  # the dead instance holds nothing
    assert tokens >= SLOTS * (8 + 50) >= sum(billed), (tokens, billed)  # charged >= produced
