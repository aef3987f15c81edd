"""What a provider's rate-limit headers say about its headroom, as a `Headroom`. No I/O.

The formats (the mock provider's docstring, extproc/dev/mock_provider/ratelimit.py, says how
they were checked):
- OpenAI: `x-ratelimit-remaining-requests` / `-tokens` (whole numbers) and
  `x-ratelimit-reset-requests` / `-tokens`, the time until the limit is back to full as a Go
  duration (`20ms`, `1s`, `6m0s`, `1h2m3.5s`);
- Anthropic: `anthropic-ratelimit-requests-remaining` / `-reset`, and the same for `tokens`,
  `input-tokens` and `output-tokens`; resets are RFC 3339 instants. Of the token limits the
  tightest (smallest remaining) is kept, with its own reset: a request needs every one;
- both: `retry-after` (seconds, or an HTTP-date) on 429s; `retry-after-ms` when sent (the
  OpenAI SDK honours it first, being finer).

A provider's header is advice, not input to trust: a value that does not parse, or is
negative, is dropped (that field None), never an exception on the data path. Names are
looked up in lower case, as Envoy's header map hands them over.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from extproc.backends.health import Headroom

_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)", re.ASCII)
_GO_DURATION = re.compile(rf"(?:{_GO_PART.pattern})+", re.ASCII)
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
           "h": 3600.0}  # fmt: skip
_DECIMAL = re.compile(r"\d+(?:\.\d+)?", re.ASCII)
_ANTHROPIC_TOKENS = ("tokens", "input-tokens", "output-tokens")
MAX_WAIT_S = 3600.0  # the longest reset or retry-after believed (rate limits are per minute)
_MAX_COUNT = 2**53  # past this a count is no real limit and no longer exact in Lua or JSON


def openai_headroom(headers: Mapping[str, str], *, now: float | None = None) -> Headroom | None:
    """`now` (unix time) is needed only for a `retry-after` given as an HTTP-date; the
    current time by default. None when the answer said nothing usable."""
    return _headroom(
        remaining_requests=_count(headers.get("x-ratelimit-remaining-requests")),
        remaining_tokens=_count(headers.get("x-ratelimit-remaining-tokens")),
        requests_reset_s=go_duration_s(headers.get("x-ratelimit-reset-requests")),
        tokens_reset_s=go_duration_s(headers.get("x-ratelimit-reset-tokens")),
        retry_after_s=retry_after_s(headers, now=time.time() if now is None else now),
    )


def anthropic_headroom(headers: Mapping[str, str], *, now: float) -> Headroom | None:
    """`now`: unix time when the answer arrived (resets are instants, `Headroom` holds
    seconds from then). None when the answer said nothing usable."""
    prefix = "anthropic-ratelimit-"
    tokens = [
        (_count(headers.get(f"{prefix}{name}-remaining")),
         _instant_s(headers.get(f"{prefix}{name}-reset"), now))
        for name in _ANTHROPIC_TOKENS
    ]  # fmt: skip
    remaining_tokens, tokens_reset_s = _tightest(tokens)
    return _headroom(
        remaining_requests=_count(headers.get(f"{prefix}requests-remaining")),
        remaining_tokens=remaining_tokens,
        requests_reset_s=_instant_s(headers.get(f"{prefix}requests-reset"), now),
        tokens_reset_s=tokens_reset_s,
        retry_after_s=retry_after_s(headers, now=now),
    )


def go_duration_s(text: str | None) -> float | None:
    """Seconds of a Go `time.Duration` string (`1h2m3.5s`, `20ms`, `0`); None if it is not
    one, or is negative."""
    if text is None:
        return None
    text = text.strip()
    if text == "0":
        return 0.0
    if not _GO_DURATION.fullmatch(text):
        return None
    seconds = sum(float(number) * _UNIT_S[unit] for number, unit in _GO_PART.findall(text))
    return seconds if math.isfinite(seconds) else None


def retry_after_s(headers: Mapping[str, str], *, now: float) -> float | None:
    """`retry-after-ms` if it parses, else `retry-after` (seconds or HTTP-date, RFC 9110)."""
    millis = _seconds(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    text = headers.get("retry-after")
    if text is None:
        return None
    seconds = _seconds(text)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(text.strip())
        if when.tzinfo is None:  # "-0000": UTC, origin unknown (RFC 5322)
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - now)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None


def _instant_s(text: str | None, now: float) -> float | None:
    """Seconds from `now` until an RFC 3339 instant (0 when passed); None unless it names
    a time zone (an instant without one is no instant)."""
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.strip())
        if when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - now)
    except (ValueError, OverflowError):
        return None


def _count(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        return None
    count = int(text)
    return count if count <= _MAX_COUNT else None


def _seconds(text: str | None) -> float | None:
    """A plain non-negative decimal number, finite."""
    if text is None or not _DECIMAL.fullmatch(text.strip()):
        return None
    seconds = float(text)
    return seconds if math.isfinite(seconds) else None


def _tightest(
    limits: list[tuple[int | None, float | None]],
) -> tuple[int | None, float | None]:
    """The smallest remaining of several limits, with its reset (the latest, if several tie
    for smallest); with no remaining at all, the latest reset stated."""
    counted = [(remaining, reset) for remaining, reset in limits if remaining is not None]
    if not counted:
        return None, max((reset for _, reset in limits if reset is not None), default=None)
    low = min(remaining for remaining, _ in counted)
    resets = [reset for remaining, reset in counted if remaining == low and reset is not None]
    return low, max(resets, default=None)


def _headroom(
    *,
    remaining_requests: int | None,
    remaining_tokens: int | None,
    requests_reset_s: float | None,
    tokens_reset_s: float | None,
    retry_after_s: float | None,
) -> Headroom | None:
    headroom = Headroom(
        remaining_requests=remaining_requests,
        remaining_tokens=remaining_tokens,
        requests_reset_s=_bounded(requests_reset_s),
        tokens_reset_s=_bounded(tokens_reset_s),
        retry_after_s=_bounded(retry_after_s),
    )
    return None if headroom == Headroom() else headroom


def _bounded(seconds: float | None) -> float | None:
    """A provider's wait is trusted up to MAX_WAIT_S: a broken or hostile upstream saying
    `retry-after: 1e12` must not take a backend out for good (or overflow the store)."""
    return None if seconds is None else min(seconds, MAX_WAIT_S)
