"""Token counting with tiktoken, offline and with a bounded cost per call.

Vocab files are read from a local directory (`TIKTOKEN_CACHE_DIR` semantics: file names are
the sha1 of the official blob URL); nothing is fetched at run time. `tokengate fetch-vocab`
provisions the directory.

Cost bound: tiktoken's BPE is super-linear on long runs without a pre-tokenizer split (1 MB of
one character: ~450 ms in one piece on the dev machine). Text is therefore encoded in segments
of at most `SEGMENT_CHARS`, cut at whitespace where possible, which brings the worst case to
~170 ms per MB and changes a count by at most one token per cut (estimates only; the provider's
own usage settles the bill). Texts above `OFFLOAD_CHARS` are encoded on a worker thread
(tiktoken releases the GIL) so the event loop keeps serving other streams.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import tiktoken

from extproc.errors import ConfigError

SEGMENT_CHARS = 8192
OFFLOAD_CHARS = 32768

# Vocab file names are sha1(url) of the official blobs, as tiktoken caches them.
VOCAB_FILES = {
    "cl100k_base": "9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
    "o200k_base": "fb374d419588a4632f3f557e76b4b70aebbca790",
    "p50k_base": "ec7223a39ce59f226a68acc30dc1af2788490e15",
}

# Longest prefix wins. Models we do not know use DEFAULT_ENCODING: an estimate, documented.
_PREFIX_ENCODINGS: tuple[tuple[str, str], ...] = (
    ("gpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("gpt-35", "cl100k_base"),
    ("text-embedding-3", "cl100k_base"),
    ("text-embedding-ada", "cl100k_base"),
    ("claude", "cl100k_base"),
    ("davinci-002", "cl100k_base"),  # the legacy completion models tiktoken maps so
    ("babbage-002", "cl100k_base"),
    ("text-davinci", "p50k_base"),
    ("code-", "p50k_base"),
)
DEFAULT_ENCODING = "o200k_base"


def encoding_name_for(model: str) -> str:
    """The tiktoken encoding used to estimate `model`'s tokens."""
    best = ""
    name = DEFAULT_ENCODING
    for prefix, encoding in _PREFIX_ENCODINGS:
        if model.startswith(prefix) and len(prefix) > len(best):
            best, name = prefix, encoding
    return name


def use_vocab_dir(vocab_dir: Path) -> None:
    """Point tiktoken at `vocab_dir` and fail now, not on the first request, if it is empty."""
    missing = [n for n, f in VOCAB_FILES.items() if not (vocab_dir / f).is_file()]
    if missing:
        raise ConfigError(
            f"tiktoken vocab files missing in {vocab_dir}: {', '.join(missing)} "
            "(run `tokengate fetch-vocab --dest DIR` or `make setup`)"
        )
    os.environ["TIKTOKEN_CACHE_DIR"] = str(vocab_dir)


@lru_cache(maxsize=8)
def _encoding(name: str) -> tiktoken.Encoding:
    return tiktoken.get_encoding(name)


def _segments(text: str) -> Iterator[str]:
    start, n = 0, len(text)
    while n - start > SEGMENT_CHARS:
        end = start + SEGMENT_CHARS
        cut = text.rfind(" ", start + SEGMENT_CHARS // 2, end)
        if cut > start:
            end = cut
        yield text[start:end]
        start = end
    yield text[start:]


def count(text: str, encoding_name: str) -> int:
    """Tokens in `text`, encoded in bounded segments (see module docstring)."""
    if not text:
        return 0
    enc = _encoding(encoding_name)
    if len(text) <= SEGMENT_CHARS:
        return len(enc.encode_ordinary(text))
    return sum(len(enc.encode_ordinary(part)) for part in _segments(text))


class TokenCounter:
    """Counts on the caller's thread for short text, on a small pool for long text."""

    def __init__(self, *, threads: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tiktoken")

    def warm_up(self) -> None:
        """Load every vocab now so the first request does not pay ~1 s of BPE table load."""
        for name in VOCAB_FILES:
            _encoding(name).encode_ordinary("warm up")

    async def count_texts(self, texts: Iterable[str], encoding_name: str) -> int:
        items = [t for t in texts if t]
        if sum(len(t) for t in items) <= OFFLOAD_CHARS:
            return sum(count(t, encoding_name) for t in items)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, _count_many, items, encoding_name)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _count_many(texts: list[str], encoding_name: str) -> int:
    return sum(count(t, encoding_name) for t in texts)
