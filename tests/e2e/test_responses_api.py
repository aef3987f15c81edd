"""`POST /v1/responses` governed through the real Envoy, driven by the official openai SDK:
plain and streamed answers settle the provider's usage (reasoning tokens included), the next
429 names the true amount used, a chained call (`previous_response_id`) is reserved with the
documented constant and settled on what the provider billed, a cap is written when none is
named, and a stream cut mid-answer raises the SDK's `APIError`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai.types.responses import Response, ResponseInputParam

from extproc.dev.stack import LocalStack
from extproc.providers import tokens
from extproc.providers.openai_responses import UNSEEN_CONTEXT_TOKENS
from tests.e2e.billed_endpoints import client, gateway, policies, settled
from tests.e2e.forwarding import upstream_records

BUDGETS = {
    "rs-plain": 200,
    "rs-stream": 200,
    "rs-chain": 100_000,
    "rs-small-chain": UNSEEN_CONTEXT_TOKENS - 1,
    "rs-nomax": 300,
    "rs-cut": 150,
}
DOCUMENTS, KEYS = policies(
    BUDGETS, {"rs-cut": "  clampCompletion: false\n  defaultMaxTokens: 10\n"}
)
MODEL = "gpt-4o"
RIVER: ResponseInputParam = [{"role": "user", "content": "Name a river."}]


def prompt_of(*texts: str) -> int:
    """OpenAI's chat framing: each message's role and text, 3 per message, 3 to prime."""
    return sum(tokens.count(t, "o200k_base") for t in texts) + 3 * len(texts) // 2 + 3


def river_prompt() -> int:
    return prompt_of("developer", "Be brief.", "user", "Name a river.")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Iterator[LocalStack]:
    yield from gateway(tmp_path_factory.mktemp("responses"), vocab_dir, DOCUMENTS)


def api(stack: LocalStack, namespace: str) -> openai.OpenAI:
    return client(stack, KEYS[namespace])


def test_a_plain_response_settles_its_usage_and_the_next_429_names_it(stack: LocalStack) -> None:
    response = api(stack, "rs-plain").responses.create(
        model=MODEL,
        instructions="Be brief.",
        input=RIVER,
        max_output_tokens=170,
        extra_headers={"x-mock-completion-tokens": "120", "x-mock-reasoning-tokens": "40"},
    )
    assert response.usage is not None
    assert tokens.count(response.output_text, "o200k_base") == 120
    assert (response.usage.input_tokens, response.usage.output_tokens) == (river_prompt(), 160)
    assert response.usage.output_tokens_details.reasoning_tokens == 40
    used = response.usage.total_tokens
    assert settled(stack, "rs-plain", MODEL) == (river_prompt(), 160)
    with pytest.raises(openai.RateLimitError) as refused:  # 24 left: not prompt + 16
        api(stack, "rs-plain").responses.create(
            model=MODEL, instructions="Be brief.", input=RIVER, max_output_tokens=20
        )
    assert "'budget'" in refused.value.message and f"used {used}," in refused.value.message


def test_a_streamed_response_settles_its_usage_and_the_next_429_names_it(
    stack: LocalStack,
) -> None:
    stream = api(stack, "rs-stream").responses.create(
        model=MODEL,
        instructions="Be brief.",
        input=RIVER,
        max_output_tokens=170,
        stream=True,
        extra_headers={"x-mock-completion-tokens": "150", "x-mock-reasoning-tokens": "10"},
    )
    deltas: list[str] = []
    final: Response | None = None
    for event in stream:
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        elif event.type == "response.completed":
            final = event.response
    assert final is not None and final.usage is not None
    assert tokens.count("".join(deltas), "o200k_base") == 150
    assert (final.usage.input_tokens, final.usage.output_tokens) == (river_prompt(), 160)
    assert settled(stack, "rs-stream", MODEL) == (river_prompt(), 160)
    with pytest.raises(openai.RateLimitError) as refused:
        api(stack, "rs-stream").responses.create(
            model=MODEL, instructions="Be brief.", input=RIVER, max_output_tokens=20, stream=True
        )
    assert f"used {final.usage.total_tokens}," in refused.value.message


def test_a_chained_call_is_settled_on_the_history_the_provider_billed(stack: LocalStack) -> None:
    """The gateway cannot see the history behind `previous_response_id`; the provider bills
    it (the mock replays the first turn's input and answer): settlement takes its number."""
    chain = api(stack, "rs-chain")
    first = chain.responses.create(
        model=MODEL, input="One river?", extra_headers={"x-mock-completion-tokens": "30"}
    )
    second = chain.responses.create(
        model=MODEL,
        input="And another?",
        previous_response_id=first.id,
        stream=True,
        extra_headers={"x-mock-completion-tokens": "5"},
    )
    usages = [e.response.usage for e in second if e.type == "response.completed"]
    assert first.usage is not None and usages and usages[0] is not None
    history = first.usage.input_tokens + first.usage.output_tokens
    assert usages[0].input_tokens == history + prompt_of("user", "And another?")
    prompt = first.usage.input_tokens + usages[0].input_tokens
    assert settled(stack, "rs-chain", MODEL) == (prompt, 30 + 5)


def test_a_chained_call_reserves_the_unseen_history_constant(stack: LocalStack) -> None:
    """A budget below `UNSEEN_CONTEXT_TOKENS` cannot hold any chained call: refused before
    the upstream, while the same call without the chain goes through."""
    small = api(stack, "rs-small-chain")
    first = small.responses.create(model=MODEL, input="hi")
    with pytest.raises(openai.RateLimitError) as refused:
        small.responses.create(model=MODEL, input="hi", previous_response_id=first.id)
    assert "Request too large for limit 'budget'" in refused.value.message
    assert small.responses.create(model=MODEL, input="hi").status == "completed"


def test_with_no_cap_named_the_gateway_writes_max_output_tokens(stack: LocalStack) -> None:
    raw = api(stack, "rs-nomax").responses.with_raw_response.create(
        model=MODEL,
        input="hello",
        extra_headers={"x-mock-completion-tokens": "1000", "x-request-tag": "rs-nomax"},
    )
    response = raw.parse()
    cap = int(raw.headers["x-tokengate-max-tokens"])
    (record,) = upstream_records(stack, "rs-nomax")
    assert f'"max_output_tokens":{cap}' in record["body"]
    assert response.usage is not None and response.usage.output_tokens == cap
    assert response.status == "incomplete"  # the provider stopped at the written cap
    assert response.usage.total_tokens <= BUDGETS["rs-nomax"]


def test_a_stream_over_budget_raises_the_sdk_api_error(stack: LocalStack) -> None:
    """Clamping off: the stream runs past its reservation and is cut with our `error`
    event, which the SDK raises; what was delivered is charged."""
    stream = api(stack, "rs-cut").responses.create(
        model=MODEL,
        input="hello",
        stream=True,
        extra_headers={"x-mock-completion-tokens": "2000", "x-mock-chunk-delay-ms": "2"},
    )
    received: list[str] = []
    with pytest.raises(openai.APIError) as cut:
        for event in stream:
            if event.type == "response.output_text.delta":
                received.append(event.delta)
    assert "'budget'" in cut.value.message
    assert cut.value.code == "rate_limit_exceeded"
    delivered = tokens.count("".join(received), "o200k_base")
    prompt = prompt_of("user", "hello")  # settled on the gateway's own count: no usage came
    assert 0 < delivered <= BUDGETS["rs-cut"] - prompt
    assert settled(stack, "rs-cut", MODEL) == (prompt, delivered)
