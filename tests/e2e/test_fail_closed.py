"""With the sidecar down, Envoy must not reach the provider (failure_mode_allow: false)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from extproc.dev.stack import LocalStack
from tests.e2e.conftest import make_stack
from tests.e2e.harness import client, mock_records


@pytest.fixture
def own_stack(tmp_path: Path, vocab_dir: Path) -> Iterator[LocalStack]:
    running = make_stack(tmp_path, vocab_dir)
    yield running
    running.stop()


def test_sidecar_down_fails_closed_with_a_clear_error(own_stack: LocalStack, tag: str) -> None:
    api = client(own_stack, "tg-e2e", tag)
    api.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "up"}])
    assert own_stack.stop_sidecar() == 0  # graceful exit on SIGTERM
    with pytest.raises(openai.InternalServerError) as refused:
        api.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "down"}])
    assert refused.value.status_code == 503
    assert "sidecar failed while handling this request" in refused.value.message
    assert refused.value.code == "gateway_unavailable"
    # Honest: Envoy cannot tell before from after, so the message never says "not forwarded";
    # it names the request id to look up (the one Envoy logged beside the request).
    request_id = refused.value.response.headers.get("x-request-id")
    assert "not forwarded" not in refused.value.message
    assert request_id and f"look up request id {request_id}" in refused.value.message
    assert len(mock_records(own_stack, tag)) == 1  # only the call made while it was up
    own_stack.start_sidecar()  # comes back on the same port: Envoy recovers by itself
    recovered = api.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "up again"}]
    )
    assert recovered.choices[0].message.content
