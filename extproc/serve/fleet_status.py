"""What the worker parent tells the outside about its fleet: gRPC health for the kubelet, the
restart counter and the serving-worker gauge on /metrics, and the ready announcement.

The parent answers these itself, not a worker: health must be able to say NOT_SERVING when no
worker can (all of them dead, or a crash loop), and a restart is only seen by the parent. It
stays light on purpose (no data-path imports): it runs for the pod's whole life.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, multiprocess, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from extproc.errors import ConfigError
from extproc.serve.settings import Address

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class FleetStatus(Collector):
    """Health and counters of the whole fleet. Health says SERVING once the fleet has started
    and while at least one worker serves (the others carry the load during a respawn);
    NOT_SERVING before that, while every worker is down, after a crash loop and during
    shutdown (for good: a fleet that gave up does not come back)."""

    def __init__(self, *, health_address: Address | None) -> None:
        self._lock = threading.Lock()
        self._restarts: dict[str, int] = {}
        self._serving = 0
        self._started = False
        self._servicer = health.HealthServicer()  # answers SERVING until told otherwise
        self._servicer.set("", _NOT_SERVING)
        self._published = _NOT_SERVING
        self._server: grpc.Server | None = None
        self.health_port: int | None = None
        if health_address is not None:
            pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="health")
            self._server = grpc.server(pool)
            health_pb2_grpc.add_HealthServicer_to_server(self._servicer, self._server)
            try:
                self.health_port = self._server.add_insecure_port(str(health_address))
            except RuntimeError as exc:
                raise ConfigError(f"cannot listen on {health_address} (--health-listen)") from exc
            self._server.start()

    def started(self) -> None:
        """Every worker served once: from now on health follows the serving count."""
        with self._lock:
            self._started = True
            self._publish()

    def workers_serving(self, count: int) -> None:
        with self._lock:
            self._serving = count
            self._publish()

    def restarted(self, reason: str) -> None:
        with self._lock:
            self._restarts[reason] = self._restarts.get(reason, 0) + 1

    def restarts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._restarts)

    def give_up(self) -> None:
        """Crash loop or shutdown: NOT_SERVING from now on, whatever the workers do."""
        self._servicer.enter_graceful_shutdown()

    def close(self) -> None:
        """A short grace so that health watchers receive the last NOT_SERVING."""
        if self._server is not None:
            self._server.stop(0.5).wait()

    def _publish(self) -> None:
        """On a change only: every set() is a message to each health watcher."""
        status = _SERVING if self._started and self._serving else _NOT_SERVING
        if status != self._published:
            self._published = status
            self._servicer.set("", status)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        restarts = CounterMetricFamily(
            "tokengate_worker_restarts",
            "Worker processes respawned by the supervisor, by how the previous one ended "
            "(SIGKILL, exit_N, start_timeout).",
            labels=["reason"],
        )
        with self._lock:
            for reason, count in sorted(self._restarts.items()):
                restarts.add_metric([reason], count)
            serving = self._serving
        yield restarts
        yield GaugeMetricFamily(
            "tokengate_workers_serving", "Worker processes serving ext_proc now.", value=serving
        )


def serve_metrics(address: Address | None, status: FleetStatus) -> int | None:
    """/metrics for the whole fleet: every worker's samples (prometheus-client's multiprocess
    files, those of dead workers included so counters never go back) plus the parent's own."""
    if address is None:
        return None
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(status)
    httpd, _ = start_http_server(address.port, address.host, registry=registry)
    return int(httpd.server_port)


def announce_ready(ready: dict[str, object], ready_file: Path | None) -> None:
    """The ready signal supervisors wait for: one stdout line, and the file if asked for
    (written atomically)."""
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(ready))
        tmp.replace(ready_file)
    sys.stdout.write(f"tokengate ready {json.dumps(ready)}\n")
    sys.stdout.flush()
