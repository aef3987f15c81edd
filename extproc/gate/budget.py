"""The budget of one streamed answer: the one owner of its grants, debits and cut.

Debit rule (bounded store traffic): a stream first spends its own reservation (prompt +
expected completion). Past it, each time the count outgrows what it holds it asks the store
for `DEBIT_BATCH_TOKENS` more (or the shortfall if larger), and when a batch no longer fits,
for exactly the shortfall. So a stream needs no store traffic while within its reservation,
at most one round trip per batch beyond it, and is cut only when not even the tokens of the
current chunk fit: the tokens delivered never exceed the budget.

The budget holds the live reservation (each allowed debit replaces it), so settlement takes
it from here, exactly once (`close`).
"""

from __future__ import annotations

from dataclasses import dataclass

from extproc.errors import ClientError, Unavailable
from extproc.policy.model import FailMode
from extproc.quota import Reservation, refusal_error
from extproc.quota.costing import Costing
from extproc.quota.store import QuotaStore
from extproc.telemetry.metrics import Metrics

DEBIT_BATCH_TOKENS = 64
STORE_GONE = "quota-store"  # the limit named when a fail-closed stream loses its store


@dataclass(frozen=True, slots=True)
class Cut:
    """Why a stream must stop: the error its client sees and the limit that ran out."""

    error: ClientError
    limit: str


class StreamBudget:
    def __init__(
        self,
        *,
        store: QuotaStore,
        metrics: Metrics,
        reservation: Reservation,
        costing: Costing,
        fail_mode: FailMode,
        prompt_tokens: int,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._reservation: Reservation | None = reservation
        self._costing = costing
        self._fail_mode = fail_mode
        self._prompt_tokens = prompt_tokens
        self._granted = reservation.cost.tokens  # tokens this stream holds in the store
        self.delivered = 0  # completion tokens the client received

    @property
    def open(self) -> bool:
        """Not settled yet: chunks still count against it."""
        return self._reservation is not None

    def spend(self, tokens: int) -> bool:
        """Deliver `tokens` more completion tokens if what the stream holds covers them (no
        store traffic: the usual case, kept synchronous for the per-chunk path)."""
        if self._prompt_tokens + self.delivered + tokens > self._granted:
            return False
        self.delivered += tokens
        return True

    async def cover(self, tokens: int) -> Cut | None:
        """Make room for `tokens` more completion tokens (debiting the store when the stream
        outgrew what it holds) and deliver them; the cut when they do not fit."""
        shortfall = self._prompt_tokens + self.delivered + tokens - self._granted
        if shortfall > 0:
            cut = await self._grow(shortfall)
            if cut is not None:
                return cut
        self.delivered += tokens
        return None

    async def _grow(self, shortfall: int) -> Cut | None:
        asks = (DEBIT_BATCH_TOKENS, shortfall) if shortfall < DEBIT_BATCH_TOKENS else (shortfall,)
        refusal = None
        for ask in asks:
            assert self._reservation is not None, "a settled budget covers nothing"
            try:
                decision = await self._store.debit(
                    self._reservation, self._costing.more_completion(ask), self._fail_mode
                )
            except Unavailable as error:  # the store went away and the policy fails closed
                return Cut(error, STORE_GONE)
            self._metrics.stream_debits.inc()
            if decision.reservation is not None:
                self._reservation = decision.reservation
                self._granted += ask
                return None
            refusal = decision.refusal
        assert refusal is not None
        return Cut(refusal_error(refusal), refusal.scoped.limit.name)

    def close(self) -> Reservation | None:
        """The reservation to settle, once; None when it was settled already."""
        reservation, self._reservation = self._reservation, None
        return reservation
