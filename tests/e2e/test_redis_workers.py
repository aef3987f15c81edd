"""The gateway as a fleet would run it: two sidecar worker processes sharing one Redis
quota store behind the real Envoy."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from extproc.dev.stack import LocalStack
from tests.e2e.conftest import make_stack
from tests.e2e.harness import client, metric_value
from tests.redis_server import RedisServer


@pytest.fixture(scope="module")
def redis_stack(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("redis-stack")
    redis = RedisServer(root).start()
    stack = make_stack(
        root, vocab_dir, extra_serve_args=("--quota-store", redis.url, "--workers", "2")
    )
    yield stack
    stack.stop()
    redis.stop()


def test_two_workers_share_one_budget_exactly(redis_stack: LocalStack, tag: str) -> None:
    """The requests limit (3) holds across both workers: exactly 3 of 12 calls get through."""

    def call(_: int) -> bool:
        try:
            client(redis_stack, "tg-tight-requests", tag).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
        except openai.RateLimitError:
            return False
        return True

    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(call, range(12)))
    assert outcomes.count(True) == 3
    assert metric_value(redis_stack, "tokengate_quota_store_up") == 1.0


def test_streams_settle_through_redis(redis_stack: LocalStack, tag: str) -> None:
    stream = client(redis_stack, "tg-e2e", tag).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hello"}], stream=True,
        extra_headers={"x-mock-completion-tokens": "30"},
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert len(text.split()) == 30


def test_several_workers_on_the_in_process_store_are_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "extproc", "serve", "--workers", "2", "--listen", "127.0.0.1:0",
         "--metrics-listen", "off", "--policy-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "needs a shared quota store" in done.stderr


def test_redis_down_fails_closed_with_a_provider_format_503(
    tmp_path: Path, vocab_dir: Path, tag: str
) -> None:
    redis = RedisServer(tmp_path).start()
    stack = make_stack(tmp_path, vocab_dir, extra_serve_args=("--quota-store", redis.url))
    try:
        api = client(stack, "tg-e2e", tag)
        api.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "up"}])
        redis.kill()
        with pytest.raises(openai.InternalServerError) as refused:
            api.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "down"}]
            )
        assert refused.value.status_code == 503
        assert "quota store is unreachable" in refused.value.message
        assert metric_value(stack, "tokengate_quota_store_up") == 0.0
    finally:
        stack.stop()
        redis.stop()
