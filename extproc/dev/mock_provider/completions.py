"""OpenAI legacy Completions (`text_completion` objects and stream chunks).

`prompt` is a string, a list of strings, a token array or a list of token arrays (each a
prompt of a batch; a token array is billed its length). Every prompt gets `best_of`
completions generated (billed) and `n` returned, indexed `prompt * n + i`; `max_tokens`
defaults to 16 as the real API's does. A stream sends each returned choice's text deltas
in `choices[{text, index}]` chunks, then a finishing chunk per choice, then — only with
`stream_options.include_usage`, as for chat — a usage chunk with `choices: []`, then
`data: [DONE]`.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from extproc.dev.mock_provider.common import (
    ApiError,
    Completion,
    ParsedRequest,
    choice_count,
    dumps,
    optional_bool,
    positive_int,
    random_id,
    require_model,
)
from extproc.dev.mock_provider.openai import OpenAIDialect
from extproc.dev.mock_provider.text import chunk_texts

DEFAULT_MAX_TOKENS = 16


class CompletionsDialect(OpenAIDialect):
    """`POST /v1/completions`; OpenAI's credential, request id and error format."""

    path = "/v1/completions"

    def new_id(self) -> str:
        return random_id("cmpl-", 29)

    def parse(self, payload: object) -> ParsedRequest:
        if not isinstance(payload, dict):
            raise ApiError(400, "the request body must be a JSON object")
        model = require_model(payload)
        texts, tokens, batch = prompts(payload, "prompt")
        suffix = payload.get("suffix")
        if isinstance(suffix, str):
            texts.append(suffix)
        n = choice_count(payload, "n")
        best_of = choice_count(payload, "best_of") if "best_of" in payload else n
        if best_of < n:
            raise ApiError(400, "best_of must be greater than or equal to n")
        stream = optional_bool(payload, "stream")
        options = payload.get("stream_options")
        if options is not None and not stream:
            raise ApiError(400, "'stream_options' is only allowed when 'stream' is enabled")
        max_tokens = positive_int(payload, "max_tokens")
        return ParsedRequest(
            model=model,
            stream=stream,
            max_tokens=DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
            include_usage=isinstance(options, dict) and options.get("include_usage") is True,
            texts=tuple(texts),
            overhead=tokens,
            choices=batch * n,
            generated=batch * best_of,
        )

    def completion_body(self, c: Completion, *, omit_usage: bool) -> bytes:
        body: dict[str, Any] = {
            "id": c.id,
            "object": "text_completion",
            "created": c.created,
            "model": c.model,
            "choices": [
                {
                    "text": " ".join(words),
                    "index": index,
                    "logprobs": None,
                    "finish_reason": _finish(c),
                }
                for index, words in enumerate(c.choices)
            ],
        }
        if not omit_usage:
            body["usage"] = usage(c)
        return dumps(body).encode()

    def stream_events(
        self, c: Completion, *, per_chunk: int, send_usage: bool
    ) -> Generator[bytes, None, None]:
        head = (
            f'data: {{"id":{dumps(c.id)},"object":"text_completion","created":{c.created},'
            '"choices":['
        )
        tail = f'],"model":{dumps(c.model)}' + (',"usage":null}' if send_usage else "}") + "\n\n"
        for index, words in enumerate(c.choices):
            for piece in chunk_texts(words, per_chunk):
                yield _chunk(head, tail, index, piece, "null")
            yield _chunk(head, tail, index, "", f'"{_finish(c)}"')
        if send_usage:
            yield (head + f'],"model":{dumps(c.model)},"usage":{dumps(usage(c))}}}\n\n').encode()
        yield b"data: [DONE]\n\n"


def prompts(payload: dict[str, Any], field: str) -> tuple[list[str], int, int]:
    """(texts, tokens given as ids, batch size) of a legacy prompt or an embedding input."""
    value = payload.get(field)
    if isinstance(value, str):
        return [value], 0, 1
    if isinstance(value, list) and value:
        if all(isinstance(entry, str) for entry in value):
            return list(value), 0, len(value)
        if all(_token(entry) for entry in value):
            return [], len(value), 1
        if all(isinstance(e, list) and e and all(_token(t) for t in e) for e in value):
            return [], sum(len(entry) for entry in value), len(value)
    raise ApiError(
        400,
        f"Invalid value for '{field}': expected a string, array of strings, "
        "array of tokens, or array of token arrays.",
    )


def _token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def usage(c: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
    }


def _chunk(head: str, tail: str, index: int, text: str, finish: str) -> bytes:
    choice = f'{{"text":{dumps(text)},"index":{index},"logprobs":null,"finish_reason":{finish}}}'
    return (head + choice + tail).encode()


def _finish(c: Completion) -> str:
    return "length" if c.truncated else "stop"
