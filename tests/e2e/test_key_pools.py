"""Provider key pools through the real Envoy: requests take turns over a pool's keys, a key
its provider refuses (401) leaves the rotation while the request is served by the next
backend, a rotated file brings it back without a restart, and no key value reaches a
response, a metric or the sidecar's log."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from extproc.dev.stack import LocalStack
from tests.e2e.harness import client, metric_value, mock_records, wait_until
from tests.e2e.test_model_routes import KEY, MESSAGES

GOOD = ("pool-a-" + secrets.token_hex(8), "pool-b-" + secrets.token_hex(8))
BAD = "pool-c-" + secrets.token_hex(8)  # the mock refuses it: a revoked key


def _policies(root: Path, keys: Path) -> str:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    return f"""
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: routed, namespace: routed}}
spec:
  models: {{allow: ["gpt-4o*", "claude-*", "pooled*"]}}
  limits: [{{name: rpm, requests: 100000, per: 1m}}]
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: client, namespace: routed}}
spec: {{sha256: {digest}}}
---
apiVersion: tokengate.dev/v1
kind: ProviderKeyPool
metadata: {{name: openai-pool}}
spec:
  provider: openai
  keys:
  - {{name: a, file: {keys / "a"}}}
  - {{name: b, file: {keys / "b"}}}
  - {{name: c, file: {keys / "c"}}}
---
apiVersion: tokengate.dev/v1
kind: ModelRoute
metadata: {{name: pooled}}
spec:
  model: pooled
  backends:
  - {{provider: openai, model: gpt-4o, keyPool: openai-pool}}
  - {{provider: anthropic, model: claude-sonnet-4-5}}
---
apiVersion: tokengate.dev/v1
kind: ModelRoute
metadata: {{name: pooled-alias}}
spec:
  model: pooled-alias
  backends: [{{provider: openai, model: gpt-4o, keyPool: openai-pool}}]
"""


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("pools")
    keys = root / "keys"
    keys.mkdir()
    for name, value in zip("abc", (*GOOD, BAD), strict=True):
        (keys / name).write_text(value + "\n")
    policies = root / "policies"
    policies.mkdir()
    (policies / "policies.yaml").write_text(_policies(root, keys))
    stack = LocalStack(
        policy_dir=policies, run_dir=root / "run", vocab_dir=vocab_dir,
        extra_mock_keys=GOOD, extra_serve_args=("--reload-interval", "0.2"),
    ).start()  # fmt: skip
    yield stack
    stack.stop()


def _keys_sent(stack: LocalStack, tag: str) -> list[str]:
    sent = []
    for record in mock_records(stack, tag):
        for values in record["credentials"].values():
            sent += [v.removeprefix("Bearer ") for v in values]
    return sent


def _served(stack: LocalStack, tag: str, model: str = "pooled") -> str:
    raw = client(stack, KEY, tag).chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, max_tokens=5
    )
    return raw.headers["x-tokengate-backend"]


def test_keys_take_turns_and_a_refused_one_leaves_the_rotation(
    pooled: LocalStack, tag: str
) -> None:
    served = [_served(pooled, tag) for _ in range(6)]
    sent = _keys_sent(pooled, tag)
    # c answered 401 once: that request was served by the next backend, c left the rotation
    assert sent.count(BAD) == 1
    assert served.count("anthropic/claude-sonnet-4-5") == 1
    openai_keys = [k for k in sent if k in GOOD]
    assert abs(openai_keys.count(GOOD[0]) - openai_keys.count(GOOD[1])) <= 1  # in turns
    assert {s for s in served if s.startswith("openai")} <= {
        "openai/gpt-4o;key=openai-pool/a", "openai/gpt-4o;key=openai-pool/b",
    }  # fmt: skip
    disabled = metric_value(
        pooled, "tokengate_provider_keys_disabled_total", pool="openai-pool", key="c"
    )
    assert disabled == 1
    log = (pooled.run_dir / "sidecar.log").read_text()
    assert "openai-pool/c" in log
    assert not any(value in log for value in (*GOOD, BAD))


def test_an_alias_uses_the_pool_too(pooled: LocalStack, tag: str) -> None:
    served = {_served(pooled, tag, "pooled-alias") for _ in range(4)}
    assert served == {"openai/gpt-4o;key=openai-pool/a", "openai/gpt-4o;key=openai-pool/b"}
    assert set(_keys_sent(pooled, tag)) == set(GOOD)


def test_a_rotated_key_file_is_used_without_a_restart(pooled: LocalStack, tag: str) -> None:
    """Key c, fixed in its file (rotated to a key the provider accepts), is back in turn."""
    (pooled.policy_dir.parent / "keys" / "c").write_text(GOOD[0] + "\n")
    wait_until(
        lambda: any(_served(pooled, tag).endswith("key=openai-pool/c") for _ in range(3)),
        seconds=10,
    )
