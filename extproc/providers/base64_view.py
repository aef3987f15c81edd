"""Bounded reads of base64 payloads (images, audio, documents in a prompt).

Why: a request body may carry tens of megabytes of base64 media, and the sidecar only needs a
few header bytes (an image's size, an audio clip's duration) or a bounded prefix (a PDF's
page objects) to estimate what the provider will bill. Decoding the whole payload on the
latency path would cost milliseconds per megabyte for nothing.
"""

from __future__ import annotations

import binascii


def decoded_size(data: str) -> int:
    """Bytes the payload decodes to (exact for unpadded or padded plain base64)."""
    length = len(data)
    padding = len(data) - len(data.rstrip("="))
    return max(0, length * 3 // 4 - padding)


def data_url_payload(url: str) -> tuple[str, str] | None:
    """(media type, base64 payload) of a `data:<type>;base64,<payload>` URL, else None."""
    if not url.startswith("data:"):
        return None
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    return head[5:-7].partition(";")[0].strip().lower(), payload


def decode_prefix(data: str, limit: int) -> bytes:
    """The first (about) `limit` bytes of the payload; b"" when it is not base64. Whitespace
    and other stray characters are skipped, as every base64 decoder does."""
    chunk = data[: (limit + 2) // 3 * 4]
    for trim in range(4):  # a stray character may leave a partial quantum at the end
        try:
            return binascii.a2b_base64(chunk[: len(chunk) - trim].encode("ascii", "ignore"))
        except (binascii.Error, ValueError):
            continue
    return b""


class Base64View:
    """Random access to the bytes of a base64 string, decoding only what is read (base64 maps
    every 3 bytes to 4 characters, so any byte range is a slice of the string)."""

    __slots__ = ("_data",)

    def __init__(self, data: str) -> None:
        self._data = data

    def read(self, offset: int, size: int) -> bytes | None:
        """Up to `size` bytes at `offset`, or None when that part is not plain base64 (line
        breaks, the URL alphabet, junk): the caller then treats the payload as unreadable."""
        first = offset // 3 * 4
        chunk = self._data[first : (offset + size + 2) // 3 * 4]
        if not chunk:
            return None
        try:
            decoded = binascii.a2b_base64(chunk.encode("ascii"), strict_mode=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            return None
        start = offset - offset // 3 * 3
        return decoded[start : start + size]
