"""Anthropic Messages requests served by OpenAI Chat Completions
(`extproc.providers.translate.messages_over_chat`): plain answers and errors. Recorded-shape
ChatCompletions with the Message each must become, checked by the anthropic SDK's own types
and client, by tokengate's Anthropic reader against the backend's numbers; errors by status,
and bodies that are not OpenAI's error JSON never echoed beyond a short printable excerpt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
from openai.types.chat import ChatCompletion

from extproc.providers.anthropic import PROVIDER as ANTHROPIC
from extproc.providers.openai import PROVIDER as OPENAI
from extproc.providers.translate.messages_over_chat import TRANSLATION
from extproc.providers.translate.messages_over_chat.answer import MAX_EXCERPT

FIXTURES = Path(__file__).parent / "fixtures" / "translate" / "messages_over_chat"
CASES: list[dict[str, Any]] = json.loads((FIXTURES / "answers.json").read_text())


def sdk_client(handler: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="k",
        base_url="http://gateway.test",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_corpus(case: dict[str, Any]) -> None:
    ChatCompletion.model_validate(case["openai"])  # the recorded shape is OpenAI's
    out = TRANSLATION.answer(case["openai"])
    assert out == case["anthropic"]
    anthropic.types.Message.model_validate(out)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_tokengate_reads_the_backends_numbers(case: dict[str, Any]) -> None:
    backend = OPENAI.parse_usage(case["openai"])
    client = ANTHROPIC.parse_usage(TRANSLATION.answer(case["openai"]))
    assert backend is not None
    assert client is not None
    assert client.prompt_tokens == backend.prompt_tokens
    assert client.completion_tokens == backend.completion_tokens
    assert client.cached_prompt_tokens == backend.cached_prompt_tokens
    assert client.cache_write_tokens == 0


def test_the_sdk_gets_the_answer_end_to_end() -> None:
    """The SDK's request goes through `request()`, the recorded answer through `answer()`."""
    case = next(c for c in CASES if c["name"] == "text_then_tool_call_and_odd_arguments")
    sent: list[dict[str, Any]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        sent.append(TRANSLATION.request(body, model="gpt-4o-mini", default_max_tokens=1024))
        return httpx2.Response(200, json=TRANSLATION.answer(case["openai"]))

    message = sdk_client(handler).messages.create(
        model="claude-haiku-4-5",
        max_tokens=300,
        system="Use tools.",
        messages=[{"role": "user", "content": "What is in the alps folder?"}],
        tools=[{"name": "list_files", "input_schema": {"type": "object", "properties": {}}}],
        tool_choice={"type": "auto"},
    )
    assert sent[0]["model"] == "gpt-4o-mini"
    assert sent[0]["messages"][0] == {"role": "system", "content": "Use tools."}
    assert sent[0]["tool_choice"] == "auto"
    assert message.stop_reason == "tool_use"
    assert message.content[0].type == "text"
    assert [b.id for b in message.content if b.type == "tool_use"] == [
        "call_a1",
        "call_b2",
        "call_c3",
    ]
    assert message.usage.input_tokens == 95
    assert message.usage.output_tokens == 40


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"choices": []},
        {"choices": ["x"]},
        {"choices": [{"message": None}]},
        {"choices": [{"message": {"content": 5, "tool_calls": ["x", {"function": 3}]}}]},
        {"choices": [{"message": {"tool_calls": {"a": 1}}}], "usage": {"prompt_tokens": -3}},
    ],
)
def test_a_malformed_answer_reads_as_absent_never_raises(body: dict[str, Any]) -> None:
    out = TRANSLATION.answer(body)
    assert out["content"] == []
    assert out["stop_reason"] == "end_turn"
    assert out["usage"] == {
        "input_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 0,
    }


def test_a_tool_call_without_id_or_name_still_reads() -> None:
    body = {"choices": [{"message": {"tool_calls": [{"function": {"arguments": '{"a":1}'}}]}}]}
    assert TRANSLATION.answer(body)["content"] == [
        {"type": "tool_use", "id": "call_0", "name": "", "input": {"a": 1}}
    ]


def test_cached_tokens_above_the_prompt_are_bounded() -> None:
    body = {"usage": {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 50}}}
    usage = TRANSLATION.answer(body)["usage"]
    assert (usage["input_tokens"], usage["cache_read_input_tokens"]) == (0, 10)


# -- errors --------------------------------------------------------------------------------


def openai_error(message: str, kind: str, code: str | None = None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": kind, "param": None, "code": code}}
    ).encode()


INVALID = "invalid_request_error"
ERRORS = [
    (400, openai_error("Invalid 'messages[1].content'", INVALID), INVALID,
     anthropic.BadRequestError),
    (401, openai_error("Incorrect API key provided", INVALID, "invalid_api_key"),
     "authentication_error", anthropic.AuthenticationError),
    (403, openai_error("Project does not have access to model", INVALID), "permission_error",
     anthropic.PermissionDeniedError),
    (404, openai_error("The model `gpt-9` does not exist", INVALID, "model_not_found"),
     "not_found_error", anthropic.NotFoundError),
    (413, openai_error("Request too large", INVALID), "request_too_large",
     anthropic.APIStatusError),
    (422, openai_error("Unprocessable", INVALID), INVALID, anthropic.UnprocessableEntityError),
    (429, openai_error("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
     "rate_limit_error", anthropic.RateLimitError),
    (500, openai_error("The server had an error", "server_error"), "api_error",
     anthropic.InternalServerError),
    (502, openai_error("Bad gateway", "server_error"), "api_error", anthropic.InternalServerError),
    (503, openai_error("The engine is currently overloaded", "server_error"), "overloaded_error",
     anthropic.InternalServerError),
]  # fmt: skip


@pytest.mark.parametrize(
    ("status", "body", "kind", "raised"), ERRORS, ids=[str(e[0]) for e in ERRORS]
)
def test_error_by_status_with_the_backends_message(
    status: int, body: bytes, kind: str, raised: type[anthropic.APIStatusError]
) -> None:
    out_status, out = TRANSLATION.error(status, body)
    assert out_status == status
    message = json.loads(body)["error"]["message"]
    assert json.loads(out) == {"type": "error", "error": {"type": kind, "message": message}}

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            out_status, content=out, headers={"content-type": "application/json"}
        )

    with pytest.raises(raised) as caught:
        sdk_client(handler).messages.create(
            model="claude-haiku-4-5", max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
        )
    assert caught.value.status_code == status
    assert message in caught.value.message
    assert caught.value.body == {"type": "error", "error": {"type": kind, "message": message}}


@pytest.mark.parametrize(
    "body",
    [
        b"<html><head><title>502 Bad Gateway</title></head><body>upstream 10.0.3.7:443"
        + b" connect() failed \x00\x1b[31m"
        + b"x" * 5000
        + b"</body></html>",
        b'{"detail": "not an OpenAI error"}',
        b'{"error": "flat string"}',
        b"\xff\xfe\x00garbage",
        b"",
    ],
)
def test_a_body_that_is_not_openais_error_is_summarised(body: bytes) -> None:
    status, out = TRANSLATION.error(502, body)
    assert status == 502
    error = json.loads(out)["error"]
    assert error["type"] == "api_error"
    text = error["message"]
    assert text.startswith("the backend answered HTTP 502")
    excerpt = text.removeprefix("the backend answered HTTP 502").removeprefix(": ")
    assert len(excerpt) <= MAX_EXCERPT
    assert all(" " <= ch <= "~" for ch in text)
    assert "x" * 100 not in text


def test_an_over_long_backend_message_is_bounded() -> None:
    _, out = TRANSLATION.error(400, openai_error("y" * 50_000, "invalid_request_error"))
    assert 1000 < len(json.loads(out)["error"]["message"]) <= 2000
