"""Small, valid media files built in memory for the prompt-counting tests (no binary fixtures,
no imaging library): image headers, WAV and MP3 clips, PDFs with and without object streams."""

from __future__ import annotations

import base64
import io
import struct
import wave
import zlib


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{b64(data)}"


def png(width: int, height: int) -> bytes:
    """A real 1-bit grayscale PNG (decodable by any viewer)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\x00" * ((width + 7) // 8) for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b"\x3b"


def jpeg(width: int, height: int, *, app_segments: int = 2, fill: bool = False) -> bytes:
    """SOI, APP segments of various lengths (EXIF-like padding), optional fill bytes, SOF0."""
    out = b"\xff\xd8"
    for index in range(app_segments):
        body = bytes([index]) * (1000 + 333 * index)
        out += b"\xff" + bytes([0xE0 + index % 16]) + struct.pack(">H", len(body) + 2) + body
    if fill:
        out += b"\xff\xff"
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00" * 3
    return out + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


def webp_lossy(width: int, height: int) -> bytes:
    frame = b"\x00\x00\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width, height)
    return b"RIFF" + struct.pack("<I", 4 + 8 + len(frame)) + b"WEBP" + b"VP8 " + b"\0" * 4 + frame


def webp_lossless(width: int, height: int) -> bytes:
    bits = (width - 1) | ((height - 1) << 14)
    body = b"\x2f" + struct.pack("<I", bits)
    return b"RIFF" + struct.pack("<I", 4 + 8 + len(body)) + b"WEBP" + b"VP8L" + b"\0" * 4 + body


def webp_extended(width: int, height: int) -> bytes:
    body = b"\0" * 4 + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + 8 + len(body)) + b"WEBP" + b"VP8X" + b"\0" * 4 + body


def wav(
    seconds: float, *, rate: int = 16_000, channels: int = 1, extra_chunk: bool = False
) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\0\0" * channels * int(rate * seconds))
    data = buffer.getvalue()
    if not extra_chunk:
        return data
    extra = b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\0"  # odd length: padded
    return data[:36] + extra + data[36:]


def mp3(seconds: float, *, kbps: int = 128, xing_frames: int | None = None) -> bytes:
    """MPEG-1 layer III frames at 44.1 kHz stereo, with an ID3v2 tag in front."""
    index = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320).index(kbps)
    header = bytes([0xFF, 0xFB, index << 4, 0x00])
    frame_bytes = 144 * kbps * 1000 // 44_100
    frames = round(seconds * 44_100 / 1152)
    body = (header + b"\0" * (frame_bytes - 4)) * frames
    if xing_frames is not None:
        tag = b"Xing" + struct.pack(">II", 1, xing_frames)
        first = header + b"\0" * 32 + tag
        body = first + b"\0" * (frame_bytes - len(first)) + body
    id3 = b"ID3\x04\x00\x00" + bytes([0, 0, 1, 0])  # 128-byte tag (sync-safe size)
    return id3 + b"\0" * 128 + body


def pdf(pages: int, *, object_streams: bool = False, padding: int = 0) -> bytes:
    """A PDF with `pages` page objects: plain objects, or packed in one compressed object
    stream (PDF 1.5). `padding` appends a comment of that many bytes (a large file)."""
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>"
    kids = b" ".join(b"%d 0 R" % (3 + i) for i in range(pages))
    head = b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
    head += b"2 0 obj << /Type /Pages /Kids [" + kids + b"] /Count %d >> endobj\n" % pages
    if object_streams:
        packed = zlib.compress(b"\n".join(page for _ in range(pages)))
        head += b"9 0 obj << /Type /ObjStm /N %d /First 0 /Filter /FlateDecode " % pages
        head += b"/Length %d >>\nstream\n" % len(packed) + packed + b"\nendstream endobj\n"
    else:
        head += b"".join(b"%d 0 obj " % (3 + i) + page + b" endobj\n" for i in range(pages))
    return head + b"%" + b"x" * padding + b"\n%%EOF\n"
