"""A pool key's own budget through the real Envoy: a key with a budget serves until it is
used up and is then skipped (its pool's other keys serve; a pool with no key left fails over
to the route's next backend, before anything is sent with the spent key), the spent state is
a metric and an event, and the budget counts what the key served."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from extproc.dev.stack import LocalStack
from tests.e2e.harness import client, metric_value, mock_records, wait_until
from tests.e2e.test_model_routes import KEY, MESSAGES

CAPPED, SPARE, SOLO = (f"budget-{n}-" + secrets.token_hex(8) for n in ("capped", "spare", "solo"))
SPENT = "tokengate_provider_key_budget_spent"


def _policies(keys: Path) -> str:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    return f"""
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: budgets, namespace: budgets}}
spec:
  models: {{allow: ["gpt-4o*", "claude-*", "capped*", "solo*"]}}
  limits: [{{name: rpm, requests: 100000, per: 1m}}]
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: client, namespace: budgets}}
spec: {{sha256: {digest}}}
---
apiVersion: tokengate.dev/v1
kind: ProviderKeyPool
metadata: {{name: shared}}
spec:
  provider: openai
  keys:
  - name: capped
    file: {keys / "capped"}
    limits: [{{name: two-an-hour, requests: 2, per: 1h}}]
  - {{name: spare, file: {keys / "spare"}}}
---
apiVersion: tokengate.dev/v1
kind: ProviderKeyPool
metadata: {{name: solo}}
spec:
  provider: openai
  keys:
  - name: only
    file: {keys / "solo"}
    limits: [{{name: tokens-an-hour, tokens: 10, per: 1h}}]
---
apiVersion: tokengate.dev/v1
kind: ModelRoute
metadata: {{name: capped}}
spec:
  model: capped
  backends: [{{provider: openai, model: gpt-4o, keyPool: shared}}]
---
apiVersion: tokengate.dev/v1
kind: ModelRoute
metadata: {{name: solo}}
spec:
  model: solo
  backends:
  - {{provider: openai, model: gpt-4o, keyPool: solo}}
  - {{provider: anthropic, model: claude-sonnet-4-5}}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("key-budgets")
    keys = root / "keys"
    keys.mkdir()
    for name, value in (("capped", CAPPED), ("spare", SPARE), ("solo", SOLO)):
        (keys / name).write_text(value + "\n")
    policies = root / "policies"
    policies.mkdir()
    (policies / "policies.yaml").write_text(_policies(keys))
    started = LocalStack(
        policy_dir=policies, run_dir=root / "run", vocab_dir=vocab_dir,
        extra_mock_keys=(CAPPED, SPARE, SOLO), extra_serve_args=("--reload-interval", "0.2"),
    ).start()  # fmt: skip
    yield started
    started.stop()


def _served(stack: LocalStack, tag: str, model: str) -> str:
    raw = client(stack, KEY, tag).chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, max_tokens=5
    )
    return raw.headers["x-tokengate-backend"]


def _keys_sent(stack: LocalStack, tag: str) -> list[str]:
    return [
        value.removeprefix("Bearer ")
        for record in mock_records(stack, tag)
        for values in record["credentials"].values()
        for value in values
    ]


def test_a_key_over_its_budget_is_skipped_and_the_pool_serves_on(
    stack: LocalStack, tag: str
) -> None:
    served: list[str] = []
    while served.count("openai/gpt-4o;key=shared/capped") < 2:  # its budget: 2 requests
        served.append(_served(stack, tag, "capped"))
        assert len(served) <= 6, served  # keys take turns: capped serves within four
    wait_until(lambda: metric_value(stack, SPENT, pool="shared", key="capped") == 1)
    after = {_served(stack, tag, "capped") for _ in range(4)}
    assert after == {"openai/gpt-4o;key=shared/spare"}
    assert _keys_sent(stack, tag).count(CAPPED) == 2  # never sent past its budget
    assert metric_value(stack, SPENT, pool="shared", key="spare") == 0  # no budget: no gauge


def test_a_pool_with_no_key_left_fails_over_to_the_next_backend(
    stack: LocalStack, tag: str
) -> None:
    # The key's budget is 10 tokens an hour: one answer (prompt + completion) spends it.
    assert _served(stack, tag, "solo") == "openai/gpt-4o;key=solo/only"
    wait_until(lambda: metric_value(stack, SPENT, pool="solo", key="only") == 1)
    assert _served(stack, tag, "solo") == "anthropic/claude-sonnet-4-5"
    assert _keys_sent(stack, tag).count(SOLO) == 1
    log = (stack.run_dir / "sidecar.log").read_text()
    assert "provider key solo/only: budget tokens-an-hour used up" in log
    assert not any(value in log for value in (CAPPED, SPARE, SOLO))
