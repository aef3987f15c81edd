"""Envoy's side of the boundary, measured with the real Envoy: credential carriers the
sidecar never sees (underscore headers, request trailers) stop at Envoy, the access log holds
no query and no credential, and every answer reaches the sidecar uncompressed while clients
that asked still get gzip."""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.integration.envoy_probe import ANSWER, Probe, probe_envoy
from tests.integration.raw_http import Http1, Response, chunked_with_trailers, h2_post_with_trailers
from tests.integration.raw_http import request as raw_request
from tests.waiting import wait_until

PATH = "/v1/chat/completions"
CREDENTIAL_TRAILERS = {"authorization": "Bearer sk-t1", "x-api-key": "sk-t2", "cookie": "k=sk-t3"}


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Probe]:
    with probe_envoy(tmp_path_factory.mktemp("envoy")) as running:
        yield running


def _send(probe: Probe, raw: bytes) -> Response:
    connection = Http1(probe.port)
    try:
        return connection.send(raw)
    finally:
        connection.close()


def _last_upstream_request(probe: Probe, before: int) -> Any:
    return probe.upstream_saw(before + 1)[before]


def test_headers_with_underscores_reach_neither_the_sidecar_nor_the_provider(probe: Probe) -> None:
    before = len(probe.upstream.received)
    headers = {"x_api_key": "sk-u1", "X_Goog_Api_Key": "sk-u2", "openai_api_key": "sk-u3"}
    assert _send(probe, raw_request("POST", PATH, body=b"{}", headers=headers)).status == 200
    received = _last_upstream_request(probe, before)
    assert not [k for k, _ in received.headers if "_" in k]
    assert not [k for k in probe.ext_proc.seen[-1].request if "_" in k]
    assert b"sk-u" not in received.head


def _trailers_reach_provider(probe: Probe) -> list[list[tuple[str, str]]]:
    """Sends the credential trailers over HTTP/1.1 (chunked) and HTTP/2; what arrived."""
    before = len(probe.upstream.received)
    assert _send(probe, chunked_with_trailers(PATH, b"{}", CREDENTIAL_TRAILERS)).status == 200
    h2_post_with_trailers(probe.port, PATH, b"{}", list(CREDENTIAL_TRAILERS.items()))
    return [r.trailers for r in probe.upstream_saw(before + 2)[before:]]


def test_request_trailers_never_reach_the_provider(probe: Probe) -> None:
    assert _trailers_reach_provider(probe) == [[], []]
    assert not probe.upstream.received[-2].header("trailer")


def _trailers_enabled(config: dict[str, Any]) -> None:
    """A provider cluster that forwards request trailers (as HTTP/2 toward it would)."""
    resources = config["static_resources"]
    manager = resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    manager["http_protocol_options"]["enable_trailers"] = True
    options = {"explicit_http_config": {"http_protocol_options": {"enable_trailers": True}}}
    for cluster in resources["clusters"]:
        if cluster["name"] == "openai":
            cluster["typed_extension_protocol_options"] = {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                    "HttpProtocolOptions",
                    **options,
                }
            }


def _without_trailer_filter(config: dict[str, Any]) -> None:
    _trailers_enabled(config)
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters = manager["typed_config"]["http_filters"]
    filters[:] = [f for f in filters if f["name"] != "envoy.filters.http.header_mutation"]


def test_request_trailers_stop_at_envoy_even_where_a_cluster_forwards_them(
    tmp_path: Path,
) -> None:
    with probe_envoy(tmp_path / "guarded", doctor=_trailers_enabled) as guarded:
        assert _trailers_reach_provider(guarded) == [[], []]
    with probe_envoy(tmp_path / "open", doctor=_without_trailer_filter) as unguarded:
        expected = list(CREDENTIAL_TRAILERS.items())
        assert _trailers_reach_provider(unguarded) == [expected, expected]


def test_the_access_log_holds_no_query_and_no_credential(probe: Probe) -> None:
    marker, canary = uuid.uuid4().hex, f"sk-canary-{uuid.uuid4().hex}"
    headers = {"authorization": f"Bearer {canary}", "x-api-key": canary, "cookie": canary}
    path = f"/v1/{marker}?key={canary}&api_key={canary}"
    assert _send(probe, raw_request("POST", path, body=b"{}", headers=headers)).status == 200
    wait_until(lambda: marker in probe.log.read_text(), detail=probe.log.read_text)
    (line,) = [x for x in probe.log.read_text().splitlines() if marker in x]
    assert f'"POST /v1/{marker}"' in line
    assert canary not in probe.log.read_text()
    assert "?" not in line


def test_an_sdk_client_gets_gzip_and_the_sidecar_and_provider_see_identity(
    probe: Probe,
) -> None:
    """The openai SDK sends `accept-encoding: gzip, deflate`."""
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{probe.port}/v1", api_key="k", max_retries=0)
    before = len(probe.upstream.received)
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "x"}],
        extra_headers={"x-probe": "read-answer"},
    )  # fmt: skip
    assert raw.http_request.headers["accept-encoding"] == "gzip, deflate"
    assert raw.headers["content-encoding"] == "gzip"
    assert raw.parse().object == "chat.completion"
    assert _last_upstream_request(probe, before).header("accept-encoding") == ["identity"]
    seen = probe.ext_proc.seen[-1]
    assert "content-encoding" not in seen.response
    assert seen.response_body == ANSWER
    assert "accept-encoding" not in seen.request  # Envoy's business, not the sidecar's


@pytest.mark.parametrize(
    ("path", "asked", "compressed"),
    [
        (PATH, "gzip", True),
        (PATH + "/charset", "gzip", True),  # application/json; charset=utf-8
        (PATH, "identity", False),
        (PATH, "br", False),
        (PATH, "", False),
        ("/v1/sse", "gzip", False),  # SSE is never compressed (see envoy/local.yaml)
    ],
)
def test_answers_are_compressed_toward_clients_that_asked(
    probe: Probe, path: str, asked: str, compressed: bool
) -> None:
    before = len(probe.upstream.received)
    headers = {"x-probe": "read-answer", **({"accept-encoding": asked} if asked else {})}
    response = _send(probe, raw_request("POST", path, body=b"{}", headers=headers))
    assert response.status == 200
    assert (response.headers.get("content-encoding") == "gzip") is compressed
    assert _last_upstream_request(probe, before).header("accept-encoding") == ["identity"]
    seen = probe.ext_proc.seen[-1]
    plain = gzip.decompress(response.body) if compressed else response.body
    assert seen.response_body == plain
    assert "content-encoding" not in seen.response


def test_an_upstream_that_compresses_anyway_reaches_the_sidecar_as_it_is(probe: Probe) -> None:
    """The sidecar must decode it (or settle at the reservation); Envoy neither decodes it
    nor compresses it twice."""
    headers = {"x-probe": "read-answer", "accept-encoding": "gzip"}
    response = _send(probe, raw_request("POST", "/v1/gzip-anyway", body=b"{}", headers=headers))
    seen = probe.ext_proc.seen[-1]
    assert seen.response["content-encoding"] == "gzip"
    assert gzip.decompress(seen.response_body) == ANSWER
    assert gzip.decompress(response.body) == ANSWER
    assert json.loads(ANSWER)["object"] == "chat.completion"


def _compressor_after_ext_proc(config: dict[str, Any]) -> None:
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters = manager["typed_config"]["http_filters"]
    (compressor,) = [f for f in filters if f["name"] == "envoy.filters.http.compressor"]
    filters.remove(compressor)
    filters.insert(-1, compressor)


def test_with_the_compressor_after_ext_proc_the_sidecar_would_read_gzip(tmp_path: Path) -> None:
    """Why the compressor comes before ext_proc in the list: response filters run in
    reverse, and the other way round the sidecar is handed compressed bytes."""
    with probe_envoy(tmp_path, doctor=_compressor_after_ext_proc) as misplaced:
        headers = {"x-probe": "read-answer", "accept-encoding": "gzip"}
        assert (
            _send(misplaced, raw_request("POST", PATH, body=b"{}", headers=headers)).status == 200
        )
        seen = misplaced.ext_proc.seen[-1]
        assert seen.response["content-encoding"] == "gzip"
        assert gzip.decompress(seen.response_body) == ANSWER
