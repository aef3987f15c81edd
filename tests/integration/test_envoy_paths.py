"""Envoy's side of the boundary, measured with the real Envoy: the one path both the sidecar
and the provider see for each spelling, Envoy's own replies in the provider's format, and
refusals that keep the client's connection.

The sidecar matches the :path it receives exactly (query removed), so each row says what
that path is; a spelling that arrives non-canonical (`/V1/…`, `;x=1`, a trailing `/`) is the
sidecar's to refuse as an unknown route.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.envoy_probe import Probe, Received, Seen, probe_envoy
from tests.integration.raw_http import Http1, Response, request

_ids = itertools.count()
CANONICAL = "/v1/chat/completions"
REFUSED = None  # a 400 from Envoy: neither the sidecar nor the provider sees the request

# sent -> the :path the sidecar and the provider both receive, or REFUSED.
SPELLINGS: dict[str, str | None] = {
    CANONICAL: CANONICAL,
    "/v1//chat/completions": CANONICAL,
    "//v1/chat/completions": CANONICAL,
    "/v1/./chat/completions": CANONICAL,
    "/v1/%2e/chat/completions": CANONICAL,
    "/v1/x/../chat/completions": CANONICAL,
    "/v1/chat/%2e%2e/chat/completions": CANONICAL,
    "/v1/../../chat/completions": "/chat/completions",
    "/v1/chat/%63ompletions": CANONICAL,
    "/v1\\chat\\completions": CANONICAL,
    "/V1/chat/completions": "/V1/chat/completions",
    "/v1/chat/completions;x=1": "/v1/chat/completions;x=1",
    "/v1/chat/completions%3Bx=1": "/v1/chat/completions%3Bx=1",
    "/v1/chat/completions/": "/v1/chat/completions/",
    "/v1/chat%252Fcompletions": "/v1/chat%252Fcompletions",
    "/v1/chat/completions?x=1": "/v1/chat/completions?x=1",
    "/v1/chat%2Fcompletions": REFUSED,
    "/v1/chat%2fcompletions": REFUSED,
    "/v1/chat%5Ccompletions": REFUSED,
    "/v1/chat/completions#frag": REFUSED,
}


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Probe]:
    with probe_envoy(tmp_path_factory.mktemp("envoy")) as running:
        yield running


def _send(probe: Probe, path: str, **headers: str) -> tuple[Response, str]:
    probe_id = str(next(_ids))
    connection = Http1(probe.port)
    try:
        return connection.send(request("POST", path, body=b"{}", headers={
            "x-probe-id": probe_id, **headers})), probe_id  # fmt: skip
    finally:
        connection.close()


def _sidecar_saw(probe: Probe, probe_id: str) -> list[Seen]:
    return [s for s in probe.ext_proc.seen if s.request.get("x-probe-id") == probe_id]


def _upstream_saw(probe: Probe, probe_id: str) -> list[Received]:
    return [r for r in probe.upstream.received if r.header("x-probe-id") == [probe_id]]


@pytest.mark.parametrize("sent", SPELLINGS)
def test_the_sidecar_and_the_provider_see_one_canonical_path(probe: Probe, sent: str) -> None:
    response, probe_id = _send(probe, sent)
    expected = SPELLINGS[sent]
    if expected is REFUSED:
        assert response.status == 400
        assert json.loads(response.body)["error"]["code"] == "invalid_request"
        assert _sidecar_saw(probe, probe_id) == []
        assert _upstream_saw(probe, probe_id) == []
        return
    assert response.status == 200
    (seen,) = _sidecar_saw(probe, probe_id)
    (received,) = _upstream_saw(probe, probe_id)
    assert seen.request[":path"] == received.path == expected


def _openai_error(response: Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = json.loads(response.body)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


def _anthropic_error(response: Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = json.loads(response.body)
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    return body["error"]  # type: ignore[no-any-return]


def _either_error(response: Response) -> dict[str, Any]:
    """For a request Envoy could not parse (no path known): valid in both formats."""
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = json.loads(response.body)
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


def test_envoy_refusals_are_in_the_openai_format(probe: Probe) -> None:
    slash, _ = _send(probe, "/v1/chat%2Fcompletions")
    assert slash.status == 400
    assert "path_normalization_failed" in _openai_error(slash)["message"]
    bad_gateway, _ = _send(probe, "/v1/not-http")  # the upstream answers garbage
    assert bad_gateway.status == 502
    assert _openai_error(bad_gateway)["code"] == "gateway_error"
    old = Http1(probe.port)
    try:
        http10 = old.send(b"GET /v1/models HTTP/1.0\r\nhost: gateway\r\n\r\n")
    finally:
        old.close()
    assert http10.status == 426  # any other Envoy refusal: the 4xx catch-all
    assert _either_error(http10)["code"] == "gateway_refused"  # refused by the codec


def test_envoy_refusals_under_v1_messages_are_in_the_anthropic_format(probe: Probe) -> None:
    slash, _ = _send(probe, "/v1/messages%2Fcount_tokens")
    assert slash.status == 400
    assert _anthropic_error(slash)["type"] == "invalid_request_error"
    bad_gateway, _ = _send(probe, "/v1/messages/not-http")
    assert bad_gateway.status == 502
    assert _anthropic_error(bad_gateway)["type"] == "api_error"


@pytest.mark.parametrize("path", [CANONICAL, "/v1/messages"])
@pytest.mark.parametrize(
    ("header", "status", "code"),
    [("x-bad header: 1", 400, "invalid_request"), ("x-big: " + "a" * 70_000, 431,
                                                   "request_too_large")],
)  # fmt: skip
def test_a_request_envoy_cannot_parse_gets_an_error_both_sdks_read(
    probe: Probe, path: str, header: str, status: int, code: str
) -> None:
    """An HTTP/1 codec error comes before Envoy has the headers, :path included."""
    raw = f"POST {path} HTTP/1.1\r\nhost: gateway\r\n{header}\r\ncontent-length: 2\r\n\r\n{{}}"
    connection = Http1(probe.port)
    try:
        response = connection.send(raw.encode())
    finally:
        connection.close()
    assert response.status == status
    assert _either_error(response)["code"] == code


def test_replies_the_sidecar_made_are_left_as_they_are(probe: Probe) -> None:
    response, _ = _send(probe, CANONICAL, **{"x-probe": "404@headers"})
    assert response.status == 404
    assert json.loads(response.body) == {"error": {"message": "probe 404", "type": "probe"}}


def _second_request_answered(probe: Probe, first: dict[str, str]) -> bool:
    connection = Http1(probe.port)
    try:
        connection.send(request("POST", CANONICAL, body=b'{"model": "m"}', headers=first))
        try:
            return connection.send(request("POST", CANONICAL, body=b"{}")).status == 200
        except OSError:
            return False
    finally:
        connection.close()


@pytest.mark.parametrize(
    "refusal", ["401@headers", "429@headers", "400@headers", "404@headers", "400@body",
                "413@body", "415@body", "429@body"],
)  # fmt: skip
def test_a_sidecar_refusal_keeps_the_connection(probe: Probe, refusal: str) -> None:
    assert _second_request_answered(probe, {"x-probe": refusal})


def test_a_malformed_request_still_closes_the_connection(probe: Probe) -> None:
    """HTTP/1 cannot find the next request after a framing error: Envoy must close."""
    connection = Http1(probe.port)
    try:
        response = connection.send(b"POST /v1/x HTTP/1.1\r\nhost: a\r\nbad header: x\r\n\r\n")
        assert response.status == 400
        assert response.headers["connection"] == "close"
        assert _either_error(response)["code"] == "invalid_request"
        with pytest.raises(OSError):
            connection.send(request("POST", CANONICAL, body=b"{}"))
    finally:
        connection.close()


def test_without_the_setting_envoy_closes_after_a_400_from_the_body_phase(
    tmp_path: Path,
) -> None:
    """Why `override_stream_error_on_invalid_http_message` is set: Envoy treats every 400
    local reply on HTTP/1 as a messaging error and closes, even the sidecar's."""

    def without(config: dict[str, Any]) -> None:
        manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        del manager["typed_config"]["http_protocol_options"]

    with probe_envoy(tmp_path, doctor=without) as plain:
        assert not _second_request_answered(plain, {"x-probe": "400@body"})
        assert _second_request_answered(plain, {"x-probe": "429@body"})
