"""Image token rules (`extproc.providers.images`): sizes read from base64 headers, OpenAI's
tile and patch rules against the published examples, Anthropic's pixel rule, and the worst
case used when the size is unknown (which must cover every size)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.providers import images
from extproc.providers.base64_view import Base64View, data_url_payload, decode_prefix, decoded_size
from extproc.providers.images import (
    anthropic_image_tokens,
    image_size,
    openai_image_tokens,
    url_image_size,
)
from tests.unit import media

SIZES = st.tuples(st.integers(1, 20_000), st.integers(1, 20_000))

# -- sizes from headers ------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        media.png,
        media.gif,
        media.jpeg,
        media.webp_lossy,
        media.webp_lossless,
        media.webp_extended,
        lambda w, h: media.jpeg(w, h, app_segments=9, fill=True),
    ],
)
@pytest.mark.parametrize("size", [(1, 1), (640, 480), (1024, 4096), (16_383, 77)])
def test_the_size_is_read_from_the_header(build: object, size: tuple[int, int]) -> None:
    assert callable(build)
    data = build(*size)
    assert image_size(media.b64(data)) == size
    assert url_image_size(media.data_url("image/x", data)) == size


def test_a_real_png_decodes_and_its_size_is_read() -> None:
    data = media.png(37, 11)
    assert data.startswith(b"\x89PNG") and len(data) > 40
    assert image_size(media.b64(data)) == (37, 11)


@pytest.mark.parametrize(
    "data",
    [
        "",
        "not base64 at all!",
        media.b64(b"BM" + b"\0" * 40),  # BMP: not a format the providers read
        media.b64(media.png(0, 10)),  # zero width
        media.b64(media.jpeg(10, 10)[:500]),  # truncated before the frame header
        media.b64(b"\xff\xd8" + b"\xff\xe0\x00\x02" * 200),  # endless empty segments
        media.b64(media.png(5, 5)).replace("A", "-"),  # URL alphabet / junk
        "\n".join(media.b64(media.png(5, 5))[i : i + 4] for i in range(0, 40, 4)),  # MIME lines
    ],
)
def test_an_unreadable_header_is_an_unknown_size(data: str) -> None:
    assert image_size(data) is None


@given(
    prefix=st.sampled_from(
        [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"RIFF\0\0\0\0WEBP", b"GIF89a"]
    ),
    tail=st.binary(max_size=300),
)
def test_any_bytes_give_a_valid_size_or_none(prefix: bytes, tail: bytes) -> None:
    size = image_size(media.b64(prefix + tail))
    assert size is None or (0 < size[0] < 65536 and 0 < size[1] < 65536)


def test_remote_urls_are_never_sized() -> None:
    assert url_image_size("https://example.com/cat.png") is None
    assert url_image_size("data:image/png,rawbytes") is None  # not base64
    assert url_image_size("data:image/png;base64") is None


def test_base64_view_reads_any_byte_range_without_decoding_the_rest() -> None:
    raw = bytes(range(256)) * 4
    view = Base64View(media.b64(raw))
    for offset in (0, 1, 2, 3, 500, 1021):
        assert view.read(offset, 3) == raw[offset : offset + 3]
    assert view.read(5000, 3) is None
    assert decoded_size(media.b64(raw)) == len(raw)
    assert decoded_size(media.b64(raw[:1000])) == 1000
    assert decode_prefix(media.b64(raw), 10)[:10] == raw[:10]
    assert decode_prefix("@@@@", 10) == b""
    assert data_url_payload("data:Image/PNG;charset=x;base64,QUJD") == ("image/png", "QUJD")


# -- OpenAI ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "detail", "size", "tokens"),
    [
        # OpenAI "Images and vision", Calculating costs (the published examples).
        ("gpt-4o", "high", (1024, 1024), 765),
        ("gpt-4o", "high", (2048, 4096), 1105),
        ("gpt-4o", "low", (4096, 8192), 85),
        ("gpt-4o", "auto", (512, 512), 255),
        ("gpt-4o", None, (128, 64), 255),  # small images are never scaled up
        ("gpt-4o-mini", "high", (128, 64), 2833 + 5667),
        ("gpt-4o-mini", "low", (128, 64), 2833),
        ("o3", "high", (128, 64), 75 + 150),
        ("o1", "low", (128, 64), 75),
        # Patch models: 1024 x 1024 is 1,024 patches, 1800 x 2400 is 1,452 (published).
        ("gpt-4.1-mini", "high", (1024, 1024), 1659),  # ceil(1024 * 1.62)
        ("gpt-4.1-nano", "low", (1800, 2400), 3572),  # ceil(1452 * 2.46)
        ("o4-mini", "high", (128, 64), 14),  # ceil(8 * 1.72)
        ("gpt-5-mini", "high", (20_000, 20_000), 2465),  # 39 x 39 patches after scaling
    ],
)
def test_openai_published_examples(
    model: str, detail: str | None, size: tuple[int, int], tokens: int
) -> None:
    assert openai_image_tokens(model, detail=detail, size=size) == tokens


def test_openai_worst_cases_for_an_unknown_size() -> None:
    assert openai_image_tokens("gpt-4o", detail="high", size=None) == 85 + 8 * 170
    assert openai_image_tokens("gpt-4o", detail="low", size=None) == 85
    assert openai_image_tokens("gpt-4o", detail="sideways", size=None) == 1445
    assert openai_image_tokens("gpt-4o-mini", detail=None, size=None) == 2833 + 8 * 5667
    assert openai_image_tokens("o4-mini", detail="low", size=None) == 2642  # ceil(1536*1.72)
    assert openai_image_tokens("some-new-model", detail="high", size=None) == 1445


@given(size=SIZES, model=st.sampled_from(["gpt-4o", "gpt-4o-mini", "o3", "gpt-4.1-nano"]))
def test_openai_worst_case_covers_every_size(size: tuple[int, int], model: str) -> None:
    for detail in ("low", "high", "auto"):
        worst = openai_image_tokens(model, detail=detail, size=None)
        assert openai_image_tokens(model, detail=detail, size=size) <= worst


@given(size=SIZES)
def test_patches_never_exceed_the_cap(size: tuple[int, int]) -> None:
    assert 1 <= images._patches(*size) <= images.MAX_PATCHES


# -- Anthropic ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "tokens"),
    [
        ((200, 200), 54),  # "Vision": 200x200 ~= 54 tokens
        ((1000, 1000), 1334),  # 1000x1000 ~= 1334
        ((1092, 1092), 1590),  # the documented maximum for 1:1 ~= 1590
        ((784, 1568), 1640),  # the largest documented size
        ((8000, 8000), 1637),  # scaled down to the pixel cap
        ((3000, 500), 546),  # long edge scaled to 1568 (1568 x 261)
    ],
)
def test_anthropic_published_sizes(size: tuple[int, int], tokens: int) -> None:
    assert anthropic_image_tokens("claude-sonnet-4-6", size=size) == tokens


def test_anthropic_unknown_size_is_the_documented_maximum() -> None:
    assert anthropic_image_tokens("claude-3-5-sonnet-latest", size=None) == 1640
    assert anthropic_image_tokens("claude-opus-4-7", size=None) == 5000  # 3.75 MP models
    assert anthropic_image_tokens("claude-next-9", size=None) == 5000  # unknown: larger limits
    assert anthropic_image_tokens("claude-opus-4-7", size=(2576, 1449)) == 4977


@given(size=SIZES, model=st.sampled_from(["claude-haiku-4-5", "claude-opus-4-7"]))
def test_anthropic_worst_case_covers_every_size(size: tuple[int, int], model: str) -> None:
    assert 1 <= anthropic_image_tokens(model, size=size) <= anthropic_image_tokens(model, size=None)


def test_sizes_read_from_data_match_the_rule() -> None:
    data = base64.b64encode(media.jpeg(1024, 1024)).decode()
    assert anthropic_image_tokens("claude-sonnet-4-5", size=image_size(data)) == 1399
