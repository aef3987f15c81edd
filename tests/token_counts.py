"""Token counts straight from tiktoken, for the mock provider's tests: they check the mock's
answers and usage against the tokenizer itself, not through the code under test."""

from __future__ import annotations

import tiktoken


def ntok(text: str, encoding: str) -> int:
    return len(tiktoken.get_encoding(encoding).encode_ordinary(text))
