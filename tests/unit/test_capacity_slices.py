"""Leased slices of a shared capacity: fetched only for a busy worker while the capacity
has room to spare (never ahead of a waiting request), handed out locally without a store
call, ended after their time with what was unused given back, and given back at shutdown."""

from __future__ import annotations

import asyncio

from extproc.gate.slices import SLICE_S, SliceBook
from extproc.policy.model import Limit, Measure
from extproc.quota import MemoryBackend, ScopedLimit
from extproc.quota.failover import FailoverStore
from extproc.quota.store import Cost, Decision, QuotaStore, Ticket
from extproc.quota.windows import Scope
from extproc.telemetry.metrics import Metrics

SCOPE = Scope("cap:tier")
RPS = ScopedLimit(SCOPE, Limit("rps", Measure.REQUESTS, 1000, 1))
TPS = ScopedLimit(SCOPE, Limit("tps", Measure.TOKENS, 1_000_000, 1))
LIMITS = (RPS, TPS)
ONE = Cost(requests=1, tokens=100)


def _store() -> tuple[FailoverStore, MemoryBackend]:
    shared = MemoryBackend()
    return FailoverStore(local=MemoryBackend(), shared=shared, metrics=Metrics()), shared


def _busy(book: SliceBook, requests: int, *, at: float = 100.0) -> float:
    """`requests` over one second through `take` (none covered yet): the worker's rate."""
    for i in range(requests + 1):
        assert not book.take("tier", ONE, at + i / requests)
    return at + 1.0


async def _turn(store: QuotaStore) -> Decision:
    decision = await store.reserve("r", LIMITS, ONE)
    assert decision.reservation is not None
    return decision


async def _settled(book: SliceBook) -> None:
    await asyncio.gather(*book._tasks)


def test_a_busy_worker_takes_a_slice_and_hands_it_out_without_the_store() -> None:
    async def scenario() -> None:
        store, shared = _store()
        book = SliceBook(store)
        now = _busy(book, 100)  # 100/s: a slice of 100 * 0.2 * 1.5 = 30 requests
        book.offer("tier", LIMITS, ONE, await _turn(store), now)
        await _settled(book)
        (held, _) = await shared.peek(LIMITS)
        assert held.used == 1 + 30  # the turn, and the slice reserved whole
        assert sum(book.take("tier", ONE, now) for _ in range(20)) == 20
        assert not book.take("tier", ONE, now + SLICE_S)  # its time is up: it ends
        await _settled(book)
        (used, tokens) = await shared.peek(LIMITS)
        assert (used.used, tokens.used) == (1 + 20, 100 + 20 * 100)  # the unused 10 came back
        book.offer("tier", LIMITS, ONE, await _turn(store), now + SLICE_S)
        await _settled(book)
        assert sum(book.take("tier", ONE, now + SLICE_S) for _ in range(40)) == 30  # no more
        await _settled(book)  # used up: ended at once, all of it charged
        assert [s.used for s in await shared.peek(LIMITS)] == [2 + 20 + 30, 200 + 5000]

    asyncio.run(scenario())


def test_unused_units_come_back_and_a_quiet_worker_takes_no_slice() -> None:
    async def scenario() -> None:
        store, shared = _store()
        book = SliceBook(store)
        book.offer("tier", LIMITS, ONE, await _turn(store), 1.0)  # no rate seen: no slice
        await _settled(book)
        assert [s.used for s in await shared.peek(LIMITS)] == [1, 100]
        now = _busy(book, 500)  # a slice of 150
        book.offer("tier", LIMITS, ONE, await _turn(store), now)
        await _settled(book)
        assert next(s.used for s in await shared.peek(LIMITS)) == 2 + 150
        assert book.take("tier", ONE, now)
        await book.aclose()  # shutdown: the 149 unused come back
        assert [s.used for s in await shared.peek(LIMITS)] == [3, 300]

    asyncio.run(scenario())


def test_no_slice_while_the_capacity_is_short_or_someone_waits() -> None:
    async def scenario() -> None:
        store, shared = _store()
        book = SliceBook(store)
        tight = (ScopedLimit(SCOPE, Limit("rps", Measure.REQUESTS, 50, 1)),)
        now = _busy(book, 100)  # a slice would be 30: room for 4 of them is not there
        decision = await store.reserve("r", tight, ONE)
        book.offer("tier", tight, ONE, decision, now)
        await _settled(book)
        assert not book._slices
        wide = (ScopedLimit(SCOPE, Limit("rps", Measure.REQUESTS, 130, 1)),)
        waiting = Ticket(member="batch/w", score=now + 10, hold_s=60)
        for i in range(100):  # 100 waiting requests' worth: the slice's ticket is behind them
            await shared.reserve(f"w{i}", wide, ONE, ticket=waiting if i == 99 else None)
        decision = await store.reserve("r2", wide, Cost(requests=1))
        book.offer("tier", wide, ONE, decision, now)
        await _settled(book)
        assert not book._slices

    asyncio.run(scenario())
