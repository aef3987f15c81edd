"""Pure ext_proc reply builders (`extproc.gate.replies`): every reply is serialised and parsed
back, then checked field by field, the way Envoy will read it."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from google.protobuf import json_format

from extproc.gate import replies

Mode = processing_mode_pb2.ProcessingMode
OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def wire(reply: Any) -> Any:
    """What Envoy receives: the reply serialised and parsed again."""
    parsed = ep.ProcessingResponse()
    parsed.ParseFromString(reply.SerializeToString())
    return parsed


def set_headers(mutation: Any) -> list[tuple[str, bytes, str, int]]:
    return [
        (h.header.key, h.header.raw_value, h.header.value, h.append_action)
        for h in mutation.set_headers
    ]


# -- request headers --------------------------------------------------------------------


def test_request_headers_reply_fields() -> None:
    reply = wire(
        replies.request_headers_reply(
            set_headers={"authorization": "Bearer sk-real", "x-tokengate-upstream": "openai"},
            remove=["x-api-key", "api-key"],
            mode=replies.GOVERNED_MODE,
            clear_route_cache=True,
        )
    )
    assert reply.WhichOneof("response") == "request_headers"
    common = reply.request_headers.response
    assert common.status == ep.CommonResponse.CONTINUE
    assert common.clear_route_cache is True
    assert set_headers(common.header_mutation) == [
        ("authorization", b"Bearer sk-real", "", OVERWRITE),
        ("x-tokengate-upstream", b"openai", "", OVERWRITE),
    ]
    assert list(common.header_mutation.remove_headers) == ["x-api-key", "api-key"]
    assert reply.HasField("mode_override")
    assert reply.mode_override == replies.GOVERNED_MODE
    assert not reply.HasField("immediate_response")
    assert not reply.HasField("dynamic_metadata")


def test_request_headers_reply_passthrough_without_route_cache_clear() -> None:
    reply = wire(
        replies.request_headers_reply(
            set_headers={},
            remove=iter(["x-goog-api-key"]),
            mode=replies.PASSTHROUGH_MODE,
            clear_route_cache=False,
        )
    )
    common = reply.request_headers.response
    assert common.clear_route_cache is False
    assert list(common.header_mutation.set_headers) == []
    assert list(common.header_mutation.remove_headers) == ["x-goog-api-key"]
    assert reply.mode_override == replies.PASSTHROUGH_MODE


def test_header_values_are_raw_utf8_bytes() -> None:
    reply = wire(
        replies.request_headers_reply(
            set_headers={"x-note": "naïve ✓"},
            remove=[],
            mode=replies.GOVERNED_MODE,
            clear_route_cache=False,
        )
    )
    mutation = reply.request_headers.response.header_mutation
    assert set_headers(mutation) == [("x-note", "naïve ✓".encode(), "", OVERWRITE)]


# -- response headers -------------------------------------------------------------------


def test_response_headers_reply_without_mode_has_no_override() -> None:
    reply = wire(
        replies.response_headers_reply(
            set_headers={"x-ratelimit-remaining-requests": "59", "x-ratelimit-limit-requests": "60"}
        )
    )
    assert reply.WhichOneof("response") == "response_headers"
    assert not reply.HasField("mode_override")
    mutation = reply.response_headers.response.header_mutation
    assert set_headers(mutation) == [
        ("x-ratelimit-remaining-requests", b"59", "", OVERWRITE),
        ("x-ratelimit-limit-requests", b"60", "", OVERWRITE),
    ]
    assert list(mutation.remove_headers) == []
    assert reply.response_headers.response.clear_route_cache is False


def test_response_headers_reply_with_mode_override() -> None:
    reply = wire(
        replies.response_headers_reply(set_headers={}, mode=replies.SKIP_RESPONSE_BODY_MODE)
    )
    assert reply.HasField("mode_override")
    assert reply.mode_override.response_body_mode == Mode.NONE
    assert reply.mode_override.request_trailer_mode == Mode.SKIP
    assert reply.mode_override.response_trailer_mode == Mode.SKIP


def test_response_headers_reply_does_not_alias_the_shared_mode() -> None:
    before = replies.GOVERNED_MODE.SerializeToString()
    reply = replies.response_headers_reply(set_headers={}, mode=replies.GOVERNED_MODE)
    reply.mode_override.response_body_mode = Mode.STREAMED
    reply.mode_override.request_body_mode = Mode.NONE
    assert replies.GOVERNED_MODE.SerializeToString() == before


# -- processing modes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (
            replies.GOVERNED_MODE,
            (
                Mode.DEFAULT,
                Mode.SEND,
                Mode.BUFFERED_PARTIAL,
                Mode.STREAMED,
                Mode.SKIP,
                Mode.SKIP,
            ),
        ),
        (
            replies.PASSTHROUGH_MODE,
            (Mode.DEFAULT, Mode.SEND, Mode.NONE, Mode.NONE, Mode.SKIP, Mode.SKIP),
        ),
        (
            replies.SKIP_RESPONSE_BODY_MODE,
            (Mode.DEFAULT, Mode.DEFAULT, Mode.NONE, Mode.NONE, Mode.SKIP, Mode.SKIP),
        ),
    ],
)
def test_processing_modes(mode: Any, expected: tuple[int, ...]) -> None:
    assert (
        mode.request_header_mode,
        mode.response_header_mode,
        mode.request_body_mode,
        mode.response_body_mode,
        mode.request_trailer_mode,
        mode.response_trailer_mode,
    ) == expected


@pytest.mark.parametrize(
    ("reply", "which"),
    [
        (replies.REQUEST_HEADERS_CONTINUE, "request_headers"),
        (replies.REQUEST_BODY_CONTINUE, "request_body"),
        (replies.RESPONSE_HEADERS_CONTINUE, "response_headers"),
        (replies.RESPONSE_BODY_CONTINUE, "response_body"),
    ],
)
def test_continue_replies(reply: Any, which: str) -> None:
    parsed = wire(reply)
    assert parsed.WhichOneof("response") == which
    assert getattr(parsed, which).response.status == ep.CommonResponse.CONTINUE
    assert not getattr(parsed, which).response.HasField("header_mutation")
    assert not parsed.HasField("mode_override")


# -- immediate response -----------------------------------------------------------------


def test_immediate_reply_fields() -> None:
    body = b'{"error": {"message": "slow down"}}'
    reply = wire(
        replies.immediate_reply(
            status=429,
            body=body,
            headers={"retry-after": "13", "x-ratelimit-remaining-requests": "0"},
            details="tokengate_RateLimited",
        )
    )
    assert reply.WhichOneof("response") == "immediate_response"
    immediate = reply.immediate_response
    assert immediate.status.code == 429
    assert immediate.body == body
    assert immediate.details == "tokengate_RateLimited"
    assert set_headers(immediate.headers) == [
        ("content-type", b"application/json", "", OVERWRITE),
        ("retry-after", b"13", "", OVERWRITE),
        ("x-ratelimit-remaining-requests", b"0", "", OVERWRITE),
    ]
    assert list(immediate.headers.remove_headers) == []
    assert json_format.MessageToDict(reply.dynamic_metadata) == {"tokengate": {"reply": "sidecar"}}
    assert not reply.HasField("mode_override")


def test_immediate_reply_headers_may_override_content_type() -> None:
    reply = wire(
        replies.immediate_reply(
            status=400, body=b"x", headers={"content-type": "text/plain"}, details="d"
        )
    )
    assert set_headers(reply.immediate_response.headers) == [
        ("content-type", b"text/plain", "", OVERWRITE),
    ]


@pytest.mark.parametrize("status", [400, 401, 403, 413, 429, 500, 503])
def test_immediate_reply_status_codes(status: int) -> None:
    reply = wire(replies.immediate_reply(status=status, body=b"", headers={}, details="x"))
    assert reply.immediate_response.status.code == status
    assert reply.immediate_response.body == b""
    assert json_format.MessageToDict(reply.dynamic_metadata) == {"tokengate": {"reply": "sidecar"}}


def test_immediate_reply_marker_is_not_shared_state() -> None:
    first = replies.immediate_reply(status=429, body=b"", headers={}, details="a")
    first.dynamic_metadata.fields["tokengate"].struct_value.fields["reply"].string_value = "x"
    second = replies.immediate_reply(status=429, body=b"", headers={}, details="b")
    assert json_format.MessageToDict(second.dynamic_metadata) == {"tokengate": {"reply": "sidecar"}}


# -- extend timeout ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "whole", "nanos"),
    [(30, 30, 0), (2.5, 2, 500_000_000), (0.25, 0, 250_000_000), (0.0, 0, 0), (120.0, 120, 0)],
)
def test_extend_timeout_reply(seconds: float, whole: int, nanos: int) -> None:
    reply = wire(replies.extend_timeout_reply(seconds))
    assert reply.HasField("override_message_timeout")
    assert reply.override_message_timeout.seconds == whole
    assert reply.override_message_timeout.nanos == nanos
    assert reply.WhichOneof("response") is None
    assert not reply.HasField("mode_override")
