"""The mock provider driven by the official OpenAI and Anthropic SDKs over a real socket:
plain and streamed answers with exact usage, scripted errors raising the SDK's own
exception types, and the provider's key check as each SDK sends its key."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from extproc.dev.mock_provider.text import WORDS
from tests.integration.mock_server import (
    KEY,
    MESSAGES,
    ServerThread,
    ant,
    oai,
    openai_prompt_tokens,
)
from tests.token_counts import ntok

# --- OpenAI SDK -----------------------------------------------------------------------------


def test_openai_sdk_plain_answer(mock: ServerThread) -> None:
    client = oai(mock)
    answer = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    content = answer.choices[0].message.content
    assert content is not None and all(word in WORDS for word in content.split(" "))
    assert answer.id.startswith("chatcmpl-") and answer.object == "chat.completion"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 16 == ntok(content, "o200k_base")
    assert answer.usage.prompt_tokens == openai_prompt_tokens("o200k_base")
    again = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert again.choices[0].message.content == content


def test_openai_sdk_stream_with_usage_and_length_limit(mock: ServerThread) -> None:
    stream = oai(mock).chat.completions.create(
        model="gpt-4",
        messages=MESSAGES,
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-mock-completion-tokens": "25", "x-mock-tokens-per-chunk": "4"},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    text = "".join(deltas)
    assert [ntok(d, "cl100k_base") for d in deltas] == [0, 4, 4, 2, 0]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == 10 == ntok(text, "cl100k_base")
    assert usage.prompt_tokens == openai_prompt_tokens("cl100k_base")


def test_openai_sdk_stream_without_include_usage_has_no_usage(mock: ServerThread) -> None:
    chunks = list(oai(mock).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert all(c.usage is None and c.choices for c in chunks)
    assert ntok("".join(c.choices[0].delta.content or "" for c in chunks), "o200k_base") == 16


def test_openai_sdk_omit_usage(mock: ServerThread) -> None:
    client = oai(mock, default_headers={"x-mock-omit-usage": "1"})
    assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).usage is None
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.usage is None and c.choices for c in chunks)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (401, openai.AuthenticationError),
        (400, openai.BadRequestError),
    ],
)
def test_openai_sdk_scripted_errors(
    mock: ServerThread, status: int, error: type[openai.APIStatusError]
) -> None:
    client = oai(mock, default_headers={"x-mock-status": str(status)})
    with pytest.raises(error) as info:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    assert info.value.status_code == status
    body = info.value.body
    assert isinstance(body, dict) and "x-mock-status" in body["message"]


def test_openai_sdk_require_key(keyed_mock: ServerThread) -> None:
    ok = oai(keyed_mock).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert ok.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        oai(keyed_mock, api_key="wrong").chat.completions.create(model="gpt-4o", messages=MESSAGES)
    extra = oai(keyed_mock, default_headers={"x-api-key": KEY})
    with pytest.raises(openai.AuthenticationError):
        extra.chat.completions.create(model="gpt-4o", messages=MESSAGES)


# --- Anthropic SDK --------------------------------------------------------------------------


def anthropic_prompt_tokens() -> int:
    return ntok("Be brief.", "cl100k_base") + ntok("Say something.", "cl100k_base") + 3


def test_anthropic_sdk_plain_answer(mock: ServerThread) -> None:
    message = ant(mock).messages.create(
        model="claude-sonnet-4",
        max_tokens=6,
        system="Be brief.",
        messages=[{"role": "user", "content": "Say something."}],
    )
    assert message.id.startswith("msg_") and message.stop_reason == "max_tokens"
    block = message.content[0]
    assert block.type == "text"
    assert message.usage.output_tokens == 6 == ntok(block.text, "cl100k_base")
    assert message.usage.input_tokens == anthropic_prompt_tokens()


def test_anthropic_sdk_stream(mock: ServerThread) -> None:
    client = ant(mock, default_headers={"x-mock-completion-tokens": "9"})
    with client.messages.stream(
        model="claude-sonnet-4",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "Say something."}],
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds.count("content_block_delta") == 3
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.stop_reason == "end_turn"
    text = final.content[0].text if final.content[0].type == "text" else ""
    assert final.usage.output_tokens == 9 == ntok(text, "cl100k_base")
    assert final.usage.input_tokens == anthropic_prompt_tokens()


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, anthropic.RateLimitError),
        (529, anthropic.OverloadedError),
        (500, anthropic.InternalServerError),
    ],
)
def test_anthropic_sdk_scripted_errors(
    mock: ServerThread, status: int, error: type[anthropic.APIStatusError]
) -> None:
    client = ant(mock, default_headers={"x-mock-status": str(status)})
    with pytest.raises(error) as info:
        client.messages.create(
            model="claude-sonnet-4", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == status
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error"


def test_anthropic_sdk_require_key(keyed_mock: ServerThread) -> None:
    """Anthropic routes take `x-api-key` only. anthropic 2.12 sends `api_key` as
    `Authorization: Bearer`, so the key goes in as a header here, as the gateway injects it."""
    messages: list[Any] = [{"role": "user", "content": "x"}]
    ok = ant(keyed_mock, api_key=None, default_headers={"x-api-key": KEY}).messages.create(
        model="claude-sonnet-4", max_tokens=5, messages=messages
    )
    assert ok.usage.output_tokens == 5
    for client in (
        ant(keyed_mock, api_key=None, default_headers={"x-api-key": "nope"}),
        ant(keyed_mock),  # right key, but as a Bearer token
        ant(keyed_mock, default_headers={"x-api-key": KEY}),  # two credential headers
    ):
        with pytest.raises(anthropic.AuthenticationError):
            client.messages.create(model="claude-sonnet-4", max_tokens=5, messages=messages)
