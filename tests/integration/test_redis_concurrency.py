"""Many concurrent callers (threads and processes, each with its own Redis connection)
against one budget: admitted cost never exceeds the budget, and once everything settled the
stored usage equals the sum of the true costs exactly."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import threading

from extproc.policy.model import Algorithm, Limit, Measure
from extproc.quota import Cost, Scope, ScopedLimit
from extproc.quota.backends.redis import RedisBackend, connect
from tests.redis_server import RedisServer

NS = Scope("contended")
BUDGET = 5_000
TOKENS = ScopedLimit(NS, Limit("tokens", Measure.TOKENS, BUDGET, 86400, Algorithm.CALENDAR))
REQUESTS = ScopedLimit(NS, Limit("requests", Measure.REQUESTS, 10**6, 60, Algorithm.SLIDING))
INFLIGHT = ScopedLimit(NS, Limit("inflight", Measure.CONCURRENT, 6, None))
LIMITS = [TOKENS, REQUESTS, INFLIGHT]
ROUNDS = 60


async def _caller(url: str, seed: int) -> tuple[int, int, int]:
    """(admitted, refused, sum of true costs) for one caller's rounds."""
    rng = random.Random(seed)
    backend = RedisBackend(connect(url, timeout_s=5.0), lease_ttl_s=600, timeout_s=5.0)
    admitted = refused = spent = 0
    for i in range(ROUNDS):
        estimate = rng.randint(20, 120)
        decision = await backend.reserve(f"{seed}-{i}", LIMITS, Cost(1, estimate))
        if decision.reservation is None:
            refused += 1
            continue
        admitted += 1
        held = decision.reservation
        if rng.random() < 0.3:  # a stream outgrowing its reservation
            grown = await backend.debit(held, Cost(tokens=rng.randint(1, 30)))
            held = grown.reservation or held
        actual = rng.randint(0, held.cost.tokens)
        await backend.settle(held, Cost(1, actual))
        await backend.settle(held, Cost(1, actual))  # retried settles never count twice
        spent += actual
    await backend.aclose()
    return admitted, refused, spent


def _threads(url: str, seeds: list[int], out: multiprocessing.Queue[tuple[int, int, int]]) -> None:
    """One process: several threads, each with its own event loop and connection."""
    results: list[tuple[int, int, int]] = []
    threads = [threading.Thread(target=lambda s=s: results.append(asyncio.run(_caller(url, s))))
               for s in seeds]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        out.put(result)


def test_contended_budget_is_exact_across_threads_and_processes(server: RedisServer) -> None:
    context = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[tuple[int, int, int]] = context.Queue()
    seeds = [[p * 10 + t for t in range(3)] for p in range(3)]  # 3 processes x 3 threads
    processes = [context.Process(target=_threads, args=(server.url, s, out)) for s in seeds]
    for process in processes:
        process.start()
    results = [out.get(timeout=120) for _ in range(9)]
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    admitted = sum(r[0] for r in results)
    refused = sum(r[1] for r in results)
    spent = sum(r[2] for r in results)
    assert refused > 0, "the budget was never contended; the test proves nothing"
    assert spent <= BUDGET
    probe = asyncio.run(_read(server.url))
    assert probe == {"tokens": spent, "requests": admitted, "inflight": 0}


async def _read(url: str) -> dict[str, int]:
    backend = RedisBackend(connect(url), lease_ttl_s=600)
    blocker = ScopedLimit(NS, Limit("blocker", Measure.REQUESTS, 0, 60, Algorithm.CALENDAR))
    decision = await backend.reserve("probe", [*LIMITS, blocker], Cost(1, 1))
    await backend.aclose()
    return {s.scoped.limit.name: s.used for s in decision.states[:-1]}
