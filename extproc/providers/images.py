"""What an image in a prompt costs, by each provider's published rule, and its pixel size read
from a few header bytes of base64 data (PNG, JPEG, GIF, WebP).

Why read the size: both providers bill images by their pixels, and a base64 image carries
them in its first bytes, so an exact estimate costs microseconds. The data is never decoded
whole: only the header bytes are decoded at their offset (base64 maps 3 bytes to 4 characters,
so any byte range is reachable), and a JPEG's segment chain is followed for at most
`MAX_JPEG_SEGMENTS` hops. An image whose size cannot be read (a URL, a file id, an unknown or
damaged format) costs the most the rule allows for that model and detail: a reservation may
overshoot, never undershoot, and the provider's usage settles the bill.

Error bound: exact for a known size (OpenAI's tiles and patches are integer rules; Anthropic's
`width * height / 750` is rounded up, after scaling to its documented maximum); the worst case
of the model's rule when the size is unknown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from extproc.providers.base64_view import Base64View, data_url_payload

MAX_JPEG_SEGMENTS = 64
_MAX_SIDE = 1 << 16  # larger headers are damaged or hostile: treated as unknown


@dataclass(frozen=True, slots=True)
class Tiles:
    """OpenAI's tile rule: `base` always; at detail high, `tile` per 512-px square after
    scaling down to fit 2048 x 2048 and then to a shortest side of 768."""

    base: int
    tile: int


@dataclass(frozen=True, slots=True)
class Patches:
    """OpenAI's patch rule: 32-px patches, scaled down to at most 1,536, times a multiplier;
    `detail` does not change it."""

    multiplier: float


# OpenAI "Images and vision", Calculating costs. Longest prefix wins; other models use the
# GPT-4o rule (85 + 170 per tile). Measured usage agrees (community.openai.com thread 1262691:
# a 128x64 image plus five words billed 97/267 low/high on gpt-4o, 2845/8512 on gpt-4o-mini,
# 86/236 on o3).
OPENAI_RULES: tuple[tuple[str, Tiles | Patches], ...] = (
    ("gpt-4o-mini", Tiles(2833, 5667)),
    ("gpt-4.1-mini", Patches(1.62)),
    ("gpt-4.1-nano", Patches(2.46)),
    ("gpt-5-mini", Patches(1.62)),
    ("gpt-5-nano", Patches(2.46)),
    ("o4-mini", Patches(1.72)),
    ("o1", Tiles(75, 150)),
    ("o3", Tiles(75, 150)),
)
OPENAI_DEFAULT = Tiles(85, 170)
PATCH_PX, MAX_PATCHES = 32, 1536
TILE_PX, FIT_PX, SHORT_PX = 512, 2048, 768
# At most 2 x 4 tiles survive the two scalings (768 x 2048).
MAX_TILES = 8

# Anthropic "Vision": tokens = width * height / 750 after scaling down so that the long edge
# is at most 1568 px and the image at most ~1.15 MP. The documented maximum sizes go up to
# 784 x 1568 (1,640 tokens), so that area is the cap. Opus 4.7 reads up to 2576 px and
# 3.75 MP; models not known to use the smaller limits get the larger ones (the safe side).
ANTHROPIC_PX_PER_TOKEN = 750
ANTHROPIC_STANDARD = (1568, 1568 * 784)
ANTHROPIC_HIGH_RES = (2576, 3_750_000)
_ANTHROPIC_STANDARD_MODELS = (
    "claude-3",
    "claude-opus-4-0",
    "claude-opus-4-1",
    "claude-opus-4-2",  # claude-opus-4-20250514
    "claude-opus-4-5",
    "claude-opus-4-6",
    "claude-sonnet-4-0",
    "claude-sonnet-4-2",  # claude-sonnet-4-20250514
    "claude-sonnet-4-5",
    "claude-sonnet-4-6",
    "claude-haiku-4-5",
)


def openai_rule(model: str) -> Tiles | Patches:
    rule: Tiles | Patches = OPENAI_DEFAULT
    best = ""
    for prefix, candidate in OPENAI_RULES:
        if model.startswith(prefix) and len(prefix) > len(best):
            best, rule = prefix, candidate
    return rule


def openai_image_tokens(model: str, *, detail: object, size: tuple[int, int] | None) -> int:
    """Tokens of one image for `model`. `detail` is the client's value: "low" is the base
    cost, anything else (high, auto, absent, a value we do not know) may be high."""
    rule = openai_rule(model)
    if isinstance(rule, Patches):
        patches = MAX_PATCHES if size is None else _patches(*size)
        return math.ceil(patches * rule.multiplier)
    if detail == "low":
        return rule.base
    tiles = MAX_TILES if size is None else _tiles(*size)
    return rule.base + rule.tile * tiles


def _tiles(width: int, height: int) -> int:
    w, h = float(width), float(height)
    if max(w, h) > FIT_PX:
        scale = FIT_PX / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > SHORT_PX:
        scale = SHORT_PX / min(w, h)
        w, h = w * scale, h * scale
    return math.ceil(w / TILE_PX) * math.ceil(h / TILE_PX)


def _patches(width: int, height: int) -> int:
    """The documented algorithm, step for step (1800 x 2400 -> 1,452 patches)."""
    patches = math.ceil(width / PATCH_PX) * math.ceil(height / PATCH_PX)
    if patches <= MAX_PATCHES:
        return patches
    shrink = math.sqrt(PATCH_PX * PATCH_PX * MAX_PATCHES / (width * height))
    fit = min(
        math.floor(width * shrink / PATCH_PX) / (width * shrink / PATCH_PX),
        math.floor(height * shrink / PATCH_PX) / (height * shrink / PATCH_PX),
    )
    w, h = int(width * shrink * fit), int(height * shrink * fit)
    return min(MAX_PATCHES, math.ceil(w / PATCH_PX) * math.ceil(h / PATCH_PX))


def anthropic_limits(model: str) -> tuple[int, int]:
    """(longest edge, most pixels) the model reads an image at."""
    if model.startswith(_ANTHROPIC_STANDARD_MODELS):
        return ANTHROPIC_STANDARD
    return ANTHROPIC_HIGH_RES


def anthropic_image_tokens(model: str, *, size: tuple[int, int] | None) -> int:
    edge, pixels = anthropic_limits(model)
    if size is None:
        return math.ceil(pixels / ANTHROPIC_PX_PER_TOKEN)
    width, height = size
    scale = min(1.0, edge / max(width, height), math.sqrt(pixels / (width * height)))
    area = math.floor(width * scale) * math.floor(height * scale)
    return max(1, math.ceil(min(area, pixels) / ANTHROPIC_PX_PER_TOKEN))


# -- sizes from base64 headers -----------------------------------------------------------


def url_image_size(url: str) -> tuple[int, int] | None:
    """The size of a `data:` URL's image; None for a remote URL (the gateway never fetches)."""
    parsed = data_url_payload(url)
    return image_size(parsed[1]) if parsed else None


def image_size(data: str) -> tuple[int, int] | None:
    """(width, height) of base64 image data, or None when the header cannot be read."""
    reader = Base64View(data)
    head = reader.read(0, 30)
    if head is None:
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        return _valid(int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"))
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return _valid(int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little"))
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp(head)
    if head[:2] == b"\xff\xd8":
        return _jpeg(reader)
    return None


def _valid(width: int, height: int) -> tuple[int, int] | None:
    return (width, height) if 0 < width < _MAX_SIDE and 0 < height < _MAX_SIDE else None


def _webp(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        width = int.from_bytes(head[26:28], "little") & 0x3FFF
        return _valid(width, int.from_bytes(head[28:30], "little") & 0x3FFF)
    if chunk == b"VP8L" and head[20:21] == b"\x2f":
        bits = int.from_bytes(head[21:25], "little")
        return _valid((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        width = int.from_bytes(head[24:27], "little") + 1
        return _valid(width, int.from_bytes(head[27:30], "little") + 1)
    return None


# Start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg(reader: Base64View) -> tuple[int, int] | None:
    offset = 2
    for _ in range(MAX_JPEG_SEGMENTS):
        segment = reader.read(offset, 9)
        if segment is None or len(segment) < 4 or segment[0] != 0xFF:
            return None
        marker = segment[1]
        if marker == 0xFF:  # fill byte before a marker
            offset += 1
            continue
        if marker in _SOF:
            if len(segment) < 9:
                return None
            height = int.from_bytes(segment[5:7], "big")
            return _valid(int.from_bytes(segment[7:9], "big"), height)
        offset += 2 + int.from_bytes(segment[2:4], "big")
    return None
