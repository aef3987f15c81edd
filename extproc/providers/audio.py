"""What audio in a prompt costs: OpenAI bills user audio at 1 token per 100 ms (Realtime
costs guide: "Audio tokens in user messages are 1 token per 100 ms of audio").

The duration is read from the header bytes of base64 data: WAV from its `fmt ` and `data`
chunks; MP3 from the Xing/Info or VBRI frame count when present, else from the first frame's
bit rate (a constant-bit-rate file); raw PCM16 from OpenAI's documented 24 kHz mono. Anything
else is assumed to be at `FLOOR_BITS_PER_SECOND`, the lowest MP3 bit rate, which bounds the
duration of any encoding at least that dense.

Error bound: exact to the 100 ms for WAV, PCM16 and tagged MP3; an untagged variable-bit-rate
MP3 is estimated from its first frame (can be off either way); other formats are an upper
bound (8 kbit/s floor: typically 10-40x high). Only header bytes are decoded.
"""

from __future__ import annotations

import math

from extproc.providers.base64_view import Base64View, decoded_size

TOKENS_PER_SECOND = 10
FLOOR_BITS_PER_SECOND = 8_000
PCM16_BYTES_PER_SECOND = 24_000 * 2
MAX_WAV_CHUNKS = 16
MP3_SYNC_WINDOW = 4_096

# MPEG audio tables: kbit/s by [MPEG-1?][index], Hz by [version][index] for layer III.
_BITRATES = {
    True: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    False: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_SAMPLE_RATES = {
    3: (44_100, 48_000, 32_000),
    2: (22_050, 24_000, 16_000),
    0: (11_025, 12_000, 8_000),
}


def audio_tokens(data: str, audio_format: object) -> int:
    """Tokens of a base64 audio clip (`format` as the client named it)."""
    size = decoded_size(data)
    seconds = _seconds(Base64View(data), size, audio_format)
    if seconds is None:
        seconds = size * 8 / FLOOR_BITS_PER_SECOND
    return max(1, math.ceil(seconds * TOKENS_PER_SECOND))


def _seconds(view: Base64View, size: int, audio_format: object) -> float | None:
    head = view.read(0, 12) or b""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return _wav_seconds(view)
    if audio_format == "pcm16":
        return size / PCM16_BYTES_PER_SECOND
    if audio_format == "mp3" or head[:3] == b"ID3" or head[:2] == b"\xff\xfb":
        return _mp3_seconds(view, size)
    return None


def _wav_seconds(view: Base64View) -> float | None:
    offset, byte_rate = 12, 0
    for _ in range(MAX_WAV_CHUNKS):
        chunk = view.read(offset, 20)  # id, length, format, channels, sample rate, byte rate
        if chunk is None or len(chunk) < 8:
            return None
        length = int.from_bytes(chunk[4:8], "little")
        if chunk[:4] == b"fmt " and len(chunk) == 20:
            byte_rate = int.from_bytes(chunk[16:20], "little")
        elif chunk[:4] == b"data":
            return length / byte_rate if byte_rate else None
        offset += 8 + length + (length & 1)
    return None


def _mp3_seconds(view: Base64View, size: int) -> float | None:
    start = 0
    tag = view.read(0, 10) or b""
    if tag[:3] == b"ID3" and len(tag) == 10:
        start = 10 + sum((byte & 0x7F) << (7 * (3 - i)) for i, byte in enumerate(tag[6:10]))
    window = view.read(start, MP3_SYNC_WINDOW) or b""
    for at in range(len(window) - 3):
        frame = _frame(window[at : at + 4])
        if frame is not None:
            return _frame_seconds(view, start + at, size - start - at, frame)
    return None


def _frame(header: bytes) -> tuple[bool, int, int, int] | None:
    """(MPEG-1, bit rate, sample rate, channel mode) of a layer III frame header, else None."""
    if header[0] != 0xFF or header[1] & 0xE0 != 0xE0 or (header[1] >> 1) & 3 != 1:
        return None
    version = (header[1] >> 3) & 3
    rate_index, sample_index = header[2] >> 4, (header[2] >> 2) & 3
    if version == 1 or rate_index in (0, 15) or sample_index == 3:
        return None
    mpeg1 = version == 3
    rate = _BITRATES[mpeg1][rate_index] * 1000
    return mpeg1, rate, _SAMPLE_RATES[version][sample_index], header[3] >> 6


def _frame_seconds(
    view: Base64View, offset: int, remaining: int, frame: tuple[bool, int, int, int]
) -> float:
    mpeg1, rate, sample_rate, mode = frame
    samples = 1152 if mpeg1 else 576
    side = (17 if mode == 3 else 32) if mpeg1 else (9 if mode == 3 else 17)
    xing = view.read(offset + 4 + side, 12) or b""
    if xing[:4] in (b"Xing", b"Info") and int.from_bytes(xing[4:8], "big") & 1:
        return int.from_bytes(xing[8:12], "big") * samples / sample_rate
    vbri = view.read(offset + 36, 18) or b""
    if vbri[:4] == b"VBRI":
        return int.from_bytes(vbri[14:18], "big") * samples / sample_rate
    return remaining * 8 / rate
