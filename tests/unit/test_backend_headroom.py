"""Providers' rate-limit headers read into `Headroom`: both providers' formats, values that do
not parse (dropped, never raised), and the mock provider's own headers read back to what its
buckets hold."""

from __future__ import annotations

import math

import pytest

from extproc.backends.headroom import (
    MAX_WAIT_S,
    anthropic_headroom,
    go_duration_s,
    openai_headroom,
    retry_after_s,
)
from extproc.backends.health import Headroom
from extproc.dev.mock_provider.ratelimit import Decision, KeyLimits, RateLimiter, headers_for

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
AT = "2023-11-14T22:13:20Z"  # NOW, as Anthropic writes an instant


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


# --- OpenAI ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("20ms", 0.02),
        ("1s", 1.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("6m0s", 360.0),
        ("1h2m3.5s", 3723.5),
        ("1h0m0s", 3600.0),
        ("2m", 120.0),
        ("500us", 0.0005),
        ("3µs", 3e-6),
        ("7ns", 7e-9),
        (" 8.64s ", 8.64),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert go_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", " ", "1", "-1s", "+1s", "1x", "s", "1s2", "abc", "1e3s", "1.2.3s", "1 s", "ms"]
)
def test_what_is_not_a_go_duration_is_dropped(text: str) -> None:
    assert go_duration_s(text) is None


def test_openai_headers_say_every_field() -> None:
    headers = {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "120ms",
        "x-ratelimit-limit-tokens": "30000",
        "x-ratelimit-remaining-tokens": "29000",
        "x-ratelimit-reset-tokens": "6m0s",
        "retry-after": "3",
    }
    assert openai_headroom(headers) == Headroom(
        remaining_requests=499, remaining_tokens=29000, requests_reset_s=0.12,
        tokens_reset_s=360.0, retry_after_s=3.0,
    )  # fmt: skip


def test_a_malformed_value_drops_that_field_only() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "-1",
        "x-ratelimit-remaining-tokens": "12.5",
        "x-ratelimit-reset-requests": "soon",
        "x-ratelimit-reset-tokens": "1s",
        "retry-after": "tomorrow",
    }
    assert openai_headroom(headers) == Headroom(tokens_reset_s=1.0)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"content-type": "application/json", "x-request-id": "req_1"},
        {"x-ratelimit-remaining-requests": "many", "retry-after": "later"},
        {"x-ratelimit-remaining-tokens": "1" * 40, "x-ratelimit-reset-tokens": "9" * 400 + "h"},
    ],
)
def test_nothing_usable_is_none(headers: dict[str, str]) -> None:
    assert openai_headroom(headers) is None
    assert anthropic_headroom(headers, now=NOW) is None


def test_retry_after_in_seconds_as_an_http_date_and_in_milliseconds() -> None:
    assert retry_after_s({"retry-after": "20"}, now=NOW) == 20.0
    assert retry_after_s({"retry-after": "1.5"}, now=NOW) == 1.5
    date = "Tue, 14 Nov 2023 22:13:50 GMT"  # NOW + 30 s
    assert retry_after_s({"retry-after": date}, now=NOW) == pytest.approx(30.0)
    assert retry_after_s({"retry-after": date}, now=NOW + 60) == 0.0  # passed already
    assert retry_after_s({"retry-after": "Tue, 14 Nov 2023 22:13:50 -0000"}, now=NOW) == 30.0
    finer = {"retry-after": "1", "retry-after-ms": "250"}
    assert retry_after_s(finer, now=NOW) == 0.25
    assert retry_after_s({"retry-after": "1", "retry-after-ms": "soon"}, now=NOW) == 1.0
    for bad in ("-5", "Tue, 99 Nov 2023 99:13:50 GMT", "Tuesday", "", "inf", "nan"):
        assert retry_after_s({"retry-after": bad}, now=NOW) is None, bad
    assert openai_headroom({"retry-after": date}, now=NOW) == Headroom(retry_after_s=30.0)


# --- Anthropic ------------------------------------------------------------------------------


def test_anthropic_headers_say_every_field() -> None:
    prefix = "anthropic-ratelimit-"
    headers = {
        f"{prefix}requests-limit": "50",
        f"{prefix}requests-remaining": "49",
        f"{prefix}requests-reset": "2023-11-14T22:13:21Z",
        f"{prefix}tokens-limit": "40000",
        f"{prefix}tokens-remaining": "39000",
        f"{prefix}tokens-reset": "2023-11-14T22:14:20.500Z",
        "retry-after": "7",
    }
    assert anthropic_headroom(headers, now=NOW) == Headroom(
        remaining_requests=49, remaining_tokens=39000, requests_reset_s=1.0,
        tokens_reset_s=60.5, retry_after_s=7.0,
    )  # fmt: skip


def test_the_tightest_of_the_token_limits_counts_with_its_own_reset() -> None:
    prefix = "anthropic-ratelimit-"
    headers = {
        f"{prefix}tokens-remaining": "9000",
        f"{prefix}tokens-reset": "2023-11-14T22:13:30Z",
        f"{prefix}input-tokens-remaining": "8000",
        f"{prefix}input-tokens-reset": "2023-11-14T22:13:40Z",
        f"{prefix}output-tokens-remaining": "1500",
        f"{prefix}output-tokens-reset": "2023-11-14T23:13:20+01:00",  # NOW + 5 s
    }
    assert anthropic_headroom(headers, now=NOW) == Headroom(
        remaining_tokens=1500, tokens_reset_s=0.0
    )
    headers[f"{prefix}output-tokens-reset"] = "2023-11-14T22:13:25Z"
    assert anthropic_headroom(headers, now=NOW) == Headroom(
        remaining_tokens=1500, tokens_reset_s=5.0
    )
    headers[f"{prefix}input-tokens-remaining"] = "1500"  # a tie: the later reset
    assert anthropic_headroom(headers, now=NOW) == Headroom(
        remaining_tokens=1500, tokens_reset_s=20.0
    )
    only_resets = {f"{prefix}input-tokens-reset": "2023-11-14T22:13:40Z",
                   f"{prefix}output-tokens-reset": "2023-11-14T22:13:25Z"}  # fmt: skip
    assert anthropic_headroom(only_resets, now=NOW) == Headroom(tokens_reset_s=20.0)


@pytest.mark.parametrize(
    ("reset", "seconds"),
    [
        ("2023-11-14T22:13:20Z", 0.0),
        ("2023-11-14T22:13:10Z", 0.0),  # passed: reset already
        ("2023-11-14T22:13:21.25Z", 1.25),
        ("2023-11-14T17:13:30-05:00", 10.0),
        ("2023-11-14 22:13:22+00:00", 2.0),
        ("2023-11-14T22:13:21", None),  # no time zone: not an instant
        ("2023-11-14", None),
        ("in a minute", None),
        ("1700000060", None),
        ("", None),
    ],
)
def test_anthropic_resets_are_instants(reset: str, seconds: float | None) -> None:
    headers = {
        "anthropic-ratelimit-requests-remaining": "3",
        "anthropic-ratelimit-requests-reset": reset,
    }
    headroom = anthropic_headroom(headers, now=NOW)
    assert headroom is not None and headroom.remaining_requests == 3
    if seconds is None:
        assert headroom.requests_reset_s is None
    else:
        assert headroom.requests_reset_s == pytest.approx(seconds)


def test_anthropic_malformed_values_are_dropped() -> None:
    headers = {
        "anthropic-ratelimit-requests-remaining": "0x10",
        "anthropic-ratelimit-tokens-remaining": "",
        "anthropic-ratelimit-tokens-reset": AT,
        "retry-after": "-1",
    }
    assert anthropic_headroom(headers, now=NOW) == Headroom(tokens_reset_s=0.0)


# --- the mock provider's own headers --------------------------------------------------------


def _decisions(provider: str) -> list[tuple[Decision, dict[str, str]]]:
    """What the mock answered to a burst of requests, with its headers as a mapping."""
    clock = Clock()
    limiter = RateLimiter(limits=KeyLimits(rpm=4, tpm=1000), clock=clock)
    out = []
    for tokens in (300, 250, 400, 100, 5):
        clock.now += 0.4
        decision = limiter.admit("sk-test", tokens=tokens)
        out.append((decision, dict(headers_for(provider, decision))))
    return out


def test_the_mock_providers_openai_headers_read_back() -> None:
    answers = _decisions("openai")
    assert [d.admitted for d, _ in answers] == [True, True, True, False, True]
    for decision, headers in answers:
        headroom = openai_headroom(headers, now=decision.now)
        assert headroom is not None
        requests, tokens = decision.requests, decision.tokens
        assert requests is not None and tokens is not None
        assert (headroom.remaining_requests, headroom.remaining_tokens) == (
            requests.remaining,
            tokens.remaining,
        )
        assert headroom.requests_reset_s is not None and headroom.tokens_reset_s is not None
        # Go durations at millisecond precision, rounded up.
        assert 0 <= headroom.requests_reset_s - requests.full_in < 0.001 + 1e-9
        assert 0 <= headroom.tokens_reset_s - tokens.full_in < 0.001 + 1e-9
        expected_retry = None if decision.admitted else max(1, math.ceil(decision.retry_after))
        assert headroom.retry_after_s == expected_retry


def test_the_mock_providers_anthropic_headers_read_back() -> None:
    answers = _decisions("anthropic")
    assert [d.admitted for d, _ in answers] == [True, True, True, False, True]
    for decision, headers in answers:
        headroom = anthropic_headroom(headers, now=decision.now)
        assert headroom is not None
        requests, tokens = decision.requests, decision.tokens
        assert requests is not None and tokens is not None
        assert (headroom.remaining_requests, headroom.remaining_tokens) == (
            requests.remaining,
            tokens.remaining,
        )
        assert headroom.requests_reset_s is not None and headroom.tokens_reset_s is not None
        # Instants in whole seconds, rounded up.
        assert 0 <= headroom.requests_reset_s - requests.full_in < 1
        assert 0 <= headroom.tokens_reset_s - tokens.full_in < 1
        expected_retry = None if decision.admitted else max(1, math.ceil(decision.retry_after))
        assert headroom.retry_after_s == expected_retry


def test_an_absurd_wait_is_believed_for_an_hour_at_most() -> None:
    said = openai_headroom(
        {"retry-after": "1000000000000", "x-ratelimit-reset-requests": "9999h0m0s"}
    )
    assert said is not None
    assert said.retry_after_s == MAX_WAIT_S and said.requests_reset_s == MAX_WAIT_S
