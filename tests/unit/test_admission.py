"""From policy to counters and back: `limits_for`, refusal messages, Retry-After and the
`x-ratelimit-*` headers (`extproc.quota.admission`)."""

from __future__ import annotations

import re

import pytest

from extproc.errors import RateLimited
from extproc.policy.model import ApiKey, Limit, Measure, QuotaPolicy
from extproc.quota.admission import limits_for, ratelimit_headers, refusal_error
from extproc.quota.store import LimitState, Refusal
from extproc.quota.windows import Scope, ScopedLimit

NS = Scope("team-a")
KEY = Scope("team-a", "billing-svc")

RPM = Limit("rpm", Measure.REQUESTS, 600, 60)
TPM = Limit("tpm", Measure.TOKENS, 100_000, 60)
DAILY = Limit("daily", Measure.TOKENS, 5_000_000, 86400)
INFLIGHT = Limit("inflight", Measure.CONCURRENT, 20, None)
KEY_RPM = Limit("rpm", Measure.REQUESTS, 60, 60)

POLICY = QuotaPolicy(name="team-a", namespace="team-a", limits=(RPM, TPM, INFLIGHT))
KEY_DOC = ApiKey(name="billing-svc", namespace="team-a", sha256="0" * 64, limits=(KEY_RPM,))


# -- limits_for -------------------------------------------------------------------------


def test_limits_for_namespace_only() -> None:
    assert limits_for(POLICY, None) == (
        ScopedLimit(NS, RPM),
        ScopedLimit(NS, TPM),
        ScopedLimit(NS, INFLIGHT),
    )


def test_limits_for_layers_key_limits_under_namespace_limits() -> None:
    limits = limits_for(POLICY, KEY_DOC)
    assert limits == (
        ScopedLimit(NS, RPM),
        ScopedLimit(NS, TPM),
        ScopedLimit(NS, INFLIGHT),
        ScopedLimit(KEY, KEY_RPM),
    )
    # Same limit name, different scope: two distinct counters.
    assert limits[0].base_key == "tg:{ns:team-a}:ns:rpm"
    assert limits[3].base_key == "tg:{ns:team-a}:key:billing-svc:rpm"


def test_limits_for_key_without_limits_adds_nothing() -> None:
    bare = ApiKey(name="svc", namespace="team-a", sha256="1" * 64)
    assert limits_for(POLICY, bare) == limits_for(POLICY, None)


def test_limits_for_uses_the_policy_namespace_for_the_key_scope() -> None:
    policy = QuotaPolicy(name="p", namespace="team-b", limits=())
    key = ApiKey(name="svc", namespace="team-b", sha256="2" * 64, limits=(KEY_RPM,))
    assert limits_for(policy, key) == (ScopedLimit(Scope("team-b", "svc"), KEY_RPM),)


# -- refusal_error ----------------------------------------------------------------------


def test_refusal_error_for_a_key_request_limit() -> None:
    error = refusal_error(Refusal(ScopedLimit(KEY, KEY_RPM), needed=1, used=60, retry_after=12.3))
    assert isinstance(error, RateLimited)
    assert error.message == (
        "Rate limit reached for limit 'rpm' of team-a/billing-svc: limit 60 requests per 1m, "
        "used 60, requested 1. Please try again in 13s."
    )
    assert str(error) == error.message
    assert error.limit == "rpm"
    assert error.retry_after == 12.3
    assert (error.status, error.error_type, error.code) == (
        429,
        "rate_limit_error",
        "rate_limit_exceeded",
    )
    assert error.param is None
    assert error.headers() == {"retry-after": "13"}


def test_refusal_error_for_a_namespace_token_limit() -> None:
    error = refusal_error(
        Refusal(ScopedLimit(NS, DAILY), needed=2000, used=4_999_500, retry_after=3723)
    )
    assert error.message == (
        "Rate limit reached for limit 'daily' of team-a: limit 5000000 tokens per 1d, "
        "used 4999500, requested 2000. Please try again in 1h2m3s."
    )
    assert error.headers() == {"retry-after": "3723"}


def test_refusal_error_for_a_concurrency_limit_has_no_period() -> None:
    error = refusal_error(Refusal(ScopedLimit(NS, INFLIGHT), needed=1, used=20, retry_after=1.0))
    assert error.message == (
        "Rate limit reached for limit 'inflight' of team-a: limit 20 concurrent requests, "
        "used 20, requested 1. Please try again in 1s."
    )
    assert " per " not in error.message
    assert error.limit == "inflight"


def test_refusal_error_never_fits_says_request_too_large() -> None:
    error = refusal_error(Refusal(ScopedLimit(NS, TPM), needed=250_000, used=0, retry_after=40))
    assert error.message == (
        "Request too large for limit 'tpm' of team-a: it needs 250000 but the limit is "
        "100000 tokens per 1m. Lower max_tokens or the prompt."
    )
    assert "try again" not in error.message
    assert error.status == 429
    assert error.limit == "tpm"


def test_refusal_error_exactly_at_the_limit_is_not_too_large() -> None:
    error = refusal_error(Refusal(ScopedLimit(NS, TPM), needed=100_000, used=1, retry_after=40))
    assert error.message.startswith("Rate limit reached for limit 'tpm' of team-a")
    assert "try again in 40s" in error.message


def test_refusal_error_states_usd_amounts_in_dollars() -> None:
    """usd limits are stored as micro-dollars; people read dollars."""
    spend = Limit("spend", Measure.USD, 50_000_000, 30 * 86400)  # $50
    refusal = Refusal(ScopedLimit(NS, spend), needed=20_000, used=49_990_000, retry_after=60)
    message = refusal_error(refusal).message
    assert "50000000" not in message
    assert re.search(r"(?<![\d.])\$?50(?:\.0+)?(?![\d.])", message), message
    assert "49.99" in message, message


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [
        (0.0, "1"),
        (0.2, "1"),
        (0.999, "1"),
        (1.0, "1"),
        (1.01, "2"),
        (12.3, "13"),
        (59.5, "60"),
        (60.0, "60"),
        (86399.1, "86400"),
    ],
)
def test_retry_after_header_is_a_whole_number_rounded_up(retry_after: float, header: str) -> None:
    error = refusal_error(
        Refusal(ScopedLimit(NS, RPM), needed=1, used=600, retry_after=retry_after)
    )
    assert error.headers() == {"retry-after": header}
    assert int(error.headers()["retry-after"]) >= 1


# -- ratelimit_headers ------------------------------------------------------------------


def _state(scope: Scope, limit: Limit, used: int, reset: float) -> LimitState:
    return LimitState(ScopedLimit(scope, limit), used, reset)


STATES = (
    _state(NS, RPM, 10, 30.0),  # 590 left
    _state(NS, TPM, 1_000, 30.0),  # 99000 left
    _state(NS, DAILY, 4_990_000, 3723.0),  # 10000 left: the tightest token limit
    _state(NS, INFLIGHT, 19, 0.0),
    _state(KEY, KEY_RPM, 59, 45.5),  # 1 left: the tightest request limit
)


def test_ratelimit_headers_pick_the_tightest_limit_per_measure() -> None:
    assert ratelimit_headers(STATES) == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "46s",
        "x-ratelimit-limit-tokens": "5000000",
        "x-ratelimit-remaining-tokens": "10000",
        "x-ratelimit-reset-tokens": "1h2m3s",
    }


def test_ratelimit_headers_do_not_depend_on_order() -> None:
    assert ratelimit_headers(reversed(STATES)) == ratelimit_headers(STATES)
    assert ratelimit_headers(iter(STATES)) == ratelimit_headers(STATES)


def test_ratelimit_headers_remaining_never_negative() -> None:
    headers = ratelimit_headers([_state(NS, TPM, 150_000, 0.25)])
    assert headers == {
        "x-ratelimit-limit-tokens": "100000",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "250ms",
    }


def test_ratelimit_headers_omit_a_measure_without_limits() -> None:
    only_requests = ratelimit_headers([_state(NS, RPM, 1, 59.0), _state(NS, INFLIGHT, 3, 0.0)])
    assert only_requests == {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "599",
        "x-ratelimit-reset-requests": "59s",
    }
    assert ratelimit_headers([_state(NS, INFLIGHT, 3, 0.0)]) == {}
    assert ratelimit_headers([]) == {}
