"""The mock provider's HTTP/1.1 request parser: requests split anywhere across reads,
Content-Length and chunked bodies, malformed heads and bodies refused with the right status,
keep-alive and `Expect: 100-continue`."""

from __future__ import annotations

import pytest

from extproc.dev.mock_provider.parser import RequestParser

POST = (
    b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
    b"Authorization: one\r\nauthorization: two\r\n\r\nhello"
)
CHUNKED = (
    b"POST /v1/messages HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
)


def parse_all(data: bytes, *, step: int = 0, max_body: int = 1 << 20) -> RequestParser:
    parser = RequestParser(max_body=max_body)
    if step:
        for i in range(0, len(data), step):
            parser.feed(data[i : i + step])
    else:
        parser.feed(data)
    return parser


@pytest.mark.parametrize("step", [0, 1, 2, 7])
def test_parser_content_length_and_chunked_split_anywhere(step: int) -> None:
    parser = parse_all(POST + CHUNKED + POST, step=step)
    assert parser.error is None
    first, second, third = parser.ready
    assert (first.method, first.path, first.query, first.body) == (
        "POST",
        "/v1/chat/completions",
        "x=1",
        b"hello",
    )
    assert first.header_all("authorization") == ["one", "two"]
    assert first.header("authorization") == "one" and first.keep_alive
    assert (second.path, second.body) == ("/v1/messages", b"hello world")
    assert third.body == b"hello"


def test_parser_waits_for_the_whole_body() -> None:
    parser = parse_all(POST[:-1])
    assert not parser.ready and parser.error is None
    parser.feed(b"o")
    assert parser.ready[0].body == b"hello"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1 extra\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET http://x/ HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nBad Name: b\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY", 400),
        (b"POST /v1/messages HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n200000\r\n", 413),
        (b"GET / HTTP/1.1\r\nA: " + b"x" * 70000, 431),
    ],
)
def test_parser_rejects_malformed_requests(data: bytes, status: int) -> None:
    parser = parse_all(data)
    assert parser.error is not None and parser.error.status == status
    assert not parser.ready


def test_parser_keeps_requests_before_an_error_and_names_the_failed_path() -> None:
    parser = parse_all(POST + b"POST /v1/messages HTTP/1.1\r\nContent-Length: 9999999\r\n\r\n")
    assert len(parser.ready) == 1 and parser.error is not None
    assert parser.failed_path == "/v1/messages"
    parser.feed(POST)  # ignored after an error
    assert len(parser.ready) == 1


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
    ],
)
def test_parser_keep_alive(head: bytes, keep_alive: bool) -> None:
    assert parse_all(head).ready[0].keep_alive is keep_alive


def test_parser_expect_continue_until_body_arrives() -> None:
    parser = parse_all(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert parser.expect_continue and not parser.ready
    parser.feed(b"ok")
    assert not parser.expect_continue and parser.ready[0].body == b"ok"
