"""The benchmark behind `make bench`: what is run, in what order, and what is derived.

Bare and governed gateways run side by side in one stack and take turns (the order flips
every round), so that machine noise lands on both; each figure is the median of the rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import platform
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extproc.dev.bench import streams
from extproc.dev.bench.http import Driver, Load
from extproc.dev.bench.procs import Cores
from extproc.dev.bench.stack import BenchStack, SidecarOptions
from extproc.dev.stack import envoy_binary

TARGETS = {
    "throughput_ratio": 0.5,  # governed / bare, at saturation, at least
    "added_p50_ms": 1.0,  # at half of the governed peak, at most
    "chunks_per_s": 5000,  # per worker, at least
    "round_trips_plain": 2,  # at most
}


@dataclass(frozen=True, slots=True)
class Plan:
    rounds: int = 3
    seconds: float = 4.0
    saturation_connections: int = 16
    fixed_connections: int = 64
    stream_rate: float = 20.0
    chunk_streams: int = 200
    chunks_per_stream: int = 200
    concurrent_streams: int = 1000


def run(loadgen: Path, vocab_dir: Path, plan: Plan) -> dict[str, Any]:
    cores = Cores.split()
    os.sched_setaffinity(0, cores.driver)  # this process only waits, but never on the SUT
    results: dict[str, Any] = {"machine": _machine(cores), "plan": dataclasses.asdict(plan)}
    with tempfile.TemporaryDirectory(prefix="tokengate-bench-") as tmp:
        root = Path(tmp)
        with _stack(root / "main", vocab_dir, cores, SidecarOptions()) as stack:
            driver = Driver(loadgen, stack, root)
            results["plain"] = _plain(driver, plan)
            results["streaming"] = _streaming(driver, stack, plan)
            results["cost"] = _cost(driver, stack, plan)
            results["process_model"] = _floors(driver, plan)
        results["process_model"] |= _sidecar_variants(root, loadgen, vocab_dir, cores, plan)
    results["targets"] = _targets(results)
    return results


@contextlib.contextmanager
def _stack(
    run_dir: Path, vocab: Path, cores: Cores, options: SidecarOptions
) -> Iterator[BenchStack]:
    stack = BenchStack(run_dir, vocab, cores, options).start()
    try:
        yield stack
    finally:
        stack.stop()


def _take_turns(
    plan: Plan, labels: list[str], run_one: Callable[[str], dict[str, Any]]
) -> dict[str, list[Any]]:
    """Each label runs once a round, in an order rotated every round (for two: flipped),
    so that a slow moment of the machine does not land on one of them."""
    runs: dict[str, list[Any]] = {label: [] for label in labels}
    for index in range(plan.rounds):
        shift = index % len(labels)
        for label in labels[shift:] + labels[:shift]:
            runs[label].append(run_one(label))
    return runs


def _interleaved(plan: Plan, run_one: Callable[[str], dict[str, Any]]) -> dict[str, list[Any]]:
    return _take_turns(plan, ["bare", "governed"], run_one)


def _median(runs: list[dict[str, Any]], *path: str) -> float:
    values = []
    for run_result in runs:
        value: Any = run_result
        for key in path:
            value = value[key]
        values.append(float(value))
    return statistics.median(values)


def _plain(driver: Driver, plan: Plan) -> dict[str, Any]:
    peak = _interleaved(
        plan, lambda t: driver.run(t, Load(plan.saturation_connections, plan.seconds))
    )
    bare_rps, governed_rps = _median(peak["bare"], "rps"), _median(peak["governed"], "rps")
    rate = round(governed_rps / 2)
    fixed = _interleaved(
        plan, lambda t: driver.run(t, Load(plan.fixed_connections, plan.seconds, rate=rate))
    )
    p50 = {t: _median(fixed[t], "latency", "p50_us") / 1000 for t in fixed}
    p99 = {t: _median(fixed[t], "latency", "p99_us") / 1000 for t in fixed}
    # The same load with the gateway allowed on every core: at this rate the driver needs
    # about 1% of a core, so sharing costs little, while Envoy, sidecar and Redis stop
    # queueing behind each other on one core.
    stack = driver.stack
    stack.repin_gateway(stack.cores.sut | stack.cores.driver)
    spread = _interleaved(
        plan, lambda t: driver.run(t, Load(plan.fixed_connections, plan.seconds, rate=rate))
    )
    stack.repin_gateway(stack.cores.sut)
    spread_p50 = {t: _median(spread[t], "latency", "p50_us") / 1000 for t in spread}
    return {
        "bare_rps": round(bare_rps),
        "governed_rps": round(governed_rps),
        "throughput_ratio": round(governed_rps / bare_rps, 4),
        "governed_sidecar_cpu_us_per_request": _median(
            peak["governed"], "server_cpu_us_per_request"
        ),
        "fixed_rate_rps": rate,
        "bare_p50_ms": round(p50["bare"], 3),
        "bare_p99_ms": round(p99["bare"], 3),
        "governed_p50_ms": round(p50["governed"], 3),
        "governed_p99_ms": round(p99["governed"], 3),
        "added_p50_ms": round(p50["governed"] - p50["bare"], 3),
        "added_p99_ms": round(p99["governed"] - p99["bare"], 3),
        "all_cores_bare_p50_ms": round(spread_p50["bare"], 3),
        "all_cores_governed_p50_ms": round(spread_p50["governed"], 3),
        "all_cores_added_p50_ms": round(spread_p50["governed"] - spread_p50["bare"], 3),
        "runs": {"saturation": peak, "fixed_rate": fixed, "fixed_rate_all_cores": spread},
    }


def _streaming(driver: Driver, stack: BenchStack, plan: Plan) -> dict[str, Any]:
    load = Load(8, plan.seconds, rate=plan.stream_rate)
    ttft = _interleaved(plan, lambda t: driver.run(t, load, stream=True))
    first = {t: _median(ttft[t], "ttfb", "p50_us") / 1000 for t in ttft}
    first99 = {t: _median(ttft[t], "ttfb", "p99_us") / 1000 for t in ttft}
    chunks = asyncio.run(
        streams.chunk_rate(
            stack.ports["ext_proc"], stack.sidecar_worker_pids(), streams=plan.chunk_streams,
            concurrency=16, chunks=plan.chunks_per_stream,
        )
    )  # fmt: skip
    return {
        "bare_ttft_p50_ms": round(first["bare"], 3),
        "governed_ttft_p50_ms": round(first["governed"], 3),
        "added_ttft_p50_ms": round(first["governed"] - first["bare"], 3),
        "added_ttft_p99_ms": round(first99["governed"] - first99["bare"], 3),
        "chunks": chunks,
        "runs": ttft,
    }


def _cost(driver: Driver, stack: BenchStack, plan: Plan) -> dict[str, Any]:
    # Round trips first: the memory run leaves a thousand settlements landing afterwards.
    plain = driver.round_trips(stream=False, requests=400)
    streamed = driver.round_trips(stream=True, requests=100)
    memory = asyncio.run(
        streams.memory_per_stream(
            stack.ports["ext_proc"], stack.sidecar_pids, streams=plan.concurrent_streams
        )
    )
    return {
        "round_trips_plain": plain,
        "round_trips_stream": streamed,
        "stream_completion_tokens": 60,
        "memory": memory,
    }


FLOORS = {
    "floor: asyncio, TCP, 4 messages": ("asyncio", 4, False),
    "floor: asyncio, Unix socket, 4 messages": ("asyncio", 4, True),
    "floor: asyncio, TCP, 3 messages": ("asyncio", 3, False),
    "floor: threads, TCP, 4 messages": ("threads", 4, False),
}


def _floors(driver: Driver, plan: Plan) -> dict[str, Any]:
    targets = {}
    for index, (label, (model, phases, unix)) in enumerate(FLOORS.items()):
        targets[label] = name = f"floor{index}"
        driver.stack.add_floor(name, model, phases=phases, unix=unix)
    load = Load(plan.saturation_connections, plan.seconds)
    return _rotated(plan, {label: (driver, name) for label, name in targets.items()}, load)


def _sidecar_variants(
    root: Path, loadgen: Path, vocab: Path, cores: Cores, plan: Plan
) -> dict[str, Any]:
    variants = {
        "tokengate: 1 worker, Redis": SidecarOptions(),
        "tokengate: 2 workers, Redis": SidecarOptions(workers=2),
        "tokengate: 1 worker, in-process store": SidecarOptions(store="memory"),
    }
    with contextlib.ExitStack() as stacks:
        drivers = {}
        for index, (label, options) in enumerate(variants.items()):
            stack = stacks.enter_context(_stack(root / f"variant{index}", vocab, cores, options))
            drivers[label] = (Driver(loadgen, stack, root), "governed")
        return _rotated(plan, drivers, Load(plan.saturation_connections, plan.seconds))


def _rotated(plan: Plan, targets: dict[str, tuple[Driver, str]], load: Load) -> dict[str, Any]:
    """Variants take turns; differences smaller than a row's range are noise."""

    def run_one(label: str) -> dict[str, Any]:
        driver, target = targets[label]
        return driver.run(target, load)

    runs = _take_turns(plan, list(targets), run_one)
    return {label: _summary(label_runs) for label, label_runs in runs.items()}


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rps = [r["rps"] for r in runs]
    return {
        "rps": round(_median(runs, "rps")),
        "rps_min": round(min(rps)),
        "rps_max": round(max(rps)),
        "server_cpu_us_per_request": round(_median(runs, "server_cpu_us_per_request")),
        "p50_ms": round(_median(runs, "latency", "p50_us") / 1000, 3),
        "sut_core_busy": min(r["sut_core_busy"] for r in runs),
        "driver_core_busy": max(r["driver_core_busy"] for r in runs),
    }


def _targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    measured = {
        "throughput_ratio": results["plain"]["throughput_ratio"],
        "added_p50_ms": results["plain"]["added_p50_ms"],
        "chunks_per_s": results["streaming"]["chunks"]["chunks_per_s"],
        "round_trips_plain": results["cost"]["round_trips_plain"],
    }
    at_least = {"throughput_ratio", "chunks_per_s"}
    return [
        {
            "name": name,
            "target": target,
            "measured": measured[name],
            "met": measured[name] >= target if name in at_least else measured[name] <= target,
        }
        for name, target in TARGETS.items()
    ]


def _machine(cores: Cores) -> dict[str, Any]:
    envoy = subprocess.run(
        [envoy_binary(), "--version"], capture_output=True, text=True, check=False
    )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()  # fmt: skip
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    return {
        "commit": commit + ("+dirty" if dirty else ""),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "sut_cores": sorted(cores.sut),
        "driver_cores": sorted(cores.driver),
        "python": platform.python_version(),
        "envoy": envoy.stdout.strip().rsplit("/", 4)[-4] if envoy.stdout else "?",
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()
