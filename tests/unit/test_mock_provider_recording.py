"""The mock provider as a recording, misbehaving upstream: every request recorded verbatim
(method, raw target, every header and trailer, body), counted per path, whatever its route;
answers compressed on request (`x-mock-content-encoding`), streams flushed per event; the
object endpoints an opened gateway Route reaches."""

from __future__ import annotations

import base64
import gzip
import json
import re
import zlib
from collections.abc import Generator

import pytest

from extproc.dev.mock_provider.common import ApiError
from extproc.dev.mock_provider.encoding import coding_for, encode
from extproc.dev.mock_provider.http import Reply
from extproc.dev.mock_provider.parser import Request, RequestParser
from extproc.dev.mock_provider.recorder import Recorder, Stats, is_credential_header
from extproc.dev.mock_provider.router import Router
from extproc.dev.mock_provider.script import script_from

pytestmark = pytest.mark.usefixtures("vocab_dir")

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
CLAUDE = {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]}


def parsed(raw: bytes) -> Request:
    parser = RequestParser()
    parser.feed(raw)
    assert parser.error is None, parser.error
    (request,) = parser.ready
    return request


def router(require_key: str | None = None) -> tuple[Router, Recorder]:
    recorder = Recorder()
    return Router(stats=Stats(), recorder=recorder, require_key=require_key), recorder


def reply_of(r: Router, request: Request) -> Reply:
    out = r.handle(request)
    assert isinstance(out, Reply)
    return out


def post(path: str, body: object, *headers: tuple[str, str], method: str = "POST") -> Request:
    raw = b"" if body is None else json.dumps(body).encode()
    return Request(method, path, "", "HTTP/1.1", list(headers), raw)


# --- recording ------------------------------------------------------------------------------


def test_record_is_verbatim_target_headers_trailers_and_body() -> None:
    request = parsed(
        b"POST /v1/chat/completions?api_key=k&x=1 HTTP/1.1\r\nX-Request-Tag: t\r\n"
        b"Authorization: Bearer a\r\nCookie: c=1\r\nauthorization: Bearer b\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n4\r\nab\xffc\r\n0\r\nX-Api-Key: in-trailer\r\n\r\n"
    )
    recorder = Recorder()
    recorder.record(request, None)
    (record,) = recorder.query("t")
    assert (record["method"], record["target"]) == ("POST", "/v1/chat/completions?api_key=k&x=1")
    assert (record["path"], record["query"]) == ("/v1/chat/completions", "api_key=k&x=1")
    assert record["headers"] == [
        ["x-request-tag", "t"],
        ["authorization", "Bearer a"],
        ["cookie", "c=1"],
        ["authorization", "Bearer b"],
        ["transfer-encoding", "chunked"],
    ]
    assert record["trailers"] == [["x-api-key", "in-trailer"]]
    assert record["credentials"] == {"authorization": ["Bearer a", "Bearer b"], "cookie": ["c=1"]}
    assert record["body"] is None  # not UTF-8: only the exact bytes
    assert base64.b64decode(record["body_base64"]) == b"ab\xffc"
    assert (record["body_bytes"], record["body_truncated"]) == (4, False)


def test_target_keeps_an_empty_query_mark() -> None:
    request = parsed(b"GET /v1/models? HTTP/1.1\r\n\r\n")
    assert (request.path, request.query, request.target) == ("/v1/models", "", "/v1/models?")


def test_bodies_are_capped_per_record_and_in_all() -> None:
    recorder = Recorder(store_bytes=600 * 1024)
    big = b"x" * (300 * 1024)
    for tag in ("a", "b", "c"):
        recorder.record(Request("POST", "/p", "", "HTTP/1.1", [("x-request-tag", tag)], big), None)
    kept = recorder.query(None)
    assert [r["tag"] for r in kept] == ["b", "c"]  # 3 x 256 KiB kept > 600 KiB: oldest gone
    assert kept[0]["body_bytes"] == len(big) and kept[0]["body_truncated"] is True
    assert len(base64.b64decode(kept[0]["body_base64"])) == 256 * 1024


def test_counts_per_path_and_tag() -> None:
    r, recorder = router()
    for path, tag in [("/v1/files", "a"), ("/v1/files", "a"), ("/v1/nope", "a"), ("/x", "b")]:
        reply_of(r, post(path, None, ("x-request-tag", tag), method="GET"))
    assert recorder.counts("a") == {"total": 3, "paths": {"/v1/files": 2, "/v1/nope": 1}}
    assert recorder.counts("none") == {"total": 0, "paths": {}}
    assert recorder.counts(None)["total"] == 4


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (post("/v1/chat/completions", None, method="GET"), 405),
        (post("/v1/messages", None, method="DELETE"), 405),
        (post("/v1/files/file-1", None, method="PUT"), 405),
        (post("/v1/organization/users", None, method="GET"), 404),
        (post("/v1/batches", CHAT), 404),
        (post("/v1/responses", CHAT), 400),  # a chat body: no `input`, `messages` unknown
        (post("/v1/responses", CHAT, method="GET"), 405),
    ],
)
def test_refused_requests_are_recorded_too(request_: Request, status: int) -> None:
    """Whether a request reached the upstream must not depend on what the upstream answered."""
    r, recorder = router()
    assert reply_of(r, request_).status == status
    (record,) = recorder.query(None)
    assert (record["method"], record["path"]) == (request_.method, request_.path)


@pytest.mark.parametrize(
    "name",
    [
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "cookie",
        "x-forwarded-authorization",
        "openai-api-key",
        "anthropic-api-key",
        "x_api_key",
        "x-auth-token",
        "x-amz-security-token",
        "session_token",
    ],
)
def test_credential_headers(name: str) -> None:
    assert is_credential_header(name)


@pytest.mark.parametrize(
    "name", ["x-request-tag", "anthropic-version", "content-type", "x-tokens", "x-keyword"]
)
def test_not_credential_headers(name: str) -> None:
    assert not is_credential_header(name)


def test_require_key_refuses_any_second_credential_carrier() -> None:
    r, _ = router(require_key="k")
    ok = post("/v1/chat/completions", CHAT, ("authorization", "Bearer k"))
    assert reply_of(r, ok).status == 200
    for extra in [("cookie", "s=1"), ("proxy-authorization", "Basic x"), ("x-auth-token", "t")]:
        leaked = post("/v1/chat/completions", CHAT, ("authorization", "Bearer k"), extra)
        assert reply_of(r, leaked).status == 401, extra


# --- compression ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "accept", "coding"),
    [
        (None, "gzip", None),
        ("identity", "gzip", None),
        ("gzip", "identity", "gzip"),
        ("gzip", None, "gzip"),
        ("deflate", "identity", "deflate"),
        ("auto", "identity", None),
        ("auto", None, None),
        ("auto", "gzip, deflate, br", "gzip"),
        ("auto", "br;q=1.0, gzip;q=0.5", "gzip"),
        ("auto", "gzip;q=0", None),
        ("auto", "*", "gzip"),
    ],
)
def test_coding_for(mode: str | None, accept: str | None, coding: str | None) -> None:
    assert coding_for(mode, accept) == coding


def test_content_encoding_script_header() -> None:
    header = "x-mock-content-encoding"
    assert script_from(post("/v1/messages", None, (header, "GZIP"))).content_encoding == "gzip"
    with pytest.raises(ApiError) as bad:
        script_from(post("/v1/messages", None, (header, "br")))
    assert bad.value.status == 400 and header in bad.value.message


def test_plain_answer_and_error_compressed_even_when_identity_was_asked() -> None:
    r, _ = router()
    gz = ("x-mock-content-encoding", "gzip")
    ident = ("accept-encoding", "identity")
    reply = reply_of(r, post("/v1/chat/completions", CHAT, gz, ident))
    assert ("content-encoding", "gzip") in reply.headers
    assert (
        json.loads(gzip.decompress(reply.body))["usage"]["prompt_tokens"] == 8
    )  # "user" + "hi" + 3 + 3
    error = reply_of(r, post("/v1/messages", CLAUDE, gz, ("x-mock-status", "529")))
    assert error.status == 529
    assert json.loads(gzip.decompress(error.body))["error"]["type"] == "overloaded_error"
    deflated = reply_of(
        r, post("/v1/files", None, ("x-mock-content-encoding", "deflate"), method="GET")
    )
    assert json.loads(zlib.decompress(deflated.body)) == {
        "object": "list",
        "data": [],
        "has_more": False,
    }


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {**CHAT, "stream": True}),
        ("/v1/messages", {**CLAUDE, "stream": True, "max_tokens": 50}),
    ],
)
def test_stream_is_one_gzip_stream_flushed_per_event(path: str, body: object) -> None:
    r, _ = router()
    plain = reply_of(r, post(path, body, ("x-mock-completion-tokens", "9")))
    gzipped = reply_of(
        r, post(path, body, ("x-mock-completion-tokens", "9"), ("x-mock-content-encoding", "gzip"))
    )
    assert plain.stream is not None and gzipped.stream is not None
    assert ("content-encoding", "gzip") in gzipped.headers
    events = [_no_id(event) for event in plain.stream]
    pieces = list(gzipped.stream)
    assert all(pieces)  # no empty piece: it would end a chunked body
    unpack = zlib.decompressobj(31)
    decoded = [unpack.decompress(piece) for piece in pieces]
    assert [_no_id(d) for d in decoded[:-1]] == events  # each chunk: one event, on arrival
    assert decoded[-1] == b"" and unpack.eof  # the last piece only ends the gzip stream


def _no_id(event: bytes) -> bytes:
    """An event without its random id and its clock, so two answers to one body compare."""
    return re.sub(rb'"created":\d+', b"", re.sub(rb'"id":"[^"]*"', b"", event))


def test_closing_a_compressed_stream_closes_the_events() -> None:
    closed: list[bool] = []

    def events() -> Generator[bytes, None, None]:
        try:
            while True:
                yield b"data: x\n\n"
        finally:
            closed.append(True)

    reply = encode(Reply(200, stream=events()), "gzip")
    assert reply.stream is not None
    next(reply.stream)
    reply.stream.close()
    assert closed == [True]


# --- object endpoints -----------------------------------------------------------------------


def test_models_in_each_providers_format() -> None:
    r, _ = router(require_key="k")
    openai = reply_of(r, post("/v1/models", None, ("authorization", "Bearer k"), method="GET"))
    assert json.loads(openai.body)["object"] == "list"
    version = ("anthropic-version", "2023-06-01")
    claude = post("/v1/models/claude-haiku-4-5", None, ("x-api-key", "k"), version, method="GET")
    assert json.loads(reply_of(r, claude).body)["type"] == "model"
    wrong_key = post("/v1/models", None, ("x-api-key", "k"), method="GET")
    assert reply_of(r, wrong_key).status == 401  # OpenAI's /v1/models takes a bearer
    missing = post("/v1/models/gpt-9", None, ("authorization", "Bearer k"), method="GET")
    assert reply_of(r, missing).status == 404


def test_files_and_count_tokens() -> None:
    r, _ = router()
    deleted = reply_of(r, post("/v1/files/file-abc", None, method="DELETE"))
    assert json.loads(deleted.body) == {"id": "file-abc", "object": "file", "deleted": True}
    counted = reply_of(r, post("/v1/messages/count_tokens", CLAUDE))
    assert json.loads(counted.body) == {"input_tokens": 1 + 3}
    bad = reply_of(r, post("/v1/messages/count_tokens", [1]))
    assert json.loads(bad.body)["error"]["type"] == "invalid_request_error"


def test_unknown_paths_under_messages_get_anthropics_404() -> None:
    r, _ = router()
    body = json.loads(reply_of(r, post("/v1/messages/batches", None, method="GET")).body)
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    body = json.loads(reply_of(r, post("/v1/batches", None, method="GET")).body)
    assert body["error"]["code"] == "unknown_url"
