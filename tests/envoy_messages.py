"""Builders for the ext_proc messages Envoy sends, for tests that play Envoy's part."""

from __future__ import annotations

import json
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep


def http_headers(headers: list[tuple[str, str]], *, end_of_stream: bool = False) -> Any:
    return ep.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers]
        ),
        end_of_stream=end_of_stream,
    )


def request_headers(
    key: str | None,
    *,
    path: str = "/v1/chat/completions",
    method: str = "POST",
    extra: list[tuple[str, str]] | None = None,
) -> Any:
    headers = [(":method", method), (":path", path), (":authority", "gateway")]
    if key is not None:
        headers.append(("authorization", f"Bearer {key}"))
    return http_headers(headers + (extra or []))


def body(payload: dict[str, Any] | bytes, *, end_of_stream: bool = True) -> Any:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return ep.HttpBody(body=data, end_of_stream=end_of_stream)


def response_headers(status: int) -> Any:
    return http_headers([(":status", str(status)), ("content-type", "application/json")])


def completion(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def as_request(phase: str, message: Any) -> Any:
    return ep.ProcessingRequest(**{phase: message})


def set_headers(mutation: Any) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}
