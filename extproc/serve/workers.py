"""Process model of `tokengate serve`: a parent that supervises N worker processes sharing
the ext_proc port with SO_REUSEPORT (the kernel spreads Envoy's connections over them); with
several workers the quota store (Redis) holds every budget.

The parent only supervises (supervisor.py): it holds the ports, starts the workers and
respawns one that dies, answers gRPC health on `--health-listen` and serves /metrics for all
of them (prometheus-client's multiprocess mode, plus its own restart counter), forwards
SIGTERM for a graceful drain, and reports ready once every worker serves. One worker (the
in-process store) runs the same way, so that it too is respawned; what it loses is its
in-process counters (docs/sidecar.md).

The parent imports nothing of the data path: it lives as long as the pod, so it stays small;
each worker imports the server when it starts.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from extproc.errors import ConfigError
from extproc.serve.fleet_status import FleetStatus, announce_ready, serve_metrics
from extproc.serve.settings import Address, ServeSettings
from extproc.serve.supervisor import RestartPolicy, Supervisor

log = logging.getLogger(__name__)
# The fork server's preload (imported there, never here) and where it finds the vocab.
ZYGOTE = "extproc.serve.zygote"
VOCAB_DIR_ENV = "TOKENGATE_WORKER_VOCAB_DIR"


def run(settings: ServeSettings, *, policy: RestartPolicy | None = None) -> int:
    """Serve until SIGTERM/SIGINT (exit 0), a crash loop (CRASH_LOOP_EXIT) or a worker that
    cannot start (its exit code: 2 for a configuration error)."""
    holder = _reserve_port(settings.ext_proc)
    port = holder.getsockname()[1]
    control_holder, control = None, None
    if settings.control is not None and settings.control_token_file is not None:
        control_holder = _reserve_port(settings.control)
        control = Address(settings.control.host, control_holder.getsockname()[1])
    metrics_dir = tempfile.mkdtemp(prefix="tokengate-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # the fork server's, so every worker's
    worker_settings = replace(
        settings,
        ext_proc=Address(settings.ext_proc.host, port),
        control=control,
        metrics=None,
        health=None,
        ready_file=None,
        workers=1,
        reuse_port=True,
    )
    # Workers are forked from a warm fork server (zygote.py): a respawn costs a fork, not a
    # new interpreter loading the vocab.
    os.environ[VOCAB_DIR_ENV] = str(settings.vocab_dir)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([ZYGOTE])
    # Only this process holds the write end: the workers read EOF the moment it is gone.
    lifeline, lifeline_w = context.Pipe(duplex=False)

    def spawn(index: int) -> tuple[BaseProcess, Connection]:
        ready_r, ready_w = context.Pipe(duplex=False)
        worker = context.Process(
            target=_worker, args=(worker_settings, ready_w, lifeline, index), daemon=False,
            name=f"tokengate-worker{index}",
        )  # fmt: skip
        worker.start()
        ready_w.close()  # the worker holds the only write end: its death is EOF
        return worker, ready_r

    status: FleetStatus | None = None
    try:
        status = FleetStatus(health_address=settings.health)
        metrics_port = serve_metrics(settings.metrics, status)

        def started() -> None:
            assert status is not None
            ready: dict[str, object] = {
                "ext_proc": port, "metrics": metrics_port,
                "control": control.port if control else None,
                "health": status.health_port, "workers": settings.workers,
            }  # fmt: skip
            log.info(
                "%d worker(s) serving ext_proc on %s:%d",
                settings.workers, settings.ext_proc.host, port,
            )  # fmt: skip
            announce_ready(ready, settings.ready_file)

        supervisor = Supervisor(
            workers=settings.workers, spawn=spawn, status=status,
            policy=policy or RestartPolicy.from_settings(settings), grace_s=settings.grace_s,
            on_started=started, on_ended=lambda pid: _forget_gauges(metrics_dir, pid),
        )  # fmt: skip
        return supervisor.run()
    finally:
        if status is not None:
            status.close()
        lifeline_w.close()
        holder.close()
        if control_holder is not None:
            control_holder.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _worker(settings: ServeSettings, ready: Connection, lifeline: Connection, index: int) -> None:
    """One worker process: serve until SIGTERM; tell the parent once serving."""
    _exit_with_supervisor(lifeline)
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s worker{index} %(name)s: %(message)s",
    )
    # Imported here (preloaded by the fork server) so that the parent stays free of them.
    import asyncio  # noqa: PLC0415

    from extproc.serve.server import serve  # noqa: PLC0415
    from extproc.serve.wiring import build_runtime  # noqa: PLC0415

    async def main() -> None:
        await serve(settings, build_runtime(settings), on_ready=ready.send)

    try:
        if settings.event_loop == "uvloop":
            import uvloop  # noqa: PLC0415

            uvloop.run(main())
        else:
            asyncio.run(main())
    except ConfigError as exc:
        sys.stderr.write(f"tokengate: {exc}\n")
        sys.exit(2)


def _exit_with_supervisor(lifeline: Connection) -> None:
    """A worker whose supervisor is gone (SIGKILL, OOM) drains and exits as on SIGTERM,
    rather than holding the port as an orphan nobody supervises: outside a container nothing
    else would stop it. (Not a parent-death signal: a worker's parent is the fork server,
    which lives as long as any worker does.)"""

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            lifeline.recv()  # nothing is ever sent: this returns at EOF
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def _forget_gauges(metrics_dir: str, pid: int) -> None:
    """A dead worker's gauges (open streams, store up, policy version) describe nothing any
    more; its counters and histograms stay, so that totals never go back after a respawn."""
    for path in glob.glob(os.path.join(metrics_dir, f"gauge_*_{pid}.db")):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _reserve_port(address: Address) -> socket.socket:
    """Hold the port (bound, not listening, so it takes no connections) for the workers, and
    keep it through every respawn."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        holder.bind((address.host, address.port))
    except OSError as exc:
        holder.close()
        raise ConfigError(f"cannot bind {address}: {exc.strerror}") from exc
    return holder
