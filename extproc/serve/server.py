"""One worker of `tokengate serve`: the ext_proc service, gRPC health, Prometheus, and a
graceful shutdown that settles every open request before exiting. The processes around it
(supervision, respawn, the fleet's health and /metrics) are in workers.py."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from grpc import aio as grpc_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from extproc.control.server import start_control
from extproc.errors import ConfigError
from extproc.gate import key_budgets
from extproc.gate.runtime import Runtime
from extproc.gate.service import ExternalProcessor
from extproc.serve.fleet_status import announce_ready
from extproc.serve.key_files import KeyPoolWatch
from extproc.serve.reload import Reloader
from extproc.serve.settings import ServeSettings

log = logging.getLogger(__name__)


async def serve(
    settings: ServeSettings, runtime: Runtime, *, on_ready: Callable[[int], None] | None = None
) -> None:
    """Serve until SIGTERM/SIGINT, then drain. `on_ready` replaces the ready announcement
    (a worker tells its supervisor instead)."""
    # A partially buffered body can overshoot Envoy's buffer limit by what one read brought in;
    # accept it so that we, not gRPC, answer with a proper 413.
    max_message = settings.max_body_bytes * 4 + (1 << 20)
    server = grpc_aio.server(
        options=[
            ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
            ("grpc.max_receive_message_length", max_message),
        ]
    )
    service = ExternalProcessor(runtime)
    ep_grpc.add_ExternalProcessorServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # stubs lag
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(str(settings.ext_proc))
    if port == 0:
        raise ConfigError(f"cannot listen on {settings.ext_proc}")
    probe = health_server(settings, health_servicer)
    metrics_port = None
    if settings.metrics is not None:
        httpd, _ = start_http_server(
            settings.metrics.port, settings.metrics.host, registry=runtime.metrics.registry
        )
        metrics_port = httpd.server_port
    await server.start()
    if probe is not None:
        await probe[0].start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reloader = Reloader(
        policies=runtime.policies, policy_dirs=settings.policy_dirs,
        allow_usd=runtime.prices is not None, prices=runtime.prices,
        credentials=runtime.credentials, credential_sources=settings.credentials,
        metrics=runtime.metrics, events=runtime.events, interval_s=settings.reload_interval_s,
        pools=KeyPoolWatch(keys=runtime.keys, metrics=runtime.metrics, events=runtime.events),
    )  # fmt: skip
    control = await start_control(
        settings, runtime, lambda: (reloader.last_error, reloader.last_reload_at)
    )
    upkeep = asyncio.get_running_loop().create_task(
        _upkeep(runtime, reloader, settings.reload_interval_s)
    )
    # Before the ready signal: a supervisor may send SIGTERM the moment it has it.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _log_serving(settings, port, metrics_port, runtime)
    if on_ready is not None:
        on_ready(port)
    else:
        control_port = control[1] if control else None
        ready: dict[str, object] = {
            "ext_proc": port,
            "metrics": metrics_port,
            "control": control_port,
        }
        announce_ready(ready, settings.ready_file)
    await stop.wait()
    log.info("shutting down: draining for up to %.0fs", settings.grace_s)
    upkeep.cancel()
    await health_servicer.enter_graceful_shutdown()
    if control is not None:
        await control[0].stop(1.0)
    await server.stop(settings.grace_s)
    if probe is not None:
        await probe[0].stop(None)
    if service.settling:
        await asyncio.wait(service.settling, timeout=settings.grace_s)
    await runtime.slices.aclose()  # unused capacity slices come back
    await runtime.store.aclose()
    runtime.counter.close()


def health_server(settings: ServeSettings, servicer: Any) -> tuple[Any, int] | None:
    """A second server with the same health servicer, and its port: kubelets probe the pod
    IP, and the ext_proc port must not listen there (its replies carry provider keys)."""
    if settings.health is None:
        return None
    server = grpc_aio.server(options=[("grpc.so_reuseport", 1 if settings.reuse_port else 0)])
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(str(settings.health))
    if port == 0:
        raise ConfigError(f"cannot listen on {settings.health}")
    return server, port


async def _upkeep(runtime: Runtime, reloader: Reloader, interval_s: float) -> None:
    """Every interval: changed policies and key files in (hot reload), the fleet's overrides
    and pool keys' budgets in, this sidecar's spending out."""
    while True:
        try:
            await reloader.check()
            await runtime.overrides.refresh()
            await key_budgets.refresh(runtime)
            await runtime.ledger.flush()
        except Exception:  # upkeep must outlive a bug in one round; logged with its trace
            log.exception("upkeep failed; retrying next interval")
        await asyncio.sleep(interval_s)


def _log_serving(settings: ServeSettings, port: int, metrics_port: int | None, rt: Runtime) -> None:
    snapshot = rt.policies.current
    log.info(
        "serving ext_proc on %s:%d, metrics on %s; policy %s (%d namespaces, %d keys); "
        "credentials for %s",
        settings.ext_proc.host,
        port,
        metrics_port,
        snapshot.version,
        len(snapshot.policies),
        len(snapshot.keys_by_sha256),
        ", ".join(sorted(rt.credentials.current)) or "no upstream",
    )
