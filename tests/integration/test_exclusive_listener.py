"""The measurement behind `tokengate dev`'s refusal to share its Envoy listener port.

A listener that sets SO_REUSEPORT (Envoy's default) lets a second one bind the same port,
and the kernel then splits connections between them. So the local stack probes the port
without SO_REUSEPORT before starting anything, and renders its Envoy listener without it,
so that a stack starting after the probe cannot slip in beside it either."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from extproc.dev.stack import envoy_admin_ready, envoy_binary, port_is_free
from extproc.kube.envoy_config import LocalEnvoy, Upstream, render_local
from tests.envoy_check import envoy_validate
from tests.waiting import wait_until


@pytest.fixture
def shared_port() -> Iterator[int]:
    """A port held as a running Envoy holds its listener: listening, with SO_REUSEPORT."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def test_the_probe_sees_a_listener_that_allows_sharing(shared_port: int) -> None:
    assert not port_is_free(shared_port)


def test_the_probe_sees_a_free_port() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = int(holder.getsockname()[1])
    assert port_is_free(port)


def _envoy(tmp_path: Path, *, port: int, exclusive: bool) -> subprocess.Popen[str]:
    config = render_local(
        LocalEnvoy(listen_port=port, admin_port=0, ext_proc_port=1, openai=Upstream.local(1),
                   anthropic=Upstream.local(1), exclusive_listener=exclusive)
    )  # fmt: skip
    (tmp_path / "envoy.yaml").write_text(config)
    cmd = [envoy_binary(), "-c", str(tmp_path / "envoy.yaml"), "--use-dynamic-base-id",
           "--admin-address-path", str(tmp_path / "admin.txt"), "--log-level", "warn"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_an_exclusive_envoy_listener_refuses_a_port_in_use(
    tmp_path: Path, shared_port: int
) -> None:
    envoy = _envoy(tmp_path, port=shared_port, exclusive=True)
    output, _ = envoy.communicate(timeout=60)
    assert envoy.returncode != 0
    assert f"cannot bind '127.0.0.1:{shared_port}': Address already in use" in output


def test_envoy_by_default_shares_a_port_in_use(tmp_path: Path, shared_port: int) -> None:
    """Why the local stack must check: Envoy's default setting starts and shares the port."""
    envoy = _envoy(tmp_path, port=shared_port, exclusive=False)
    try:
        wait_until(
            lambda: (
                envoy.poll() is not None or envoy_admin_ready(tmp_path / "admin.txt") is not None
            ),
            seconds=60,
        )
        assert envoy.poll() is None, envoy.communicate()[0]
    finally:
        envoy.terminate()
        envoy.communicate(timeout=30)


def test_envoy_accepts_an_https_upstream_by_name_on_an_exclusive_listener(
    tmp_path: Path,
) -> None:
    upstream = Upstream.from_url("https://llm.example.com:8443", what="--openai-upstream")
    config = render_local(LocalEnvoy(openai=upstream, exclusive_listener=True))
    envoy_validate(config, tmp_path)
