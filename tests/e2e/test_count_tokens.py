"""Anthropic's token counter through the gateway with the official SDK: open to every
namespace without a policy Route (it is not billed), counted as one request and no tokens,
and only ever sent to Anthropic with the Anthropic key."""

from __future__ import annotations

import anthropic

from extproc.dev.stack import LocalStack
from tests.e2e.harness import anthropic_client, metric_value, mock_records
from tests.waiting import wait_until


def test_count_tokens_is_forwarded_to_anthropic_as_a_request_only(
    stack: LocalStack, tag: str
) -> None:
    api: anthropic.Anthropic = anthropic_client(stack, "tg-claude", tag)
    before = metric_value(
        stack, "tokengate_requests_total", namespace="claude", model="-", outcome="passthrough"
    )
    counted = api.messages.count_tokens(
        model="claude-sonnet-4-6", messages=[{"role": "user", "content": "hello there"}]
    )
    assert counted.input_tokens > 0
    (record,) = mock_records(stack, tag)
    assert record["path"] == "/v1/messages/count_tokens"
    assert record["credentials"] == {"x-api-key": [stack.mock_key]}  # Anthropic's key alone
    # Counted when the ext_proc stream ends, just after the client has its answer.
    wait_until(
        lambda: metric_value(
            stack, "tokengate_requests_total", namespace="claude", model="-",
            outcome="passthrough",
        ) == before + 1
    )  # fmt: skip
    tokens = metric_value(
        stack, "tokengate_tokens_total", namespace="claude", model="-", kind="prompt"
    )
    assert tokens == 0  # not billed, not counted in tokens
