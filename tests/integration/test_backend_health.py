"""Backend health: one semantics suite run against `MemoryHealth` and `RedisHealth` (a real
redis-server on a Unix socket, one per module, flushed before each test), both on one fake
clock (the Lua script takes a `now` override, used only by tests), expecting the same
answers; then what only the fleet store does: several sidecars sharing one state on the
server's own clock (short cooldowns, polled, never slept on), one script call per decision,
keys that expire, and a Redis that is gone or silent becoming a QuotaStoreError."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import redis
from redis.crc import key_slot

from extproc.backends.health import (
    FORGET_S,
    Admit,
    Headroom,
    HealthPolicy,
    HealthStore,
    Outcome,
    Transition,
    Verdict,
)
from extproc.backends.memory import MemoryHealth
from extproc.backends.redis import RedisHealth, health_key
from extproc.dev.redis_server import free_port
from extproc.errors import QuotaStoreError
from extproc.quota.backends.redis import connect
from extproc.quota.deadline import StoreTimeout
from tests.integration.quota_semantics import T0, FakeClock, flush
from tests.redis_server import RedisServer
from tests.waiting import wait_until_async

POLICY = HealthPolicy(failures=3, cooldown_s=30.0, probe_ttl_s=60.0)
A, B, C = "openai/gpt-4o", "anthropic/claude-sonnet-4", "openai/gpt-4o-mini"
OK, FAIL, NEUTRAL = Outcome(ok=True), Outcome(ok=False), Outcome(ok=None)
ABS = 1e-6

Scenario = Callable[[HealthStore, FakeClock], Awaitable[None]]


@dataclass(frozen=True)
class Stores:
    """Opens a fresh store of one kind on a fake clock."""

    kind: str
    server: RedisServer | None = None

    @asynccontextmanager
    async def open(self, clock: FakeClock) -> AsyncIterator[HealthStore]:
        if self.server is None:
            yield MemoryHealth(POLICY, clock=clock)
            return
        client = connect(self.server.url, timeout_s=10.0)
        try:
            yield RedisHealth(client, POLICY, timeout_s=10.0, clock=clock)
        finally:
            await client.aclose()

    def run(self, scenario: Scenario) -> None:
        async def main() -> None:
            clock = FakeClock(T0)
            async with self.open(clock) as store:
                await scenario(store, clock)

        asyncio.run(main())


@pytest.fixture(params=["memory", "redis"])
def stores(request: pytest.FixtureRequest) -> Stores:
    """Runs the test once per store: the point of the suite is that both answer alike."""
    if request.param == "memory":
        return Stores("memory")
    server: RedisServer = request.getfixturevalue("redis_server")
    flush(server)
    return Stores("redis", server)


def expect(got: list[Admit], *want: tuple[Verdict, float]) -> None:
    assert [a.verdict for a in got] == [verdict for verdict, _ in want]
    assert [a.wait_s for a in got] == pytest.approx([wait for _, wait in want], abs=ABS)


async def open_it(store: HealthStore, backend: str = A) -> None:
    for _ in range(POLICY.failures):
        await store.record(backend, FAIL)


async def half_open(store: HealthStore, clock: FakeClock, backend: str = A) -> None:
    await open_it(store, backend)
    clock.now += POLICY.cooldown_s


def told(**headroom: float) -> Outcome:
    """A successful answer whose rate-limit headers said `headroom`."""
    return Outcome(ok=True, headroom=Headroom(**headroom))  # type: ignore[arg-type]


# -- the breaker ----------------------------------------------------------------------------


def test_failures_below_the_threshold_keep_it_closed_the_threshold_opens_it(
    stores: Stores,
) -> None:
    async def scenario(store: HealthStore, clock: FakeClock) -> None:
        for _ in range(POLICY.failures - 1):
            assert await store.record(A, FAIL) is Transition.NONE
        expect(await store.admit([A], tokens=1), (Verdict.OK, 0))
        [state] = await store.view([A])
        assert (state.state, state.failures, state.open_for_s) == ("closed", 2, 0)
        assert await store.record(A, FAIL) is Transition.OPENED
        expect(await store.admit([A], tokens=1), (Verdict.OPEN, 30))
        [state] = await store.view([A])
        assert (state.state, state.failures) == ("open", 3)
        assert state.open_for_s == pytest.approx(30, abs=ABS)

    stores.run(scenario)


def test_a_success_between_failures_starts_the_count_again(stores: Stores) -> None:
    async def scenario(store: HealthStore, clock: FakeClock) -> None:
        for _ in range(POLICY.failures - 1):
            await store.record(A, FAIL)
        assert await store.record(A, OK) is Transition.NONE
        for _ in range(POLICY.failures - 1):
            assert await store.record(A, FAIL) is Transition.NONE
        expect(await store.admit([A], tokens=1), (Verdict.OK, 0))

    stores.run(scenario)


def test_open_for_the_cooldown_then_exactly_one_probe_among_many(stores: Stores) -> None:
    async def scenario(store: HealthStore, clock: FakeClock) -> None:
        await open_it(store)
        clock.now += 29.5
        expect(await store.admit([A], tokens=1), (Verdict.OPEN, 0.5))
        clock.now += 0.5
        answers = await asyncio.gather(*(store.admit([A], tokens=1) for _ in range(40)))
        verdicts = [answer[0].verdict for answer in answers]
        assert verdicts.count(Verdict.PROBE) == 1
        assert verdicts.count(Verdict.OPEN) == 39
        waits = sorted(answer[0].wait_s for answer in answers)
        assert waits == pytest.approx([0] + [60] * 39, abs=ABS)
        [state] = await store.view([A])
        assert (state.state, state.open_for_s) == ("half-open", 0)

    stores.run(scenario)


def test_a_successful_probe_closes_it(stores: Stores) -> None:
    async def scenario(store: HealthStore, clock: FakeClock) -> None:
        await half_open(store, clock)
        expect(await store.admit([A], tokens=1), (Verdict.PROBE, 0))
        assert await store.record(A, OK) is Transition.CLOSED
        expect(await store.admit([A], tokens=1), (Verdict.OK, 0))
        [state] = await store.view([A])
        assert (state.state, state.failures, state.open_for_s) == ("closed", 0, 0)
        assert await store.record(A, OK) is Transition.NONE

    stores.run(scenario)


def test_a_failed_probe_opens_it_for_another_cooldown(stores: Stores) -> None:
    async def scenario(store: HealthStore, clock: FakeClock) -> None:
        await half_open(store, clock)
        expect(await store.admit([A], tokens=1), (Verdict.PROBE, 0))
        assert await store.record(A, FAIL) is Transition.REOPENED
        expect(await store.admit([A], tokens=1), (Verdict.OPEN, 30))
        clock.now += 10  # a late failure of a request sent earlier: cools down again
        assert await store.record(A, FAIL) is Transition.REOPENED
        expect(await store.admit([A], tokens=1), (Verdict.OPEN, 30))
        clock.now += 30  # the failed probe's slot was given back with the reopening
        expect(await store.admit([A], tokens=1), (Verdict.PROBE, 0))
        [state] = await store.view([A])
        assert (state.state, state.failures) == ("half-open", 5)

    stores.run(scenario)


def test_a_probe_that_never_reports_frees_its_slot_after_its_ttl(stores: Stores) -> None:
    async def scenario(store: HealthStore, clock: FakeClock) -> None:
        await half_open(store, clock)
        expect(await store.admit([A], tokens=1), (Verdict.PROBE, 0))
        clock.now += 59.75
        expect(await store.admit([A], tokens=1), (Verdict.OPEN, 0.25))
        clock.now += 0.25
        expect(await store.admit([A], tokens=1), (Verdict.PROBE, 0))

    stores.run(scenario)


def test_a_neutral_outcome_changes_no_count_and_frees_the_probe_slot(stores: Stores) -> None:
    """The request was at fault (a 400): neither a failure nor a success, but the probe got
    an answer, so the next request may probe (it would otherwise wait the probe TTL)."""

    async def scenario(store: HealthStore, clock: FakeClock) -> None:
        await store.record(A, FAIL)
        assert await store.record(A, NEUTRAL) is Transition.NONE
        assert (await store.view([A]))[0].failures == 1
        await store.record(A, FAIL)
        await store.record(A, FAIL)
        clock.now += POLICY.cooldown_s
        expect(await store.admit([A], tokens=1), (Verdict.PROBE, 0))
        expect(await store.admit([A], tokens=1), (Verdict.OPEN, 60))  # the probe is out
        assert await store.record(A, NEUTRAL) is Transition.NONE
        expect(await store.admit([A], tokens=1), (Verdict.PROBE, 0))
        [state] = await store.view([A])
        assert (state.state, state.failures) == ("half-open", 3)
        neutral = Outcome(ok=None, headroom=Headroom(remaining_requests=7))
        assert await store.record(A, neutral) is Transition.NONE
        [state] = await store.view([A])
        assert (state.state, state.failures, state.remaining_requests) == ("half-open", 3, 7)

    stores.run(scenario)


# -- headroom -------------------------------------------------------------------------------


def test_only_the_first_usable_backend_is_claimed(stores: Stores) -> None:
    async def scenario(store: HealthStore, clock: FakeClock) -> None:
        for backend in (B, C):
            await store.record(backend, told(remaining_requests=10, remaining_tokens=1000,
                                             requests_reset_s=90, tokens_reset_s=90))  # fmt: skip
        await half_open(store, clock, B)
        await open_it(store, A)
        expect(await store.admit([A, B, C], tokens=100),
               (Verdict.OPEN, 30), (Verdict.PROBE, 0), (Verdict.OK, 0))  # fmt: skip
        expect(await store.admit([A, B, C], tokens=100),
               (Verdict.OPEN, 30), (Verdict.OPEN, 60), (Verdict.OK, 0))  # fmt: skip
        a, b, c = await store.view([A, B, C])
        assert (a.remaining_requests, a.remaining_tokens) == (None, None)
        assert (b.remaining_requests, b.remaining_tokens) == (9, 900)
        assert (c.remaining_requests, c.remaining_tokens) == (9, 900)

    stores.run(scenario)


def test_requests_run_out_until_their_reset(stores: Stores) -> None:
    async def scenario(store: HealthStore, clock: FakeClock) -> None:
        await store.record(A, told(remaining_requests=2, requests_reset_s=10))
        for _ in range(2):
            expect(await store.admit([A, B], tokens=1), (Verdict.OK, 0), (Verdict.OK, 0))
        clock.now += 4
        expect(await store.admit([A, B], tokens=1), (Verdict.EXHAUSTED, 6), (Verdict.OK, 0))
        [state] = await store.view([A])
        assert (state.state, state.remaining_requests) == ("closed", 0)
        assert state.requests_reset_s == pytest.approx(6, abs=ABS)
        clock.now += 6
        expect(await store.admit([A], tokens=1), (Verdict.OK, 0))
        [state] = await store.view([A])
        assert (state.remaining_requests, state.requests_reset_s) == (None, None)

    stores.run(scenario)


def test_tokens_run_out_for_a_request_bigger_than_what_is_left(stores: Stores) -> None:
    async def scenario(store: HealthStore, clock: FakeClock) -> None:
        await store.record(A, told(remaining_tokens=500, tokens_reset_s=20))
        expect(await store.admit([A], tokens=600), (Verdict.EXHAUSTED, 20))
        assert (await store.view([A]))[0].remaining_tokens == 500  # a refusal takes nothing
        expect(await store.admit([A], tokens=400), (Verdict.OK, 0))
        expect(await store.admit([A], tokens=101), (Verdict.EXHAUSTED, 20))
        expect(await store.admit([A], tokens=100), (Verdict.OK, 0))
        expect(await store.admit([A], tokens=0), (Verdict.OK, 0))
        [state] = await store.view([A])
        assert (state.remaining_tokens, state.remaining_requests) == (0, None)
        clock.now += 20
        expect(await store.admit([A], tokens=10_000), (Verdict.OK, 0))

    stores.run(scenario)


def test_retry_after_exhausts_it_until_then(stores: Stores) -> None:
    async def scenario(store: HealthStore, clock: FakeClock) -> None:
        assert await store.record(A, Outcome(ok=False, headroom=Headroom(retry_after_s=5)))\
            is Transition.NONE  # fmt: skip
        expect(await store.admit([A, B], tokens=1), (Verdict.EXHAUSTED, 5), (Verdict.OK, 0))
        [state] = await store.view([A])
        assert state.failures == 1
        assert state.retry_after_s == pytest.approx(5, abs=ABS)
        clock.now += 5
        expect(await store.admit([A], tokens=1), (Verdict.OK, 0))
        assert (await store.view([A]))[0].retry_after_s is None

    stores.run(scenario)


def test_the_breaker_comes_before_the_remaining_headroom(stores: Stores) -> None:
    """Open and out of requests: OPEN. Half-open and out of requests: EXHAUSTED, and the
    probe slot stays free (a probe the provider would refuse could only reopen it)."""

    async def scenario(store: HealthStore, clock: FakeClock) -> None:
        await store.record(A, told(remaining_requests=0, requests_reset_s=40))
        await open_it(store)
        expect(await store.admit([A], tokens=1), (Verdict.OPEN, 30))
        clock.now += 30
        expect(await store.admit([A], tokens=1), (Verdict.EXHAUSTED, 10))
        clock.now += 10
        expect(await store.admit([A], tokens=1), (Verdict.PROBE, 0))

    stores.run(scenario)


def test_retry_after_outranks_the_breaker(stores: Stores) -> None:
    """The provider named the time itself: EXHAUSTED with its wait, even while open."""

    async def scenario(store: HealthStore, clock: FakeClock) -> None:
        await open_it(store)
        await store.record(A, Outcome(ok=False, headroom=Headroom(retry_after_s=45)))
        expect(await store.admit([A], tokens=1), (Verdict.EXHAUSTED, 45))
        clock.now += 45
        expect(await store.admit([A], tokens=1), (Verdict.PROBE, 0))

    stores.run(scenario)


def test_an_answer_replaces_only_what_it_states(stores: Stores) -> None:
    async def scenario(store: HealthStore, clock: FakeClock) -> None:
        await store.record(A, told(remaining_requests=5, remaining_tokens=100,
                                   requests_reset_s=10, tokens_reset_s=20))  # fmt: skip
        clock.now += 2
        await store.record(A, told(remaining_tokens=50))
        [state] = await store.view([A])
        assert (state.remaining_requests, state.remaining_tokens) == (5, 50)
        assert [state.requests_reset_s, state.tokens_reset_s] == pytest.approx([8, 18])
        clock.now += 8  # the requests' reset passed: a new count stands on its own
        await store.record(A, told(remaining_requests=0))
        expect(await store.admit([A], tokens=1), (Verdict.OK, 0))
        [state] = await store.view([A])
        assert (state.remaining_requests, state.requests_reset_s) == (0, None)

    stores.run(scenario)


def test_unknown_backends_are_closed_and_healthy(stores: Stores) -> None:
    async def scenario(store: HealthStore, clock: FakeClock) -> None:
        expect(await store.admit([A, B], tokens=10**9), (Verdict.OK, 0), (Verdict.OK, 0))
        assert await store.admit([], tokens=1) == []
        [state] = await store.view([C])
        assert (state.backend, state.state, state.failures, state.open_for_s) == (C, "closed",
                                                                                  0, 0)  # fmt: skip
        assert (state.remaining_requests, state.retry_after_s) == (None, None)

    stores.run(scenario)


def test_memory_forgets_a_backend_as_redis_expires_its_key() -> None:
    async def scenario(store: HealthStore, clock: FakeClock) -> None:
        await store.record(A, FAIL)
        await store.record(B, Outcome(ok=False, headroom=Headroom(retry_after_s=2 * FORGET_S)))
        clock.now += FORGET_S
        a, b = await store.view([A, B])
        assert (a.failures, b.failures) == (0, 1)  # B holds a time still ahead
        clock.now += FORGET_S
        assert (await store.view([B]))[0].failures == 0

    Stores("memory").run(scenario)


# -- the fleet: Redis only --------------------------------------------------------------------


@pytest.fixture
def server(redis_server: RedisServer) -> RedisServer:
    flush(redis_server)
    return redis_server


@asynccontextmanager
async def sidecar(server: RedisServer, policy: HealthPolicy) -> AsyncIterator[RedisHealth]:
    """One sidecar's store: a client of its own, the server's clock."""
    client = connect(server.url, timeout_s=10.0)
    try:
        yield RedisHealth(client, policy, timeout_s=10.0)
    finally:
        await client.aclose()


def test_two_sidecars_share_one_breaker_one_probe_and_one_headroom(
    server: RedisServer,
) -> None:
    quick = HealthPolicy(failures=2, cooldown_s=0.2, probe_ttl_s=60.0)

    async def scenario() -> None:
        async with sidecar(server, quick) as one, sidecar(server, quick) as two:
            await one.record(A, FAIL)
            assert await two.record(A, FAIL) is Transition.OPENED
            [admit] = await one.admit([A], tokens=1)
            assert admit.verdict is Verdict.OPEN and 0 < admit.wait_s <= 0.2
            await wait_until_async(lambda: _state_is(one, "half-open"))
            answers = await asyncio.gather(
                *(store.admit([A], tokens=1) for store in (one, two) for _ in range(20))
            )
            assert [a[0].verdict for a in answers].count(Verdict.PROBE) == 1
            assert await one.record(A, OK) is Transition.CLOSED
            await two.record(B, told(remaining_requests=5, requests_reset_s=60))
            await one.admit([B], tokens=1)
            assert (await two.view([B]))[0].remaining_requests == 4

    asyncio.run(scenario())


async def _state_is(store: RedisHealth, state: str) -> bool:
    return (await store.view([A]))[0].state == state


def test_each_decision_is_one_script_call_and_keys_share_a_slot(server: RedisServer) -> None:
    async def scenario() -> None:
        async with sidecar(server, POLICY) as store:
            await store.view([A])  # loads the script (NOSCRIPT on the first call)
            before = _script_calls(server)
            await store.admit([A, B, C], tokens=5)
            await store.record(A, FAIL)
            await store.view([A, B, C])
            assert _script_calls(server) == before + 3

    asyncio.run(scenario())
    assert len({key_slot(health_key(b).encode()) for b in (A, B, C)}) == 1


def _script_calls(server: RedisServer) -> int:
    with _probe(server) as probe:
        stats = probe.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_keys_expire_and_nothing_is_kept_for_a_healthy_backend(server: RedisServer) -> None:
    async def scenario() -> None:
        async with sidecar(server, POLICY) as store:
            await store.admit([A, B], tokens=1)
            await store.record(B, OK)
            assert _keys(server) == []
            await store.record(A, FAIL)
            assert FORGET_S - 5 <= _ttl(server, A) <= FORGET_S
            await store.record(A, OK)  # nothing left to hold: the key goes
            assert _keys(server) == []
            await store.record(C, Outcome(ok=False, headroom=Headroom(retry_after_s=7200)))
            assert 7195 <= _ttl(server, C) <= 7200

    asyncio.run(scenario())


def _probe(server: RedisServer) -> redis.Redis:
    """A plain synchronous client of the test's own, to look at what the server holds."""
    return redis.Redis(unix_socket_path=str(server.socket), socket_timeout=5)


def _keys(server: RedisServer) -> list[bytes]:
    with _probe(server) as probe:
        return list(probe.keys("*"))


def _ttl(server: RedisServer, backend: str) -> float:
    with _probe(server) as probe:
        return int(probe.pttl(health_key(backend))) / 1000


def test_redis_down_is_a_quota_store_error_at_once() -> None:
    async def scenario() -> None:
        client = connect(f"redis://127.0.0.1:{free_port()}", timeout_s=5.0)
        store = RedisHealth(client, POLICY, timeout_s=5.0)
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: store.admit([A], tokens=1),
            lambda: store.record(A, FAIL),
            lambda: store.view([A]),
        ]
        try:
            for call in calls:
                started = time.monotonic()
                with pytest.raises(QuotaStoreError) as caught:
                    await call()
                assert time.monotonic() - started < 2.5  # refused, not timed out
                assert isinstance(caught.value.__cause__, redis.RedisError | OSError)
        finally:
            await client.aclose()

    asyncio.run(scenario())


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung Redis)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def test_a_silent_redis_is_a_store_timeout(silent_port: int) -> None:
    async def scenario() -> None:
        client = connect(f"redis://127.0.0.1:{silent_port}", timeout_s=0.2)
        store = RedisHealth(client, POLICY, timeout_s=0.2)
        try:
            with pytest.raises(StoreTimeout):
                await store.admit([A], tokens=1)
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_only_the_claimed_backend_may_probe(stores: Stores) -> None:
    """A half-open backend behind a usable one is no fallback: it would be a second probe."""

    async def scenario(store: HealthStore, clock: FakeClock) -> None:
        for _ in range(POLICY.failures):
            await store.record(B, FAIL)
        clock.now += POLICY.cooldown_s
        verdicts = await store.admit([A, B], tokens=1)
        assert [v.verdict for v in verdicts] == [Verdict.OK, Verdict.OPEN]
        expect(await store.admit([B], tokens=1), (Verdict.PROBE, 0))  # the slot is still free

    stores.run(scenario)
