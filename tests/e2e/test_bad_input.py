"""Bad input through the real Envoy: each gets a defined OpenAI-format answer, and none of
it slows down the requests around it."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from extproc.dev.stack import LocalStack
from tests.e2e.harness import client, mock_records, raw_post

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
LIMIT = 2 * 1024 * 1024  # the stack's --max-body-bytes


def _ok_call(stack: LocalStack, tag: str) -> float:
    started = time.perf_counter()
    completion = client(stack, "tg-e2e", tag).chat.completions.create(
        model="gpt-4o",
        messages=HELLO,
    )
    assert completion.choices[0].message.content
    return time.perf_counter() - started


def test_non_json_body_is_400(stack: LocalStack, tag: str) -> None:
    status, body, _ = raw_post(stack, b"this is {not json", tag=tag)
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert "not valid JSON" in body["error"]["message"]
    status, body, _ = raw_post(stack, b"[1, 2, 3]", tag=tag)
    assert (status, body["error"]["message"]) == (400, "request body must be a JSON object")
    assert mock_records(stack, tag) == []


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_the_limit_is_413(stack: LocalStack, tag: str, chunked: bool) -> None:
    prompt = "x" * (LIMIT + 1000)
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]})
    status, answer, _ = raw_post(stack, body.encode(), chunked=chunked, tag=tag)
    assert status == 413
    assert answer["error"]["code"] == "request_too_large"
    assert mock_records(stack, tag) == []


def test_deeply_nested_json_is_400_without_hurting_others(stack: LocalStack, tag: str) -> None:
    deep = b'{"model": "gpt-4o", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with ThreadPoolExecutor(max_workers=8) as pool:
        bad = [pool.submit(raw_post, stack, deep, tag=tag) for _ in range(4)]
        good = [pool.submit(_ok_call, stack, tag) for _ in range(16)]
        for future in bad:
            status, body, _ = future.result()
            assert status == 400
            assert body["error"]["message"] == "request body is nested too deeply"
        for ok in good:
            ok.result()  # raises if any normal request failed
    assert len(mock_records(stack, tag)) == 16


@pytest.mark.parametrize("max_tokens", [-1, 0, 10**9, "12"])
def test_bad_max_tokens_is_400(stack: LocalStack, tag: str, max_tokens: object) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client(stack, "tg-e2e", tag).chat.completions.create(
            model="gpt-4o",
            messages=HELLO,
            extra_body={"max_tokens": max_tokens},  # past the SDK's own type checks
        )
    assert refused.value.param == "max_tokens"
    assert mock_records(stack, tag) == []


def test_one_megabyte_single_character_prompt_is_counted_while_others_flow(
    stack: LocalStack, tag: str
) -> None:
    """The bound: ~170 ms of tokenizer time per MB on the dev machine, off the event loop.

    Four 1 MB prompts are counted at once while small requests run; each small request
    must take well under the time the big ones need, which it could not if counting
    blocked the sidecar's event loop.
    """
    prompt = "a" * 1_000_000
    big_api = client(stack, "tg-big", tag)

    def big_call() -> tuple[int, float]:
        started = time.perf_counter()
        completion = big_api.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=5,
        )
        assert completion.usage is not None
        return completion.usage.prompt_tokens, time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=5) as pool:
        bigs = [pool.submit(big_call) for _ in range(4)]
        small = [_ok_call(stack, tag) for _ in range(10)]
        results = [b.result() for b in bigs]
    for prompt_tokens, _ in results:
        assert prompt_tokens == 125_000 + 1 + 3 + 3  # what the provider reported (role too)
    slowest_big = max(elapsed for _, elapsed in results)
    assert max(small) < slowest_big / 2, (small, slowest_big)


def test_answer_larger_than_envoys_buffer_still_reaches_the_client(
    stack: LocalStack, tag: str
) -> None:
    """Envoy hands the sidecar only a partial body then (BUFFERED_PARTIAL); in BUFFERED mode
    the client would get a plain-text 500 for an answer the provider billed."""
    words = 450_000  # about 2.5 MB of JSON, over the stack's ~2.1 MB buffer
    completion = client(stack, "tg-big", tag).chat.completions.create(
        model="gpt-4o",
        messages=HELLO,
        max_tokens=words,
        extra_headers={"x-mock-completion-tokens": str(words)},
    )
    assert completion.usage is not None and completion.usage.completion_tokens == words
    assert len((completion.choices[0].message.content or "").split()) == words
