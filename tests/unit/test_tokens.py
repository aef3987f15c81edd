"""Token counting (`extproc.providers.tokens`): model -> encoding, exact counts for ordinary text,
bounded segmenting for long text, off-thread counting, and the vocab directory check."""

from __future__ import annotations

import asyncio
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.errors import ConfigError
from extproc.providers import tokens
from extproc.providers.tokens import (
    DEFAULT_ENCODING,
    OFFLOAD_CHARS,
    SEGMENT_CHARS,
    VOCAB_FILES,
    TokenCounter,
    _segments,
    count,
    encoding_name_for,
    use_vocab_dir,
)

ENCODINGS = ("cl100k_base", "o200k_base", "p50k_base")
_PROSE = (
    "the quota gateway counts tokens for every request and refuses callers who run out of "
    "budget, Envoy routes traffic; a sidecar answers 429 with Retry-After. Numbers: 12 345 "
    "6789 3.14159 -- café naïve 東京 emoji 🙂 don't won't it's (parentheses) [brackets]"
)
_WORDS = tuple(_PROSE.split(" "))


def ordinary_text(chars: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(_WORDS)
        sep = "\n" if rng.random() < 0.02 else " "
        parts.append(word + sep)
        size += len(word) + 1
    return "".join(parts)[:chars]


def exact(text: str, encoding: str) -> int:
    return len(tiktoken.get_encoding(encoding).encode_ordinary(text))


# -- encoding_name_for ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4o-2024-08-06", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("o1", "o200k_base"),
        ("o1-mini", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("claude-3", "cl100k_base"),
        ("claude-3-5-sonnet-20241022", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-davinci-003", "p50k_base"),
        ("llama-3-70b", DEFAULT_ENCODING),
        ("", DEFAULT_ENCODING),
        ("GPT-4", DEFAULT_ENCODING),  # prefixes are case-sensitive, like model ids
    ],
)
def test_encoding_name_for(model: str, encoding: str) -> None:
    assert encoding_name_for(model) == encoding


def test_default_encoding() -> None:
    assert DEFAULT_ENCODING == "o200k_base"
    assert set(VOCAB_FILES) == set(ENCODINGS)


# -- count ------------------------------------------------------------------------------


@pytest.mark.usefixtures("vocab_dir")
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_count_known_values(encoding: str) -> None:
    assert count("", encoding) == 0
    assert count("hello world", encoding) == 2
    assert count("hello", encoding) == 1


@pytest.mark.usefixtures("vocab_dir")
def test_count_differs_by_encoding() -> None:
    text = "東京で天気を確認しています"
    assert count(text, "cl100k_base") == exact(text, "cl100k_base")
    assert count(text, "o200k_base") == exact(text, "o200k_base")
    assert count(text, "cl100k_base") != count(text, "o200k_base")


@pytest.mark.usefixtures("vocab_dir")
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("chars", [1, 100, 5000, SEGMENT_CHARS])
def test_count_is_exact_below_segment_size(encoding: str, chars: int) -> None:
    text = ordinary_text(chars)
    assert len(text) == chars
    assert count(text, encoding) == exact(text, encoding)


@pytest.mark.usefixtures("vocab_dir")
def test_count_treats_special_tokens_as_text() -> None:
    text = "before <|endoftext|> after <|im_start|>"
    assert count(text, "cl100k_base") == exact(text, "cl100k_base")
    assert count(text, "cl100k_base") > 3  # not collapsed into single special tokens


@pytest.mark.usefixtures("vocab_dir")
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("chars", [SEGMENT_CHARS + 1, 50_000, 200_000])
def test_long_text_count_is_within_one_token_per_cut(encoding: str, chars: int) -> None:
    text = ordinary_text(chars, seed=chars)
    cuts = sum(1 for _ in _segments(text)) - 1
    assert cuts >= 1
    assert abs(count(text, encoding) - exact(text, encoding)) <= cuts


@pytest.mark.usefixtures("vocab_dir")
def test_long_text_without_spaces_is_counted_in_segments() -> None:
    text = "abcdefghij" * 3000  # 30,000 characters, no whitespace to cut at
    parts = list(_segments(text))
    assert [len(p) for p in parts] == [SEGMENT_CHARS] * 3 + [30_000 - 3 * SEGMENT_CHARS]
    assert count(text, "cl100k_base") == sum(exact(p, "cl100k_base") for p in parts)


# -- _segments --------------------------------------------------------------------------


def test_segments_short_text_is_one_piece() -> None:
    assert list(_segments("")) == [""]
    assert list(_segments("abc")) == ["abc"]
    text = "x" * SEGMENT_CHARS
    assert list(_segments(text)) == [text]


def test_segments_cut_before_the_last_space_in_the_window() -> None:
    text = "a" * 5000 + " " + "b" * 5000
    assert list(_segments(text)) == ["a" * 5000, " " + "b" * 5000]


def test_segments_ignore_spaces_in_the_first_half_of_the_window() -> None:
    text = "a" * 1000 + " " + "b" * 9000
    parts = list(_segments(text))
    assert [len(p) for p in parts] == [SEGMENT_CHARS, 10_001 - SEGMENT_CHARS]
    assert "".join(parts) == text


def test_segments_hard_cut_one_over() -> None:
    text = "z" * (SEGMENT_CHARS + 1)
    assert list(_segments(text)) == ["z" * SEGMENT_CHARS, "z"]


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(alphabet="ab \n", max_size=3 * SEGMENT_CHARS)
    | st.builds(
        lambda n, gap: ("w" * gap + " ") * n,
        st.integers(0, 5000),
        st.integers(0, 9000),
    )
)
def test_segments_are_bounded_nonempty_and_lossless(text: str) -> None:
    parts = list(_segments(text))
    assert "".join(parts) == text
    assert all(len(p) <= SEGMENT_CHARS for p in parts)
    if text:
        assert all(parts)
    # A cut is at a space whenever the window's second half has one.
    offset = 0
    for part in parts[:-1]:
        window = text[offset + SEGMENT_CHARS // 2 : offset + SEGMENT_CHARS]
        if " " in window:
            assert text[offset + len(part)] == " "
        else:
            assert len(part) == SEGMENT_CHARS
        offset += len(part)


def test_segments_of_ordinary_text_cut_at_spaces() -> None:
    text = ordinary_text(100_000)
    parts = list(_segments(text))
    assert "".join(parts) == text
    assert all(SEGMENT_CHARS // 2 <= len(p) <= SEGMENT_CHARS for p in parts[:-1])
    assert all(p.startswith(" ") for p in parts[1:])


# -- TokenCounter.count_texts ----------------------------------------------------------


@pytest.fixture
def counter() -> Iterator[TokenCounter]:
    counter = TokenCounter(threads=1)
    yield counter
    counter.close()


def _record_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    original = tokens.count

    def recording(text: str, encoding_name: str) -> int:
        seen.append(threading.current_thread().name)
        return original(text, encoding_name)

    monkeypatch.setattr(tokens, "count", recording)
    return seen


@pytest.mark.usefixtures("vocab_dir")
def test_count_texts_inline_for_short_text(
    counter: TokenCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = ["Hello there", "", ordinary_text(1000)]
    expected = exact(texts[0], "o200k_base") + exact(texts[2], "o200k_base")
    threads = _record_threads(monkeypatch)
    assert asyncio.run(counter.count_texts(texts, "o200k_base")) == expected
    assert threads == [threading.current_thread().name] * 2  # the empty text is skipped


@pytest.mark.usefixtures("vocab_dir")
def test_count_texts_offloads_long_text_with_the_same_result(
    counter: TokenCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_text = ordinary_text(OFFLOAD_CHARS + 1000)
    texts = ["system prompt", long_text]
    inline = count("system prompt", "cl100k_base") + count(long_text, "cl100k_base")
    threads = _record_threads(monkeypatch)
    offloaded = asyncio.run(counter.count_texts(texts, "cl100k_base"))
    assert offloaded == inline
    assert len(threads) == 2
    assert all(name.startswith("tiktoken") for name in threads)


@pytest.mark.usefixtures("vocab_dir")
def test_count_texts_offloads_when_many_texts_add_up(
    counter: TokenCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [ordinary_text(OFFLOAD_CHARS // 4 + 1, seed=i) for i in range(4)]
    assert all(len(t) <= OFFLOAD_CHARS for t in texts)
    inline = sum(count(t, "o200k_base") for t in texts)
    threads = _record_threads(monkeypatch)
    assert asyncio.run(counter.count_texts(texts, "o200k_base")) == inline
    assert len(threads) == 4
    assert all(name.startswith("tiktoken") for name in threads)


@pytest.mark.usefixtures("vocab_dir")
def test_count_texts_exactly_at_offload_threshold_stays_inline(
    counter: TokenCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = ordinary_text(OFFLOAD_CHARS)
    threads = _record_threads(monkeypatch)
    result = asyncio.run(counter.count_texts([text], "o200k_base"))
    assert threads == [threading.current_thread().name]
    assert result == count(text, "o200k_base")


def test_count_texts_of_nothing_is_zero(counter: TokenCounter) -> None:
    assert asyncio.run(counter.count_texts([], "o200k_base")) == 0
    assert asyncio.run(counter.count_texts(["", ""], "o200k_base")) == 0


# -- use_vocab_dir ---------------------------------------------------------------------


def test_use_vocab_dir_empty_directory_names_every_missing_encoding(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        use_vocab_dir(tmp_path)
    message = str(caught.value)
    assert message.startswith(
        f"tiktoken vocab files missing in {tmp_path}: cl100k_base, o200k_base, p50k_base"
    )
    assert "tokengate fetch-vocab" in message


def test_use_vocab_dir_names_only_the_missing_ones(tmp_path: Path) -> None:
    (tmp_path / VOCAB_FILES["o200k_base"]).write_bytes(b"x")
    with pytest.raises(ConfigError) as caught:
        use_vocab_dir(tmp_path)
    assert f"missing in {tmp_path}: cl100k_base, p50k_base " in str(caught.value)


def test_use_vocab_dir_nonexistent_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cl100k_base, o200k_base, p50k_base"):
        use_vocab_dir(tmp_path / "nope")


def test_use_vocab_dir_sets_the_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "/unchanged")
    with pytest.raises(ConfigError):
        use_vocab_dir(tmp_path)
    assert os.environ["TIKTOKEN_CACHE_DIR"] == "/unchanged"
    for name in VOCAB_FILES.values():
        (tmp_path / name).write_bytes(b"")
    use_vocab_dir(tmp_path)
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(tmp_path)
