"""`kubectl apply` of a labelled policy ConfigMap reaches a running gateway without a
restart: the API server's watch event (a fake API server; everything else is real) ->
the `tokengate policy-sync` process -> its directory -> the sidecar's reload -> the next
request through Envoy."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from extproc.dev.stack import Child, LocalStack
from tests.e2e.conftest import make_stack
from tests.e2e.harness import client, wait_until
from tests.kube_api import FakeApi

pytestmark = pytest.mark.e2e

HOME = "tokengate-system"
KEY = "tg-team-new"
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def _policy(requests: int) -> str:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    return f"""apiVersion: tokengate.dev/v1
kind: QuotaPolicy
metadata: {{name: team-new, namespace: team-new}}
spec:
  limits: [{{name: daily-requests, requests: {requests}, per: 1d}}]
---
apiVersion: tokengate.dev/v1
kind: ApiKey
metadata: {{name: ci, namespace: team-new}}
spec: {{sha256: {digest}}}
"""


@pytest.fixture
def synced(tmp_path: Path, vocab_dir: Path) -> Iterator[tuple[FakeApi, LocalStack]]:
    api = FakeApi(tokens={"sync-token"})
    token = tmp_path / "token"
    token.write_text("sync-token")
    dest = tmp_path / "synced"
    sync = Child(
        "policy-sync",
        [sys.executable, "-m", "extproc", "policy-sync", "--api-url", api.url,
         "--token-file", str(token), "--ca-file", "", "--namespace", HOME,
         "--dest", str(dest)],
        log_dir=tmp_path, env=dict(os.environ), ready_prefix=None,
    )  # fmt: skip
    wait_until(dest.is_dir, detail=sync.log_tail)  # first LIST written (empty)
    stack = make_stack(
        tmp_path,
        vocab_dir,
        extra_serve_args=("--policy-dir", str(dest), "--reload-interval", "0.2"),
    )
    yield api, stack
    stack.stop()
    sync.stop()
    api.close()


def _call(stack: LocalStack, tag: str) -> int:
    try:
        client(stack, KEY, tag).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


def test_applied_changed_and_deleted_config_maps_take_effect(
    synced: tuple[FakeApi, LocalStack], tag: str
) -> None:
    api, stack = synced
    assert _call(stack, tag) == 401  # the key is nowhere yet
    api.put(HOME, "team-new-policy", {"team-new.yaml": _policy(requests=100)})  # kubectl apply
    wait_until(lambda: _call(stack, tag) == 200)
    api.put(HOME, "team-new-policy", {"team-new.yaml": _policy(requests=1)})  # tightened
    wait_until(lambda: _call(stack, tag) == 429)
    with pytest.raises(openai.RateLimitError) as refused:
        client(stack, KEY, tag).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert "daily-requests" in refused.value.message
    api.delete(HOME, "team-new-policy")  # kubectl delete
    wait_until(lambda: _call(stack, tag) == 401)
