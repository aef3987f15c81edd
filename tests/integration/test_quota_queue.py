"""A shared capacity's queue, both backends alike (the in-process store and the real
Redis script): a ticket takes capacity only when the limits have room for it and for every
ticket with an earlier deadline; refused, it keeps its place; a holder that stops asking
loses it after its hold; leaving takes it out at once; a newcomer never overtakes."""

from __future__ import annotations

from extproc.policy.model import Measure
from extproc.quota.backends.memory import MemoryBackend
from extproc.quota.backends.redis import RedisBackend
from extproc.quota.store import Cost, QuotaStore, Ticket
from extproc.quota.windows import Scope
from tests.integration.quota_semantics import T0, BackendFactory, FakeClock, allowed, lim, refused

CAPACITY = Scope("cap:openai-tier")
ONE = Cost(requests=1, tokens=10)


def _ticket(name: str, score: float, hold_s: float = 5.0) -> Ticket:
    return Ticket(member=f"batch/{name}", score=score, hold_s=hold_s)


def test_a_ticket_goes_when_the_limits_have_room_for_it_and_those_ahead(
    backend_factory: BackendFactory,
) -> None:
    clock = FakeClock(T0 + 1)
    rpm = [lim("rpm", Measure.REQUESTS, 1, 60, scope=CAPACITY)]

    async def scenario(store: QuotaStore) -> None:
        first = await store.reserve("a", rpm, ONE, ticket=_ticket("a", T0 + 60))
        assert allowed(first) and first.ahead == 0
        late = await store.reserve("b", rpm, ONE, ticket=_ticket("b", T0 + 61))
        assert refused(late).retry_after > 0 and not late.queued  # the limit itself is full
        urgent = await store.reserve("c", rpm, ONE, ticket=_ticket("c", T0 + 12, 90))
        assert urgent.ahead == 0  # an earlier deadline (a higher class) goes ahead of b
        assert [m for m, _ in await store.queue(rpm)] == ["batch/c", "batch/b"]
        clock.now = T0 + 60  # the window turns: room for one
        behind = await store.reserve("b", rpm, ONE, ticket=_ticket("b", T0 + 61, 30))
        assert refused(behind).retry_after == 0 and behind.queued and behind.ahead == 1
        assert allowed(await store.reserve("c", rpm, ONE, ticket=_ticket("c", T0 + 12)))
        assert [m for m, _ in await store.queue(rpm)] == ["batch/b"]

    backend_factory.run(clock, scenario)


def test_several_waiting_tickets_go_in_one_refill(backend_factory: BackendFactory) -> None:
    clock = FakeClock(T0 + 1)
    rpm = [lim("rpm", Measure.REQUESTS, 3, 60, scope=CAPACITY)]

    async def scenario(store: QuotaStore) -> None:
        for name in "xyz":
            assert allowed(await store.reserve(name, rpm, ONE))  # without tickets: full
        for i, name in enumerate("abc"):
            waiting = await store.reserve(name, rpm, ONE, ticket=_ticket(name, T0 + 10 + i, 90))
            assert waiting.ahead == i
        clock.now = T0 + 60
        # c is third in line and the window has room for three: it need not wait for a, b
        assert allowed(await store.reserve("c", rpm, ONE, ticket=_ticket("c", T0 + 12)))
        newcomer = await store.reserve("d", rpm, ONE, ticket=_ticket("d", T0 + 99))
        assert newcomer.queued and newcomer.ahead == 2  # a and b first: never overtaken

    backend_factory.run(clock, scenario)


def test_a_holder_that_stops_asking_loses_its_place_and_leaving_is_at_once(
    backend_factory: BackendFactory,
) -> None:
    clock = FakeClock(T0 + 1)
    inflight = [lim("inflight", Measure.CONCURRENT, 1, None, scope=CAPACITY)]

    async def scenario(store: QuotaStore) -> None:
        held = allowed(await store.reserve("x", inflight, ONE))
        await store.reserve("gone", inflight, ONE, ticket=_ticket("gone", T0 + 5, hold_s=2))
        await store.reserve("quits", inflight, ONE, ticket=_ticket("quits", T0 + 6, hold_s=60))
        await store.reserve("waits", inflight, ONE, ticket=_ticket("waits", T0 + 7, hold_s=60))
        await store.leave(inflight, "batch/quits")
        clock.now = T0 + 4  # "gone" was last renewed 3 s ago with a 2 s hold
        assert [m for m, _ in await store.queue(inflight)] == ["batch/waits"]
        await store.settle(held, ONE)
        assert allowed(await store.reserve("waits", inflight, ONE, ticket=_ticket("waits", T0 + 7)))

    backend_factory.run(clock, scenario)


def test_a_take_counts_without_keeping_anything_to_settle(
    backend_factory: BackendFactory,
) -> None:
    """How a capacity with rate limits only takes its turn: the request is counted, and no
    reservation record is left for anyone to settle or sweep."""
    clock = FakeClock(T0 + 1)
    rpm = [lim("rpm", Measure.REQUESTS, 2, 60, scope=CAPACITY)]

    async def scenario(store: QuotaStore) -> None:
        for name in "ab":
            taken = await store.reserve(name, rpm, ONE, ticket=_ticket(name, T0 + 9), keep=False)
            assert allowed(taken)
        assert refused(await store.reserve("c", rpm, ONE, keep=False)).retry_after > 0
        assert [s.used for s in await store.peek(rpm)] == [2]
        assert await _records(store) == 0

    backend_factory.run(clock, scenario)


async def _records(store: QuotaStore) -> int:
    """Reservation records the store keeps (open, to be settled)."""
    if isinstance(store, MemoryBackend):
        return store.open_reservations()
    assert isinstance(store, RedisBackend)
    client = store._client
    return len([k async for k in client.scan_iter(match="tg:*:res:*")]) + int(
        await client.zcard("tg:{ns:cap:openai-tier}:open")
    )
