"""Deterministic answer text whose token count is known in advance.

Every word in `WORDS` is exactly one token in both cl100k_base and o200k_base, with and without
a leading space, and is made of lower-case ASCII letters only. tiktoken's pre-tokenizer splits
such text at every space, so an answer of N words joined by single spaces is exactly N tokens,
and so is any split of it at word boundaries (a stream chunk counted on its own). The gateway
under test can therefore be checked token for token. `tests/unit/test_mock_provider.py` proves
the property against the real vocab files.

The words are chosen from a seed derived from the request body, so the same request always
gets the same answer (reproducible tests and benchmarks) while different requests differ.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

_WORD_TEXT = """
    the of and to in is that for it as was with be by on not he this are or his from at which
    but have an they you were her she there been one all we their has would when if so no will
    more can out up who them some into time only other new could these two may first then do
    any like my now over such our man me even most made after also did many before must through
    back years where much your way well down should because each just those people how too
    little state good very make world still own see men work long get here between both life
    being under never day same another know while last might us great old year off come since
    against go came right used take three states few house use during without again place
    around however home small found thought went say part once general high upon school every
    does got left number course until always away something fact though water less public put
    think almost hand far head yet government system better set nothing night end why called
    find going look later point city next program business give group young days let room side
    social present given order national second possible rather per face among form often
    important things early white case large big need four within felt along children best ever
    least power development light thing family interest want members others mind country area
    done turned although open service kind problem different door thus help means sense whole
    matter perhaps times law human line above name example action company hands local
    show whether five history today either act taken past quite anything having seen body word
    half really week field car words already information tell college shall money period held
    keep sure real probably free cannot miss question air office making whose special major
    heard ago moment study available known result street economic boy position reason change
    south board individual job areas west close turn love community true court force full
    policy short cost model data answer cloud river stone green north quick simple clear plan
    value level market energy paper story music table forest window friend happy
"""
WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())

DEFAULT_COMPLETION_TOKENS = 16


def seed_for(body: bytes) -> int:
    """A stable seed from the raw request body (not Python's salted `hash`)."""
    return int.from_bytes(hashlib.blake2b(body, digest_size=8).digest(), "big")


def answer_words(seed: int, n: int) -> list[str]:
    """`n` words drawn from `WORDS`, the same for the same seed on every run and platform."""
    if n <= 0:
        return []
    # Reproducibility, not secrecy: a seeded PRNG is exactly what is wanted here.
    return random.Random(seed).choices(WORDS, k=n)  # noqa: S311


def chunk_texts(words: list[str], per_chunk: int) -> Iterator[str]:
    """Stream deltas of `per_chunk` words each; their concatenation is `" ".join(words)`.

    Every delta after the first starts with the space that separates it from the previous
    word, as real tokenizer-driven streams do, so each delta is exactly its word count in tokens.
    """
    step = max(1, per_chunk)
    for start in range(0, len(words), step):
        piece = " ".join(words[start : start + step])
        yield piece if start == 0 else " " + piece


def plan_length(*, requested: int | None, max_tokens: int | None) -> tuple[int, bool]:
    """Answer length and whether `max_tokens` cut it (finish_reason "length"/"max_tokens").

    The wanted length is `requested` (the `x-mock-completion-tokens` header) or
    `DEFAULT_COMPLETION_TOKENS`; a smaller `max_tokens` wins and marks the answer truncated.
    """
    visible, _, truncated = plan(requested=requested, reasoning=0, max_tokens=max_tokens)
    return visible, truncated


def plan(*, requested: int | None, reasoning: int, max_tokens: int | None) -> tuple[int, int, bool]:
    """(visible tokens, reasoning tokens, truncated) of one choice.

    As the providers do, the cap bounds reasoning and answer together and a model reasons
    first: reasoning takes up to the whole cap, the visible answer what is left.
    """
    wanted = DEFAULT_COMPLETION_TOKENS if requested is None else requested
    if max_tokens is None:
        return wanted, reasoning, False
    thought = min(reasoning, max_tokens)
    return min(wanted, max_tokens - thought), thought, reasoning + wanted > max_tokens
