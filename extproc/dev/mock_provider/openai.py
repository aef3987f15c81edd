"""OpenAI Chat Completions, as the real API sends it (JSON answers and SSE streams).

Field order and shapes follow api.openai.com so that SDK parsers and the gateway's SSE
codec meet the same bytes they will meet in production: `usage: null` on every chunk only when
`stream_options.include_usage` is set, a usage chunk with `choices: []`, then `data: [DONE]`.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from extproc.dev.mock_provider.common import (
    ApiError,
    Completion,
    ParsedRequest,
    block_texts,
    choice_count,
    dumps,
    optional_bool,
    positive_int,
    random_id,
    require_messages,
    require_model,
)
from extproc.dev.mock_provider.text import chunk_texts

SYSTEM_FINGERPRINT = "fp_tokengate"

# status -> (error.type, error.code) as the real API labels them.
_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "unknown_url"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("requests", "rate_limit_exceeded"),
}


class OpenAIDialect:
    """`POST /v1/chat/completions`, credential `Authorization: Bearer <key>`."""

    provider = "openai"
    path = "/v1/chat/completions"
    key_header = "authorization"
    key_prefix = "Bearer "
    request_id_header = "x-request-id"

    def new_id(self) -> str:
        return random_id("chatcmpl-", 29)

    def parse(self, payload: object) -> ParsedRequest:
        if not isinstance(payload, dict):
            raise ApiError(400, "the request body must be a JSON object")
        model = require_model(payload)
        messages = require_messages(payload)
        texts: list[str] = []
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise ApiError(400, "each message must be an object with a 'role'")
            texts.append(message["role"])  # billed too: OpenAI's 3 + role + content
            texts.extend(block_texts(message.get("content")))
        max_tokens = positive_int(payload, "max_completion_tokens")
        if max_tokens is None:
            max_tokens = positive_int(payload, "max_tokens")
        stream = optional_bool(payload, "stream")
        include_usage = _include_usage(payload)
        if payload.get("stream_options") is not None and not stream:
            raise ApiError(400, "'stream_options' is only allowed when 'stream' is enabled")
        n = choice_count(payload, "n")
        return ParsedRequest(
            model=model,
            stream=stream,
            max_tokens=max_tokens,
            include_usage=include_usage,
            texts=tuple(texts),
            overhead=3 * len(messages) + 3,
            choices=n,
            generated=n,
        )

    def error_body(self, status: int, message: str) -> bytes:
        kind, code = _ERROR_KINDS.get(status, ("server_error", None))
        if status not in _ERROR_KINDS and status < 500:
            kind = "invalid_request_error"
        error = {"message": message, "type": kind, "param": None, "code": code}
        return dumps({"error": error}).encode()

    def completion_body(self, c: Completion, *, omit_usage: bool) -> bytes:
        body: dict[str, Any] = {
            "id": c.id,
            "object": "chat.completion",
            "created": c.created,
            "model": c.model,
            "choices": [
                {
                    "index": index,
                    "message": {
                        "role": "assistant",
                        "content": " ".join(words),
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": _finish(c),
                }
                for index, words in enumerate(c.choices)
            ],
        }
        if not omit_usage:
            body["usage"] = _usage(c)
        body["service_tier"] = "default"
        body["system_fingerprint"] = SYSTEM_FINGERPRINT
        return dumps(body).encode()

    def stream_events(
        self, c: Completion, *, per_chunk: int, send_usage: bool
    ) -> Generator[bytes, None, None]:
        """SSE `data:` events; the chunk envelope is rendered once, only deltas per event.
        Several choices (`n`) stream one after the other, each naming its `index`."""
        head = (
            f'data: {{"id":{dumps(c.id)},"object":"chat.completion.chunk",'
            f'"created":{c.created},"model":{dumps(c.model)},"service_tier":"default",'
            f'"system_fingerprint":"{SYSTEM_FINGERPRINT}","choices":['
        )
        tail = ('],"usage":null}' if send_usage else "]}") + "\n\n"
        role = '{"role":"assistant","content":"","refusal":null}'
        for index, words in enumerate(c.choices):
            yield _chunk(head, tail, index, role, "null")
            for piece in chunk_texts(words, per_chunk):
                yield _chunk(head, tail, index, f'{{"content":{dumps(piece)}}}', "null")
            yield _chunk(head, tail, index, "{}", f'"{_finish(c)}"')
        if send_usage:
            yield f'{head}],"usage":{dumps(_usage(c))}}}\n\n'.encode()
        yield b"data: [DONE]\n\n"


def _chunk(head: str, tail: str, index: int, delta: str, finish: str) -> bytes:
    choice = f'{{"index":{index},"delta":{delta},"logprobs":null,"finish_reason":{finish}}}'
    return (head + choice + tail).encode()


def _finish(c: Completion) -> str:
    return "length" if c.truncated else "stop"


def _usage(c: Completion) -> dict[str, Any]:
    return {
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": c.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": c.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _include_usage(payload: dict[str, Any]) -> bool:
    options = payload.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object")
    return optional_bool(options, "include_usage")
