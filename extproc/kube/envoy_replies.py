"""Envoy's own error replies, rewritten into the provider's format. Pure: data in, data out.

Every local reply that Envoy itself generates (a body over the buffer limit, the sidecar or
the provider unreachable, a malformed request or path, headers too large, and any other 4xx
or 5xx through a catch-all) is rewritten into the provider's error format — OpenAI's, or
Anthropic's for an Anthropic client — so SDKs raise typed errors. Replies the sidecar makes
are marked with dynamic metadata (`tokengate.reply = sidecar`) and left alone: they are
already in the right format.
"""

from __future__ import annotations

from typing import Any

from extproc.gate.failover import ROUTE_METADATA_NAMESPACE

REPLY_METADATA_NAMESPACE = "tokengate"
ANTHROPIC_PATH_PREFIX = "/v1/messages"

_NOT_OURS = {
    "metadata_filter": {
        "matcher": {
            "filter": REPLY_METADATA_NAMESPACE,
            "path": [{"key": "reply"}],
            "value": {"string_match": {"exact": "envoy"}},
        },
        "match_if_key_not_found": True,
    }
}
_ANTHROPIC_PATH = {
    "header_filter": {
        "header": {"name": ":path", "string_match": {"prefix": ANTHROPIC_PATH_PREFIX}}
    }
}
# A routed request's :path is the last attempt's backend path (the upstream phase rewrites
# it, and Envoy keeps the change): the client's API is in the route metadata instead.
_ROUTE_CLIENT = {
    "filter": ROUTE_METADATA_NAMESPACE,
    "path": [{"key": "client"}],
}
_ROUTED_ANTHROPIC_CLIENT = {
    "metadata_filter": {
        "matcher": {**_ROUTE_CLIENT, "value": {"string_match": {"exact": "anthropic"}}},
        # Unset means true here (a missing key matches): not routed is not Anthropic.
        "match_if_key_not_found": False,
    }
}
_NOT_ROUTED = {
    "metadata_filter": {
        "matcher": {**_ROUTE_CLIENT, "value": {"string_match": {"exact": "-"}}},
        "match_if_key_not_found": True,
    }
}
_ANTHROPIC_CLIENT = {
    "or_filter": {
        "filters": [
            _ROUTED_ANTHROPIC_CLIENT,
            {"and_filter": {"filters": [_ANTHROPIC_PATH, _NOT_ROUTED]}},
        ]
    }
}
_NO_PATH = {
    "header_filter": {"header": {"name": ":path", "present_match": True, "invert_match": True}}
}

# (status, extra filter, OpenAI type, OpenAI code, Anthropic type, message) for replies
# Envoy makes on its own; a status range is a catch-all, listed after the exact statuses
# (the first mapper that matches wins). `%RESPONSE_CODE_DETAILS%` is Envoy's reason, such as
# `path_normalization_failed` or `http1.codec_error`; json_format escapes whatever it holds.
_ENVOY_REPLIES: tuple[tuple[int | range, dict[str, Any] | None, str, str, str, str], ...] = (
    (413, None, "invalid_request_error", "request_too_large", "request_too_large",
     "Request body exceeds the gateway's size limit."),
    (503, {"response_flag_filter": {"flags": ["UH", "UF", "UO", "URX", "NC", "UC"]}},
     "api_error", "upstream_unavailable", "api_error",
     "The upstream provider is unreachable through the gateway."),
    (504, None, "api_error", "upstream_timeout", "api_error", "The upstream provider timed out."),
    (401, None, "invalid_request_error", "invalid_token", "authentication_error",
     "The service-account token was rejected (%RESPONSE_CODE_DETAILS%)."),
    (403, None, "invalid_request_error", "token_not_allowed", "permission_error",
     "The service-account token is not allowed here (%RESPONSE_CODE_DETAILS%)."),
    # Envoy cannot tell whether the sidecar failed before or after letting the request
    # through, so neither can this message: it must not invite a blind retry that pays twice.
    (503, None, "api_error", "gateway_unavailable", "overloaded_error",
     "The tokengate policy sidecar failed while handling this request (the gateway fails "
     "closed). If that happened after the request was let through, it may have reached the "
     "provider: look up request id %REQ(X-REQUEST-ID)% before retrying."),
    (400, None, "invalid_request_error", "invalid_request", "invalid_request_error",
     "The gateway refused a malformed request (%RESPONSE_CODE_DETAILS%)."),
    (431, None, "invalid_request_error", "request_too_large", "request_too_large",
     "Request headers exceed the gateway's size limit."),
    (range(400, 500), None, "invalid_request_error", "gateway_refused", "invalid_request_error",
     "The gateway refused the request (HTTP %RESPONSE_CODE%, %RESPONSE_CODE_DETAILS%)."),
    (range(500, 600), None, "api_error", "gateway_error", "api_error",
     "The gateway could not complete the request (HTTP %RESPONSE_CODE%, "
     "%RESPONSE_CODE_DETAILS%)."),
)  # fmt: skip


def _openai_body(error_type: str, code: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def _anthropic_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


# Every reply Envoy makes names the request id it logged, so a client can have it looked up.
_REQUEST_ID = {
    "header": {"key": "x-request-id", "value": "%REQ(X-REQUEST-ID)%"},
    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
}


def _mapper(filters: list[dict[str, Any]], body: dict[str, Any]) -> dict[str, Any]:
    return {
        "filter": {"and_filter": {"filters": filters}},
        "headers_to_add": [_REQUEST_ID],
        "body_format_override": {"json_format": body, "content_type": "application/json"},
    }


def _both_body(an_type: str, code: str, message: str) -> dict[str, Any]:
    """Anthropic's format plus the fields OpenAI's requires (`code`, `param`): for a request
    Envoy could not parse far enough to know its path, which SDK is calling is unknown."""
    body = _anthropic_body(an_type, message)
    body["error"] |= {"code": code, "param": None}
    return body


def local_reply_mappers() -> list[dict[str, Any]]:
    """Anthropic-path mappers first, then those for no path at all (an HTTP/1 codec error
    comes before Envoy has the request's headers; measured: `:path` is absent), then OpenAI:
    the first mapper whose filter matches wins."""
    anthropic, unknown, openai = [], [], []
    for status, extra, oa_type, oa_code, an_type, message in _ENVOY_REPLIES:
        filters: list[dict[str, Any]] = [*_status_is(status), _NOT_OURS]
        if extra is not None:
            filters.append(extra)
        anthropic.append(_mapper([*filters, _ANTHROPIC_CLIENT], _anthropic_body(an_type, message)))
        unknown.append(_mapper([*filters, _NO_PATH], _both_body(an_type, oa_code, message)))
        openai.append(_mapper(filters, _openai_body(oa_type, oa_code, message)))
    return anthropic + unknown + openai


def _status_is(status: int | range) -> list[dict[str, Any]]:
    if isinstance(status, int):
        return [_status_compare("EQ", status)]
    return [_status_compare("GE", status.start), _status_compare("LE", status.stop - 1)]


def _status_compare(op: str, status: int) -> dict[str, Any]:
    key = f"tokengate.status_{status}" if op == "EQ" else f"tokengate.status_{op.lower()}_{status}"
    value = {"default_value": status, "runtime_key": key}
    return {"status_code_filter": {"comparison": {"op": op, "value": value}}}
