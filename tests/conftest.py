"""Shared fixtures: the vocab directory every tokenizer-using test needs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from extproc.providers import tokens

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def vocab_dir() -> Path:
    path = Path(os.environ.get("TOKENGATE_VOCAB_DIR", REPO / ".cache" / "tiktoken"))
    tokens.use_vocab_dir(path)
    return path
