"""Starting the control API's own gRPC server (never the ext_proc port): the Control
service behind bearer-token authentication, gRPC health and server reflection."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from grpc import aio as grpc_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from extproc.control import control_pb2, control_pb2_grpc
from extproc.control.service import ControlService, TokenAuth
from extproc.errors import ConfigError
from extproc.gate.runtime import Runtime
from extproc.serve.settings import ServeSettings

log = logging.getLogger(__name__)


async def start_control(
    settings: ServeSettings, runtime: Runtime, reload_status: Callable[[], tuple[str, float]]
) -> tuple[Any, int] | None:
    """The started server and its port, or None when the control API is off (no address,
    or no token file: the control API never runs unauthenticated)."""
    if settings.control is None:
        return None
    if settings.control_token_file is None:
        log.warning("control API disabled: no --control-token-file")
        return None
    server = grpc_aio.server(
        interceptors=[TokenAuth(settings.control_token_file)],
        options=[("grpc.so_reuseport", 1 if settings.reuse_port else 0)],
    )
    control_pb2_grpc.add_ControlServicer_to_server(  # type: ignore[no-untyped-call]
        ControlService(runtime, reload_status=reload_status), server
    )
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # stubs lag
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        control_pb2.DESCRIPTOR.services_by_name["Control"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port(str(settings.control))
    if port == 0:
        raise ConfigError(f"cannot listen on {settings.control}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port
