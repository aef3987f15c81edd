"""`tokengate drain-envoy` (the pod's preStop hook) against the real Envoy: readiness drops at
once, a stream in flight is finished, not cut, and only then is the done file written."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from extproc.dev.stack import LocalStack
from extproc.kube.drain import DrainResult, EnvoyAdmin, drain
from tests.e2e.conftest import make_stack
from tests.e2e.harness import client, wait_until

pytestmark = pytest.mark.e2e


def _ready_status(stack: LocalStack) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports['admin']}/ready", timeout=5):
            return 200
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def own_stack(tmp_path: Path, vocab_dir: Path) -> Any:
    stack = make_stack(tmp_path, vocab_dir)  # drained Envoy is not reusable: not the shared one
    yield stack
    stack.stop()


def _open_stream(stack: LocalStack, tag: str, *, tokens: int, chunk_delay_ms: int) -> Any:
    """A streamed answer whose first chunk has arrived: it is in flight through Envoy."""
    api = client(stack, "tg-e2e", tag, **{"x-mock-chunk-delay-ms": str(chunk_delay_ms)})
    stream = api.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=tokens,
        stream=True, extra_headers={"x-mock-completion-tokens": str(tokens)},
    )  # fmt: skip
    assert next(iter(stream)).choices  # later iteration goes on from the second chunk
    return stream


def test_drain_waits_for_the_stream_in_flight(own_stack: LocalStack, tag: str) -> None:
    chunks = _open_stream(own_stack, tag, tokens=20, chunk_delay_ms=100)
    admin = EnvoyAdmin(f"127.0.0.1:{own_stack.ports['admin']}")
    assert admin.active_requests() == 1
    done_file = own_stack.run_dir / "drain" / "done"
    outcome: list[DrainResult] = []
    worker = threading.Thread(
        target=lambda: outcome.append(
            drain(admin, timeout_s=60, min_wait_s=0, done_file=done_file, poll_s=0.05)
        )
    )
    started = time.monotonic()
    worker.start()
    wait_until(lambda: _ready_status(own_stack) == 503)  # out of the Service at once
    assert not done_file.exists()  # still waiting for the stream
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finished_at = time.monotonic()
    worker.join(timeout=30)
    assert outcome and outcome[0].drained
    assert done_file.exists()
    assert started + outcome[0].seconds >= finished_at - 0.5  # it ended after the stream did
    assert text  # the client got its whole answer: the stream was not cut
    assert admin.active_requests() == 0


def test_drain_gives_up_at_its_timeout_and_still_signals(own_stack: LocalStack, tag: str) -> None:
    stream = _open_stream(own_stack, tag, tokens=40, chunk_delay_ms=500)
    done_file = own_stack.run_dir / "done"
    admin = EnvoyAdmin(f"127.0.0.1:{own_stack.ports['admin']}")
    result = drain(admin, timeout_s=0.5, min_wait_s=0, done_file=done_file, poll_s=0.05)
    assert not result.drained
    assert result.in_flight == 1
    assert done_file.exists()
    stream.close()


def test_drain_with_envoy_gone_signals_at_once(tmp_path: Path) -> None:
    result = drain(EnvoyAdmin("127.0.0.1:1"), timeout_s=30, min_wait_s=5,
                   done_file=tmp_path / "done")  # fmt: skip
    assert (tmp_path / "done").exists()
    assert result.seconds < 5


def test_the_cli_is_the_pods_prestop_hook(own_stack: LocalStack) -> None:
    done_file = own_stack.run_dir / "cli-done"
    finished = subprocess.run(
        [sys.executable, "-m", "extproc", "drain-envoy",
         f"--admin=127.0.0.1:{own_stack.ports['admin']}", "--min-wait=0", "--timeout=30",
         f"--done-file={done_file}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    assert "drain: done" in finished.stderr
    assert done_file.exists()
    assert _ready_status(own_stack) == 503
