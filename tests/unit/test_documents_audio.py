"""PDF pages and audio durations read from base64 payloads (`extproc.providers.documents`,
`extproc.providers.audio`): exact where the file says, bounded where it does not, and the
work bounded for large or hostile inputs."""

from __future__ import annotations

import math
import time
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.providers import audio, documents
from extproc.providers.audio import audio_tokens
from extproc.providers.documents import base64_pdf_pages, is_pdf, pdf_pages, pdf_tokens
from tests.unit import media

# -- PDF pages ---------------------------------------------------------------------------


@pytest.mark.parametrize("pages", [1, 3, 40])
def test_pages_are_counted_from_page_objects(pages: int) -> None:
    assert base64_pdf_pages(media.b64(media.pdf(pages))) == pages


@pytest.mark.parametrize("pages", [1, 7, 120])
def test_pages_packed_in_compressed_object_streams_are_counted(pages: int) -> None:
    data = media.pdf(pages, object_streams=True)
    assert b"/Type /Page " not in data  # invisible without inflating the object stream
    assert base64_pdf_pages(media.b64(data)) == pages


def test_a_file_larger_than_the_scan_is_extrapolated_upwards() -> None:
    data = media.pdf(4, padding=documents.MAX_SCAN_BYTES + 100_000)
    pages = pdf_pages(data[: documents.MAX_SCAN_BYTES], total=len(data))
    assert pages == 5  # 4 pages seen in the scanned 4 MiB of 4.1 MiB: never fewer than seen
    assert base64_pdf_pages(media.b64(data)) == 5


def test_a_file_without_readable_pages_is_estimated_from_its_size() -> None:
    encrypted = b"%PDF-1.7\n" + bytes(range(256)) * 100  # 25,609 bytes, nothing readable
    assert base64_pdf_pages(media.b64(encrypted)) == math.ceil(len(encrypted) / 3_000)
    assert pdf_pages(b"", total=0) == 1
    assert pdf_pages(b"", total=10**9) == documents.MAX_PAGES


def test_a_damaged_object_stream_is_skipped_not_fatal() -> None:
    broken = b"%PDF-1.5\n<< /Type /ObjStm /Filter /FlateDecode >>\nstream\nnot zlib\nendstream"
    data = broken + b"\n<< /Type /Page >>"
    assert pdf_pages(data, total=len(data)) == 1


def test_inflating_is_bounded() -> None:
    bomb = zlib.compress(b"/Type /Page " * 2_000_000)  # 24 MB of page markers, ~50 KB packed
    data = b"%PDF-1.5\n<< /Type /ObjStm >>\nstream\n" + bomb + b"\nendstream\n"
    started = time.perf_counter()
    pages = pdf_pages(data, total=len(data))
    assert pages == documents.MAX_PAGES  # capped; only MAX_INFLATE_BYTES were inflated
    assert time.perf_counter() - started < 2.0


def test_pdf_detection_and_the_per_page_cost() -> None:
    assert is_pdf("application/pdf", "")
    assert is_pdf("", media.b64(media.pdf(1)))
    assert not is_pdf("", media.b64(b"PK\x03\x04 a docx"))
    assert pdf_tokens(3, page_image_tokens=1640) == 3 * (1500 + 1640)


# -- audio -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clip", "tokens"),
    [
        (media.wav(2.0), 20),  # 1 token per 100 ms (OpenAI Realtime costs)
        (media.wav(0.55, rate=44_100, channels=2), 6),
        (media.wav(1.0, extra_chunk=True), 10),  # a LIST chunk before the data
        (media.wav(0.0), 1),
    ],
)
def test_wav_duration_is_read_from_the_header(clip: bytes, tokens: int) -> None:
    assert audio_tokens(media.b64(clip), "wav") == tokens


def test_mp3_constant_bit_rate_from_the_first_frame() -> None:
    clip = media.mp3(3.0, kbps=128)
    assert audio_tokens(media.b64(clip), "mp3") == 30


def test_mp3_variable_bit_rate_from_the_xing_frame_count() -> None:
    frames = 478  # 12.49 s, in a file whose first frame says 32 kbit/s and is 0.5 s long
    clip = media.mp3(0.5, kbps=32, xing_frames=frames)
    assert audio_tokens(media.b64(clip), "mp3") == 125


def test_mp3_variable_bit_rate_from_the_vbri_frame_count() -> None:
    header = bytes([0xFF, 0xFB, 0x10, 0x00])  # MPEG-1 layer III, 32 kbit/s, 44.1 kHz
    vbri = b"VBRI" + b"\0" * 10 + (383).to_bytes(4, "big")  # 383 frames: 10.005 s
    clip = header + b"\0" * 32 + vbri + b"\0" * 1000
    assert audio_tokens(media.b64(clip), "mp3") == 101


def test_pcm16_is_24khz_mono() -> None:
    assert audio_tokens(media.b64(b"\0" * 48_000 * 3), "pcm16") == 30


@pytest.mark.parametrize("audio_format", ["flac", "opus", None, "mp3"])
def test_an_unreadable_clip_is_bounded_at_8_kbit_per_second(audio_format: str | None) -> None:
    clip = b"\x00\x01" * 50_000  # 100 kB: at most 100 s at the lowest MP3 bit rate
    assert audio_tokens(media.b64(clip), audio_format) == 1000
    assert audio.FLOOR_BITS_PER_SECOND == 8_000


def test_the_floor_covers_any_clip_at_least_that_dense() -> None:
    """An 8-second WAV read as an unknown format costs more, never less, than its duration."""
    clip = media.wav(8.0, rate=8_000)
    exact = audio_tokens(media.b64(clip), "wav")
    bounded = math.ceil(len(clip) * 8 / audio.FLOOR_BITS_PER_SECOND * audio.TOKENS_PER_SECOND)
    assert exact == 80
    assert bounded >= exact


PREFIXES = st.sampled_from(
    [b"", b"%PDF-1.7\n", b"RIFF\0\0\0\0WAVE", b"ID3\4\0\0", b"\xff\xfb", b"<< /Type /ObjStm"]
)


@given(
    prefix=PREFIXES, tail=st.binary(max_size=400), audio_format=st.sampled_from(["wav", "mp3", "x"])
)
def test_any_bytes_are_estimated_never_raised(
    prefix: bytes, tail: bytes, audio_format: str
) -> None:
    data = media.b64(prefix + tail)
    assert 1 <= base64_pdf_pages(data) <= documents.MAX_PAGES
    assert audio_tokens(data, audio_format) >= 1
