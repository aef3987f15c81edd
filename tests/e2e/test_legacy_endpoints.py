"""`POST /v1/completions` and `POST /v1/embeddings` governed through the real Envoy, driven
by the official openai SDK: plain and streamed answers settle the provider's usage, the next
429 names the true amount used, `n`/`best_of` and a batch of prompts multiply the reserved
completion, the legacy 16-token default is what an uncapped request reserves, and a stream
that did not ask for usage still settles on it (asked for on its behalf, hidden from it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from extproc.dev.stack import LocalStack
from extproc.providers import tokens
from tests.e2e.billed_endpoints import client, gateway, policies, settled
from tests.e2e.forwarding import upstream_records
from tests.e2e.harness import metric_value

BUDGETS = {
    "lc-plain": 200,
    "lc-stream": 200,
    "lc-multi": 1_000,
    "lc-default": 100,
    "em-plain": 15,
    "em-forms": 100_000,
}
DOCUMENTS, KEYS = policies(BUDGETS, {})
INSTRUCT = "gpt-3.5-turbo-instruct"
EMBED = "text-embedding-3-small"
PROMPT = "Say something about rivers."


def count(text: str) -> int:
    return tokens.count(text, "cl100k_base")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Iterator[LocalStack]:
    yield from gateway(tmp_path_factory.mktemp("legacy"), vocab_dir, DOCUMENTS)


def api(stack: LocalStack, namespace: str) -> openai.OpenAI:
    return client(stack, KEYS[namespace])


def test_a_plain_completion_settles_its_usage_and_the_next_429_names_it(
    stack: LocalStack,
) -> None:
    answer = api(stack, "lc-plain").completions.create(
        model=INSTRUCT,
        prompt=PROMPT,
        n=2,
        max_tokens=95,
        extra_headers={"x-mock-completion-tokens": "95"},
    )
    assert answer.usage is not None and len(answer.choices) == 2
    assert [count(choice.text) for choice in answer.choices] == [95, 95]
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (count(PROMPT), 190)
    assert settled(stack, "lc-plain", INSTRUCT) == (count(PROMPT), 190)
    with pytest.raises(openai.RateLimitError) as refused:  # left: less than prompt + 16
        api(stack, "lc-plain").completions.create(model=INSTRUCT, prompt=PROMPT, max_tokens=20)
    assert f"used {answer.usage.total_tokens}," in refused.value.message


def test_a_stream_settles_the_usage_it_never_showed_the_client(stack: LocalStack) -> None:
    before = metric_value(stack, "tokengate_usage_source_total", source="provider")
    chunks = list(
        api(stack, "lc-stream").completions.create(
            model=INSTRUCT,
            prompt=[PROMPT, "Another one."],
            max_tokens=90,
            stream=True,
            extra_headers={"x-mock-completion-tokens": "90", "x-request-tag": "lc-stream"},
        )
    )
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)  # usage hidden
    text = {
        i: "".join(c.choices[0].text for c in chunks if c.choices[0].index == i) for i in (0, 1)
    }
    assert [count(text[0]), count(text[1])] == [90, 90]
    (record,) = upstream_records(stack, "lc-stream")
    assert record["include_usage"]  # asked for on the client's behalf
    prompt = count(PROMPT) + count("Another one.")
    assert settled(stack, "lc-stream", INSTRUCT) == (prompt, 180)
    assert metric_value(stack, "tokengate_usage_source_total", source="provider") == before + 1
    with pytest.raises(openai.RateLimitError) as refused:
        api(stack, "lc-stream").completions.create(
            model=INSTRUCT, prompt=PROMPT, max_tokens=60, stream=True
        )
    assert f"used {prompt + 180}," in refused.value.message


def test_best_of_and_a_batch_multiply_the_reserved_completion(stack: LocalStack) -> None:
    """Two prompts x best_of 5 = 10 completions of up to 100 tokens: 1,000 + the prompt
    cannot fit 1,000 at full size; clamping shares what fits, and the bill stays in it."""
    raw = api(stack, "lc-multi").completions.with_raw_response.create(
        model=INSTRUCT,
        prompt=[[15339, 1917], [15339]],  # token arrays: billed their length
        n=1,
        best_of=5,
        max_tokens=100,
        extra_headers={"x-mock-completion-tokens": "100"},
    )
    answer = raw.parse()
    cap = int(raw.headers["x-tokengate-max-tokens"])
    assert cap == (BUDGETS["lc-multi"] - 3) // 10  # per completion, the prompt taken first
    assert answer.usage is not None and len(answer.choices) == 2
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (3, 10 * cap)
    assert answer.usage.total_tokens <= BUDGETS["lc-multi"]
    assert settled(stack, "lc-multi", INSTRUCT) == (3, 10 * cap)


def test_an_uncapped_completion_reserves_the_legacy_default(stack: LocalStack) -> None:
    """No `max_tokens`: the API generates at most 16, so 16 is reserved (not the policy's
    default), and several such requests fit a budget a larger guess would refuse."""
    api_ = api(stack, "lc-default")
    for _ in range(4):  # 4 x (prompt + 16) = 4 x 22 fits 100
        answer = api_.completions.create(
            model=INSTRUCT, prompt="hello", extra_headers={"x-mock-completion-tokens": "1000"}
        )
        assert answer.usage is not None and answer.usage.completion_tokens == 16
    assert settled(stack, "lc-default", INSTRUCT) == (4 * count("hello"), 4 * 16)


def test_embeddings_settle_input_tokens_and_the_next_429_names_them(stack: LocalStack) -> None:
    inputs = ["The river runs north.", "Green forest water."]
    got = api(stack, "em-plain").embeddings.create(model=EMBED, input=inputs)
    used = sum(count(text) for text in inputs)
    assert (got.usage.prompt_tokens, got.usage.total_tokens) == (used, used)
    assert [len(item.embedding) for item in got.data] == [1536, 1536]
    assert settled(stack, "em-plain", EMBED) == (used, 0)  # no completion reserved or billed
    with pytest.raises(openai.RateLimitError) as refused:
        api(stack, "em-plain").embeddings.create(model=EMBED, input=inputs)
    assert f"used {used}," in refused.value.message


def test_embeddings_of_every_input_form(stack: LocalStack) -> None:
    forms: list[tuple[str | list[str] | list[int] | list[list[int]], int]] = [
        ("hello world", count("hello world")),
        ([15339, 1917, 0], 3),
        ([[15339], [1917, 0]], 3),
    ]
    total = 0
    for given, expected in forms:
        got = api(stack, "em-forms").embeddings.create(model=EMBED, input=given, dimensions=8)
        assert got.usage.prompt_tokens == expected
        total += expected
    assert settled(stack, "em-forms", EMBED) == (total, 0)
    with pytest.raises(openai.BadRequestError) as refused:  # refused by the gateway itself
        api(stack, "em-forms").embeddings.create(model=EMBED, input=["fine", ""])
    assert "empty string" in refused.value.message
