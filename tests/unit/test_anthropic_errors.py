"""Anthropic wire schema (`extproc.providers.anthropic`), the answer's usage and our errors:
`usage` of a plain answer (cache tokens included, untrustworthy values refused), error bodies
and mid-stream error events in Anthropic's format, checked against the mock provider and the
real SDK."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic._streaming import SSEDecoder

from extproc.dev.mock_provider.anthropic import AnthropicDialect
from extproc.errors import (
    BadRequest,
    ClientError,
    InternalFailure,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from extproc.providers._base import ParsedRequest, Usage
from extproc.providers.anthropic import PROVIDER, parse_messages_request
from tests.unit.anthropic_wire import RECORDED, compact

MOCK = AnthropicDialect()


# -- parse_usage ------------------------------------------------------------------------


def test_parse_usage_includes_cache_tokens_in_the_prompt() -> None:
    body = {
        "id": "msg_1",
        "type": "message",
        "usage": {
            "input_tokens": 20,
            "cache_creation_input_tokens": 1000,
            "cache_read_input_tokens": 3000,
            "output_tokens": 42,
            "service_tier": "standard",
        },
    }
    usage = PROVIDER.parse_usage(body)
    assert usage == Usage(
        prompt_tokens=4020, completion_tokens=42, cached_prompt_tokens=3000, cache_write_tokens=1000
    )
    assert usage is not None
    assert usage.total == 4062


@pytest.mark.parametrize(
    "usage",
    [
        {"input_tokens": 8, "output_tokens": 2},
        {
            "input_tokens": 8,
            "output_tokens": 2,
            "cache_creation_input_tokens": None,
            "cache_read_input_tokens": None,
        },
    ],
)
def test_parse_usage_absent_or_null_cache_fields_are_zero(usage: dict[str, Any]) -> None:
    assert PROVIDER.parse_usage({"usage": usage}) == Usage(8, 2, 0)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"usage": None},
        {"usage": "lots"},
        {"usage": [8, 2]},
        {"usage": {}},
        {"usage": {"output_tokens": 2}},
        {"usage": {"input_tokens": 8}},
        {"usage": {"input_tokens": "8", "output_tokens": 2}},
        {"usage": {"input_tokens": 8.0, "output_tokens": 2}},
        {"usage": {"input_tokens": True, "output_tokens": 2}},
        {"usage": {"input_tokens": -8, "output_tokens": 2}},
        {"usage": {"input_tokens": 8, "output_tokens": None}},
        {"usage": {"input_tokens": 8, "output_tokens": -1}},
        {"usage": {"input_tokens": 8, "output_tokens": 2, "cache_read_input_tokens": -5}},
        {"usage": {"input_tokens": 8, "output_tokens": 2, "cache_creation_input_tokens": "9"}},
        {"usage": {"input_tokens": 8, "output_tokens": 2, "cache_read_input_tokens": False}},
    ],
)
def test_parse_usage_missing_or_untrustworthy(body: dict[str, Any]) -> None:
    assert PROVIDER.parse_usage(body) is None


# -- error_body / stream_error ----------------------------------------------------------


class NotFound(ClientError):
    status = 404


class Overloaded(ClientError):
    status = 529


class Teapot(ClientError):
    status = 418


class BadGateway(ClientError):
    status = 502


@pytest.mark.parametrize(
    ("error", "error_type"),
    [
        (BadRequest("'model' is too long", param="model"), "invalid_request_error"),
        (Unauthenticated("missing gateway key"), "authentication_error"),
        (PermissionDenied("model not allowed"), "permission_error"),
        (NotFound("no such route"), "not_found_error"),
        (PayloadTooLarge("body too large"), "request_too_large"),
        (RateLimited("limit 'tpm' reached", limit="tpm", retry_after=3), "rate_limit_error"),
        (InternalFailure("The gateway failed."), "api_error"),
        (Unavailable("quota store unavailable"), "overloaded_error"),
        (Overloaded("overloaded"), "overloaded_error"),
        (Teapot("odd"), "invalid_request_error"),
        (BadGateway("odd"), "api_error"),
    ],
)
def test_error_body_shape_per_status(error: ClientError, error_type: str) -> None:
    body = PROVIDER.error_body(error)
    assert isinstance(body, bytes)
    assert json.loads(body) == {
        "type": "error",
        "error": {"type": error_type, "message": error.message},
    }


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 413, 429, 500, 529])
def test_error_types_agree_with_the_mock_provider(status: int) -> None:
    error = type("E", (ClientError,), {"status": status})("m")
    assert json.loads(PROVIDER.error_body(error)) == json.loads(MOCK.error_body(status, "m"))


def test_error_body_keeps_unicode() -> None:
    body = PROVIDER.error_body(BadRequest('model "ünïcode" is unknown'))
    assert 'model \\"ünïcode\\" is unknown'.encode() in body


def test_stream_error_is_one_complete_sse_event() -> None:
    error = RateLimited("Token budget\nexhausted", limit="tpm", retry_after=2)
    raw = PROVIDER.stream_error(error)
    assert raw == (
        b'event: error\ndata: {"type":"error","error":{"type":"rate_limit_error",'
        b'"message":"Token budget\\nexhausted"}}\n\n'
    )
    decoded = list(SSEDecoder().iter_bytes(iter([raw])))
    assert [(e.event, e.json()) for e in decoded] == [
        ("error", json.loads(PROVIDER.error_body(error)))
    ]


def sse(event: str, payload: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {compact(payload)}\n\n".encode()


def test_anthropic_sdk_raises_on_stream_error_mid_stream() -> None:
    """The real SDK, fed through an in-memory transport, raises with our type and message."""
    stream_body = (
        b"".join(sse(e.event or "", json.loads(e.data)) for e in RECORDED[:5])
        + PROVIDER.stream_error(RateLimited("Token budget exhausted", limit="tpm", retry_after=2))
        + b"".join(sse(e.event or "", json.loads(e.data)) for e in RECORDED[5:7])
    )
    seen_requests: list[ParsedRequest] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen_requests.append(parse_messages_request(json.loads(request.content)))
        headers = {"content-type": "text/event-stream"}
        return httpx2.Response(200, content=stream_body, headers=headers)

    transport = httpx2.MockTransport(handler)
    client = anthropic.Anthropic(
        api_key="k", base_url="http://gateway.test", http_client=httpx2.Client(transport=transport)
    )
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        for event in client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=64,
            system="Be brief.",
            messages=[{"role": "user", "content": "Hello"}],
            stream=True,
        ):
            if event.type == "content_block_delta" and event.delta.type == "thinking_delta":
                texts.append(event.delta.thinking)
    assert texts == ["The user wants", " a forecast."]  # the events before the cut arrived
    assert caught.value.type == "rate_limit_error"
    assert caught.value.api_message == "Token budget exhausted"
    assert [(p.prompt_texts, p.stream, p.max_output_tokens) for p in seen_requests] == [
        (("Be brief.", "Hello"), True, 64)
    ]
