#!/opt/tokengate/bin/python
"""The image's HEALTHCHECK: ask the sidecar's gRPC health service whether it is SERVING.

It probes the address `tokengate serve` reads from TOKENGATE_HEALTH_LISTEN (the image sets
0.0.0.0:50053), or the one given as the first argument; a wildcard host is probed on
loopback. With the health listener off it probes the ext_proc address (TOKENGATE_LISTEN),
which answers health for its own worker. Exit 0 when SERVING, 1 otherwise (Docker's rule).

Kubernetes ignores HEALTHCHECK: the chart uses grpc probes on the same port.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_S = 3.0
_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}  # noqa: S104 - matched, not bound


def probe_target(argv: list[str], env: dict[str, str]) -> str:
    """host:port to probe: the argument, else the health listener, else the ext_proc one."""
    address = argv[0] if argv else env.get("TOKENGATE_HEALTH_LISTEN", "off")
    if address == "off":
        address = env.get("TOKENGATE_LISTEN", "127.0.0.1:50051")
    host, _, port = address.rpartition(":")
    if host in _WILDCARDS:
        host = "127.0.0.1"
    return f"{host}:{port}"


def main(argv: list[str]) -> int:
    target = probe_target(argv, dict(os.environ))
    try:
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S)
    except grpc.RpcError as exc:
        sys.stdout.write(f"tokengate health {target}: {exc.code().name}\n")
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    sys.stdout.write(f"tokengate health {target}: {status}\n")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
