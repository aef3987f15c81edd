"""`chat_over_messages` answers and errors: Anthropic Messages as OpenAI `chat.completion`s
(checked against expected completions written by hand, the openai SDK's types, and the
gateway's own OpenAI usage reader), and Anthropic error answers as OpenAI's, as the openai
SDK raises them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletion

from extproc.providers.anthropic import PROVIDER as ANTHROPIC
from extproc.providers.openai import PROVIDER as OPENAI
from extproc.providers.translate.chat_over_messages import TRANSLATION, ChatOverMessages

FIXTURES = Path(__file__).parent / "fixtures" / "translate" / "chat_over_messages"
ANSWERS: list[dict[str, Any]] = json.loads((FIXTURES / "answers.json").read_text())
FIXED = ChatOverMessages(clock=lambda: 1_700_000_000.9)


@pytest.mark.parametrize("case", ANSWERS, ids=[a["name"] for a in ANSWERS])
def test_answers_translate_to_the_expected_completion(case: dict[str, Any]) -> None:
    out = FIXED.answer(case["anthropic"])
    assert out == case["openai"]
    ChatCompletion.model_validate(out)  # the SDK's own type takes it


@pytest.mark.parametrize("case", ANSWERS, ids=[a["name"] for a in ANSWERS])
def test_the_gateway_reads_the_backend_s_usage_from_the_translation(case: dict[str, Any]) -> None:
    backend = ANTHROPIC.parse_usage(case["anthropic"])
    translated = OPENAI.parse_usage(FIXED.answer(case["anthropic"]))
    assert backend is not None and translated is not None
    assert (translated.prompt_tokens, translated.completion_tokens) == (
        backend.prompt_tokens,
        backend.completion_tokens,
    )
    assert translated.cached_prompt_tokens == backend.cached_prompt_tokens


def test_tool_call_arguments_parse_back_to_the_input() -> None:
    case = ANSWERS[1]["anthropic"]
    calls = FIXED.answer(case)["choices"][0]["message"]["tool_calls"]
    inputs = [b["input"] for b in case["content"] if b["type"] == "tool_use"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == inputs


def test_created_comes_from_the_clock() -> None:
    assert FIXED.answer(ANSWERS[0]["anthropic"])["created"] == 1_700_000_000
    assert isinstance(TRANSLATION.answer(ANSWERS[0]["anthropic"])["created"], int)


@pytest.mark.parametrize(
    ("body", "content", "finish"),
    [
        ({}, None, "stop"),
        ({"content": "text", "stop_reason": 7}, None, "stop"),
        ({"content": [None, {"type": "text", "text": 5}, {"type": "text", "text": "a"}]}, "a",
         "stop"),
        ({"content": [], "stop_reason": "pause_turn"}, None, "stop"),
        ({"content": [], "stop_reason": "model_context_window_exceeded"}, None, "length"),
        ({"content": [], "stop_reason": "some_new_reason"}, None, "stop"),
    ],
)  # fmt: skip
def test_malformed_answers_translate_as_far_as_they_go(
    body: dict[str, Any], content: str | None, finish: str
) -> None:
    out = FIXED.answer(body)
    choice = out["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == (content, finish)
    assert (out["id"], out["model"]) == ("", "")
    assert "usage" not in out  # none was readable: nothing is invented
    ChatCompletion.model_validate(out)


# -- errors ------------------------------------------------------------------------------


def anthropic_error(kind: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


@pytest.mark.parametrize(
    ("status", "kind", "sent", "openai_type", "code"),
    [
        (400, "invalid_request_error", 400, "invalid_request_error", None),
        (401, "authentication_error", 401, "authentication_error", "invalid_api_key"),
        (402, "billing_error", 402, "insufficient_quota", "insufficient_quota"),
        (403, "permission_error", 403, "permission_error", None),
        (404, "not_found_error", 404, "invalid_request_error", "model_not_found"),
        (413, "request_too_large", 413, "invalid_request_error", "request_too_large"),
        (429, "rate_limit_error", 429, "rate_limit_error", "rate_limit_exceeded"),
        (500, "api_error", 500, "server_error", None),
        (504, "timeout_error", 504, "server_error", None),
        (529, "overloaded_error", 503, "server_error", None),
    ],
)
def test_anthropic_errors_become_openai_errors(
    status: int, kind: str, sent: int, openai_type: str, code: str | None
) -> None:
    out_status, body = TRANSLATION.error(status, anthropic_error(kind, f"{kind} happened"))
    assert out_status == sent
    assert json.loads(body) == {
        "error": {"message": f"{kind} happened", "type": openai_type, "param": None, "code": code}
    }


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>502 Bad Gateway at 10.0.3.7:8443</body></html>",
        b"",
        b"\xff\xfe garbage",
        b'{"type": "error"}',
        b'{"error": {"message": 5}}',
        b"[1, 2]",
    ],
)
def test_a_body_that_is_not_an_anthropic_error_is_never_echoed(body: bytes) -> None:
    status, out = TRANSLATION.error(502, body)
    error = json.loads(out)["error"]
    assert status == 502
    assert error["type"] == "server_error"
    assert error["message"] == (
        f"The upstream provider answered HTTP 502 ({len(body)} bytes, not JSON)."
    )
    assert b"10.0.3.7" not in out


def test_a_long_upstream_message_is_cut() -> None:
    _, out = TRANSLATION.error(400, anthropic_error("invalid_request_error", "x" * 10_000))
    assert len(json.loads(out)["error"]["message"]) == 2_001


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (529, openai.InternalServerError),
    ],
)
def test_the_openai_sdk_raises_the_translated_error(
    status: int, exception: type[openai.APIStatusError]
) -> None:
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
            429: "rate_limit_error", 529: "overloaded_error"}[status]  # fmt: skip
    sent, body = TRANSLATION.error(status, anthropic_error(kind, "Upstream said no"))

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(sent, content=body, headers={"content-type": "application/json"})

    client = openai.OpenAI(
        api_key="k",
        base_url="http://gateway.test/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    with pytest.raises(exception) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == sent
    assert caught.value.body == json.loads(body)["error"]
    assert (caught.value.code, caught.value.type) == (
        json.loads(body)["error"]["code"],
        json.loads(body)["error"]["type"],
    )
