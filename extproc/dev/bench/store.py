"""Quota-store cost per request: round trips and latency of reserve + settle, in-process
vs Redis (Unix socket and TCP loopback), measured on a real redis-server.

    python -m extproc.dev.bench.store [--requests 3000]

Prints a table and one JSON line. Sequential calls: this is the latency a request pays,
not the store's throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from extproc.dev.bench.procs import script_calls
from extproc.dev.redis_server import RedisServer, free_port_pair
from extproc.policy.model import Algorithm, Limit, Measure
from extproc.quota import Cost, MemoryBackend, QuotaStore, Scope, ScopedLimit
from extproc.quota.backends.redis import RedisBackend, connect

NS, KEY = Scope("bench"), Scope("bench", "svc")
LIMITS = [
    ScopedLimit(NS, Limit("rpm", Measure.REQUESTS, 10**9, 60, Algorithm.BUCKET)),
    ScopedLimit(NS, Limit("tpm", Measure.TOKENS, 10**12, 60, Algorithm.SLIDING)),
    ScopedLimit(NS, Limit("daily", Measure.TOKENS, 10**12, 86400, Algorithm.CALENDAR)),
    ScopedLimit(NS, Limit("inflight", Measure.CONCURRENT, 10**6, None)),
    ScopedLimit(KEY, Limit("key-rpm", Measure.REQUESTS, 10**9, 60, Algorithm.BUCKET)),
]


async def _measure(backend: QuotaStore, requests: int) -> dict[str, float]:
    reserve, settle = [], []
    for i in range(requests):
        t0 = time.perf_counter()
        decision = await backend.reserve(f"b{i}", LIMITS, Cost(1, 1500))
        t1 = time.perf_counter()
        assert decision.reservation is not None
        await backend.settle(decision.reservation, Cost(1, 900))
        t2 = time.perf_counter()
        reserve.append(t1 - t0)
        settle.append(t2 - t1)
    return {"reserve_p50_us": _p(reserve, 50), "reserve_p99_us": _p(reserve, 99),
            "settle_p50_us": _p(settle, 50), "settle_p99_us": _p(settle, 99)}  # fmt: skip


def _p(samples: list[float], q: int) -> float:
    return round(statistics.quantiles(samples, n=100)[q - 1] * 1e6, 1)


async def _evalsha_calls(url: str) -> int:
    client = aioredis.from_url(url)
    stats: dict[str, Any] = await client.info("commandstats")
    await client.aclose()
    return script_calls(stats)


async def run(requests: int) -> dict[str, Any]:
    results: dict[str, Any] = {"limits_per_request": len(LIMITS), "requests": requests}
    results["memory"] = await _measure(MemoryBackend(), requests)
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp)).start()
        tcp_port = free_port_pair()
        await aioredis.from_url(server.url).config_set("port", tcp_port)
        try:
            tcp = f"redis://127.0.0.1:{tcp_port}"
            for name, url in (("redis_unix", server.url), ("redis_tcp", tcp)):
                backend = RedisBackend(connect(url, timeout_s=1.0), lease_ttl_s=600)
                before = await _evalsha_calls(server.url)
                results[name] = await _measure(backend, requests)
                results[name]["round_trips_per_request"] = (
                    await _evalsha_calls(server.url) - before
                ) / requests
                await backend.aclose()
        finally:
            server.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    results = asyncio.run(run(parser.parse_args().requests))
    out = sys.stdout
    out.write(f"{'store':<12}{'reserve p50':>12}{'p99':>9}{'settle p50':>12}{'p99':>9}")
    out.write(f"{'round trips':>13}\n")
    for name in ("memory", "redis_unix", "redis_tcp"):
        r = results[name]
        out.write(
            f"{name:<12}{r['reserve_p50_us']:>10.0f}us{r['reserve_p99_us']:>7.0f}us"
            f"{r['settle_p50_us']:>10.0f}us{r['settle_p99_us']:>7.0f}us"
            f"{r.get('round_trips_per_request', 0):>13.2f}\n"
        )
    out.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
