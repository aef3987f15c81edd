"""The processes of one benchmark run, pinned so that the gateway and the load never share a
core: Redis, the sidecar and both gateways (bare and governed Envoy) on the system-under-test
core(s); the load generator, the canned upstream and the mock provider on the driver core(s).
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import redis

from extproc.dev.bench import configs
from extproc.dev.bench.procs import Cores, EnvoyProcess, pin_tree, script_calls, tree
from extproc.dev.redis_server import RedisServer
from extproc.dev.stack import Child, StackError, child_env

UPSTREAM_KEY = "sk-bench-upstream"  # what the sidecar injects; the canned upstream ignores it


@dataclass(frozen=True, slots=True)
class SidecarOptions:
    """The process-model knobs the benchmark compares."""

    workers: int = 1
    store: str = "redis"  # "redis" (Unix socket) or "memory"
    extra_args: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        extra = " ".join(self.extra_args)
        return f"workers={self.workers} store={self.store}" + (f" {extra}" if extra else "")


@dataclass
class BenchStack:
    run_dir: Path
    vocab_dir: Path
    cores: Cores
    options: SidecarOptions = SidecarOptions()
    ports: dict[str, int] = field(default_factory=dict)
    floor_pids: dict[str, int] = field(default_factory=dict)
    _redis: RedisServer | None = None
    _stats_client: redis.Redis | None = None
    _children: dict[str, Child] = field(default_factory=dict)
    _envoys: dict[str, EnvoyProcess] = field(default_factory=dict)

    def start(self) -> BenchStack:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_driver_side()
            self._start_gateway_side()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_driver_side(self) -> None:
        mock = Child(
            "mock-provider",
            [sys.executable, "-m", "extproc", "mock-provider", "--port", "0",
             "--vocab-dir", str(self.vocab_dir)],
            log_dir=self.run_dir, env=child_env(), ready_prefix="mock-provider listening on ",
        )  # fmt: skip
        self._children["mock"] = mock
        self.ports["mock"] = int(mock.wait_ready().rsplit(":", 1)[1])
        pin_tree(mock.proc.pid, self.cores.driver)
        self.ports["upstream"] = self._envoy(
            "upstream", configs.upstream(self.ports["mock"]), "upstream", self.cores.driver
        )

    def _start_gateway_side(self) -> None:
        store = "memory"
        if self.options.store == "redis":
            (self.run_dir / "redis").mkdir(exist_ok=True)
            self._redis = RedisServer(self.run_dir / "redis").start()
            assert self._redis.proc is not None
            pin_tree(self._redis.proc.pid, self.cores.sut)
            store = self._redis.url
        policy_dir = configs.write_policy(self.run_dir / "policies")
        sidecar = Child(
            "sidecar",
            [sys.executable, "-m", "extproc", "serve", "--listen", "127.0.0.1:0",
             "--metrics-listen", "127.0.0.1:0", "--policy-dir", str(policy_dir),
             "--vocab-dir", str(self.vocab_dir), "--quota-store", store,
             "--workers", str(self.options.workers), *self.options.extra_args],
            log_dir=self.run_dir,
            env=child_env(OPENAI_API_KEY=UPSTREAM_KEY, ANTHROPIC_API_KEY=UPSTREAM_KEY),
            ready_prefix="tokengate ready ",
        )  # fmt: skip
        self._children["sidecar"] = sidecar
        ready = json.loads(sidecar.wait_ready())
        self.ports["ext_proc"], self.ports["metrics"] = ready["ext_proc"], ready["metrics"]
        pin_tree(sidecar.proc.pid, self.cores.sut)
        upstream = self.ports["upstream"]
        self.ports["governed"] = self._envoy(
            "governed", configs.governed(upstream, self.ports["ext_proc"]), "llm", self.cores.sut
        )
        self.ports["bare"] = self._envoy("bare", configs.bare(upstream), "llm", self.cores.sut)

    def _envoy(self, name: str, config: str, listener: str, cpus: frozenset[int]) -> int:
        envoy = EnvoyProcess(name, config, self.run_dir, concurrency=1)
        self._envoys[name] = envoy
        port = envoy.wait(listener)
        pin_tree(envoy.proc.pid, cpus)
        return port

    @property
    def sidecar_pids(self) -> list[int]:
        return tree(self._children["sidecar"].proc.pid)

    def server_pids(self, target: str) -> list[int]:
        """The ext_proc server behind gateway `target` (none for bare Envoy)."""
        if target == "governed":
            return self.sidecar_pids
        return tree(self.floor_pids[target]) if target in self.floor_pids else []

    def gateway_pids(self, target: str) -> dict[str, list[int]]:
        """Every process gateway `target` runs on, by part: its Envoy, its ext_proc server
        (none for bare Envoy) and, behind the sidecar, Redis."""
        parts = {"envoy": [self._envoys[target].proc.pid], "server": self.server_pids(target)}
        if target == "governed" and self._redis is not None and self._redis.proc is not None:
            parts["redis"] = [self._redis.proc.pid]
        return parts

    def store_reads(self) -> int:
        """Reads Redis has processed (`total_reads_processed`): one per round trip, however
        many commands a pipelined batch carries (0 for the in-process store)."""
        if self._redis is None:
            return 0
        return int(self._admin().info("stats")["total_reads_processed"])

    def _admin(self) -> redis.Redis:
        """One connection for the benchmark's own questions, so that each costs Redis one
        read (a new connection would add its handshake's)."""
        assert self._redis is not None
        if self._stats_client is None:
            self._stats_client = redis.Redis.from_url(self._redis.url)
        return self._stats_client

    def sidecar_worker_pids(self) -> list[int]:
        """The processes that serve ext_proc: the fork server's children (the supervisor,
        its fork server and multiprocessing's resource tracker only wait)."""
        parent = self._children["sidecar"].proc.pid
        return [p for p in self.sidecar_pids if p != parent and _ppid(p) != parent]

    def script_calls(self) -> int:
        """Quota scripts the store has run so far (0 for the in-process store)."""
        if self._redis is None:
            return 0
        return script_calls(self._admin().info("commandstats"))

    def envoy_stat(self, envoy: str, stat: str) -> int:
        """One counter from Envoy `envoy`'s admin."""
        url = f"http://{self._envoys[envoy].admin}/stats?format=json&filter=^{stat}$"
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(json.loads(response.read())["stats"][0]["value"])

    def add_floor(
        self, name: str, model: str, *, phases: int = 4, unix: bool = False, trim: str = ""
    ) -> None:
        """A do-nothing ext_proc server (`extproc.dev.bench.floor`) behind its own Envoy
        (with one listener feature taken out: `configs.TRIMS`)."""
        ready = self.run_dir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        socket_path = self.run_dir / f"{name}.sock"
        cmd = [sys.executable, "-m", "extproc.dev.bench.floor", model, str(ready),
               "--phases", str(phases)]  # fmt: skip
        if unix:
            cmd += ["--unix", str(socket_path)]
        child = Child(name, cmd, log_dir=self.run_dir, env=child_env(), ready_prefix=None)
        self._children[name] = child
        deadline = time.monotonic() + 30
        while not (ready.is_file() and ready.read_text()):
            if child.proc.poll() is not None or time.monotonic() > deadline:
                raise StackError(f"{name} did not start:\n{child.log_tail()}")
            time.sleep(0.02)  # poll interval: the floor server writes its port when serving
        pin_tree(child.proc.pid, self.cores.sut)
        self.ports[f"{name}:ext_proc"] = int(ready.read_text())  # 0 on a Unix socket
        config = configs.governed(self.ports["upstream"], max(int(ready.read_text()), 1))
        if unix:
            config = configs.over_unix(config, socket_path)
        if trim:
            config = configs.trimmed(config, trim)
        self.ports[name] = self._envoy(name, config, "llm", self.cores.sut)
        self.floor_pids[name] = child.proc.pid

    def repin_gateway(self, cpus: frozenset[int]) -> None:
        """Move the gateway side (Redis, sidecar, both Envoys) onto `cpus`."""
        pids = [self._envoys[n].proc.pid for n in ("governed", "bare")]
        pids.append(self._children["sidecar"].proc.pid)
        if self._redis is not None and self._redis.proc is not None:
            pids.append(self._redis.proc.pid)
        for pid in pids:
            pin_tree(pid, cpus)

    def requests_finished(self) -> float:
        """Requests the sidecar has finished (settled and counted), from its /metrics."""
        url = f"http://127.0.0.1:{self.ports['metrics']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return sum(
            float(line.rpartition(" ")[2])
            for line in text.splitlines()
            if line.startswith("tokengate_requests_total{")
        )

    def stop(self) -> None:
        for envoy in self._envoys.values():
            envoy.stop()
        for child in self._children.values():
            child.stop()
        if self._stats_client is not None:
            self._stats_client.close()
        if self._redis is not None:
            self._redis.stop()


def _ppid(pid: int) -> int:
    """The parent of `pid`, from /proc (the field after the command name)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
