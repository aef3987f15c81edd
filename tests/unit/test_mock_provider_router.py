"""The mock provider's request handling above HTTP: scripting by `x-mock-*` headers, the
request recorder, and the router (key check per provider, status codes, exact usage,
offloading big bodies, errors in the provider's format)."""

from __future__ import annotations

import json

import pytest

from extproc.dev.mock_provider.common import ApiError
from extproc.dev.mock_provider.http import Reply
from extproc.dev.mock_provider.parser import HttpError, Request
from extproc.dev.mock_provider.recorder import Recorder, Stats
from extproc.dev.mock_provider.router import Router
from extproc.dev.mock_provider.script import DEFAULT, script_from
from tests.token_counts import ntok

pytestmark = pytest.mark.usefixtures("vocab_dir")


def request(
    path: str = "/v1/chat/completions",
    body: object = None,
    headers: list[tuple[str, str]] | None = None,
    method: str = "POST",
) -> Request:
    raw = json.dumps(body).encode() if body is not None else b""
    query = ""
    if "?" in path:
        path, query = path.split("?", 1)
    return Request(method, path, query, "HTTP/1.1", headers or [], raw)


def test_script_defaults_and_headers() -> None:
    assert script_from(request()) is DEFAULT
    script = script_from(
        request(
            headers=[
                ("x-mock-status", "429"),
                ("x-mock-delay-ms", "250"),
                ("x-mock-completion-tokens", "40"),
                ("x-mock-chunk-delay-ms", "5"),
                ("x-mock-tokens-per-chunk", "2"),
                ("x-mock-omit-usage", "1"),
            ]
        )
    )
    assert (script.status, script.delay, script.completion_tokens) == (429, 0.25, 40)
    assert (script.chunk_delay, script.tokens_per_chunk, script.omit_usage) == (0.005, 2, True)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-mock-status", "200"),
        ("x-mock-status", "abc"),
        ("x-mock-delay-ms", "-1"),
        ("x-mock-completion-tokens", "9" * 5000),
        ("x-mock-tokens-per-chunk", "0"),
        ("x-mock-omit-usage", "maybe"),
    ],
)
def test_script_rejects_bad_values(name: str, value: str) -> None:
    with pytest.raises(ApiError) as info:
        script_from(request(headers=[(name, value)]))
    assert info.value.status == 400 and name in info.value.message


def test_recorder_ring_buffer_tag_filter_and_credentials() -> None:
    recorder = Recorder(capacity=3)
    for i in range(5):
        headers = [("x-request-tag", f"t{i % 2}"), ("authorization", "a"), ("x-api-key", "b")]
        headers.append(("authorization", f"c{i}"))
        req = request(body={"model": "m", "stream": True}, headers=headers)
        recorder.record(req, json.loads(req.body))
    assert [r["seq"] for r in recorder.query(None)] == [3, 4, 5]
    assert [r["seq"] for r in recorder.query("t0")] == [3, 5]
    last = recorder.query("t0")[-1]
    assert last["credentials"] == {"authorization": ["a", "c4"], "x-api-key": ["b"]}
    assert (last["model"], last["stream"], last["path"]) == ("m", True, "/v1/chat/completions")
    assert last["body_bytes"] == len(b'{"model": "m", "stream": true}')


def router(require_key: str | None = None) -> tuple[Router, Stats]:
    stats = Stats()
    return Router(stats=stats, recorder=Recorder(), require_key=require_key), stats


def reply_of(r: Router, req: Request) -> Reply:
    out = r.handle(req)
    assert isinstance(out, Reply)
    return out


OPENAI_BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC_BODY = {**OPENAI_BODY, "max_tokens": 100}


@pytest.mark.parametrize(
    ("path", "body", "headers", "status"),
    [
        ("/v1/chat/completions", OPENAI_BODY, [("authorization", "Bearer k")], 200),
        ("/v1/chat/completions", OPENAI_BODY, [("authorization", "bearer k")], 200),
        ("/v1/chat/completions", OPENAI_BODY, [("authorization", "Bearer x")], 401),
        ("/v1/chat/completions", OPENAI_BODY, [("x-api-key", "k")], 401),
        ("/v1/chat/completions", OPENAI_BODY, [], 401),
        (
            "/v1/chat/completions",
            OPENAI_BODY,
            [("authorization", "Bearer k"), ("api-key", "k")],
            401,
        ),
        (
            "/v1/chat/completions",
            OPENAI_BODY,
            [("authorization", "Bearer k"), ("authorization", "Bearer k")],
            401,
        ),
        ("/v1/messages", ANTHROPIC_BODY, [("x-api-key", "k")], 200),
        ("/v1/messages", ANTHROPIC_BODY, [("authorization", "Bearer k")], 401),
        ("/v1/messages", ANTHROPIC_BODY, [("x-api-key", "k"), ("x-goog-api-key", "k")], 401),
    ],
)
def test_require_key(path: str, body: object, headers: list[tuple[str, str]], status: int) -> None:
    r, _ = router(require_key="k")
    reply = reply_of(r, request(path, body, headers))
    assert reply.status == status
    if status == 401 and path == "/v1/messages":
        assert json.loads(reply.body)["error"]["type"] == "authentication_error"
    elif status == 401:
        assert json.loads(reply.body)["error"]["code"] == "invalid_api_key"


def test_router_answer_has_exact_usage_and_scripted_length() -> None:
    r, stats = router()
    body = {**OPENAI_BODY, "max_tokens": 10}
    reply = reply_of(r, request(body=body, headers=[("x-mock-completion-tokens", "12")]))
    answer = json.loads(reply.body)
    content = answer["choices"][0]["message"]["content"]
    assert ntok(content, "o200k_base") == 10 == answer["usage"]["completion_tokens"]
    assert answer["choices"][0]["finish_reason"] == "length"
    assert (
        answer["usage"]["prompt_tokens"]
        == ntok("user", "o200k_base") + ntok("hi", "o200k_base") + 3 + 3
    )
    assert stats.requests == 1
    again = json.loads(reply_of(r, request(body=body, headers=[])).body)
    assert again["choices"][0]["message"]["content"] == content  # same body, same answer


@pytest.mark.parametrize(
    ("req", "status"),
    [
        (request("/v1/nope", OPENAI_BODY), 404),
        (request("/v1/messages", ANTHROPIC_BODY, method="GET"), 405),
        (request("/v1/chat/completions", None), 400),
        (request("/v1/messages", ANTHROPIC_BODY, [("x-mock-status", "529")]), 529),
        (request("/v1/chat/completions", OPENAI_BODY, [("x-mock-status", "nope")]), 400),
        (request("/_mock/health", method="GET"), 200),
        (request("/_mock/nope", method="GET"), 404),
        (request("/_mock/stats", method="POST"), 405),
    ],
)
def test_router_status(req: Request, status: int) -> None:
    r, _ = router()
    assert reply_of(r, req).status == status


def test_router_offloads_big_bodies() -> None:
    r, _ = router()
    big = {**OPENAI_BODY, "messages": [{"role": "user", "content": "word " * 20000}]}
    assert not isinstance(r.handle(request(body=big)), Reply)


def test_router_http_error_uses_the_provider_format() -> None:
    r, _ = router()
    anthropic = json.loads(r.http_error("/v1/messages", HttpError(413, "too big")).body)
    assert anthropic["error"]["type"] == "request_too_large"
    fallback = json.loads(r.http_error(None, HttpError(400, "bad")).body)
    assert fallback["error"]["type"] == "invalid_request_error"
