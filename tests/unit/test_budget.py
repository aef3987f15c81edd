"""StreamBudget: the one owner of a stream's grants, debits and cut, against the real
in-process store (behind the failover wrapper the data path holds)."""

from __future__ import annotations

import asyncio

from extproc.errors import RateLimited, Unavailable
from extproc.gate.budget import DEBIT_BATCH_TOKENS, STORE_GONE, StreamBudget
from extproc.policy.model import FailMode, Limit, Measure
from extproc.quota import Cost, Decision, MemoryBackend, Reservation, Scope, ScopedLimit
from extproc.quota.costing import Costing
from extproc.quota.failover import FailoverStore
from extproc.telemetry.metrics import Metrics

TOKENS = ScopedLimit(Scope("team"), Limit("tokens", Measure.TOKENS, 200, 3600))
PROMPT = 7


async def _budget(*, reserved_completion: int) -> tuple[StreamBudget, FailoverStore, Metrics]:
    metrics = Metrics()
    store = FailoverStore(local=MemoryBackend(), shared=None, metrics=metrics)
    decision = await store.reserve("r1", [TOKENS], Cost(1, PROMPT + reserved_completion))
    assert decision.reservation is not None
    budget = StreamBudget(
        store=store, metrics=metrics, reservation=decision.reservation,
        costing=Costing(None), fail_mode=FailMode.CLOSED, prompt_tokens=PROMPT,
    )  # fmt: skip
    return budget, store, metrics


def _debits(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("tokengate_stream_debits_total") or 0.0


async def _used(store: FailoverStore) -> int:
    (state,) = await store.peek([TOKENS])
    return state.used


def test_within_the_reservation_a_stream_asks_the_store_nothing() -> None:
    async def scenario() -> None:
        budget, store, metrics = await _budget(reserved_completion=20)
        assert budget.spend(13)
        assert await budget.cover(7) is None  # 7 + 20 = the 27 held
        assert not budget.spend(1)  # beyond what it holds: only `cover` may ask the store
        assert (budget.delivered, _debits(metrics), await _used(store)) == (20, 0, 27)

    asyncio.run(scenario())


def test_past_it_a_batch_is_debited_then_only_the_shortfall() -> None:
    async def scenario() -> None:
        budget, store, metrics = await _budget(reserved_completion=20)
        assert await budget.cover(21) is None  # 1 short: one batch of 64
        assert (_debits(metrics), await _used(store)) == (1, 27 + DEBIT_BATCH_TOKENS)
        assert await budget.cover(63) is None  # fits the batch: no round trip
        assert _debits(metrics) == 1
        assert await budget.cover(100) is None  # 100 short, over a batch: asks exactly 100
        assert (budget.delivered, _debits(metrics), await _used(store)) == (184, 2, 191)

    asyncio.run(scenario())


def test_a_stream_is_cut_only_when_not_even_the_chunk_fits() -> None:
    async def scenario() -> None:
        budget, store, _ = await _budget(reserved_completion=20)
        assert await budget.cover(190) is None  # 7 + 190 = 197 of 200: the shortfall fitted
        cut = await budget.cover(4)  # 201 > 200: nothing more fits
        assert cut is not None and cut.limit == "tokens"
        assert isinstance(cut.error, RateLimited)
        assert budget.delivered == 190  # the refused chunk is not delivered
        assert await _used(store) == 197

    asyncio.run(scenario())


def test_close_hands_the_live_reservation_out_once() -> None:
    async def scenario() -> Reservation | None:
        budget, _, _ = await _budget(reserved_completion=20)
        await budget.cover(100)  # grown by a debit: the reservation changed
        first = budget.close()
        assert first is not None and first.cost.tokens == PROMPT + 100
        assert not budget.open
        return budget.close()

    assert asyncio.run(scenario()) is None


class _GoneStore(FailoverStore):
    """What `FailoverStore.debit` raises for a fail-closed policy once Redis is gone."""

    async def debit(
        self, reservation: Reservation, extra: Cost, fail_mode: FailMode = FailMode.CLOSED
    ) -> Decision:
        raise Unavailable("The quota store became unreachable mid-stream.")


def test_a_store_lost_mid_stream_cuts_a_fail_closed_stream() -> None:
    async def scenario() -> None:
        metrics = Metrics()
        store = _GoneStore(local=MemoryBackend(), shared=None, metrics=metrics)
        decision = await store.reserve("r1", [TOKENS], Cost(1, PROMPT + 10))
        assert decision.reservation is not None
        budget = StreamBudget(
            store=store, metrics=metrics, reservation=decision.reservation,
            costing=Costing(None), fail_mode=FailMode.CLOSED, prompt_tokens=PROMPT,
        )  # fmt: skip
        cut = await budget.cover(11)
        assert cut is not None and cut.limit == STORE_GONE
        assert isinstance(cut.error, Unavailable)

    asyncio.run(scenario())
