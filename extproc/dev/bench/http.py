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

# Envoy's count of ext_proc messages it sent (the listener's stat prefix is `llm`).
EXT_PROC_MESSAGES = "http.llm.ext_proc.stream_msgs_sent"
CHUNKS_SHORT, CHUNKS_LONG = 10, 210
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
        self.loadgen = loadgen
        self.stack = stack
        self._requests = {}
        self._work_dir = work_dir
        for stream in (False, True):
            path = work_dir / f"request-{'stream' if stream else 'plain'}.http"
            path.write_bytes(configs.http_request(stream=stream))
            self._requests[stream] = path

    def run(
        self, target: str, load: Load, *, stream: bool = False, request: Path | None = None
    ) -> dict[str, Any]:
        cores = self.stack.cores
        busy = CoreBusy()
        parts = self.stack.gateway_pids(target)
        before = {part: cpu_seconds(pids) for part, pids in parts.items()}
        busy.start()
        # Pinned once started, not via preexec_fn (unsafe in a process with threads); the
        # generator's first microseconds may run anywhere, its run is on the driver core.
        proc = subprocess.Popen(
            [str(self.loadgen), "-p", str(self.stack.ports[target]),
             "-f", str(request or self._requests[stream]), "-c", str(load.connections),
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
        served = max(result["rps"], 1) * wall  # the warm-up ran at the same rate
        gateway = {
            part: round((cpu_seconds(pids) - before[part]) / served * 1e6)
            for part, pids in parts.items()
        }
        gateway["total"] = sum(gateway.values())
        result["gateway_cpu_us_per_request"] = gateway
        result["server_cpu_us_per_request"] = gateway["server"]  # 0 for bare Envoy
        if result["errors"] or result["non_2xx"]:
            raise StackError(f"{target}: failed requests in a benchmark run: {result}")
        return result

    def chunk_cpu(self, *, streams: int, connections: int, delay_ms: int) -> dict[str, Any]:
        """Gateway CPU (Envoy + sidecar + Redis) per streamed chunk through Envoy: streams of
        CHUNKS_LONG chunks against streams of CHUNKS_SHORT, the difference per extra chunk
        (what a request costs whatever its length cancels out). Chunks `delay_ms` apart
        reach the sidecar one per ext_proc message; Envoy's own count of messages says so."""
        cost = {}
        for chunks in (CHUNKS_SHORT, CHUNKS_LONG):
            path = self._work_dir / f"request-stream-{chunks}.http"
            path.write_bytes(configs.http_request(
                stream=True, completion_tokens=3 * chunks, chunk_delay_ms=delay_ms
            ))  # fmt: skip
            sent = self.stack.envoy_stat("governed", EXT_PROC_MESSAGES)
            load = Load(connections, 600.0, warmup_s=0, count=streams)
            result = self.run("governed", load, stream=True, request=path)
            messages = self.stack.envoy_stat("governed", EXT_PROC_MESSAGES) - sent
            per_stream = {k: v * result["seconds"] * result["rps"] / streams
                          for k, v in result["gateway_cpu_us_per_request"].items()}  # fmt: skip
            cost[chunks] = (per_stream, messages / streams)
        (short, short_msgs), (long, long_msgs) = cost[CHUNKS_SHORT], cost[CHUNKS_LONG]
        extra = CHUNKS_LONG - CHUNKS_SHORT
        per_chunk = {k: round((long[k] - short[k]) / extra, 1) for k in long}
        return {
            "chunk_cpu_us": per_chunk["total"],
            "by_part_us": per_chunk,
            "ext_proc_messages_per_chunk": round((long_msgs - short_msgs) / extra, 3),
            "streams": streams, "chunks": [CHUNKS_SHORT, CHUNKS_LONG], "chunk_delay_ms": delay_ms,
        }  # fmt: skip

    def saturated_round_trips(self, load: Load) -> dict[str, float]:
        """Quota-store round trips per plain request at saturation: Redis's reads (one per
        trip, however many script calls a batch carries) and script calls, per request the
        sidecar finished during the run (the few the generator cut at its end before their
        body was read finish without a reserve: script calls come out just under 2)."""
        finished, calls = self.stack.requests_finished(), self.stack.script_calls()
        reads = self.stack.store_reads()  # its own read is in the count; the next one's not
        self.run("governed", load)
        done, called = self._quiet(finished, calls)
        return {
            "round_trips": round((self.stack.store_reads() - reads - 1) / done, 3),
            "script_calls": round(called / done, 3),
        }

    def round_trips(self, *, stream: bool, requests: int) -> dict[str, float]:
        """Quota-store round trips per request at low load (4 connections at 200/s): Redis's
        reads (one per trip) and its script calls (one per quota decision), divided by the
        requests the sidecar served and settled. Background traffic (liveness, the ledger)
        lands in the same count, so this is an upper bound.

        Both runs are counted, not timed: a timed run ends with requests in flight that the
        sidecar goes on to reserve and settle after the generator and Envoy's counters have
        moved on, which charged their calls to too few requests (2.02 instead of 2.00 in
        about half the runs on a loaded machine)."""
        # Warm first: the very first call after a start finds the script not yet loaded
        # (EVALSHA, NOSCRIPT, EVAL), a one-off that is not a per-request cost.
        self._answered(5, 50.0, stream)
        rate = 50.0 if stream else 200.0
        background = self._background_reads(requests / rate)
        calls, reads = self.stack.script_calls(), self.stack.store_reads()
        self._answered(requests, rate, stream)
        reads = self.stack.store_reads() - reads - 1 - background
        return {
            "round_trips": round(reads / requests, 2),  # the background estimate: +-0.01
            "script_calls": round((self.stack.script_calls() - calls) / requests, 3),
            "background_reads": background,
        }

    def _background_reads(self, seconds: float) -> int:
        """Reads Redis gets from an idle sidecar in `seconds` (liveness renewals, the
        spending ledger, overrides), to take out of a count of per-request trips."""
        reads = self.stack.store_reads()
        time.sleep(seconds)  # an idle stretch as long as the counted run
        return self.stack.store_reads() - reads - 1

    def _quiet(self, finished: float, calls: int) -> tuple[float, int]:
        """Requests the sidecar finished since `finished`, and the script calls since
        `calls`, read together once neither moves any more (a timed run ends with some
        requests in flight: a settle's script call lands before its request is counted,
        so a snapshot taken while only the first had stopped read 2.01 calls a request on
        a loaded machine)."""
        last: tuple[float, int] = (-1.0, -1)
        while (now := (self.stack.requests_finished(), self.stack.script_calls())) != last:
            last = now
            time.sleep(0.2)  # the counts still moving: requests are settling
        return now[0] - finished, now[1] - calls

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
