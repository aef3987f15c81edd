"""What a PDF in a prompt costs: its pages, each billed as extracted text plus an image.

Both providers turn every PDF page into text and a picture of the page (Anthropic "PDF
support": "each page is converted into an image", text 1,500-3,000 tokens per page depending
on density; OpenAI "File inputs": extracted text and an image of each page). So the estimate is

    pages x (TEXT_TOKENS_PER_PAGE + the model's largest image)

with the pages read from the file itself: page objects (`/Type /Page`) counted in the first
`MAX_SCAN_BYTES` of the decoded PDF, including those packed in compressed object streams
(inflated up to `MAX_INFLATE_BYTES` in total). Why pages and not bytes: a page costs the
same whether the file spends 2 KB or 2 MB on it, so no byte rate bounds a PDF's bill. A
larger file is extrapolated from the density seen in its scanned part; a file in which no
page can be found is assumed to hold one page per `FALLBACK_BYTES_PER_PAGE` (up to
`MAX_PAGES`).

Work bound: about 15 ms for the largest document (4 MiB decoded and scanned, 2 MiB inflated),
linear in its size below that.

Error bound: the page count is exact for an ordinary PDF (an incrementally updated one may
be counted high, never low); a page costs at most the model's image maximum plus its text,
so the estimate covers every page whose text is at most 1,500 tokens (the low end of
Anthropic's documented range; Anthropic puts a whole 3-page PDF at about 7,000 tokens, i.e.
~2,333 a page, against 3,140 reserved here) and under-reserves a denser page by its excess.
The provider's usage settles the bill. A document the gateway cannot see (a URL, a file id)
is reserved as `UNSEEN_PAGES` pages; a file that is neither PDF nor text as one token per
`BINARY_BYTES_PER_TOKEN` bytes.
"""

from __future__ import annotations

import math
import re
import zlib

from extproc.providers.base64_view import Base64View, decode_prefix, decoded_size

TEXT_TOKENS_PER_PAGE = 1_500
MAX_SCAN_BYTES = 4 << 20
MAX_INFLATE_BYTES = 2 << 20
MAX_OBJECT_STREAMS = 1_024
FALLBACK_BYTES_PER_PAGE = 3_000
MAX_PAGES = 600  # Anthropic refuses more pages per request (100 below a 1M-token window)
UNSEEN_PAGES = 3
# A file that is neither PDF nor text (an office document): its extracted text, at most about
# one token per 2 bytes (zipped XML holds 1-3 characters of text per byte, 4 per token).
BINARY_BYTES_PER_TOKEN = 2

_PAGE = re.compile(rb"/Type\s*/Page(?![A-Za-z0-9_])")
_OBJECT_STREAM = re.compile(rb"/Type\s*/ObjStm(?![A-Za-z0-9_])")
_STREAM = re.compile(rb"stream\r?\n")


def pdf_tokens(pages: int, *, page_image_tokens: int) -> int:
    return pages * (TEXT_TOKENS_PER_PAGE + page_image_tokens)


def is_pdf(media_type: str, data: str) -> bool:
    return media_type == "application/pdf" or Base64View(data).read(0, 5) == b"%PDF-"


def base64_text(data: str) -> str:
    """A base64 text file's text (it is tokenized whole anyway)."""
    return decode_prefix(data, decoded_size(data)).decode("utf-8", "replace")


def binary_file_tokens(data: str) -> int:
    return math.ceil(decoded_size(data) / BINARY_BYTES_PER_TOKEN)


def base64_pdf_pages(data: str) -> int:
    """Pages of a base64 PDF, read from at most `MAX_SCAN_BYTES` of it."""
    total = decoded_size(data)
    return pdf_pages(decode_prefix(data, MAX_SCAN_BYTES), total=total)


def pdf_pages(head: bytes, *, total: int) -> int:
    """Pages of a PDF of `total` bytes whose first bytes are `head` (see module docstring)."""
    found = len(_PAGE.findall(head)) + _pages_in_object_streams(head)
    if found and total > len(head):
        found = math.ceil(found * total / len(head))
    if not found:
        found = math.ceil(max(total, 1) / FALLBACK_BYTES_PER_PAGE)
    return min(found, MAX_PAGES)


def _pages_in_object_streams(pdf: bytes) -> int:
    """Page objects of PDF 1.5+ files live in Flate-compressed object streams. Streams do not
    nest, so the search resumes after each one: one pass over the file."""
    budget, pages, position = MAX_INFLATE_BYTES, 0, 0
    for _ in range(MAX_OBJECT_STREAMS):
        match = _OBJECT_STREAM.search(pdf, position)
        opened = _STREAM.search(pdf, match.end()) if match else None
        if opened is None or budget <= 0:
            break
        end = pdf.find(b"endstream", opened.end())
        position = end if end >= 0 else len(pdf)
        try:
            inflated = zlib.decompressobj().decompress(pdf[opened.end() : position], budget)
        except zlib.error:
            continue  # another filter, or damaged: its pages are not counted here
        budget -= len(inflated)
        pages += len(_PAGE.findall(inflated))
    return pages
