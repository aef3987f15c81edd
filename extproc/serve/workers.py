"""Process model of `tokengate serve`: one worker in-process, or N worker processes sharing
the ext_proc port with SO_REUSEPORT (the kernel spreads Envoy's connections over them) and
the quota store (Redis) for every budget.

With several workers the parent process only supervises: it holds the port, starts the
workers, serves /metrics for all of them (prometheus_client's multiprocess mode), forwards
SIGTERM for a graceful drain, and reports ready once every worker serves.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import threading
from dataclasses import replace
from multiprocessing.queues import Queue
from typing import Any

from prometheus_client import CollectorRegistry, multiprocess, start_http_server

from extproc.errors import ConfigError
from extproc.serve.server import announce_ready, serve, serve_settings
from extproc.serve.settings import Address, ServeSettings
from extproc.serve.wiring import build_runtime

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 120.0


def run(settings: ServeSettings) -> int:
    if settings.workers == 1:
        asyncio.run(serve_settings(settings))
        return 0
    return _supervise(settings)


def _worker(settings: ServeSettings, ready: Queue[Any], index: int) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s worker{index} %(name)s: %(message)s",
    )

    async def main() -> None:
        await serve(settings, build_runtime(settings), on_ready=ready.put)

    asyncio.run(main())


def _reserve_port(address: Address) -> socket.socket:
    """Hold the port (bound, not listening, so it takes no connections) for the workers."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        holder.bind((address.host, address.port))
    except OSError as exc:
        holder.close()
        raise ConfigError(f"cannot bind {address}: {exc.strerror}") from exc
    return holder


def _supervise(settings: ServeSettings) -> int:
    holder = _reserve_port(settings.ext_proc)
    port = holder.getsockname()[1]
    control_holder, control = None, None
    if settings.control is not None and settings.control_token_file is not None:
        control_holder = _reserve_port(settings.control)
        control = Address(settings.control.host, control_holder.getsockname()[1])
    metrics_dir = tempfile.mkdtemp(prefix="tokengate-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by the spawned workers
    worker_settings = replace(
        settings,
        ext_proc=Address(settings.ext_proc.host, port),
        control=control,
        metrics=None,
        ready_file=None,
        workers=1,
        reuse_port=True,
    )
    context = multiprocessing.get_context("spawn")
    ready: Queue[Any] = context.Queue()
    workers = [context.Process(target=_worker, args=(worker_settings, ready, i), daemon=False)
               for i in range(settings.workers)]  # fmt: skip
    for worker in workers:
        worker.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        for _ in workers:
            ready.get(timeout=READY_TIMEOUT_S)
        metrics_port = _serve_metrics(settings)
        _announce(settings, port, metrics_port, control.port if control else None)
        while not stop.wait(1.0):
            if any(not w.is_alive() for w in workers):
                log.error("a worker exited; stopping the server")
                break
    finally:
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                os.kill(worker.pid, signal.SIGTERM)
        for worker in workers:
            worker.join(settings.grace_s + 5)
        holder.close()
        if control_holder is not None:
            control_holder.close()
    return 0 if all(w.exitcode == 0 for w in workers) else 1


def _serve_metrics(settings: ServeSettings) -> int | None:
    if settings.metrics is None:
        return None
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    httpd, _ = start_http_server(settings.metrics.port, settings.metrics.host, registry=registry)
    return int(httpd.server_port)


def _announce(
    settings: ServeSettings, port: int, metrics_port: int | None, control_port: int | None
) -> None:
    ready: dict[str, object] = {
        "ext_proc": port,
        "metrics": metrics_port,
        "control": control_port,
        "workers": settings.workers,
    }
    log.info("%d workers serving ext_proc on %s:%d", settings.workers, settings.ext_proc.host, port)
    announce_ready(ready, settings.ready_file)
