"""`tokengate ctl`'s printed forms without a server: humanised values, tables and the JSON
shapes scripts read."""

from __future__ import annotations

import json

import pytest

from extproc.control import control_pb2 as pb
from extproc.ctl import output as out

# --- values as printed ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-3, "0s"),
        (0.2, "1s"),  # not reset yet: rounded up
        (42, "42s"),
        (59.5, "1m0s"),
        (360, "6m0s"),
        (3723, "1h2m3s"),
        (86400 * 2 + 5, "2d0h0m5s"),
        (float("inf"), "0s"),
    ],
)
def test_duration_is_humanised(seconds: float, text: str) -> None:
    assert out.duration(seconds) == text


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (0, "$0.00"),
        (12_340_000, "$12.34"),
        (50_000_000, "$50.00"),
        (1_234, "$0.001234"),  # a small spend never shows as $0.00
        (12_345_600, "$12.3456"),
        (-1_500_000, "-$1.50"),
    ],
)
def test_micro_dollars_are_shown_as_dollars(micro: int, text: str) -> None:
    assert out.dollars(micro) == text
    assert out.amount(micro, "usd") == text


def test_other_measures_are_plain_integers() -> None:
    assert out.amount(1234567, "tokens") == "1234567"


# --- tables and JSON --------------------------------------------------------------------


def _usage() -> pb.GetUsageResponse:
    return pb.GetUsageResponse(
        limits=[
            pb.LimitUsage(
                name="tpm", scope="team-a", measure="tokens", algorithm="calendar", per="1m",
                used=1200, limit=100000, remaining=98800, reset_seconds=41.3,
            ),
            pb.LimitUsage(
                name="spend", scope="team-a/billing", measure="usd", algorithm="calendar",
                per="30d", used=12_340_000, limit=50_000_000, remaining=37_660_000,
                reset_seconds=3723,
            ),
            pb.LimitUsage(
                name="inflight", scope="team-a", measure="concurrent", algorithm="lease",
                used=0, limit=20, remaining=20,
            ),
        ],
        policy_version="abc123",
        store_up=True,
    )  # fmt: skip


def test_usage_table() -> None:
    lines = out.usage_table(_usage()).splitlines()
    assert lines[0].split() == [
        "LIMIT", "SCOPE", "MEASURE", "PER", "USED", "LIMIT", "REMAINING", "RESET",
    ]  # fmt: skip
    assert lines[1].split() == ["tpm", "team-a", "tokens", "1m", "1200", "100000", "98800", "42s"]
    assert lines[2].split() == [
        "spend", "team-a/billing", "usd", "30d", "$12.34", "$50.00", "$37.66", "1h2m3s",
    ]  # fmt: skip
    assert lines[3].split() == ["inflight", "team-a", "concurrent", "-", "0", "20", "20", "-"]
    # Columns line up: every row starts its SCOPE column where the header does.
    scope_at = lines[0].index("SCOPE")
    assert all(line[scope_at - 2 : scope_at] == "  " for line in lines)


def test_usage_json_keeps_proto_names_defaults_and_integers() -> None:
    data = json.loads(out.json_document(out.to_json(_usage())))
    assert set(data) == {"limits", "policy_version", "store_up"}
    spend = data["limits"][1]
    assert spend["used"] == 12_340_000  # micro-dollars, a JSON number (not a string)
    assert spend["reset_seconds"] == 3723
    inflight = data["limits"][2]
    assert inflight["per"] == "" and inflight["reset_seconds"] == 0  # defaults are printed
    assert set(inflight) == {
        "name", "scope", "measure", "algorithm", "per", "used", "limit", "remaining",
        "reset_seconds",
    }  # fmt: skip


def test_empty_message_json_has_every_field() -> None:
    assert out.to_json(pb.GetPolicyResponse()) == {
        "version": "",
        "loaded_at": 0,
        "sources": [],
        "namespaces": [],
        "keys": 0,
        "last_reload_error": "",
        "last_reload_at": 0,
        "routes": [],
        "model_routes": [],
    }


def test_backends_table_shows_breaker_and_headroom() -> None:
    response = pb.GetBackendsResponse(
        store_up=True,
        backends=[
            pb.BackendHealth(
                backend="openai/gpt-4o", state="open", failures=5, open_for_seconds=12,
                remaining_requests=-1, remaining_tokens=-1, requests_reset_seconds=-1,
                tokens_reset_seconds=-1, retry_after_seconds=-1, routes=["gpt-4o"],
            ),
            pb.BackendHealth(
                backend="anthropic/claude-sonnet-4-5", state="closed", failures=0,
                remaining_requests=3, requests_reset_seconds=20, remaining_tokens=-1,
                tokens_reset_seconds=-1, retry_after_seconds=-1, routes=["gpt-4o", "sonnet"],
            ),
        ],
    )  # fmt: skip
    lines = out.backends_table(response).splitlines()
    assert lines[0].split()[:3] == ["BACKEND", "BREAKER", "FAILURES"]
    assert lines[1].split() == ["openai/gpt-4o", "open", "12s", "5", "-", "-", "-", "gpt-4o"]
    assert lines[2].split() == [
        "anthropic/claude-sonnet-4-5", "closed", "0", "3", "(20s)", "-", "-", "gpt-4o,", "sonnet",
    ]  # fmt: skip


def test_top_table_in_the_measure_unit() -> None:
    response = pb.TopConsumersResponse(
        consumers=[
            pb.Consumer(caller=pb.Caller(namespace="team-a", key="billing"), amount=2_500_000),
            pb.Consumer(caller=pb.Caller(namespace="team-b"), amount=10_000),
        ],
        window="1h",
        measure="usd",
    )
    lines = out.top_table(response).splitlines()
    assert lines[0].split() == ["NAMESPACE", "KEY", "USD"]
    assert lines[1].split() == ["team-a", "billing", "$2.50"]
    assert lines[2].split() == ["team-b", "-", "$0.01"]


def test_policy_text() -> None:
    text = out.policy_text(
        pb.GetPolicyResponse(
            version="0123abcd", loaded_at=1_700_000_000.7, sources=["a.yaml", "b.yaml"],
            namespaces=["a", "b"], keys=3, last_reload_error="b.yaml (document 2): spec: bad",
            last_reload_at=1_700_000_060,
        )
    )  # fmt: skip
    assert "version:            0123abcd\n" in text
    assert "loaded at:          2023-11-14T22:13:20Z\n" in text
    assert "sources:            a.yaml, b.yaml\n" in text
    assert "namespaces:         2 (a, b)\n" in text
    assert "keys:               3\n" in text
    assert "last reload error:  b.yaml (document 2): spec: bad\n" in text
    assert "last reload error:  none" in out.policy_text(pb.GetPolicyResponse())
    assert "routes opened:      none (default deny)\n" in text


def test_policy_text_lists_the_routes_default_deny_lets_through() -> None:
    route = pb.OpenRoute(
        name="files", namespace="team-a", methods=["GET", "DELETE"], path="/v1/files/*",
        provider="openai", namespaces=["team-a"], limits=["files-rpm"],
    )  # fmt: skip
    text = out.policy_text(pb.GetPolicyResponse(routes=[route]))
    assert "routes opened:      1\n" in text
    line = "GET,DELETE /v1/files/* -> openai for team-a (files, namespace team-a; limits files-rpm)"
    assert f"  {line}\n" in text


def test_override_and_reset_text() -> None:
    block = pb.SetOverrideRequest(
        caller=pb.Caller(namespace="team-a", key="billing"), kind=pb.SetOverrideRequest.BLOCK
    )
    expires = pb.SetOverrideResponse(expires_at=1_700_000_900)
    assert out.override_text(block, expires, now=1_700_000_000, unit="") == (
        "team-a/billing is blocked until 2023-11-14T22:28:20Z (in 15m0s)\n"
    )
    extra = pb.SetOverrideRequest(
        caller=pb.Caller(namespace="team-a"),
        kind=pb.SetOverrideRequest.EXTRA_QUOTA,
        limit="spend",
        amount=2_500_000,
    )
    assert out.override_text(extra, expires, now=1_700_000_000, unit="usd").startswith(
        "team-a has $2.50 extra on limit spend until "
    )
    reset = pb.ResetUsageRequest(caller=pb.Caller(namespace="team-a"))
    assert out.reset_text(reset, pb.ResetUsageResponse(limits_reset=1)) == (
        "reset 1 limit of team-a\n"
    )


def test_event_line_and_json_line() -> None:
    event = pb.Event(
        at=1_700_000_000.25,
        kind="refusal",
        caller=pb.Caller(namespace="team-a", key="billing"),
        limit="tpm",
        message="limit tpm:\nused 100",
    )
    line = out.event_line(event)
    assert line.endswith("\n") and line.count("\n") == 1
    assert line.split() == [
        "2023-11-14T22:13:20.250Z", "refusal", "team-a/billing", "tpm", "limit", "tpm:", "used",
        "100",
    ]  # fmt: skip
    assert out.event_line(pb.Event(at=1, kind="reload")).split()[1:3] == ["reload", "-"]
    # A sub-message that is not set still appears, with its defaults: the shape never varies.
    assert out.to_json(pb.Event(kind="reload"))["caller"] == {"namespace": "", "key": ""}
    data = json.loads(out.json_line(out.to_json(event)))
    assert data == {
        "at": 1_700_000_000.25,
        "kind": "refusal",
        "caller": {"namespace": "team-a", "key": "billing"},
        "limit": "tpm",
        "message": "limit tpm:\nused 100",
    }
