"""OpenAI Embeddings (`POST /v1/embeddings`): input tokens only.

`input` is a string, a list of strings, a token array or a list of token arrays, as the
legacy Completions prompt (`openai_completions.prompt_inputs`); the API refuses an empty
string, so does the gateway. Strings are counted with tiktoken and token arrays by length,
with no framing: an embedding's usage is exactly its input's tokens. Nothing is generated
(no completion cap, nothing to clamp) and nothing streams. Usage is `prompt_tokens` (and
`total_tokens`, equal to it).
"""

from __future__ import annotations

from typing import Any

from extproc.errors import BadRequest, ClientError
from extproc.providers._base import ParsedRequest, StreamReader, Usage, require_model
from extproc.providers.openai import PROVIDER as OPENAI
from extproc.providers.openai import _count
from extproc.providers.openai_completions import prompt_inputs


class EmbeddingsProvider:
    """OpenAI's errors and credential; embedding usage (input tokens only)."""

    name = OPENAI.name
    credential_header = OPENAI.credential_header

    def credential_value(self, key: str) -> str:
        return OPENAI.credential_value(key)

    def parse_usage(self, body: dict[str, Any]) -> Usage | None:
        usage = body.get("usage")
        prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return Usage(prompt, 0) if _count(prompt) else None

    def error_body(self, error: ClientError) -> bytes:
        return OPENAI.error_body(error)

    def stream_reader(self, *, hide_usage_event: bool) -> StreamReader:
        """Embeddings never stream; an upstream that did anyway is read as OpenAI SSE."""
        return OPENAI.stream_reader(hide_usage_event=hide_usage_event)

    def stream_error(self, error: ClientError) -> bytes:
        return OPENAI.stream_error(error)


PROVIDER = EmbeddingsProvider()


def parse_embeddings_request(body: dict[str, Any]) -> ParsedRequest:
    """`POST /v1/embeddings`."""
    model = require_model(body)
    texts, token_ids, _ = prompt_inputs(body, "input")
    if any(not text for text in texts):
        raise BadRequest("'input' must not contain an empty string", param="input")
    return ParsedRequest(
        model=model,
        stream=False,
        max_output_tokens=None,
        prompt_texts=tuple(texts),
        framing_tokens=token_ids,
        cap_field=None,
        body=body,
    )
