"""The mock provider's Responses, legacy Completions and Embeddings endpoints driven by the
official openai SDK over a real socket: the SDK parses every answer and event into its own
types, and the usage it reads is exact under tiktoken."""

from __future__ import annotations

import openai
import pytest

from tests.integration.mock_server import ServerThread, oai
from tests.token_counts import ntok

O200K = "o200k_base"
ROLE = 1  # "developer", "user": one token each, counted as OpenAI's chat framing counts roles


def test_responses_plain_and_chained(mock: ServerThread) -> None:
    client = oai(mock)
    first = client.responses.create(
        model="gpt-4o",
        instructions="Be brief.",
        input=[{"role": "user", "content": "Name a river."}],
        extra_headers={"x-mock-completion-tokens": "9", "x-mock-reasoning-tokens": "4"},
    )
    assert first.status == "completed" and ntok(first.output_text, O200K) == 9
    assert first.usage is not None
    prompt = ntok("Be brief.", O200K) + ntok("Name a river.", O200K) + 2 * (3 + ROLE) + 3
    assert (first.usage.input_tokens, first.usage.output_tokens) == (prompt, 13)
    assert first.usage.output_tokens_details.reasoning_tokens == 4
    second = client.responses.create(
        model="gpt-4o", input="And another?", previous_response_id=first.id
    )
    assert second.usage is not None
    history = prompt + 9
    assert second.usage.input_tokens == history + ntok("And another?", O200K) + ROLE + 3 + 3


def test_responses_stream_as_the_sdk_reads_it(mock: ServerThread) -> None:
    stream = oai(mock).responses.create(
        model="gpt-4o",
        input="hello",
        max_output_tokens=20,
        stream=True,
        extra_headers={"x-mock-completion-tokens": "30"},
    )
    deltas: list[str] = []
    final = None
    for event in stream:
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        elif event.type == "response.incomplete":
            final = event.response
    assert final is not None and final.usage is not None
    assert ntok("".join(deltas), O200K) == 20 == final.usage.output_tokens
    assert final.incomplete_details is not None
    assert final.incomplete_details.reason == "max_output_tokens"


def test_responses_too_small_a_cap_is_the_api_s_400(mock: ServerThread) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        oai(mock).responses.create(model="gpt-4o", input="x", max_output_tokens=8)
    assert "max_output_tokens" in refused.value.message


def test_completions_plain_batch_and_stream(mock: ServerThread) -> None:
    client = oai(mock)
    batch = client.completions.create(model="gpt-3.5-turbo-instruct", prompt=["a", "b"], n=2)
    assert [choice.index for choice in batch.choices] == [0, 1, 2, 3]
    assert batch.usage is not None and batch.usage.completion_tokens == 4 * 16
    chunks = list(
        client.completions.create(
            model="gpt-3.5-turbo-instruct",
            prompt=[15339, 1917],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(choice.text for chunk in chunks for choice in chunk.choices)
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (2, 5)
    assert ntok(text, "cl100k_base") == 5 and chunks[-2].choices[0].finish_reason == "length"


def test_embeddings_as_the_sdk_decodes_them(mock: ServerThread) -> None:
    """The SDK asks for base64 and decodes it to floats itself."""
    got = oai(mock).embeddings.create(
        model="text-embedding-3-small", input=["hello world", "x"], dimensions=64
    )
    assert [len(item.embedding) for item in got.data] == [64, 64]
    tokens = ntok("hello world", "cl100k_base") + ntok("x", "cl100k_base")
    assert (got.usage.prompt_tokens, got.usage.total_tokens) == (tokens, tokens)
