"""Behind the real Envoy: a quota-store reply that never arrives (Redis ran the reserve, the
sidecar never read the answer) must not lock a `concurrent: 1` caller out for the lease's
10 minutes. Before the fix, each case below answered 429 to every later call."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from extproc.dev.stack import LocalStack
from tests.e2e.conftest import make_stack
from tests.e2e.harness import metric_value, raw_post
from tests.redis_proxy import ReplyHoldingProxy
from tests.redis_server import RedisServer
from tests.waiting import wait_until

BODY = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()


@contextmanager
def stalled_stack(
    root: Path, vocab_dir: Path, store_timeout: str
) -> Iterator[tuple[LocalStack, ReplyHoldingProxy]]:
    """Envoy + sidecar whose Redis is reached through the proxy."""
    redis = RedisServer(root).start()
    proxy = ReplyHoldingProxy(redis.socket, root).start()
    stack = make_stack(root, vocab_dir, extra_serve_args=(
        "--quota-store", proxy.url, "--store-timeout", store_timeout))  # fmt: skip
    try:
        assert raw_post(stack, BODY, key="tg-solo")[0] == 200  # the script is loaded
        yield stack, proxy
    finally:
        stack.stop()
        proxy.stop()
        redis.stop()


def solo_answers(stack: LocalStack) -> int:
    return raw_post(stack, BODY, key="tg-solo")[0]


def test_a_client_that_leaves_while_its_reserve_is_unanswered_gives_its_slot_back(
    tmp_path: Path, vocab_dir: Path
) -> None:
    with stalled_stack(tmp_path, vocab_dir, store_timeout="30") as (stack, proxy):
        proxy.hold_reply_to(b"reserve")
        request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n"
            b"authorization: Bearer tg-solo\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY)
        )
        with socket.create_connection(("127.0.0.1", stack.ports["envoy"]), timeout=60) as client:
            client.sendall(request)
            wait_until(proxy.withheld.is_set)  # Redis took the slot; no answer yet
        # The client has gone: Envoy resets the ext_proc stream, grpc cancels the handler.
        wait_until(lambda: metric_value(stack, "tokengate_ext_proc_streams_open") == 0)
        wait_until(lambda: solo_answers(stack) == 200)


def test_a_reserve_that_timed_out_but_ran_gives_its_slot_back_once_the_store_answers(
    tmp_path: Path, vocab_dir: Path
) -> None:
    # Under Envoy's 1 s message timeout, so that the sidecar's own fail mode answers.
    with stalled_stack(tmp_path, vocab_dir, store_timeout="0.5") as (stack, proxy):
        proxy.hold_reply_to(b"reserve")
        status, error, _ = raw_post(stack, BODY, key="tg-solo")
        assert status == 503 and "quota store" in error["error"]["message"]  # fails closed
        wait_until(proxy.withheld.is_set)  # ...but Redis did take the slot
        wait_until(lambda: solo_answers(stack) == 200)
