"""The governed OpenAI path through the real Envoy, driven by the official openai SDK."""

from __future__ import annotations

import http.client

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from extproc.dev.stack import LocalStack
from extproc.providers import tokens
from tests.e2e.harness import client, metric_value, mock_records

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three rivers in Europe."},
]


def expected_prompt_tokens(messages: list[ChatCompletionMessageParam], encoding: str) -> int:
    # OpenAI's billing: 3 tokens per message + its role + its content, 3 to prime the reply.
    return (
        sum(tokens.count(str(m["role"]), encoding) + tokens.count(str(m.get("content")), encoding)
            + 3 for m in messages)
        + 3
    )  # fmt: skip


def test_governed_call_succeeds_with_correct_usage(stack: LocalStack, tag: str) -> None:
    before_prompt = metric_value(
        stack, "tokengate_tokens_total", kind="prompt", model="gpt-4o", namespace="e2e"
    )
    raw = client(stack, "tg-e2e", tag).chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=MESSAGES,
        max_tokens=50,
        extra_headers={"x-mock-completion-tokens": "12"},
    )
    completion = raw.parse()
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == expected_prompt_tokens(MESSAGES, "o200k_base")
    assert completion.usage.completion_tokens == 12
    assert len(tokens.count(completion.choices[0].message.content or "", "o200k_base") * "x") == 12
    # The caller's own rate-limit headers, for its tightest limits.
    assert raw.headers["x-ratelimit-limit-requests"] == "100000"
    assert raw.headers["x-ratelimit-limit-tokens"] == "100000000"
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 100000000
    for name in (
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
    ):
        assert raw.headers[name]
    # The settled usage is what the provider reported.
    after_prompt = metric_value(
        stack, "tokengate_tokens_total", kind="prompt", model="gpt-4o", namespace="e2e"
    )
    assert after_prompt - before_prompt == completion.usage.prompt_tokens


def test_request_limit_raises_rate_limit_error_naming_it(stack: LocalStack, tag: str) -> None:
    api = client(stack, "tg-tight-requests", tag)
    for _ in range(3):
        api.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as refused:
        api.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert "three-requests" in refused.value.message
    assert refused.value.response.headers["retry-after"].isdigit()
    assert refused.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(mock_records(stack, tag)) == 3


def test_token_limit_counts_settled_usage_and_refuses(stack: LocalStack, tag: str) -> None:
    api = client(stack, "tg-tight-tokens", tag)
    hi: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    prompt = expected_prompt_tokens(hi, "o200k_base")  # 7
    first = api.chat.completions.create(model="gpt-4o", messages=hi, max_tokens=40)
    assert first.usage is not None and first.usage.completion_tokens == 16
    used = prompt + 16  # settled: the reservation (7 + 40) was replaced by the true cost
    with pytest.raises(openai.RateLimitError) as refused:
        api.chat.completions.create(model="gpt-4o", messages=hi, max_tokens=40)
    assert "token-budget" in refused.value.message
    assert f"used {used}" in refused.value.message
    with pytest.raises(openai.RateLimitError) as too_large:
        api.chat.completions.create(model="gpt-4o", messages=hi, max_tokens=100)
    assert "Request too large" in too_large.value.message
    assert len(mock_records(stack, tag)) == 1


def test_upstream_sees_only_the_injected_credential(stack: LocalStack, tag: str) -> None:
    extra = {"x-api-key": "sk-client-1", "Api-Key": "sk-client-2", "X-Goog-Api-Key": "g-3"}
    completion = client(stack, "tg-e2e", tag, **extra).chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
    )
    assert completion.choices[0].message.content
    # Duplicated and oddly cased credential headers on a raw connection.
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports["envoy"], timeout=30)
    conn.putrequest("POST", "/v1/chat/completions")
    for name, value in [
        ("Authorization", "Bearer tg-e2e"),
        ("x-api-key", "sk-a"),
        ("X-API-KEY", "sk-b"),
        ("api-key", "sk-c"),
        ("x-goog-api-key", "sk-d"),
        ("content-type", "application/json"),
        ("x-request-tag", tag),
    ]:
        conn.putheader(name, value)
    body = b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}'
    conn.putheader("content-length", str(len(body)))
    conn.endheaders(body)
    assert conn.getresponse().status == 200
    records = mock_records(stack, tag)
    assert len(records) == 2
    for record in records:
        assert record["credentials"] == {"authorization": [f"Bearer {stack.mock_key}"]}


def test_missing_or_unknown_key_is_an_authentication_error(stack: LocalStack, tag: str) -> None:
    api = client(stack, "tg-not-a-key", tag)
    with pytest.raises(openai.AuthenticationError) as unknown:
        api.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert unknown.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError) as missing:
        api.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            extra_headers={"Authorization": openai.Omit()},
        )
    assert missing.value.code == "missing_api_key"
    assert mock_records(stack, tag) == []


def test_model_outside_allow_list_is_forbidden(stack: LocalStack, tag: str) -> None:
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client(stack, "tg-e2e", tag).chat.completions.create(model="o1-preview", messages=MESSAGES)
    assert "o1-preview" in refused.value.message
    assert mock_records(stack, tag) == []


def test_a_route_a_policy_opens_is_forwarded_with_request_limits_only(
    stack: LocalStack, tag: str
) -> None:
    """Default deny: `GET /v1/models` is forwarded only because a Route opens it for this
    namespace; a 1-token budget does not matter there (no body is read), two requests do."""
    api = client(stack, "tg-passthrough", tag)
    for _ in range(2):
        api.with_raw_response.models.list()  # whatever the upstream answers, it got the call
    with pytest.raises(openai.RateLimitError) as refused:
        api.models.list()
    assert "two-requests" in refused.value.message
    records = mock_records(stack, tag)
    assert [r["path"] for r in records] == ["/v1/models", "/v1/models"]
    assert all(r["credentials"] == {"authorization": [f"Bearer {stack.mock_key}"]} for r in records)


def test_a_route_no_policy_opens_is_refused_before_the_upstream(
    stack: LocalStack, tag: str
) -> None:
    api = client(stack, "tg-e2e", tag)  # its namespace has no Route for /v1/models
    with pytest.raises(openai.NotFoundError) as refused:
        api.models.list()
    assert refused.value.code == "unknown_url"
    assert "is not opened for namespace" in refused.value.message
    with pytest.raises(openai.NotFoundError):
        api.files.list()  # the shared account's objects: closed by default
    assert mock_records(stack, tag) == []
