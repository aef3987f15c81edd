"""Counting accuracy against recorded bills: OpenAI chat requests whose `prompt_tokens` were
published (OpenAI cookbook "How to count tokens with tiktoken"), validated against the API by
hmarr/openai-chat-tokens, or reported with an image on community.openai.com. Each row of
fixtures/prompt_counts/openai_chat.json names its source. The accuracy table (docs/settlement.md) is
these rows.

The claim under test: text, tools and functions are counted exactly; images within one token
(the published rules leave the framing of reasoning and patch models one token apart)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from extproc.providers.openai import parse_chat_request
from extproc.providers.tokens import count, encoding_name_for
from tests.unit import media

ROWS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "fixtures" / "prompt_counts" / "openai_chat.json").read_text()
)
PNG_128X64 = media.data_url("image/png", media.png(128, 64))
# Rows where the published rule is one token away from the recorded bill.
IMAGE_TOLERANCE = 1


def counted(body: dict[str, Any]) -> int:
    text = json.dumps(body).replace("<png 128x64>", PNG_128X64)
    parsed = parse_chat_request(json.loads(text))
    encoding = encoding_name_for(parsed.model)
    return sum(count(t, encoding) for t in parsed.prompt_texts) + parsed.framing_tokens


def label(row: dict[str, Any]) -> str:
    return f"{row['kind']}-{row['body']['model']}-{row['prompt_tokens']}"


def test_the_fixture_holds_every_source() -> None:
    kinds: dict[str, int] = {}
    for row in ROWS:
        kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
    assert kinds == {
        "messages": 16,
        "tools": 4,
        "functions": 20,
        "function messages": 5,
        "image": 16,
    }
    assert all(row["source"] for row in ROWS)


@pytest.mark.parametrize("row", [r for r in ROWS if r["kind"] != "image"], ids=label)
def test_text_tools_and_functions_are_exact(vocab_dir: Path, row: dict[str, Any]) -> None:
    assert counted(row["body"]) == row["prompt_tokens"]


@pytest.mark.parametrize("row", [r for r in ROWS if r["kind"] == "image"], ids=label)
def test_images_are_within_a_token(vocab_dir: Path, row: dict[str, Any]) -> None:
    assert abs(counted(row["body"]) - row["prompt_tokens"]) <= IMAGE_TOLERANCE
