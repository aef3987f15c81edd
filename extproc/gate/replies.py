"""Pure builders for ext_proc replies. No state, no I/O: easy to test, cheap to call.

Replies that never vary are built once at import and reused (upb messages are only
serialised, never mutated after construction).
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.type.v3 import http_status_pb2
from google.protobuf import duration_pb2, struct_pb2

_Mode = processing_mode_pb2.ProcessingMode
ProcessingMode = Any  # untyped generated class; annotations only
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

# Governed endpoints: the request body buffered (to parse and count it before anything
# reaches the provider), response headers (status, our rate-limit headers), and the response
# body streamed to us chunk by chunk (the processor keeps a bounded copy to read usage).
# Request side BUFFERED_PARTIAL, not BUFFERED: a chunked body over Envoy's buffer limit then
# reaches us partial (we answer 413) instead of stalling until the idle timeout. Response
# side STREAMED, not BUFFERED(_PARTIAL): BUFFERED turns a large paid answer into a
# plain-text 500 and BUFFERED_PARTIAL intermittently stalled it. See docs/envoy-lessons.md.
GOVERNED_MODE = _Mode(
    request_body_mode=_Mode.BUFFERED_PARTIAL,
    response_header_mode=_Mode.SEND,
    response_body_mode=_Mode.STREAMED,
    request_trailer_mode=_Mode.SKIP,
    response_trailer_mode=_Mode.SKIP,
)
# Pass-through paths: no bodies at all; response headers only to add our headers.
PASSTHROUGH_MODE = _Mode(
    request_body_mode=_Mode.NONE,
    response_header_mode=_Mode.SEND,
    response_body_mode=_Mode.NONE,
    request_trailer_mode=_Mode.SKIP,
    response_trailer_mode=_Mode.SKIP,
)
# After an upstream error there is nothing left to read in the body.
SKIP_RESPONSE_BODY_MODE = _Mode(
    response_body_mode=_Mode.NONE,
    request_trailer_mode=_Mode.SKIP,
    response_trailer_mode=_Mode.SKIP,
)


def _header_mutation(set_headers: Mapping[str, str], remove: Iterable[str]) -> ep.HeaderMutation:
    return ep.HeaderMutation(
        set_headers=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=k, raw_value=v.encode()), append_action=_OVERWRITE
            )
            for k, v in set_headers.items()
        ],
        remove_headers=list(remove),
    )


def request_headers_reply(
    *,
    set_headers: Mapping[str, str],
    remove: Iterable[str],
    mode: ProcessingMode,
    clear_route_cache: bool,
) -> ep.ProcessingResponse:
    common = ep.CommonResponse(
        header_mutation=_header_mutation(set_headers, remove), clear_route_cache=clear_route_cache
    )
    return ep.ProcessingResponse(
        request_headers=ep.HeadersResponse(response=common), mode_override=mode
    )


def response_headers_reply(
    *,
    set_headers: Mapping[str, str],
    mode: ProcessingMode | None = None,
    remove: Iterable[str] = (),
) -> ep.ProcessingResponse:
    common = ep.CommonResponse(header_mutation=_header_mutation(set_headers, remove))
    reply = ep.ProcessingResponse(response_headers=ep.HeadersResponse(response=common))
    if mode is not None:
        reply.mode_override.CopyFrom(mode)
    return reply


def request_body_reply(
    body: bytes, *, set_headers: Mapping[str, str] | None = None
) -> ep.ProcessingResponse:
    """Send `body` upstream instead of the client's. Its content-length is removed (Envoy
    then sends it chunked): Envoy 1.40 rejects the mutation as a length mismatch when the
    reply sets a corrected content-length instead (measured; docs/envoy-lessons.md).
    `set_headers`: request headers decided only now (a pool key chosen with the body)."""
    common = ep.CommonResponse(
        header_mutation=_header_mutation(set_headers or {}, ("content-length",)),
        body_mutation=ep.BodyMutation(body=body),
    )
    return ep.ProcessingResponse(request_body=ep.BodyResponse(response=common))


def routed_body_reply(
    body: bytes | None,
    *,
    set_headers: Mapping[str, str],
    remove: Iterable[str],
    metadata: struct_pb2.Struct,
) -> ep.ProcessingResponse:
    """A model route, known once the body is read: new routing headers (the route is looked
    up again), the body rewritten or not, and the route's facts for every attempt's upstream
    phase in dynamic metadata."""
    removed = [*remove, "content-length"] if body is not None else list(remove)
    common = ep.CommonResponse(
        header_mutation=_header_mutation(set_headers, removed), clear_route_cache=True
    )
    if body is not None:
        common.body_mutation.body = body
    return ep.ProcessingResponse(
        request_body=ep.BodyResponse(response=common), dynamic_metadata=metadata
    )


def sized_body_reply(
    phase: str, body: bytes, *, set_headers: Mapping[str, str] | None = None
) -> ep.ProcessingResponse:
    """A whole buffered body (`phase`: request_body or response_body) replaced in an
    *upstream* phase, its headers still held: the new length goes with it (a provider needs
    one; measured, Envoy 1.40 takes it here, unlike the downstream BUFFERED_PARTIAL case of
    `request_body_reply`)."""
    headers = {**(set_headers or {}), "content-length": str(len(body))}
    common = ep.CommonResponse(
        header_mutation=_header_mutation(headers, ()), body_mutation=ep.BodyMutation(body=body)
    )
    return ep.ProcessingResponse(**{phase: ep.BodyResponse(response=common)})


def response_body_reply(body: bytes) -> ep.ProcessingResponse:
    """Send `body` to the client instead of this response chunk."""
    mutation = ep.BodyMutation(body=body) if body else ep.BodyMutation(clear_body=True)
    common = ep.CommonResponse(body_mutation=mutation)
    return ep.ProcessingResponse(response_body=ep.BodyResponse(response=common))


REQUEST_BODY_CONTINUE = ep.ProcessingResponse(request_body=ep.BodyResponse())
RESPONSE_BODY_CONTINUE = ep.ProcessingResponse(response_body=ep.BodyResponse())
RESPONSE_HEADERS_CONTINUE = ep.ProcessingResponse(response_headers=ep.HeadersResponse())
REQUEST_HEADERS_CONTINUE = ep.ProcessingResponse(request_headers=ep.HeadersResponse())


# Marks a reply as the sidecar's own, so Envoy's local-reply mappers (which rewrite replies
# Envoy itself generates into the provider format) leave it alone. See envoy_config.py.
_SIDECAR_REPLY = struct_pb2.Struct()
_SIDECAR_REPLY.update({"tokengate": {"reply": "sidecar"}})


def immediate_reply(
    *, status: int, body: bytes, headers: Mapping[str, str], details: str
) -> ep.ProcessingResponse:
    """Answer the client now; Envoy never contacts the upstream."""
    return ep.ProcessingResponse(
        immediate_response=ep.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=_header_mutation({"content-type": "application/json", **headers}, ()),
            body=body,
            details=details,
        ),
        dynamic_metadata=_SIDECAR_REPLY,
    )


def extend_timeout_reply(seconds: float) -> ep.ProcessingResponse:
    """Ask Envoy for more time on the current message (bounded by max_message_timeout)."""
    whole = int(seconds)
    return ep.ProcessingResponse(
        override_message_timeout=duration_pb2.Duration(
            seconds=whole, nanos=int((seconds - whole) * 1e9)
        )
    )


@dataclass(frozen=True, slots=True)
class Deferred:
    """A reply that must wait (a request queued for shared capacity): `first` goes to Envoy
    now (it extends the message timeout), `then` is awaited for the real reply."""

    first: ep.ProcessingResponse
    then: Coroutine[Any, Any, ep.ProcessingResponse]
