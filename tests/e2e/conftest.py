"""The real stack for e2e tests: mock provider + tokengate sidecar + the real Envoy binary,
all on ephemeral ports, one stack per test process (pytest-xdist worker)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from extproc.dev.stack import LocalStack

# Windows this long never roll over during a test run, so counts are deterministic.
LONG = "366d"
STREAM_BUDGET = 150
SHARED_BUDGET = 600

# Gateway keys the tests use, and the policies they map to.
KEYS = {
    "tg-e2e": ("e2e", "main"),
    "tg-tight-requests": ("tight-requests", "client"),
    "tg-tight-tokens": ("tight-tokens", "client"),
    "tg-big": ("big", "client"),
    "tg-passthrough": ("passthrough", "client"),
    "tg-claude": ("claude", "client"),
    "tg-stream-budget": ("stream-budget", "client"),
    "tg-stream-budget-a": ("stream-budget-a", "client"),
    "tg-shared": ("shared-budget", "client"),
    "tg-solo": ("solo", "client"),
}

POLICIES = f"""
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: e2e, namespace: e2e}}
spec:
  models: {{allow: ["gpt-4o*", "gpt-3.5-turbo"]}}
  limits:
    - {{name: rpm, requests: 100000, per: 1m}}
    - {{name: tpm, tokens: 100000000, per: 1m}}
    - {{name: inflight, concurrent: 200}}
---
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: tight-requests, namespace: tight-requests}}
spec:
  limits:
    - {{name: three-requests, requests: 3, per: {LONG}}}
---
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: tight-tokens, namespace: tight-tokens}}
spec:
  clampCompletion: false  # tests reserve-and-settle and the cut, which a cap pre-empts
  limits:
    - {{name: token-budget, tokens: 60, per: {LONG}}}
---
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: big, namespace: big}}
spec:
  limits:
    - {{name: rpm, requests: 100000, per: 1m}}
---
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: passthrough, namespace: passthrough}}
spec:
  limits:
    - {{name: two-requests, requests: 2, per: {LONG}}}
    - {{name: few-tokens, tokens: 1, per: {LONG}}}
---
apiVersion: tokengate.dev/v1
kind: Route
metadata: {{name: models, namespace: passthrough}}
spec: {{methods: [GET], path: /v1/models, provider: openai}}
---
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: claude, namespace: claude}}
spec:
  models: {{allow: ["claude-*"]}}
  limits:
    - {{name: rpm, requests: 100000, per: 1m}}
---
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: stream-budget, namespace: stream-budget}}
spec:
  clampCompletion: false  # tests reserve-and-settle and the cut, which a cap pre-empts
  defaultMaxTokens: 10
  limits:
    - {{name: stream-tokens, tokens: {STREAM_BUDGET}, per: {LONG}}}
---
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: stream-budget-a, namespace: stream-budget-a}}
spec:
  clampCompletion: false  # tests reserve-and-settle and the cut, which a cap pre-empts
  streamReserveTokens: 10
  limits:
    - {{name: stream-tokens, tokens: {STREAM_BUDGET}, per: {LONG}}}
---
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: shared-budget, namespace: shared-budget}}
spec:
  clampCompletion: false  # tests reserve-and-settle and the cut, which a cap pre-empts
  defaultMaxTokens: 10
  limits:
    - {{name: shared-tokens, tokens: {SHARED_BUDGET}, per: {LONG}}}
---
apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: solo, namespace: solo}}
spec:
  limits:
    - {{name: one-at-a-time, concurrent: 1}}
"""


def _api_keys() -> str:
    docs = []
    for key, (namespace, name) in KEYS.items():
        digest = hashlib.sha256(key.encode()).hexdigest()
        docs.append(
            "apiVersion: tokengate.dev/v1\nkind: ApiKey\n"
            f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {{sha256: {digest}}}\n"
        )
    return "---\n".join(docs)


def write_policies(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "policies.yaml").write_text(POLICIES)
    (directory / "keys.yaml").write_text(_api_keys())
    return directory


def make_stack(root: Path, vocab_dir: Path, **options: Any) -> LocalStack:
    return LocalStack(
        policy_dir=write_policies(root / "policies"),
        run_dir=root / "run",
        vocab_dir=vocab_dir,
        max_body_bytes=2 * 1024 * 1024,
        **options,
    ).start()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Iterator[LocalStack]:
    running = make_stack(tmp_path_factory.mktemp("stack"), vocab_dir)
    yield running
    running.stop()


@pytest.fixture
def tag() -> str:
    """A per-test request tag, so the mock provider's records can be filtered per test."""
    return uuid.uuid4().hex
