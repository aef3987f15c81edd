"""MemoryBackend: all-or-nothing reserve, window rollover, settle/release semantics,
concurrency leases and their expiry, driven by a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.policy.model import Limit, Measure
from extproc.quota.backend import Cost, Decision, Reservation
from extproc.quota.limiter import CONCURRENCY_RETRY_S
from extproc.quota.memory import DEFAULT_LEASE_TTL_S, MemoryBackend
from extproc.quota.windows import Scope, ScopedLimit, window_start

T0 = 1_699_999_980.0  # a minute boundary (and 22:13:00 UTC, well inside a day)
NS = Scope("team-a")
# Never changes and refuses anything: makes a probe reserve read counters without taking.
_BLOCKER = ScopedLimit(Scope("probe"), Limit("blocker", Measure.REQUESTS, 0, 60))
_HUGE = Cost(requests=1, tokens=10**12, usd_micros=10**12)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def lim(name: str, measure: Measure, amount: int, period: int | None) -> ScopedLimit:
    return ScopedLimit(NS, Limit(name, measure, amount, period))


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


async def counters(backend: MemoryBackend, limits: Sequence[ScopedLimit]) -> dict[str, int]:
    """Every limit's counter, read through a reserve that is always refused."""
    decision = await backend.reserve("probe", [*limits, _BLOCKER], _HUGE)
    assert not decision.allowed
    return {s.scoped.limit.name: s.used for s in decision.states[:-1]}


def allowed(decision: Decision) -> Reservation:
    assert decision.refusal is None
    assert decision.reservation is not None
    return decision.reservation


# -- reserve ---------------------------------------------------------------------------


def test_reserve_takes_cost_from_every_limit() -> None:
    clock = FakeClock(T0 + 10)
    rpm = lim("rpm", Measure.REQUESTS, 5, 60)
    tpm = lim("tpm", Measure.TOKENS, 100, 60)
    inflight = lim("inflight", Measure.CONCURRENT, 3, None)
    limits = [rpm, tpm, inflight]

    async def scenario() -> None:
        backend = MemoryBackend(clock=clock)
        decision = await backend.reserve("r1", limits, Cost(requests=1, tokens=40))
        reservation = allowed(decision)
        assert reservation == Reservation(
            "r1", (rpm, tpm, inflight), (1_699_999_980, 1_699_999_980, 0), Cost(1, 40)
        )
        assert [(s.used, s.reset_after, s.remaining) for s in decision.states] == [
            (1, 50.0, 4),
            (40, 50.0, 60),
            (1, 0.0, 2),
        ]
        assert backend.open_reservations() == 1
        assert await counters(backend, limits) == {"rpm": 1, "tpm": 40, "inflight": 1}

    run(scenario)


def test_refused_reserve_changes_no_counter() -> None:
    clock = FakeClock(T0 + 10)
    rpm = lim("rpm", Measure.REQUESTS, 2, 60)
    tpm = lim("tpm", Measure.TOKENS, 100, 60)
    inflight = lim("inflight", Measure.CONCURRENT, 2, None)
    limits = [rpm, tpm, inflight]

    async def scenario() -> None:
        backend = MemoryBackend(clock=clock)
        allowed(await backend.reserve("a", limits, Cost(requests=1, tokens=60)))
        refused = await backend.reserve("b", limits, Cost(requests=1, tokens=50))
        assert refused.reservation is None
        assert refused.refusal is not None
        assert refused.refusal.scoped is tpm
        assert (refused.refusal.needed, refused.refusal.used) == (50, 60)
        # states after a refusal report the counters as they are, untouched
        assert [s.used for s in refused.states] == [1, 60, 1]
        assert backend.open_reservations() == 1
        # Had "b" taken its request or its lease, this exact fit would be refused.
        last = await backend.reserve("c", limits, Cost(requests=1, tokens=40))
        allowed(last)
        assert [s.used for s in last.states] == [2, 100, 2]
        assert [s.remaining for s in last.states] == [0, 0, 0]

    run(scenario)


def test_limits_of_different_scopes_count_separately() -> None:
    clock = FakeClock(T0)
    ns_tpm = ScopedLimit(NS, Limit("tpm", Measure.TOKENS, 100, 60))
    key_tpm = ScopedLimit(Scope("team-a", "svc"), Limit("tpm", Measure.TOKENS, 100, 60))
    other_tpm = ScopedLimit(Scope("team-b"), Limit("tpm", Measure.TOKENS, 100, 60))

    async def scenario() -> None:
        backend = MemoryBackend(clock=clock)
        allowed(await backend.reserve("a", [ns_tpm, key_tpm], Cost(tokens=30)))
        allowed(await backend.reserve("b", [ns_tpm], Cost(tokens=20)))
        probe = await backend.reserve("p", [ns_tpm, key_tpm, other_tpm, _BLOCKER], _HUGE)
        assert [s.used for s in probe.states] == [50, 30, 0, 0]

    run(scenario)


# -- windows ---------------------------------------------------------------------------


def test_window_rollover_resets_counts_at_the_boundary() -> None:
    clock = FakeClock(T0 + 10)
    tpm = lim("tpm", Measure.TOKENS, 100, 60)
    rph = lim("rph", Measure.REQUESTS, 10, 3600)
    limits = [tpm, rph]

    async def scenario() -> None:
        backend = MemoryBackend(clock=clock)
        allowed(await backend.reserve("a", limits, Cost(requests=1, tokens=100)))
        clock.now = T0 + 59.75
        refused = await backend.reserve("b", limits, Cost(requests=1, tokens=1))
        assert refused.refusal is not None
        assert refused.refusal.scoped is tpm
        assert refused.refusal.retry_after == 0.25
        clock.now = T0 + 60  # the next minute: tokens reset, the hour keeps counting
        decision = await backend.reserve("c", limits, Cost(requests=1, tokens=100))
        allowed(decision)
        assert [(s.used, s.reset_after) for s in decision.states] == [
            (100, 60.0),
            (2, 2760.0),  # 22:14:00 -> 23:00:00
        ]

    run(scenario)


# -- settle ----------------------------------------------------------------------------


def test_settle_lower_than_reserved_gives_back_the_difference() -> None:
    clock = FakeClock(T0 + 1)
    tpm = lim("tpm", Measure.TOKENS, 100, 60)

    async def scenario() -> None:
        backend = MemoryBackend(clock=clock)
        reservation = allowed(await backend.reserve("a", [tpm], Cost(requests=1, tokens=80)))
        await backend.settle(reservation, Cost(requests=1, tokens=30))
        assert backend.open_reservations() == 0
        assert await counters(backend, [tpm]) == {"tpm": 30}
        assert not (await backend.reserve("b", [tpm], Cost(tokens=71))).allowed
        allowed(await backend.reserve("c", [tpm], Cost(tokens=70)))

    run(scenario)


def test_settle_higher_than_reserved_charges_the_difference() -> None:
    clock = FakeClock(T0 + 1)
    tpm = lim("tpm", Measure.TOKENS, 100, 60)

    async def scenario() -> None:
        backend = MemoryBackend(clock=clock)
        reservation = allowed(await backend.reserve("a", [tpm], Cost(tokens=50)))
        await backend.settle(reservation, Cost(tokens=90))
        assert await counters(backend, [tpm]) == {"tpm": 90}
        assert not (await backend.reserve("b", [tpm], Cost(tokens=11))).allowed
        allowed(await backend.reserve("c", [tpm], Cost(tokens=10)))

    run(scenario)


def test_settle_may_overshoot_the_limit_and_then_refuses_everything() -> None:
    clock = FakeClock(T0 + 1)
    tpm = lim("tpm", Measure.TOKENS, 100, 60)

    async def scenario() -> None:
        backend = MemoryBackend(clock=clock)
        reservation = allowed(await backend.reserve("a", [tpm], Cost(tokens=50)))
        await backend.settle(reservation, Cost(tokens=150))
        refused = await backend.reserve("b", [tpm], Cost(tokens=1))
        assert refused.refusal is not None
        assert [(s.used, s.remaining) for s in refused.states] == [(150, 0)]

    run(scenario)


def test_settle_twice_counts_once() -> None:
    clock = FakeClock(T0 + 1)
    tpm = lim("tpm", Measure.TOKENS, 100, 60)
    inflight = lim("inflight", Measure.CONCURRENT, 2, None)
    limits = [tpm, inflight]

    async def scenario() -> None:
        backend = MemoryBackend(clock=clock)
        a = allowed(await backend.reserve("a", limits, Cost(tokens=50)))
        allowed(await backend.reserve("b", limits, Cost(tokens=10)))
        await backend.settle(a, Cost(tokens=20))
        await backend.settle(a, Cost(tokens=20))
        await backend.settle(a, Cost(tokens=90))  # a different "actual" is ignored too
        assert await counters(backend, limits) == {"tpm": 30, "inflight": 1}
        # Only one lease came back: one more request fits, the next does not.
        allowed(await backend.reserve("c", limits, Cost(tokens=1)))
        refused = await backend.reserve("d", limits, Cost(tokens=1))
        assert refused.refusal is not None
        assert refused.refusal.scoped is inflight

    run(scenario)


def test_release_keeps_the_request_and_returns_tokens_and_lease() -> None:
    clock = FakeClock(T0 + 1)
    rpm = lim("rpm", Measure.REQUESTS, 5, 60)
    tpm = lim("tpm", Measure.TOKENS, 100, 60)
    inflight = lim("inflight", Measure.CONCURRENT, 1, None)
    limits = [rpm, tpm, inflight]

    async def scenario() -> None:
        backend = MemoryBackend(clock=clock)
        reservation = allowed(await backend.reserve("a", limits, Cost(requests=1, tokens=80)))
        await backend.release(reservation)
        assert backend.open_reservations() == 0
        assert await counters(backend, limits) == {"rpm": 1, "tpm": 0, "inflight": 0}
        await backend.release(reservation)  # idempotent as well
        await backend.settle(reservation, Cost(requests=1, tokens=80))
        assert await counters(backend, limits) == {"rpm": 1, "tpm": 0, "inflight": 0}

    run(scenario)


def test_concurrency_lease_is_returned_on_settle() -> None:
    clock = FakeClock(T0 + 1)
    inflight = lim("inflight", Measure.CONCURRENT, 1, None)

    async def scenario() -> None:
        backend = MemoryBackend(clock=clock)
        a = allowed(await backend.reserve("a", [inflight], Cost(requests=1)))
        refused = await backend.reserve("b", [inflight], Cost(requests=1))
        assert refused.refusal is not None
        assert refused.refusal.scoped is inflight
        assert refused.refusal.retry_after == CONCURRENCY_RETRY_S
        await backend.settle(a, Cost(requests=1))
        allowed(await backend.reserve("b", [inflight], Cost(requests=1)))

    run(scenario)


def test_settle_after_the_window_ended_does_not_touch_the_new_window() -> None:
    clock = FakeClock(T0 + 50)
    tpm = lim("tpm", Measure.TOKENS, 100, 60)

    async def scenario() -> None:
        backend = MemoryBackend(clock=clock)
        a = allowed(await backend.reserve("a", [tpm], Cost(tokens=80)))
        b = allowed(await backend.reserve("b", [tpm], Cost(tokens=20)))
        clock.now = T0 + 70
        allowed(await backend.reserve("c", [tpm], Cost(tokens=30)))
        await backend.settle(a, Cost(tokens=10))  # would give back 70
        await backend.settle(b, Cost(tokens=200))  # would charge 180 more
        assert await counters(backend, [tpm]) == {"tpm": 30}
        allowed(await backend.reserve("d", [tpm], Cost(tokens=70)))

    run(scenario)


def test_settle_late_before_anything_used_the_new_window() -> None:
    clock = FakeClock(T0 + 50)
    tpm = lim("tpm", Measure.TOKENS, 100, 60)

    async def scenario() -> None:
        backend = MemoryBackend(clock=clock)
        a = allowed(await backend.reserve("a", [tpm], Cost(tokens=80)))
        clock.now = T0 + 70
        await backend.settle(a, Cost(tokens=100))
        assert await counters(backend, [tpm]) == {"tpm": 0}
        allowed(await backend.reserve("b", [tpm], Cost(tokens=100)))

    run(scenario)


# -- expiry ----------------------------------------------------------------------------


def test_default_lease_ttl() -> None:
    assert DEFAULT_LEASE_TTL_S == 600.0


def test_unsettled_lease_expires_after_ttl_and_later_settle_is_a_noop() -> None:
    clock = FakeClock(T0)
    daily = lim("daily", Measure.TOKENS, 1000, 86400)
    inflight = lim("inflight", Measure.CONCURRENT, 1, None)
    limits = [daily, inflight]

    async def scenario() -> None:
        backend = MemoryBackend(clock=clock, lease_ttl_s=30)
        a = allowed(await backend.reserve("a", limits, Cost(tokens=100)))
        clock.now = T0 + 29.9
        assert not (await backend.reserve("b", limits, Cost(tokens=5))).allowed
        assert backend.open_reservations() == 1
        clock.now = T0 + 30  # the deadline: the lease comes back
        b = allowed(await backend.reserve("b", limits, Cost(tokens=5)))
        assert backend.open_reservations() == 1
        # The expired reservation stays charged at its estimate ...
        assert await counters(backend, limits) == {"daily": 105, "inflight": 1}
        # ... and its late settle changes nothing: no refund, no second lease returned.
        await backend.settle(a, Cost(tokens=10))
        assert await counters(backend, limits) == {"daily": 105, "inflight": 1}
        assert not (await backend.reserve("c", limits, Cost(tokens=5))).allowed
        await backend.settle(b, Cost(tokens=5))
        allowed(await backend.reserve("c", limits, Cost(tokens=5)))

    run(scenario)


def test_settled_reservation_is_not_expired_again() -> None:
    clock = FakeClock(T0)
    daily = lim("daily", Measure.TOKENS, 1000, 86400)
    inflight = lim("inflight", Measure.CONCURRENT, 2, None)
    limits = [daily, inflight]

    async def scenario() -> None:
        backend = MemoryBackend(clock=clock, lease_ttl_s=30)
        a = allowed(await backend.reserve("a", limits, Cost(tokens=100)))
        await backend.settle(a, Cost(tokens=40))
        clock.now = T0 + 20
        allowed(await backend.reserve("b", limits, Cost(tokens=1)))
        clock.now = T0 + 31  # a's old deadline passes: nothing must be given back twice
        assert await counters(backend, limits) == {"daily": 41, "inflight": 1}

    run(scenario)


def test_aclose_forgets_open_reservations() -> None:
    async def scenario() -> None:
        backend = MemoryBackend(clock=FakeClock(T0))
        allowed(await backend.reserve("a", [lim("rpm", Measure.REQUESTS, 5, 60)], Cost(1)))
        await backend.aclose()
        assert backend.open_reservations() == 0

    run(scenario)


# -- property: counters are exactly the sum of what is charged ------------------------


@dataclass
class _Entry:
    """The model's view of one admitted reservation."""

    cost: Cost
    windows: dict[str, int]  # window start per windowed limit name
    deadline: float
    charged: Cost  # what stays counted: the estimate, then the actual once settled
    open: bool = field(default=True)


_TTL = 100.0
_LIMITS = [
    lim("tpm", Measure.TOKENS, 100, 60),
    lim("rph", Measure.REQUESTS, 8, 3600),
    lim("spend", Measure.USD, 500, 60),
    lim("inflight", Measure.CONCURRENT, 3, None),
]

_Op = tuple[str, int, int, int]
_reserve = st.tuples(st.just("reserve"), st.integers(0, 1), st.integers(0, 70), st.integers(0, 300))
_settle = st.tuples(st.just("settle"), st.integers(0, 30), st.integers(0, 150), st.integers(0, 600))
_release = st.tuples(st.just("release"), st.integers(0, 30), st.just(0), st.just(0))
_advance = st.tuples(st.just("advance"), st.integers(0, 45), st.just(0), st.just(0))
_ops = st.lists(st.one_of(_reserve, _settle, _release, _advance), max_size=60)


class _Model:
    """Reference semantics: each windowed counter is the sum, over reservations made in its
    current window, of the actual cost (settled) or the reserved cost (open or expired);
    the concurrency counter is the number of open reservations. Expiry happens when a
    reserve looks at the store, as in MemoryBackend."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.entries: list[_Entry] = []

    def expire(self) -> None:
        for entry in self.entries:
            if entry.open and entry.deadline <= self.clock.now:
                entry.open = False

    def counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for scoped in _LIMITS:
            limit = scoped.limit
            if limit.period_s is None:
                out[limit.name] = sum(1 for e in self.entries if e.open)
                continue
            current = window_start(self.clock.now, limit.period_s)
            out[limit.name] = sum(
                e.charged.amount(limit.measure)
                for e in self.entries
                if e.windows[limit.name] == current
            )
        return out

    def fits(self, cost: Cost) -> bool:
        used = self.counters()
        for scoped in _LIMITS:
            limit = scoped.limit
            need = 1 if limit.period_s is None else cost.amount(limit.measure)
            if need > 0 and used[limit.name] + need > limit.amount:
                return False
        return True

    def admit(self, cost: Cost) -> None:
        windows = {
            s.limit.name: window_start(self.clock.now, s.limit.period_s)
            for s in _LIMITS
            if s.limit.period_s is not None
        }
        self.entries.append(_Entry(cost, windows, self.clock.now + _TTL, charged=cost))

    def open_count(self) -> int:
        return sum(1 for e in self.entries if e.open)


@settings(max_examples=300, deadline=None)
@given(start=st.floats(0, 59.9), ops=_ops)
def test_counters_equal_settled_plus_open_costs(start: float, ops: list[_Op]) -> None:
    clock = FakeClock(T0 + start)
    model = _Model(clock)
    reservations: list[Reservation] = []

    async def reserve(n: int, cost: Cost) -> None:
        model.expire()
        before = model.counters()
        fits = model.fits(cost)
        decision = await backend.reserve(f"r{n}", _LIMITS, cost)
        assert decision.allowed == fits
        if decision.reservation is None:
            assert [s.used for s in decision.states] == [before[s.limit.name] for s in _LIMITS]
            return
        reservations.append(decision.reservation)
        model.admit(cost)
        after = model.counters()
        for state in decision.states:
            limit = state.scoped.limit
            assert state.used == after[limit.name]
            # at admission, every limit the request draws on is within its amount
            if limit.period_s is None or cost.amount(limit.measure) > 0:
                assert state.used <= limit.amount

    async def finish(op: str, index: int, tokens: int, usd: int) -> None:
        model.expire()  # expired leases are given back before any settle is looked at
        entry = model.entries[index]
        if op == "settle":
            actual = Cost(requests=entry.cost.requests, tokens=tokens, usd_micros=usd)
            await backend.settle(reservations[index], actual)
        else:
            actual = Cost(requests=entry.cost.requests)
            await backend.release(reservations[index])
        if entry.open:
            entry.open = False
            entry.charged = actual

    async def scenario() -> None:
        for n, (op, a, b, c) in enumerate(ops):
            if op == "advance":
                clock.now += a
            elif op == "reserve":
                await reserve(n, Cost(requests=a, tokens=b, usd_micros=c))
            elif reservations:
                await finish(op, a % len(reservations), b, c)
            assert backend.open_reservations() == model.open_count()
        probed = await counters(backend, _LIMITS)
        model.expire()
        assert probed == model.counters()

    backend = MemoryBackend(clock=clock, lease_ttl_s=_TTL)
    run(scenario)


def test_clock_stepping_back_across_a_boundary_keeps_counting_the_newer_window() -> None:
    clock = FakeClock(T0 + 61)  # one second into the next minute
    backend = MemoryBackend(clock=clock)
    rpm = lim("rpm", Measure.REQUESTS, 2, 60)

    async def scenario() -> None:
        allowed(await backend.reserve("a", [rpm], Cost(requests=2)))
        clock.now = T0 + 59  # NTP steps the clock back into the previous minute
        refused = await backend.reserve("b", [rpm], Cost(requests=1))
        assert not refused.allowed
        assert (await counters(backend, [rpm]))["rpm"] == 2

    run(scenario)
