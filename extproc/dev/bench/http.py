"""HTTP runs through Envoy with the native load generator: saturation, fixed offered load,
time to first token, and quota-store round trips per request.

Every run records how busy each core was, so a result also says whether the gateway (its
core at ~100%) or the driver (load generator + upstream) was the limit.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extproc.dev.bench import configs
from extproc.dev.bench.procs import CoreBusy, cpu_seconds, pin_tree
from extproc.dev.bench.stack import BenchStack
from extproc.dev.stack import StackError

SUT_SATURATED = 0.95  # the gateway's core at least this busy: it, not the driver, was the limit


@dataclass(frozen=True, slots=True)
class Load:
    connections: int
    seconds: float
    warmup_s: float = 1.0
    rate: float = 0.0  # requests/s; 0 = closed loop (saturation)
    count: int = 0  # send exactly this many and wait for every answer; `seconds` caps it


class Driver:
    """Runs the load generator on the driver core against one of the stack's gateways."""

    def __init__(self, loadgen: Path, stack: BenchStack, work_dir: Path) -> None:
        self._loadgen = loadgen
        self.stack = stack
        self._requests = {}
        for stream in (False, True):
            path = work_dir / f"request-{'stream' if stream else 'plain'}.http"
            path.write_bytes(configs.http_request(stream=stream))
            self._requests[stream] = path

    def run(self, target: str, load: Load, *, stream: bool = False) -> dict[str, Any]:
        cores = self.stack.cores
        busy = CoreBusy()
        server = self.stack.server_pids(target)
        server_cpu = cpu_seconds(server)
        busy.start()
        # Pinned once started, not via preexec_fn (unsafe in a process with threads); the
        # generator's first microseconds may run anywhere, its run is on the driver core.
        proc = subprocess.Popen(
            [str(self._loadgen), "-p", str(self.stack.ports[target]),
             "-f", str(self._requests[stream]), "-c", str(load.connections),
             "-d", str(load.seconds), "-w", str(load.warmup_s), "-r", str(load.rate),
             "-n", str(load.count)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        pin_tree(proc.pid, cores.driver)
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise StackError(f"the load generator failed: {err}")
        per_cpu = busy.stop()
        result: dict[str, Any] = json.loads(out)
        wall = load.warmup_s + result["seconds"]  # a counted run may end early
        sut = max(per_cpu[c] for c in cores.sut)
        driver = max(per_cpu[c] for c in cores.driver)
        result |= {
            "target": target,
            "sut_core_busy": sut,
            "driver_core_busy": driver,
            "loadgen_core_share": round(result["cpu_seconds"] / wall, 3),
            "limited_by": _limit(sut, driver),
        }
        if server:
            used = cpu_seconds(server) - server_cpu
            result["server_cpu_us_per_request"] = round(used / wall / max(result["rps"], 1) * 1e6)
        if result["errors"] or result["non_2xx"]:
            raise StackError(f"{target}: failed requests in a benchmark run: {result}")
        return result

    def round_trips(self, *, stream: bool, requests: int) -> float:
        """Quota-store round trips per request: EVALSHA calls (every quota decision is one
        script call) divided by the requests the sidecar served and settled.

        Both runs are counted, not timed: a timed run ends with requests in flight that the
        sidecar goes on to reserve and settle after the generator and Envoy's counters have
        moved on, which charged their calls to too few requests (2.02 instead of 2.00 in
        about half the runs on a loaded machine)."""
        # Warm first: the very first call after a start finds the script not yet loaded
        # (EVALSHA, NOSCRIPT, EVAL), a one-off that is not a per-request cost.
        self._answered(5, 50.0, stream)
        calls = self.stack.script_calls()
        self._answered(requests, 50.0 if stream else 200.0, stream)
        return round((self.stack.script_calls() - calls) / requests, 2)

    def _answered(self, count: int, rate: float, stream: bool) -> None:
        """Send exactly `count` requests through the governed gateway, and return once every
        one is answered and the sidecar has finished (settled and counted) each of them."""
        finished = self.stack.requests_finished()
        cap = count / rate + 30.0  # generous: a loaded CI machine may queue
        result = self.run("governed", Load(4, cap, warmup_s=0, rate=rate, count=count),
                          stream=stream)  # fmt: skip
        if result["requests"] != count:
            raise StackError(f"{count} requests sent, {result['requests']} answered")
        deadline = time.monotonic() + 30
        while self.stack.requests_finished() - finished < count:
            if time.monotonic() > deadline:
                raise StackError("the sidecar did not finish every benchmark request")
            time.sleep(0.05)  # the sidecar counts a request after its answer; poll that count


def _limit(sut: float, driver: float) -> str:
    if driver >= SUT_SATURATED:
        return "driver"
    return "gateway" if sut >= SUT_SATURATED else "none"
