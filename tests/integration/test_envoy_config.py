"""The rendered Envoy bootstraps are accepted by the real Envoy binary."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from extproc.kube.envoy_config import LocalEnvoy, Upstream, render_local
from tests.envoy_check import envoy_validate

VARIANTS = {
    "mock-upstream": LocalEnvoy(openai=Upstream.local(8000), anthropic=Upstream.local(8000)),
    "providers-over-tls": LocalEnvoy(),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_envoy_validates_the_rendered_config(tmp_path: Path, name: str) -> None:
    envoy_validate(render_local(VARIANTS[name]), tmp_path)


def test_ext_proc_filter_fails_closed_and_only_asks_for_request_headers() -> None:
    config = yaml.safe_load(render_local(LocalEnvoy()))
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    ext_proc = manager["typed_config"]["http_filters"][0]["typed_config"]
    assert ext_proc["failure_mode_allow"] is False
    assert ext_proc["allow_mode_override"] is True
    assert ext_proc["processing_mode"] == {
        "request_header_mode": "SEND",
        "response_header_mode": "SKIP",
        "request_body_mode": "NONE",
        "response_body_mode": "NONE",
        "request_trailer_mode": "SKIP",
        "response_trailer_mode": "SKIP",
    }
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    for name, host in (("openai", "api.openai.com"), ("anthropic", "api.anthropic.com")):
        assert clusters[name]["transport_socket"]["typed_config"]["sni"] == host
    assert "transport_socket" not in clusters["tokengate_ext_proc"]
