"""Processes for the benchmark: CPU pinning, CPU and memory readings from /proc, and Envoy
started with its log going straight to a file (not through a Python pipe, which would spend
the driver's CPU on every access-log line).

Linux only: the readings come from /proc, the pinning from sched_setaffinity.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extproc.dev.stack import StackError, envoy_admin_ready, envoy_binary, envoy_listener_port

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Cores:
    """Which CPUs the system under test gets and which the driver (load generator and
    upstream) gets, so that neither takes the other's time."""

    sut: frozenset[int]
    driver: frozenset[int]

    @classmethod
    def split(cls) -> Cores:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise StackError("the benchmark needs 2 CPUs: one for the gateway, one for load")
        half = len(cpus) // 2
        return cls(frozenset(cpus[:half]), frozenset(cpus[half:]))


def pin_tree(pid: int, cpus: frozenset[int]) -> None:
    """Pin every thread of `pid` and of its descendants (threads made later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
            children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except (ProcessLookupError, FileNotFoundError):
            continue
        for child in children:
            pin_tree(int(child), cpus)


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    found = [pid]
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except FileNotFoundError:
            continue
        for child in children:
            found.extend(tree(int(child)))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICKS


def script_calls(commandstats: Mapping[str, Any]) -> int:
    """Lua script calls in Redis's `INFO commandstats`. Every quota decision is one script
    call, so this counts round trips; Redis's command total would also count the commands
    each script runs inside the server."""
    names = ("eval", "evalsha", "eval_ro", "evalsha_ro")
    return sum(int(commandstats.get(f"cmdstat_{n}", {}).get("calls", 0)) for n in names)


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


class CoreBusy:
    """Busy fraction of each CPU between `start()` and `stop()`, from /proc/stat."""

    def __init__(self) -> None:
        self._before: dict[int, tuple[int, int]] = {}

    @staticmethod
    def _read() -> dict[int, tuple[int, int]]:
        out = {}
        for line in Path("/proc/stat").read_text().splitlines():
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu":
                ticks = [int(v) for v in values]
                idle = ticks[3] + ticks[4]  # idle + iowait
                out[int(name[3:])] = (sum(ticks[:8]), idle)
        return out

    def start(self) -> None:
        self._before = self._read()

    def stop(self) -> dict[int, float]:
        after = self._read()
        busy = {}
        for cpu, (total, idle) in after.items():
            total0, idle0 = self._before.get(cpu, (0, 0))
            span = total - total0
            busy[cpu] = round(1 - (idle - idle0) / span, 3) if span else 0.0
        return busy


class EnvoyProcess:
    """One Envoy, pinned, its output in `<run_dir>/<name>.log`."""

    def __init__(self, name: str, config: str, run_dir: Path, *, concurrency: int) -> None:
        self.name = name
        config_path = run_dir / f"{name}.yaml"
        config_path.write_text(config)
        self._admin_file = run_dir / f"{name}-admin.txt"
        self._log = (run_dir / f"{name}.log").open("w")
        self.proc = subprocess.Popen(
            [envoy_binary(), "-c", str(config_path), "--use-dynamic-base-id",
             "--admin-address-path", str(self._admin_file), "--log-level", "warn",
             "--concurrency", str(concurrency)],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.admin = ""

    def wait(self, listener: str, timeout_s: float = 60.0) -> int:
        """Wait until Envoy is LIVE; returns the port `listener` bound."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StackError(f"{self.name} exited; see its log")
            admin = envoy_admin_ready(self._admin_file)
            if admin is not None:
                self.admin = admin
                return envoy_listener_port(admin, listener)
            time.sleep(0.05)  # poll interval: Envoy has no ready signal but its admin
        raise StackError(f"{self.name} not LIVE after {timeout_s}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
