"""Wiring and process model of `tokengate serve`: the ext_proc service, gRPC health,
Prometheus, and a graceful shutdown that settles every open request before exiting."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from grpc import aio as grpc_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from extproc.control.server import start_control
from extproc.errors import ConfigError
from extproc.gate import replies
from extproc.gate.credentials import Secret
from extproc.gate.processor import Processor
from extproc.gate.runtime import CredentialsHolder, Limits, Runtime, SnapshotHolder
from extproc.policy import load_directories
from extproc.policy.overrides import OverrideBook
from extproc.policy.prices import load_price_table
from extproc.providers import tokens
from extproc.quota import MemoryBackend
from extproc.quota.backends.redis import RedisBackend, connect
from extproc.quota.costing import check_prices
from extproc.quota.failover import FailoverStore
from extproc.serve.reload import Reloader
from extproc.serve.settings import ServeSettings
from extproc.telemetry.events import EventBus
from extproc.telemetry.ledger import Ledger
from extproc.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

_Handler = Callable[[Processor, ep.ProcessingRequest], Awaitable[ep.ProcessingResponse]]
# Each phase's message, plus what else of the request it needs (the request headers carry
# the metadata Envoy forwards: the verified service-account claims).
_PHASES: dict[str, _Handler] = {
    "request_headers": lambda p, r: p.on_request_headers(r.request_headers, r.metadata_context),
    "request_body": lambda p, r: p.on_request_body(r.request_body),
    "response_headers": lambda p, r: p.on_response_headers(r.response_headers),
    "response_body": lambda p, r: p.on_response_body(r.response_body),
}
_TRAILERS = {
    "request_trailers": ep.ProcessingResponse(request_trailers=ep.TrailersResponse()),
    "response_trailers": ep.ProcessingResponse(response_trailers=ep.TrailersResponse()),
}


class ExternalProcessor(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """One `Processor` per stream; settlement is handed to a task the shutdown waits for,
    so a client that disconnects mid-request still has its usage settled."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._phase_seconds = {p: runtime.metrics.phase_seconds.labels(p) for p in _PHASES}
        self.settling: set[asyncio.Task[None]] = set()

    async def Process(
        self, request_iterator: AsyncIterator[ep.ProcessingRequest], context: Any
    ) -> AsyncIterator[ep.ProcessingResponse]:
        processor = Processor(self._rt)
        self._rt.metrics.streams_open.inc()
        try:
            async for request in request_iterator:
                phase = request.WhichOneof("request")
                handler = _PHASES.get(phase)
                if handler is None:
                    if phase in _TRAILERS:
                        yield _TRAILERS[phase]
                    continue
                if phase == "request_body" and processor.needs_more_time(request.request_body):
                    yield replies.extend_timeout_reply(self._rt.limits.slow_count_timeout_s)
                started = time.perf_counter()
                try:
                    reply = await handler(processor, request)
                except Exception as exc:  # noqa: BLE001 - a bug must still answer the client
                    reply = processor.internal_error(exc)
                self._phase_seconds[phase].observe(time.perf_counter() - started)
                yield reply
        finally:
            self._rt.metrics.streams_open.dec()
            task = asyncio.get_running_loop().create_task(processor.finish())
            self.settling.add(task)
            task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self.settling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("settling a request failed", exc_info=task.exception())


def build_runtime(settings: ServeSettings) -> Runtime:
    """Everything a worker needs; must run inside its event loop (the Redis pool binds to
    it)."""
    tokens.use_vocab_dir(settings.vocab_dir)
    prices = load_price_table(settings.price_table) if settings.price_table else None
    snapshot = load_directories(settings.policy_dirs, allow_usd=prices is not None)
    check_prices(snapshot.policies.values(), prices)
    credentials: dict[str, Secret] = {}
    for upstream, source in settings.credentials.items():
        secret = source.load()
        if secret is not None:
            credentials[upstream] = secret
    counter = tokens.TokenCounter(threads=settings.tokenizer_threads)
    counter.warm_up()
    metrics = Metrics()
    metrics.policy_version.labels(snapshot.version).set(1)
    shared, client = None, None
    if settings.shared_store:
        client = connect(
            settings.quota_store,
            timeout_s=settings.store_timeout_s,
            max_in_flight=settings.store_connections,
            password=settings.quota_store_password(),
        )
        shared = RedisBackend(client, lease_ttl_s=settings.lease_ttl_s)
    events = EventBus()
    store = FailoverStore(
        local=MemoryBackend(lease_ttl_s=settings.lease_ttl_s), shared=shared, metrics=metrics,
        probe_interval_s=settings.probe_interval_s, events=events,
        max_in_flight=settings.store_connections,
    )  # fmt: skip
    return Runtime(
        policies=SnapshotHolder(snapshot),
        store=store,
        counter=counter,
        credentials=CredentialsHolder(credentials),
        metrics=metrics,
        limits=Limits(max_body_bytes=settings.max_body_bytes),
        prices=prices,
        events=events,
        overrides=OverrideBook(client=client),
        ledger=Ledger(client=client),
    )


async def serve_settings(settings: ServeSettings) -> None:
    await serve(settings, build_runtime(settings))


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
    )  # fmt: skip
    control = await start_control(
        settings, runtime, lambda: (reloader.last_error, reloader.last_reload_at)
    )
    upkeep = asyncio.get_running_loop().create_task(
        _upkeep(runtime, reloader, settings.reload_interval_s)
    )
    if on_ready is not None:
        on_ready(port)
    else:
        _announce(settings, port, metrics_port, control[1] if control else None, runtime)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
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
    in, this sidecar's spending out."""
    while True:
        try:
            await reloader.check()
            await runtime.overrides.refresh()
            await runtime.ledger.flush()
        except Exception:
            log.exception("upkeep failed; retrying next interval")
        await asyncio.sleep(interval_s)


def _announce(
    settings: ServeSettings, port: int, metrics_port: int | None, control_port: int | None,
    rt: Runtime,
) -> None:  # fmt: skip
    ready: dict[str, object] = {"ext_proc": port, "metrics": metrics_port, "control": control_port}
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
    announce_ready(ready, settings.ready_file)


def announce_ready(ready: dict[str, object], ready_file: Path | None) -> None:
    """The ready signal supervisors wait for: one stdout line, and the file if asked for
    (written atomically)."""
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(ready))
        tmp.replace(ready_file)
    sys.stdout.write(f"tokengate ready {json.dumps(ready)}\n")
    sys.stdout.flush()
