"""Budgets that cannot be outrun, through the real Envoy with the official SDKs: for each way a
caller used to overshoot (`n`, no max named, hidden reasoning tokens, a client gone after the
first delta), what the provider billed — and the gateway settled — stays within the budget.
Clamping is on (the default): the documented bound is 0 tokens."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from extproc.dev.stack import LocalStack
from tests.e2e.forwarding import api_key_documents, gateway_keys, start_gateway
from tests.e2e.harness import metric_value
from tests.waiting import wait_until

LONG = "366d"
BUDGETS = {"ov-n": 500, "ov-nomax": 2000, "ov-reasoning": 2000, "ov-gone": 2000, "ov-claude": 500}
KEYS = gateway_keys(BUDGETS)
HELLO_PROMPT = 1 + 1 + 3 + 3  # "user" + "hello" + OpenAI message framing + reply priming


def _policies() -> str:
    docs = [
        "apiVersion: tokengate.dev/v1\nkind: QuotaPolicy\n"
        f"metadata: {{name: {ns}, namespace: {ns}}}\nspec:\n"
        f"  limits: [{{name: budget, tokens: {amount}, per: {LONG}}}]\n"
        for ns, amount in BUDGETS.items()
    ]
    return "---\n".join([*docs, api_key_documents(KEYS)])


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Iterator[LocalStack]:
    stack = start_gateway(tmp_path_factory.mktemp("overshoot"), vocab_dir, _policies())
    yield stack
    stack.stop()


def _settled(stack: LocalStack, namespace: str) -> float:
    """Tokens the gateway settled for `namespace` (prompt + completion, all models)."""
    total = 0.0
    for model in ("gpt-4o", "claude-sonnet-4-6"):
        for kind in ("prompt", "completion"):
            labels = {"kind": kind, "model": model, "namespace": namespace}
            total += metric_value(stack, "tokengate_tokens_total", **labels)
    return total


def _openai(stack: LocalStack, namespace: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.base_url}/v1", api_key=KEYS[namespace], max_retries=0, timeout=60
    )


HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


def test_n_completions_share_the_budget(gateway: LocalStack) -> None:
    """Measured before: `n: 50` reserved 28 and settled 1,017 on a 500-token budget. Now
    50 minimal answers (16 tokens each) do not fit 500: refused; 20 share what is left."""
    api = _openai(gateway, "ov-n")
    with pytest.raises(openai.RateLimitError):
        api.chat.completions.create(
            model="gpt-4o", messages=HELLO, n=50, max_tokens=200,
        )  # fmt: skip
    answer = api.chat.completions.create(
        model="gpt-4o", messages=HELLO, n=20, max_tokens=200,
        extra_headers={"x-mock-completion-tokens": "200"},
    )  # fmt: skip
    assert answer.usage is not None and len(answer.choices) == 20
    assert answer.usage.completion_tokens == 20 * ((500 - HELLO_PROMPT) // 20)  # 24 each
    billed = answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert billed <= BUDGETS["ov-n"]
    assert _settled(gateway, "ov-n") == billed


def test_requests_naming_no_max_stay_within_the_budget(gateway: LocalStack) -> None:
    """Measured before: three requests reserved 108 each and settled 3,034 on 2,000."""
    api = _openai(gateway, "ov-nomax")
    billed = 0
    for _ in range(3):
        try:
            answer = api.chat.completions.create(
                model="gpt-4o", messages=HELLO,
                extra_headers={"x-mock-completion-tokens": "1000"},
            )  # fmt: skip
        except openai.RateLimitError:
            break  # not even a minimal answer fits any more
        assert answer.usage is not None
        billed += answer.usage.total_tokens
    assert 0 < billed <= BUDGETS["ov-nomax"]
    assert _settled(gateway, "ov-nomax") == billed


def test_hidden_reasoning_tokens_cannot_outrun_the_budget(gateway: LocalStack) -> None:
    """Measured before: five streams of 20 visible + 1,000 reasoning tokens used 5,185 of
    2,000. The cap bounds reasoning and answer together, as the provider counts them."""
    api = _openai(gateway, "ov-reasoning")
    billed = 0
    for _ in range(5):
        try:
            stream = api.chat.completions.create(
                model="gpt-4o", messages=HELLO, stream=True,
                stream_options={"include_usage": True},
                extra_headers={"x-mock-completion-tokens": "20", "x-mock-reasoning-tokens": "1000"},
            )  # fmt: skip
            usage = [chunk.usage for chunk in stream if chunk.usage is not None]
        except openai.RateLimitError:
            break
        billed += usage[-1].total_tokens
    assert 0 < billed <= BUDGETS["ov-reasoning"]
    assert _settled(gateway, "ov-reasoning") == billed


def test_clients_gone_after_the_first_delta_pay_the_input_the_provider_reported(
    gateway: LocalStack,
) -> None:
    """Measured before: ten disconnects after the first delta, provider input 60,570 tokens,
    charged 90, all ten admitted on a 2,000 budget."""
    prompt = "word " * 300  # ~300 tokens a request: the budget holds few of them
    admitted = 0
    for _ in range(10):
        conn = http.client.HTTPConnection("127.0.0.1", gateway.ports["envoy"], timeout=30)
        body = json.dumps({
            "model": "claude-sonnet-4-6", "max_tokens": 100, "stream": True,
            "messages": [{"role": "user", "content": prompt}],
        })  # fmt: skip
        headers = {"x-api-key": KEYS["ov-gone"], "content-type": "application/json",
                   "anthropic-version": "2023-06-01", "x-mock-chunk-delay-ms": "50"}  # fmt: skip
        conn.request("POST", "/v1/messages", body=body, headers=headers)
        response = conn.getresponse()
        if response.status == 429:
            conn.close()
            continue
        assert response.status == 200
        admitted += 1
        assert b"content_block_delta" in _read_until(response, b"content_block_delta")
        conn.close()  # gone after the first delta: no message_delta, no final usage
    settled = _wait_settled(gateway, "ov-gone", admitted)
    assert admitted >= 1
    assert settled <= BUDGETS["ov-gone"]
    assert settled >= admitted * 300  # never below the input the provider reported


def _read_until(response: http.client.HTTPResponse, marker: bytes) -> bytes:
    seen = b""
    while marker not in seen:
        chunk = response.read1(4096)
        if not chunk:
            break
        seen += chunk
    return seen


def _wait_settled(stack: LocalStack, namespace: str, admitted: int) -> float:
    """Settlement of a request whose client left runs when Envoy ends the ext_proc stream:
    wait until every admitted request shows in the outcome counters."""

    def done() -> bool:
        counted = sum(
            metric_value(stack, "tokengate_requests_total", namespace=namespace,
                         model="claude-sonnet-4-6", outcome=outcome)
            for outcome in ("incomplete", "ok")
        )  # fmt: skip
        return counted >= admitted

    wait_until(done, seconds=30)
    return _settled(stack, namespace)


def test_the_anthropic_sdk_gets_a_capped_answer_and_is_told(gateway: LocalStack) -> None:
    api = anthropic.Anthropic(
        base_url=gateway.base_url, api_key=KEYS["ov-claude"], max_retries=0, timeout=60
    )
    raw = api.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=100_000,
        messages=[{"role": "user", "content": "hello"}],
        extra_headers={"x-mock-completion-tokens": "1000"},
    )  # fmt: skip
    message = raw.parse()
    cap = int(raw.headers["x-tokengate-max-tokens"])
    assert cap == BUDGETS["ov-claude"] - message.usage.input_tokens  # what the budget allowed
    assert message.usage.output_tokens == cap and message.stop_reason == "max_tokens"
