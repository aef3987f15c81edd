"""OpenAI legacy Completions (`POST /v1/completions`): requests, usage, `text_completion`
stream chunks.

A request carries one prompt or a batch: `prompt` is a string, a list of strings, one token
array, or a list of token arrays (a token array counts as its length, exactly; strings are
counted with tiktoken, with no framing: the legacy API adds none). `suffix` is prompt text
too. Each prompt of a batch generates `max(n, best_of)` completions (`best_of` are generated
and billed, `n` returned), so the completion multiplier is that times the batch size; each
may reach `max_tokens`, which the API defaults to `LEGACY_DEFAULT_MAX_TOKENS` (16) when
absent, so that is what is reserved then.

Usage is the chat schema's (`prompt_tokens`, `completion_tokens`). A stream reports it only
when `stream_options.include_usage` is set: the gateway asks on the client's behalf and
hides that extra chunk (`choices: []`) from a client that did not ask. Streamed text is
`choices[].text`; with `echo: true` it begins with the prompt, which the stream's running
count then includes (an over-count during the stream only: settlement uses the usage).
"""

from __future__ import annotations

from typing import Any

from extproc.errors import BadRequest, ClientError
from extproc.providers._base import (
    ParsedRequest,
    Usage,
    optional_bool,
    optional_token_count,
    require_model,
)
from extproc.providers.openai import PROVIDER as OPENAI
from extproc.providers.openai import ChunkStreamReader, optional_choices

LEGACY_DEFAULT_MAX_TOKENS = 16  # what the API generates when `max_tokens` is absent
MAX_BATCH = 2048  # prompts (or embedding inputs) in one request, the API's own bound


class CompletionsProvider:
    """OpenAI's usage (the chat schema), errors and credential; `text_completion` chunks."""

    name = OPENAI.name
    credential_header = OPENAI.credential_header

    def credential_value(self, key: str) -> str:
        return OPENAI.credential_value(key)

    def parse_usage(self, body: dict[str, Any]) -> Usage | None:
        return OPENAI.parse_usage(body)

    def error_body(self, error: ClientError) -> bytes:
        return OPENAI.error_body(error)

    def stream_reader(self, *, hide_usage_event: bool) -> CompletionStreamReader:
        return CompletionStreamReader(hide_usage_event=hide_usage_event)

    def stream_error(self, error: ClientError) -> bytes:
        """A data event with `error`: the SDK's stream raises `APIError` carrying it."""
        return OPENAI.stream_error(error)


PROVIDER = CompletionsProvider()


class CompletionStreamReader(ChunkStreamReader):
    """`text_completion` chunks: each choice's `text`."""

    def texts(self, choices: list[Any]) -> tuple[str, ...]:
        return tuple(
            choice["text"]
            for choice in choices
            if isinstance(choice, dict) and isinstance(choice.get("text"), str) and choice["text"]
        )


def parse_completions_request(body: dict[str, Any]) -> ParsedRequest:
    """`POST /v1/completions`."""
    model = require_model(body)
    texts, token_ids, batch = prompt_inputs(body, "prompt")
    suffix = body.get("suffix")
    if isinstance(suffix, str):
        texts.append(suffix)
    elif suffix is not None:
        raise BadRequest("'suffix' must be a string", param="suffix")
    n = optional_choices(body, "n")
    best_of = optional_choices(body, "best_of") if body.get("best_of") is not None else n
    if best_of < n:
        raise BadRequest("'best_of' must be greater than or equal to 'n'", param="best_of")
    max_tokens = optional_token_count(body, "max_tokens")
    stream = optional_bool(body, "stream")
    rewrites = ask_for_usage(body) if stream else {}
    return ParsedRequest(
        model=model,
        stream=stream,
        max_output_tokens=LEGACY_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
        prompt_texts=tuple(texts),
        framing_tokens=token_ids,
        rewrites=rewrites,
        hide_usage_event=bool(rewrites),
        cap_field="max_tokens",
        completion_multiplier=batch * best_of,
        body=body,
    )


def prompt_inputs(body: dict[str, Any], field: str) -> tuple[list[str], int, int]:
    """A legacy prompt or embedding input: (texts to count, tokens given as ids, how many
    inputs). Accepts a string, a list of strings, a token array, or a list of token arrays;
    anything else (empty, mixed, non-integer tokens) is the API's own 400."""
    value = body.get(field)
    if isinstance(value, str):
        return [value], 0, 1
    if not isinstance(value, list) or not value:
        raise BadRequest(
            f"'{field}' must be a string, an array of strings, an array of tokens or an array "
            "of token arrays",
            param=field,
        )
    if len(value) > MAX_BATCH:
        raise BadRequest(f"'{field}' holds more than {MAX_BATCH} entries", param=field)
    if all(isinstance(entry, str) for entry in value):
        return list(value), 0, len(value)
    if all(_is_token(entry) for entry in value):
        return [], len(value), 1
    if all(isinstance(e, list) and e and all(_is_token(t) for t in e) for e in value):
        return [], sum(len(entry) for entry in value), len(value)
    raise BadRequest(
        f"'{field}' must not mix strings, tokens and token arrays, and a token is a "
        "non-negative integer",
        param=field,
    )


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def ask_for_usage(body: dict[str, Any]) -> dict[str, Any]:
    """A stream only reports usage when asked; ask on the client's behalf (and hide the
    extra event from it), so that every stream settles on the provider's own count."""
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    if options is not None and options.get("include_usage") is True:
        return {}
    return {"stream_options": {**(options or {}), "include_usage": True}}
