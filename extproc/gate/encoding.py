"""Reading answers an upstream compressed although it was asked not to.

Every governed request goes upstream with `accept-encoding: identity` (the sidecar must read
each byte it counts; Envoy compresses toward the client afterwards). An upstream that
compresses anyway must not make an answer uncountable: gzip and deflate are decoded chunk by
chunk and the client is sent the decoded bytes (Envoy re-compresses them if the client asked);
an encoding we cannot decode is refused before any byte reaches the client, and the request
is charged its whole reservation (the provider may have billed it).
"""

from __future__ import annotations

import zlib

from extproc.errors import BadGateway

DECODABLE = frozenset({"gzip", "x-gzip", "deflate"})
_AUTO_HEADER = 32 + zlib.MAX_WBITS  # zlib or gzip framing, detected from the first bytes


class Decoder:
    """One answer's decompressor, bounded: a chunk may not grow past `max_out` bytes (a
    decompression bomb is refused, not buffered)."""

    def __init__(self, *, max_out: int) -> None:
        self._inflate = zlib.decompressobj(_AUTO_HEADER)
        self._max_out = max_out

    def decode(self, chunk: bytes) -> bytes:
        try:
            data = self._inflate.decompress(chunk, self._max_out)
        except zlib.error as exc:
            raise BadGateway("The upstream sent a compressed answer that cannot be read.") from exc
        if self._inflate.unconsumed_tail:
            raise BadGateway("The upstream's compressed answer expands past the gateway's limit.")
        return data


def decoder_for(content_encoding: str, *, max_out: int) -> Decoder | None:
    """None for an identity answer; a decoder for gzip/deflate; `BadGateway` otherwise."""
    coding = content_encoding.strip().lower()
    if coding in ("", "identity"):
        return None
    if coding in DECODABLE:
        return Decoder(max_out=max_out)
    raise BadGateway(
        f"The upstream answered with content-encoding {coding[:40]!r}, which the gateway "
        "cannot read to count it; the request was charged its reservation."
    )
