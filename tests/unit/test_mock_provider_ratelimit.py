"""The mock provider's per-key rate limits: continuously refilled buckets on an injected
clock, the providers' header formats, and the router's charging (what costs, what only
reports, what a 429 looks like in each provider's format)."""

from __future__ import annotations

import hashlib
import json

import pytest

from extproc.dev.mock_provider import ratelimit
from extproc.dev.mock_provider.http import Reply
from extproc.dev.mock_provider.parser import Request
from extproc.dev.mock_provider.ratelimit import (
    Decision,
    KeyLimits,
    Meter,
    RateLimiter,
    go_duration,
    headers_for,
    rfc3339,
)
from extproc.dev.mock_provider.recorder import Recorder, Stats
from extproc.dev.mock_provider.router import Router
from extproc.errors import ConfigError
from tests.token_counts import ntok

pytestmark = pytest.mark.usefixtures("vocab_dir")

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


# --- formats -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (-1.0, "0s"),
        (0.0001, "1ms"),
        (0.02, "20ms"),
        (0.999, "999ms"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (8.64, "8.64s"),
        (20.0, "20s"),
        (59.9999, "1m0s"),
        (61.25, "1m1.25s"),
        (360.0, "6m0s"),
        (3600.0, "1h0m0s"),
        (5025.5, "1h23m45.5s"),
    ],
)
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_rfc3339_rounds_up_to_whole_seconds() -> None:
    assert rfc3339(T0) == "2023-11-14T22:13:20Z"
    assert rfc3339(T0 + 0.2) == "2023-11-14T22:13:21Z"
    assert rfc3339(T0 + 60) == "2023-11-14T22:14:20Z"


def test_limits_are_validated() -> None:
    assert not KeyLimits().enabled
    assert KeyLimits(rpm=1).enabled and KeyLimits(tpm=1).enabled
    with pytest.raises(ConfigError):
        KeyLimits(rpm=-1)


# --- buckets -------------------------------------------------------------------------------


def test_requests_bucket_counts_down_refuses_and_refills_continuously() -> None:
    clock = Clock()
    limiter = RateLimiter(limits=KeyLimits(rpm=3), clock=clock)
    decisions = [limiter.admit("key-a", tokens=10) for _ in range(4)]
    assert [d.admitted for d in decisions] == [True, True, True, False]
    meters = [d.requests for d in decisions]
    assert [m.remaining for m in meters if m] == [2, 1, 0, 0]
    assert [m.full_in for m in meters if m] == [20.0, 40.0, 60.0, 60.0]
    refused = decisions[3]
    assert refused.retry_after == pytest.approx(20.0) and refused.tokens is None
    assert "requests per min (RPM): Limit 3" in refused.message
    assert limiter.admit("key-b", tokens=10).requests == Meter(limit=3, remaining=2, full_in=20.0)
    clock.now += 19.9
    assert not limiter.admit("key-a", tokens=10).admitted
    clock.now += 0.1
    again = limiter.admit("key-a", tokens=10)
    assert again.admitted and again.requests == Meter(limit=3, remaining=0, full_in=60.0)
    clock.now += 600
    assert limiter.peek("key-a").requests == Meter(limit=3, remaining=3, full_in=0.0)


def test_tokens_bucket_charges_the_estimate_and_refuses_what_does_not_fit() -> None:
    clock = Clock()
    limiter = RateLimiter(limits=KeyLimits(tpm=100), clock=clock)
    first = limiter.admit("k", tokens=60)
    assert first.tokens == Meter(limit=100, remaining=40, full_in=36.0) and first.requests is None
    refused = limiter.admit("k", tokens=60)
    assert not refused.admitted and refused.retry_after == pytest.approx(12.0)
    assert refused.tokens == first.tokens  # a refusal charges nothing
    assert "tokens per min (TPM): Limit 100, Requested 60" in refused.message
    clock.now += 12
    assert limiter.admit("k", tokens=60).tokens == Meter(limit=100, remaining=0, full_in=60.0)


def test_a_request_larger_than_the_limit_is_always_refused() -> None:
    limiter = RateLimiter(limits=KeyLimits(rpm=10, tpm=100), clock=Clock())
    refused = limiter.admit("k", tokens=101)
    assert not refused.admitted and "too large" in refused.message
    assert refused.requests == Meter(limit=10, remaining=10, full_in=0.0)


def test_both_limits_must_allow_and_the_longer_wait_wins() -> None:
    limiter = RateLimiter(limits=KeyLimits(rpm=60, tpm=600), clock=Clock())
    assert limiter.admit("k", tokens=590).admitted
    refused = limiter.admit("k", tokens=100)  # requests fine, tokens 90 short: 9 s
    assert not refused.admitted and refused.retry_after == pytest.approx(9.0)
    assert refused.requests is not None and refused.requests.remaining == 59


def test_peek_charges_nothing_and_keys_are_kept_only_as_digests() -> None:
    limiter = RateLimiter(limits=KeyLimits(rpm=3), clock=Clock())
    assert limiter.peek("sk-secret").requests == Meter(limit=3, remaining=3, full_in=0.0)
    limiter.admit("sk-secret", tokens=0)
    limiter.admit(None, tokens=0)
    assert set(limiter._keys) == {
        hashlib.sha256(b"sk-secret").digest(),
        hashlib.sha256(b"").digest(),
    }


def test_idle_full_buckets_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit, "PRUNE_AT", 3)
    clock = Clock()
    limiter = RateLimiter(limits=KeyLimits(rpm=3), clock=clock)
    for key in ("a", "b", "c"):
        limiter.admit(key, tokens=0)
    clock.now += 20  # the one request each spent is back: full, like a key never seen
    limiter.admit("d", tokens=0)
    assert len(limiter._keys) == 1
    limiter.admit("e", tokens=0)
    limiter.admit("f", tokens=0)
    limiter.admit("g", tokens=0)  # prunes again, but d, e, f are not full
    assert len(limiter._keys) == 4
    assert limiter.peek("d").requests == Meter(limit=3, remaining=2, full_in=20.0)


# --- headers -------------------------------------------------------------------------------


def decision(message: str = "", retry_after: float = 0.0) -> Decision:
    return Decision(
        now=T0,
        requests=Meter(limit=3, remaining=2, full_in=20.0),
        tokens=Meter(limit=1000, remaining=900, full_in=6.0),
        message=message,
        retry_after=retry_after,
    )


def test_openai_headers() -> None:
    assert headers_for("openai", decision()) == (
        ("x-ratelimit-limit-requests", "3"),
        ("x-ratelimit-limit-tokens", "1000"),
        ("x-ratelimit-remaining-requests", "2"),
        ("x-ratelimit-remaining-tokens", "900"),
        ("x-ratelimit-reset-requests", "20s"),
        ("x-ratelimit-reset-tokens", "6s"),
    )


def test_anthropic_headers_and_retry_after() -> None:
    assert headers_for("anthropic", decision("over", retry_after=12.2)) == (
        ("anthropic-ratelimit-requests-limit", "3"),
        ("anthropic-ratelimit-requests-remaining", "2"),
        ("anthropic-ratelimit-requests-reset", "2023-11-14T22:13:40Z"),
        ("anthropic-ratelimit-tokens-limit", "1000"),
        ("anthropic-ratelimit-tokens-remaining", "900"),
        ("anthropic-ratelimit-tokens-reset", "2023-11-14T22:13:26Z"),
        ("retry-after", "13"),
    )
    assert headers_for("openai", decision("over", retry_after=0.1))[-1] == ("retry-after", "1")


def test_only_enabled_limits_have_headers() -> None:
    only_requests = Decision(now=T0, requests=Meter(limit=3, remaining=3, full_in=0), tokens=None)
    assert [name for name, _ in headers_for("openai", only_requests)] == [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    ]


# --- through the router --------------------------------------------------------------------

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
MESSAGES = {**CHAT, "model": "claude-sonnet-4-5"}


def limited(limits: KeyLimits, require_key: str | None = None) -> tuple[Router, Clock]:
    clock = Clock()
    limiter = RateLimiter(limits=limits, clock=clock)
    router = Router(stats=Stats(), recorder=Recorder(), require_key=require_key, limiter=limiter)
    return router, clock


def send(
    router: Router, path: str, body: object, headers: list[tuple[str, str]], method: str = "POST"
) -> Reply:
    raw = json.dumps(body).encode() if body is not None else b""
    reply = router.handle(Request(method, path, "", "HTTP/1.1", headers, raw))
    assert isinstance(reply, Reply)
    return reply


def header(reply: Reply, name: str) -> str | None:
    return dict(reply.headers).get(name)


def test_openai_route_counts_down_then_429_in_openai_format() -> None:
    router, clock = limited(KeyLimits(rpm=3))
    key = [("authorization", "Bearer sk-a")]
    replies = [send(router, "/v1/chat/completions", CHAT, key) for _ in range(4)]
    assert [r.status for r in replies] == [200, 200, 200, 429]
    remaining = [header(r, "x-ratelimit-remaining-requests") for r in replies]
    assert remaining == ["2", "1", "0", "0"]
    refused = replies[3]
    assert header(refused, "retry-after") == "20"
    assert header(refused, "x-ratelimit-reset-requests") == "1m0s"
    error = json.loads(refused.body)["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert "Please try again in 20s" in error["message"]
    other = send(router, "/v1/chat/completions", CHAT, [("authorization", "Bearer sk-b")])
    assert (other.status, header(other, "x-ratelimit-remaining-requests")) == (200, "2")
    clock.now += 20
    assert send(router, "/v1/chat/completions", CHAT, key).status == 200


def test_anthropic_route_429_in_anthropic_format() -> None:
    router, _ = limited(KeyLimits(rpm=1))
    key = [("x-api-key", "sk-ant")]
    ok = send(router, "/v1/messages", MESSAGES, key)
    assert header(ok, "anthropic-ratelimit-requests-remaining") == "0"
    assert header(ok, "anthropic-ratelimit-requests-reset") == "2023-11-14T22:14:20Z"
    assert header(ok, "x-ratelimit-remaining-requests") is None
    refused = send(router, "/v1/messages", MESSAGES, key)
    assert refused.status == 429 and header(refused, "retry-after") == "60"
    assert json.loads(refused.body)["error"]["type"] == "rate_limit_error"


def test_the_key_is_the_providers_credential_header_per_provider() -> None:
    router, _ = limited(KeyLimits(rpm=2))
    send(router, "/v1/chat/completions", CHAT, [("authorization", "Bearer same")])
    reply = send(router, "/v1/chat/completions", CHAT, [("authorization", "bearer same")])
    assert header(reply, "x-ratelimit-remaining-requests") == "0"  # the scheme is not the key
    # each provider meters its own keys: the same secret at Anthropic is another bucket
    reply = send(router, "/v1/messages", MESSAGES, [("x-api-key", "same")])
    assert header(reply, "anthropic-ratelimit-requests-remaining") == "1"
    # an Anthropic route does not read the OpenAI header: no x-api-key is the empty key
    anonymous = send(router, "/v1/messages", MESSAGES, [("authorization", "Bearer same")])
    assert header(anonymous, "anthropic-ratelimit-requests-remaining") == "1"


def test_tokens_charged_are_prompt_plus_completion_cap() -> None:
    router, _ = limited(KeyLimits(tpm=10_000))
    key = [("authorization", "Bearer k")]
    reply = send(router, "/v1/chat/completions", {**CHAT, "n": 2}, key)
    prompt = json.loads(reply.body)["usage"]["prompt_tokens"]
    assert prompt == 3 + ntok("user", "o200k_base") + ntok("hi", "o200k_base") + 3
    assert header(reply, "x-ratelimit-remaining-tokens") == str(10_000 - prompt - 2 * 50)
    uncapped = {k: v for k, v in CHAT.items() if k != "max_tokens"}
    reply = send(
        router, "/v1/chat/completions", uncapped, [*key, ("x-mock-completion-tokens", "7")]
    )
    spent = 10_000 - prompt - 100 - (prompt + 7)
    assert header(reply, "x-ratelimit-remaining-tokens") == str(spent)


def test_embeddings_are_charged_their_input_tokens() -> None:
    router, _ = limited(KeyLimits(rpm=5, tpm=1000))
    body = {"model": "text-embedding-3-small", "input": "hello world"}
    reply = send(router, "/v1/embeddings", body, [("authorization", "Bearer k")])
    used = json.loads(reply.body)["usage"]["prompt_tokens"]
    assert header(reply, "x-ratelimit-remaining-tokens") == str(1000 - used)
    assert header(reply, "x-ratelimit-remaining-requests") == "4"


def test_answers_that_do_no_model_work_report_without_charging() -> None:
    router, _ = limited(KeyLimits(rpm=3), require_key="k")
    key = [("authorization", "Bearer k")]
    send(router, "/v1/chat/completions", CHAT, key)
    invalid = send(router, "/v1/chat/completions", {"model": "gpt-4o"}, key)
    scripted = send(router, "/v1/chat/completions", CHAT, [*key, ("x-mock-status", "503")])
    models = send(router, "/v1/models", None, key, method="GET")
    unknown = send(router, "/v1/nowhere", CHAT, key)
    for reply, status in ((invalid, 400), (scripted, 503), (models, 200), (unknown, 404)):
        assert reply.status == status
        assert header(reply, "x-ratelimit-remaining-requests") == "2"
    denied = send(router, "/v1/chat/completions", CHAT, [("authorization", "Bearer bad")])
    assert denied.status == 401 and header(denied, "x-ratelimit-limit-requests") is None


def test_no_limits_no_headers() -> None:
    router = Router(stats=Stats(), recorder=Recorder(), require_key=None)
    reply = send(router, "/v1/chat/completions", CHAT, [("authorization", "Bearer k")])
    assert not any("ratelimit" in name or name == "retry-after" for name, _ in reply.headers)
