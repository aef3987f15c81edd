"""`--health-listen`: gRPC health on its own port for the kubelet, following the ext_proc
server's health (SERVING, then NOT_SERVING while it shuts down)."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from extproc.serve.server import health_server
from extproc.serve.settings import Address, ServeSettings


async def _status(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        status: int = reply.status
        return status


def test_health_port_answers_what_the_shared_servicer_says() -> None:
    async def scenario() -> None:
        servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        started = health_server(ServeSettings(health=Address("127.0.0.1", 0)), servicer)
        assert started is not None
        server, port = started
        await server.start()
        try:
            await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
            assert await _status(port) == health_pb2.HealthCheckResponse.SERVING
            await servicer.enter_graceful_shutdown()
            assert await _status(port) == health_pb2.HealthCheckResponse.NOT_SERVING
        finally:
            await server.stop(None)

    asyncio.run(scenario())


def test_no_health_port_unless_asked() -> None:
    assert health_server(ServeSettings(), object()) is None
