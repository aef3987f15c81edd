"""Streamed answers through the real Envoy, with the official openai and anthropic SDKs:
counted chunk by chunk, cut with a typed error when the budget is gone, always settled."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import anthropic
import openai
import pytest
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from extproc.dev.stack import LocalStack
from extproc.providers import tokens
from tests.e2e.conftest import SHARED_BUDGET, STREAM_BUDGET
from tests.e2e.harness import (
    anthropic_client,
    client,
    metric_value,
    mock_records,
    mock_stats,
    wait_until,
)

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
HELLO_PROMPT = 1 + 1 + 3 + 3  # "user" + "hello" + OpenAI message framing + reply priming
CLAUDE_HELLO_PROMPT = 1 + 3  # "hello" + Anthropic message framing (cl100k)


def _tokens(stack: LocalStack, namespace: str, model: str, kind: str) -> float:
    labels = {"kind": kind, "model": model, "namespace": namespace}
    return metric_value(stack, "tokengate_tokens_total", **labels)


def _openai_text(stream: openai.Stream[ChatCompletionChunk]) -> tuple[str, CompletionUsage | None]:
    text: list[str] = []
    usage: CompletionUsage | None = None
    for chunk in stream:
        text.extend(choice.delta.content or "" for choice in chunk.choices)
        usage = chunk.usage or usage
    return "".join(text), usage


def test_openai_stream_text_and_usage(stack: LocalStack, tag: str) -> None:
    stream = client(stack, "tg-e2e", tag).chat.completions.create(
        model="gpt-4o",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=100,
        extra_headers={"x-mock-completion-tokens": "40"},
    )
    text, usage = _openai_text(stream)
    assert len(text.split()) == 40 == tokens.count(text, "o200k_base")
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (HELLO_PROMPT, 40)


def test_openai_client_that_did_not_ask_for_usage_gets_none(stack: LocalStack, tag: str) -> None:
    before = _tokens(stack, "e2e", "gpt-4o-mini", "completion")
    provider_settled = metric_value(stack, "tokengate_usage_source_total", source="provider")
    chunks = list(
        client(stack, "tg-e2e", tag).chat.completions.create(
            model="gpt-4o-mini",
            messages=HELLO,
            stream=True,
            extra_headers={"x-mock-completion-tokens": "25"},
        )
    )
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).count(" ") >= 24
    # ...yet the gateway settled on the provider's own usage, which it asked for.
    assert _tokens(stack, "e2e", "gpt-4o-mini", "completion") - before == 25
    assert metric_value(stack, "tokengate_usage_source_total", source="provider") == (
        provider_settled + 1
    )


def test_anthropic_plain_and_streamed_answers(stack: LocalStack, tag: str) -> None:
    api = anthropic_client(stack, "tg-claude", tag)
    message = api.messages.create(
        model="claude-haiku-4-5",
        max_tokens=50,
        messages=[{"role": "user", "content": "hello"}],
        extra_headers={"x-mock-completion-tokens": "12"},
    )
    assert (message.usage.input_tokens, message.usage.output_tokens) == (CLAUDE_HELLO_PROMPT, 12)
    with api.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=50,
        messages=[{"role": "user", "content": "hello"}],
        extra_headers={"x-mock-completion-tokens": "30"},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert len(text.split()) == 30 == tokens.count(text, "cl100k_base")
    assert (final.usage.input_tokens, final.usage.output_tokens) == (CLAUDE_HELLO_PROMPT, 30)
    assert _tokens(stack, "claude", "claude-haiku-4-5", "completion") == 12 + 30
    # The SDK sent the gateway key as a bearer token; the provider got only its own key.
    for record in mock_records(stack, tag):
        assert record["credentials"] == {"x-api-key": [stack.mock_key]}


def test_openai_stream_over_budget_raises_api_error_and_charges_what_was_delivered(
    stack: LocalStack, tag: str
) -> None:
    aborted = mock_stats(stack)["streams_aborted"]
    stream = client(stack, "tg-stream-budget", tag).chat.completions.create(
        model="gpt-4o",
        messages=HELLO,
        stream=True,
        extra_headers={"x-mock-completion-tokens": "2000", "x-mock-chunk-delay-ms": "2"},
    )
    received: list[str] = []
    with pytest.raises(openai.APIError) as cut:
        for chunk in stream:
            received.extend(c.delta.content or "" for c in chunk.choices)
    assert "stream-tokens" in cut.value.message
    delivered = tokens.count("".join(received), "o200k_base")
    assert 0 < delivered <= STREAM_BUDGET - HELLO_PROMPT
    assert _tokens(stack, "stream-budget", "gpt-4o", "completion") == delivered
    # The budget now holds exactly what was delivered: the next call says so.
    with pytest.raises(openai.RateLimitError) as refused:
        client(stack, "tg-stream-budget", tag).chat.completions.create(
            model="gpt-4o", messages=HELLO
        )
    assert f"used {HELLO_PROMPT + delivered}," in refused.value.message
    # The provider was stopped mid-answer (Envoy reset the upstream), not left generating.
    wait_until(lambda: mock_stats(stack)["streams_aborted"] == aborted + 1)


def test_anthropic_stream_over_budget_raises_the_sdk_error(stack: LocalStack, tag: str) -> None:
    api = anthropic_client(stack, "tg-stream-budget-a", tag)
    received: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as cut,
        api.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=4000,
            messages=[{"role": "user", "content": "hello"}],
            extra_headers={"x-mock-completion-tokens": "2000", "x-mock-chunk-delay-ms": "2"},
        ) as stream,
    ):
        received.extend(stream.text_stream)
    assert "stream-tokens" in str(cut.value)
    assert "rate_limit_error" in str(cut.value)
    delivered = tokens.count("".join(received), "cl100k_base")
    assert 0 < delivered <= STREAM_BUDGET - CLAUDE_HELLO_PROMPT
    assert _tokens(stack, "stream-budget-a", "claude-haiku-4-5", "completion") == delivered


def test_concurrent_streams_sharing_a_budget_never_deliver_past_it(
    stack: LocalStack, tag: str
) -> None:
    api = client(stack, "tg-shared", tag)

    def one_stream() -> tuple[int, bool]:
        received: list[str] = []
        try:
            for chunk in api.chat.completions.create(
                model="gpt-4o",
                messages=HELLO,
                stream=True,
                extra_headers={"x-mock-completion-tokens": "400", "x-mock-chunk-delay-ms": "3"},
            ):
                received.extend(c.delta.content or "" for c in chunk.choices)
        except openai.APIError:
            return tokens.count("".join(received), "o200k_base"), True
        return tokens.count("".join(received), "o200k_base"), False

    with ThreadPoolExecutor(max_workers=5) as pool:
        results = list(pool.map(lambda _: one_stream(), range(5)))
    delivered = sum(n for n, _ in results)
    assert any(cut for _, cut in results)  # 5 x 400 tokens cannot fit in 600
    # Overshoot bound: nothing is delivered past the budget (see extproc/gate/stream.py).
    assert delivered + 5 * HELLO_PROMPT <= SHARED_BUDGET
    assert _tokens(stack, "shared-budget", "gpt-4o", "completion") == delivered


def test_client_disconnect_mid_stream_still_settles(stack: LocalStack, tag: str) -> None:
    api = client(stack, "tg-solo", tag)
    counted = metric_value(stack, "tokengate_usage_source_total", source="counted")
    stream = api.chat.completions.create(
        model="gpt-4o",
        messages=HELLO,
        stream=True,
        extra_headers={"x-mock-completion-tokens": "3000", "x-mock-chunk-delay-ms": "5"},
    )
    iterator = iter(stream)
    read = [next(iterator) for _ in range(5)]
    assert read
    stream.close()  # the client goes away mid-answer
    # Settled on our count, and the single concurrency slot is free again.
    wait_until(
        lambda: metric_value(stack, "tokengate_usage_source_total", source="counted") == counted + 1
    )
    assert 0 < _tokens(stack, "solo", "gpt-4o", "completion") < 3000
    answer = api.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert answer.choices[0].message.content


def test_counted_completion_tokens_match_provider_usage(stack: LocalStack, tag: str) -> None:
    """Accuracy: the mock provider uses the same tokenizer, so the count must be exact."""
    name = "tokengate_completion_count_error_ratio"
    before = metric_value(stack, name + "_count", model="gpt-4o")
    error_before = metric_value(stack, name + "_sum", model="gpt-4o")
    api = client(stack, "tg-e2e", tag)
    for length in (1, 7, 50, 333):
        for chunk_tokens in ("1", "3", "17"):
            list(
                api.chat.completions.create(
                    model="gpt-4o",
                    messages=HELLO,
                    stream=True,
                    extra_headers={
                        "x-mock-completion-tokens": str(length),
                        "x-mock-tokens-per-chunk": chunk_tokens,
                    },
                )
            )
    assert metric_value(stack, name + "_count", model="gpt-4o") == before + 12
    assert metric_value(stack, name + "_sum", model="gpt-4o") == error_before == 0.0
