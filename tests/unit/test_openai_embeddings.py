"""OpenAI Embeddings schema (`extproc.providers.openai_embeddings`): every input form, no
completion (nothing to cap), input-only usage."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extproc.errors import BadRequest
from extproc.providers._base import Usage
from extproc.providers.openai_completions import MAX_BATCH
from extproc.providers.openai_embeddings import PROVIDER, parse_embeddings_request


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "text-embedding-3-small", "input": "hello", **fields}


@pytest.mark.parametrize(
    ("given", "texts", "token_ids"),
    [
        ("hello world", ("hello world",), 0),
        (["a", "b c"], ("a", "b c"), 0),
        ([15339, 1917], (), 2),
        ([[15339], [1917, 0, 3]], (), 4),
    ],
)
def test_every_input_form(given: object, texts: tuple[str, ...], token_ids: int) -> None:
    request = body(input=given, encoding_format="base64", dimensions=256)
    parsed = parse_embeddings_request(request)
    assert (parsed.prompt_texts, parsed.framing_tokens) == (texts, token_ids)  # no framing
    assert (parsed.model, parsed.stream, parsed.max_output_tokens) == (
        "text-embedding-3-small",
        False,
        None,
    )
    assert parsed.cap_field is None and not parsed.generates
    assert parsed.body_with(500) is None  # nothing to cap: the body goes as sent


@pytest.mark.parametrize(
    "given",
    [None, "", [], ["a", ""], 3, [1.5], ["a", [1]], [[]], ["x"] * (MAX_BATCH + 1)],
)
def test_refused_inputs_name_the_param(given: object) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_embeddings_request(body(input=given))
    assert refused.value.param == "input"


def test_a_missing_model_is_refused() -> None:
    with pytest.raises(BadRequest) as refused:
        parse_embeddings_request({"input": "x"})
    assert refused.value.param == "model"


def test_usage_is_input_tokens_only() -> None:
    answer = {"object": "list", "usage": {"prompt_tokens": 8, "total_tokens": 8}}
    assert PROVIDER.parse_usage(answer) == Usage(8, 0)
    assert PROVIDER.parse_usage({"usage": {"total_tokens": 8}}) is None
    assert PROVIDER.parse_usage({"usage": {"prompt_tokens": -1}}) is None
    assert PROVIDER.parse_usage({}) is None


def test_errors_and_credentials_are_openai_s() -> None:
    error = json.loads(PROVIDER.error_body(BadRequest("no", param="input")))
    assert error["error"]["param"] == "input"
    assert (PROVIDER.credential_header, PROVIDER.credential_value("k")) == (
        "authorization",
        "Bearer k",
    )
