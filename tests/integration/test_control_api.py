"""The control API on its own port, with a real `tokengate serve`: bearer-token auth, never
served on the ext_proc port, reflection and health beside it."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from extproc.control import control_pb2 as pb
from extproc.control import control_pb2_grpc as pb_grpc
from extproc.dev.stack import Child
from tests.e2e.conftest import write_policies

TOKEN = "tgc-integration-token"


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Iterator[dict[str, int]]:
    root = tmp_path_factory.mktemp("control")
    (root / "token").write_text(TOKEN + "\n")
    cmd = [
        sys.executable,
        "-m",
        "extproc",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
        "--control-listen",
        "127.0.0.1:0",
        "--control-token-file",
        str(root / "token"),
        "--policy-dir",
        str(write_policies(root / "policies")),
        "--vocab-dir",
        str(vocab_dir),
    ]
    child = Child("sidecar", cmd, log_dir=root, env={"PATH": ""}, ready_prefix="tokengate ready ")
    ports: dict[str, int] = json.loads(child.wait_ready())
    yield ports
    assert child.stop() == 0, child.log_tail()


def _call(port: int, token: str | None) -> pb.GetPolicyResponse:
    metadata = [] if token is None else [("authorization", f"Bearer {token}")]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ControlStub(channel)  # type: ignore[no-untyped-call]
        response: pb.GetPolicyResponse = stub.GetPolicy(
            pb.GetPolicyRequest(), metadata=metadata, timeout=10
        )
        return response


def test_the_right_token_is_served(sidecar: dict[str, int]) -> None:
    policy = _call(sidecar["control"], TOKEN)
    assert len(policy.version) == 16
    assert "e2e" in policy.namespaces and policy.keys > 0


@pytest.mark.parametrize("token", [None, "tgc-wrong", ""])
def test_missing_or_wrong_tokens_are_unauthenticated(
    sidecar: dict[str, int], token: str | None
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _call(sidecar["control"], token)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_data_path_port_never_serves_control_calls(sidecar: dict[str, int]) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _call(sidecar["ext_proc"], TOKEN)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_reflection_and_health_beside_the_control_service(sidecar: dict[str, int]) -> None:
    metadata = [("authorization", f"Bearer {TOKEN}")]
    with grpc.insecure_channel(f"127.0.0.1:{sidecar['control']}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), metadata=metadata, timeout=10
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(stub.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=10))
        names = {s.name for s in answer.list_services_response.service}
        assert "tokengate.control.v1.Control" in names
