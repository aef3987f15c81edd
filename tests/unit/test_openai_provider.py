"""OpenAI wire schema (`extproc.providers.openai`) and request-body decoding
(`extproc._json.decode_object`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extproc._json import decode_object
from extproc.errors import BadRequest, ClientError, InternalFailure, RateLimited
from extproc.providers._base import MAX_OUTPUT_TOKENS, ParsedRequest, Usage
from extproc.providers.openai import PROVIDER, parse_chat_request
from extproc.providers.openai_prompt import (
    REPLY_PRIMING_TOKENS,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_NAME,
)
from extproc.providers.openai_tools import render_functions


def chat(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}
    body.update(fields)
    return body


def test_framing_constants() -> None:
    """The OpenAI cookbook's rule ("How to count tokens with tiktoken")."""
    assert (TOKENS_PER_MESSAGE, TOKENS_PER_NAME, REPLY_PRIMING_TOKENS) == (3, 1, 3)
    assert MAX_OUTPUT_TOKENS == 1_000_000


# -- parse_chat_request: valid bodies ---------------------------------------------------


def test_minimal_request() -> None:
    body = chat()
    assert parse_chat_request(body) == ParsedRequest(
        model="gpt-4o",
        stream=False,
        max_output_tokens=None,
        prompt_texts=("user", "Hi"),  # the role is billed too
        framing_tokens=6,  # 3 priming + 3 for the one message
        cap_field="max_completion_tokens",  # accepted by every chat model, reasoning ones too
        body=body,
    )


def test_the_cap_is_written_in_the_field_the_client_used() -> None:
    assert parse_chat_request(chat(max_tokens=5)).cap_field == "max_tokens"
    both = parse_chat_request(chat(max_tokens=5, max_completion_tokens=7))
    assert (both.cap_field, both.max_output_tokens) == ("max_completion_tokens", 7)
    capped = json.loads(parse_chat_request(chat(max_tokens=500)).body_with(100) or b"")
    assert capped["max_tokens"] == 100 and capped["messages"] == chat()["messages"]


@pytest.mark.parametrize(("n", "multiplier"), [(None, 1), (1, 1), (50, 50)])
def test_n_multiplies_the_completions(n: int | None, multiplier: int) -> None:
    assert parse_chat_request(chat(n=n)).completion_multiplier == multiplier


@pytest.mark.parametrize("n", [0, 129, "2", True, 1.5])
def test_a_bad_n_is_refused(n: object) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_chat_request(chat(n=n))
    assert refused.value.param == "n"


def test_each_message_adds_three_tokens() -> None:
    body = chat(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi!"},
        ]
    )
    parsed = parse_chat_request(body)
    assert parsed.prompt_texts == ("system", "Be brief.", "user", "Hello", "assistant", "Hi!")
    assert parsed.framing_tokens == 3 + 3 * 3


def test_content_parts_text_images_and_unknown_parts() -> None:
    weird = {"type": "hologram", "hologram": {"data": "..."}}
    body = chat(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
                    {"type": "text", "text": "And this one?"},
                    "a bare string part",
                    weird,
                ],
            }
        ]
    )
    parsed = parse_chat_request(body)
    assert parsed.prompt_texts == (
        "user",
        "What is in this picture?",
        "And this one?",
        "a bare string part",
        json.dumps(weird, separators=(",", ":")),  # unknown: counted by its JSON, not refused
    )
    # A URL's size is unknown: the worst case at detail auto (85 + 8 x 170), 85 at low.
    assert parsed.framing_tokens == 6 + 1445 + 85


def test_name_adds_one_token_and_its_text() -> None:
    with_name = parse_chat_request(
        chat(messages=[{"role": "user", "name": "alice", "content": "hi"}])
    )
    without = parse_chat_request(chat(messages=[{"role": "user", "content": "hi"}]))
    assert with_name.prompt_texts == ("user", "hi", "alice")
    assert with_name.framing_tokens == 7
    assert with_name.framing_tokens - without.framing_tokens == 1


def test_tool_call_names_and_arguments_are_counted() -> None:
    arguments = json.dumps({"city": "Paris", "unit": "celsius"})
    body = chat(
        messages=[
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": arguments},
                    },
                    {"id": "call_2", "type": "function", "function": "garbage"},
                    "garbage",
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        ]
    )
    parsed = parse_chat_request(body)
    assert parsed.prompt_texts == (
        "user",
        "Weather?",
        "assistant",
        "get_weather",
        arguments,
        '"garbage"',  # a function that is not an object: counted as JSON
        "tool",
        "18C",
        "call_1",  # the id, a few tokens more than the name the model sees
    )
    assert parsed.framing_tokens == 3 + 3 * 3 + 3  # the call costs 3 more (measured)


def test_tools_are_rendered_as_openai_shows_them() -> None:
    function: dict[str, Any] = {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    parsed = parse_chat_request(chat(tools=[{"type": "function", "function": function}]))
    assert parsed.prompt_texts == ("user", "Hi", render_functions([function]))
    assert parsed.prompt_texts[2] == (
        "namespace functions {\n\n// Weather for a city\ntype get_weather = (_: {\n"
        "city?: string,\n}) => any;\n\n} // namespace functions"
    )
    assert parsed.framing_tokens == 6 + 9  # the tools section, no system message to join


def test_empty_or_invalid_tools_add_nothing() -> None:
    assert parse_chat_request(chat(tools=[])).prompt_texts == ("user", "Hi")
    assert parse_chat_request(chat(tools="x")).prompt_texts == ("user", "Hi")


def test_max_completion_tokens_preferred_over_max_tokens() -> None:
    assert (
        parse_chat_request(chat(max_completion_tokens=50, max_tokens=500)).max_output_tokens == 50
    )
    assert parse_chat_request(chat(max_tokens=500)).max_output_tokens == 500
    assert parse_chat_request(chat(max_completion_tokens=7)).max_output_tokens == 7
    assert parse_chat_request(chat(max_completion_tokens=None, max_tokens=9)).max_output_tokens == 9


@pytest.mark.parametrize("value", [1, 4096, MAX_OUTPUT_TOKENS])
def test_max_tokens_bounds_accepted(value: int) -> None:
    assert parse_chat_request(chat(max_tokens=value)).max_output_tokens == value


@pytest.mark.parametrize(("value", "expected"), [(True, True), (False, False), (None, False)])
def test_stream_flag(value: bool | None, expected: bool) -> None:
    assert parse_chat_request(chat(stream=value)).stream is expected


def test_model_of_256_characters_is_accepted() -> None:
    assert parse_chat_request(chat(model="m" * 256)).model == "m" * 256


# -- parse_chat_request: invalid bodies ------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model", "'model' is required"),
        (chat(model=""), "model", "'model' is required"),
        (chat(model="   "), "model", "'model' is required"),
        (chat(model=4), "model", "'model' is required"),
        (chat(model=None), "model", "'model' is required"),
        (chat(model=["gpt-4o"]), "model", "'model' is required"),
        (chat(model="m" * 257), "model", "'model' is too long"),
        ({"model": "gpt-4o"}, "messages", "'messages' must be a non-empty array"),
        (chat(messages=[]), "messages", "'messages' must be a non-empty array"),
        (chat(messages="hello"), "messages", "'messages' must be a non-empty array"),
        (chat(messages={"role": "user"}), "messages", "'messages' must be a non-empty array"),
        (chat(messages=None), "messages", "'messages' must be a non-empty array"),
        (chat(messages=["hello"]), "messages", "'messages[0]' must be an object"),
        (
            chat(messages=[{"role": "user", "content": "x"}, 5]),
            "messages",
            "'messages[1]' must be an object",
        ),
        (chat(max_tokens=True), "max_tokens", "'max_tokens' must be an integer"),
        (chat(max_tokens=False), "max_tokens", "'max_tokens' must be an integer"),
        (chat(max_tokens=10.0), "max_tokens", "'max_tokens' must be an integer"),
        (chat(max_tokens=1.5), "max_tokens", "'max_tokens' must be an integer"),
        (chat(max_tokens="10"), "max_tokens", "'max_tokens' must be an integer"),
        (chat(max_tokens=0), "max_tokens", "between 1 and 1000000, got 0"),
        (chat(max_tokens=-1), "max_tokens", "between 1 and 1000000, got -1"),
        (chat(max_tokens=1_000_001), "max_tokens", "between 1 and 1000000, got 1000001"),
        (
            chat(max_completion_tokens=0, max_tokens=10),
            "max_completion_tokens",
            "'max_completion_tokens' must be between 1 and 1000000, got 0",
        ),
        (
            chat(max_completion_tokens="5"),
            "max_completion_tokens",
            "'max_completion_tokens' must be an integer",
        ),
        (chat(stream="true"), "stream", "'stream' must be a boolean"),
        (chat(stream=1), "stream", "'stream' must be a boolean"),
        (chat(stream=0), "stream", "'stream' must be a boolean"),
    ],
)
def test_bad_request_names_the_param(body: dict[str, Any], param: str, message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_chat_request(body)
    assert caught.value.param == param
    assert message in caught.value.message
    assert caught.value.status == 400
    assert caught.value.error_type == "invalid_request_error"


@pytest.mark.parametrize("tool_calls", [5, True, 1.5])
def test_non_list_tool_calls_is_a_bad_request(tool_calls: object) -> None:
    """A client-chosen type must give a 400, not a crash (a 500)."""
    body = chat(messages=[{"role": "assistant", "content": "x", "tool_calls": tool_calls}])
    with pytest.raises(BadRequest) as caught:
        parse_chat_request(body)
    assert caught.value.param == "messages"
    assert "tool_calls" in caught.value.message


# -- parse_usage ------------------------------------------------------------------------


def test_parse_usage_full() -> None:
    body = {
        "id": "chatcmpl-1",
        "usage": {
            "prompt_tokens": 120,
            "completion_tokens": 30,
            "total_tokens": 150,
            "prompt_tokens_details": {"cached_tokens": 64},
        },
    }
    usage = PROVIDER.parse_usage(body)
    assert usage == Usage(prompt_tokens=120, completion_tokens=30, cached_prompt_tokens=64)
    assert usage is not None
    assert usage.total == 150


def test_parse_usage_without_details_or_completion() -> None:
    assert PROVIDER.parse_usage({"usage": {"prompt_tokens": 8, "completion_tokens": 2}}) == Usage(
        8, 2, 0
    )
    # an embeddings-style usage has no completion tokens
    assert PROVIDER.parse_usage({"usage": {"prompt_tokens": 8, "total_tokens": 8}}) == Usage(8, 0)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"choices": []},
        {"usage": None},
        {"usage": "lots"},
        {"usage": [1, 2]},
        {"usage": {}},
        {"usage": {"completion_tokens": 5}},
        {"usage": {"prompt_tokens": "8", "completion_tokens": 2}},
        {"usage": {"prompt_tokens": 8.0, "completion_tokens": 2}},
        {"usage": {"prompt_tokens": 8, "completion_tokens": "2"}},
        {"usage": {"prompt_tokens": 8, "completion_tokens": None}},
        {"usage": {"prompt_tokens": -8, "completion_tokens": 2}},
        {"usage": {"prompt_tokens": 8, "completion_tokens": -1}},
        {"usage": {"prompt_tokens": True, "completion_tokens": 2}},
    ],
)
def test_parse_usage_missing_or_malformed(body: dict[str, Any]) -> None:
    assert PROVIDER.parse_usage(body) is None


@pytest.mark.parametrize(
    "details", [None, "x", [], {"cached_tokens": "4"}, {"cached_tokens": None}]
)
def test_parse_usage_malformed_details_count_no_cache(details: object) -> None:
    body = {"usage": {"prompt_tokens": 8, "completion_tokens": 2, "prompt_tokens_details": details}}
    assert PROVIDER.parse_usage(body) == Usage(8, 2, 0)


# -- error_body / credentials ----------------------------------------------------------


def test_error_body_shape_for_bad_request() -> None:
    body = PROVIDER.error_body(BadRequest("'model' is too long", param="model"))
    assert json.loads(body) == {
        "error": {
            "message": "'model' is too long",
            "type": "invalid_request_error",
            "param": "model",
            "code": None,
        }
    }


def test_error_body_shape_for_rate_limited() -> None:
    error = RateLimited("Rate limit reached", limit="rpm", retry_after=3)
    assert json.loads(PROVIDER.error_body(error)) == {
        "error": {
            "message": "Rate limit reached",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }


def test_error_body_for_internal_failure_and_custom_code() -> None:
    internal = InternalFailure("The gateway failed to process this request.")
    assert json.loads(PROVIDER.error_body(internal))["error"] == {
        "message": "The gateway failed to process this request.",
        "type": "api_error",
        "param": None,
        "code": "internal_error",
    }
    custom = ClientError("nope", code="no_policy")
    assert json.loads(PROVIDER.error_body(custom))["error"]["code"] == "no_policy"


def test_error_body_is_utf8_json_bytes() -> None:
    body = PROVIDER.error_body(BadRequest('model "ünïcode" is unknown'))
    assert isinstance(body, bytes)
    assert json.loads(body.decode("utf-8"))["error"]["message"] == 'model "ünïcode" is unknown'


def test_credentials() -> None:
    assert PROVIDER.name == "openai"
    assert PROVIDER.credential_header == "authorization"
    assert PROVIDER.credential_value("sk-test") == "Bearer sk-test"


# -- decode_object ----------------------------------------------------------------------


def test_decode_object_normal() -> None:
    raw = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "é"}]})
    assert decode_object(raw.encode()) == {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "é"}],
    }


def test_decode_object_invalid_utf8() -> None:
    with pytest.raises(BadRequest) as caught:
        decode_object(b'{"model": "\xff\xfe"}')
    assert caught.value.message.startswith("request body is not valid JSON: ")
    assert caught.value.status == 400


@pytest.mark.parametrize("raw", [b"", b"{", b'{"a": }', b"{'a': 1}", b'{"a": 1} x', b"nul"])
def test_decode_object_invalid_json(raw: bytes) -> None:
    with pytest.raises(BadRequest) as caught:
        decode_object(raw)
    assert caught.value.message.startswith("request body is not valid JSON: ")
    assert len(caught.value.message) <= len("request body is not valid JSON: ") + 120


@pytest.mark.parametrize("raw", [b"[]", b"[1, 2]", b'"text"', b"42", b"null", b"true"])
def test_decode_object_non_object(raw: bytes) -> None:
    with pytest.raises(BadRequest) as caught:
        decode_object(raw)
    assert caught.value.message == "request body must be a JSON object"


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b'{"messages": ' + b"[" * 100_000,
    ],
)
def test_decode_object_nested_too_deeply(raw: bytes) -> None:
    with pytest.raises(BadRequest) as caught:
        decode_object(raw)
    assert caught.value.message == "request body is nested too deeply"


def test_decode_object_moderate_nesting_is_fine() -> None:
    assert decode_object(b'{"a":' * 100 + b"1" + b"}" * 100)["a"]["a"]["a"] is not None


def test_decode_object_huge_integer_is_a_bad_request() -> None:
    """CPython refuses int literals over 4,300 digits with a plain ValueError: still a 400."""
    with pytest.raises(BadRequest):
        decode_object(b'{"model": "gpt-4o", "max_tokens": ' + b"9" * 5000 + b"}")


def test_max_tokens_is_validated_even_when_max_completion_tokens_wins() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_chat_request(chat(max_completion_tokens=10, max_tokens=-5))
    assert caught.value.param == "max_tokens"
