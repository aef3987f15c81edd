"""The verdicts of the e2e forwarding table (tests/e2e/forwarding.py) catch what they are
for: each leak or refusal mistake below, planted in an otherwise good record or answer, must
fail its check — so a green table means the gateway behaved, not that the checks are blind."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.forwarding import (
    Either,
    Forwarded,
    Got,
    Refused,
    Secrets,
    check,
    check_forwarded,
    check_refused,
)

OPENAI_KEY = "sk-canary-openai-1"
ANTHROPIC_KEY = "sk-canary-anthropic-1"
SECRETS = Secrets(
    injected={
        "openai": ("authorization", f"Bearer {OPENAI_KEY}"),
        "anthropic": ("x-api-key", ANTHROPIC_KEY),
    },
    forbidden=("sk-leak", "tg-gateway-key"),
)
OK = Got(200, (("content-type", "application/json"),), b"{}")
EXPECT = Forwarded("openai", "/v1/chat/completions")


def record(**changes: Any) -> dict[str, Any]:
    headers = changes.pop("headers", [])
    good: dict[str, Any] = {
        "path": "/v1/chat/completions",
        "target": "/v1/chat/completions",
        "query": "",
        "headers": [
            ["authorization", f"Bearer {OPENAI_KEY}"],
            ["accept-encoding", "identity"],
            *headers,
        ],
        "trailers": [],
    }
    good.update(changes)
    good["credentials"] = {}
    for name, value in good["headers"]:
        if name in ("authorization", "x-api-key", "cookie", "proxy-authorization"):
            good["credentials"].setdefault(name, []).append(value)
    return good


def test_a_good_record_passes() -> None:
    check_forwarded(OK, EXPECT, 1, [record()], SECRETS)


@pytest.mark.parametrize(
    "bad",
    [
        record(headers=[["cookie", "s=1"]]),
        record(headers=[["proxy-authorization", "Basic x"]]),
        record(headers=[["authorization", "Bearer tg-gateway-key"]]),
        record(headers=[["x_api_key", "x"]]),
        record(headers=[["x-custom", "sk-leak"]]),
        record(headers=[["x-other", ANTHROPIC_KEY]]),
        record(headers=[["accept-encoding", "gzip"]]),
        record(trailers=[["x-api-key", "sk-leak"]]),
        record(query="API_KEY=abc", target="/v1/chat/completions?API_KEY=abc"),
        record(query="x=sk-leak", target="/v1/chat/completions?x=sk-leak"),
        record(path="/v1//chat/completions", target="/v1//chat/completions"),
    ],
    ids=[
        "cookie",
        "proxy-authorization",
        "second-authorization",
        "underscore",
        "leak-in-any-header",
        "other-providers-key",
        "compressed-upstream",
        "trailer",
        "credential-query",
        "leak-in-query",
        "raw-path",
    ],
)
def test_forwarded_check_catches(bad: dict[str, Any]) -> None:
    with pytest.raises(AssertionError):
        check_forwarded(OK, EXPECT, 1, [bad], SECRETS)


def test_forwarded_check_catches_wrong_provider_count_and_status() -> None:
    with pytest.raises(AssertionError):
        check_forwarded(OK, Forwarded("anthropic", "/v1/chat/completions"), 1, [record()], SECRETS)
    with pytest.raises(AssertionError):
        check_forwarded(OK, EXPECT, 2, [record(), record()], SECRETS)
    with pytest.raises(AssertionError):
        check_forwarded(Got(502, (), b"{}"), EXPECT, 1, [record()], SECRETS)


def refusal(body: object, *headers: tuple[str, str], status: int = 404) -> Got:
    return Got(status, (("content-type", "application/json"), *headers), json.dumps(body).encode())


OPENAI_404 = refusal(
    {"error": {"message": "no", "type": "invalid_request_error", "code": "unknown_url"}}
)
ANTHROPIC_405 = refusal(
    {"type": "error", "error": {"type": "invalid_request_error", "message": "no"}},
    ("allow", "POST"),
    status=405,
)


def test_refused_check() -> None:
    check_refused(OPENAI_404, Refused(404, "openai", "unknown_url"), 0)
    check_refused(ANTHROPIC_405, Refused(405, "anthropic", "invalid_request_error", "POST"), 0)
    for got, expect, called in [
        (OPENAI_404, Refused(404, "openai", "unknown_url"), 1),  # upstream was called
        (OPENAI_404, Refused(404, "anthropic"), 0),  # wrong provider format
        (OPENAI_404, Refused(404, "openai", "method_not_allowed"), 0),  # wrong code
        (ANTHROPIC_405, Refused(405, "anthropic", None, "GET"), 0),  # allow lacks GET
        (refusal("text", status=404), Refused(404, "openai"), 0),  # not the format at all
    ]:
        with pytest.raises((AssertionError, KeyError, TypeError)):
            check_refused(got, expect, called)


def test_either_accepts_only_its_two_outcomes() -> None:
    either = Either(EXPECT, (Refused(400, "openai"),))
    malformed = refusal({"error": {"message": "m", "type": "t", "code": None}}, status=400)
    check(malformed, either, 0, [], SECRETS)
    check(OK, either, 1, [record()], SECRETS)
    with pytest.raises(AssertionError):  # a 400 that the upstream answered: forwarded raw
        check(malformed, either, 1, [record(path="/v1/chat%2Fcompletions")], SECRETS)
    with pytest.raises(AssertionError):  # a refusal the row does not allow
        check(OPENAI_404, either, 0, [], SECRETS)
