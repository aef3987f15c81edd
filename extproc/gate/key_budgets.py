"""Pool keys' own budgets (`PoolKey.limits`: e.g. a secondary key capped at $20 a day).

A key's budget counts what it served, whichever namespace sent the request, in the quota
store under the pool's scope (`key_ring.budget_scope`), so every sidecar of the fleet counts
into the same counters. It is charged when an answer settles, with what its caller was
charged (the provider's usage priced at the model that served): a zero-cost reservation,
which never refuses, then its settlement with the true cost, both idempotent per request id
as every settlement is. Nothing is reserved before sending: which key an attempt carries is
chosen in Envoy's upstream phase, after the caller's own reservation, and a key over budget
is simply not chosen.

A worker learns that a key's budget is used up from its own charges (at once) and from the
upkeep's peek of every budgeted key (each reload interval: what other sidecars charged).
So a key overshoots its budget by at most what was in flight on it when it ran out, plus
what other sidecars sent with it in one reload interval; both are stated in docs/model-routes.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from extproc.errors import QuotaStoreError
from extproc.gate.key_ring import RingKey
from extproc.gate.runtime import Runtime
from extproc.policy.model import FailMode
from extproc.quota.store import Cost, LimitState
from extproc.telemetry.events import Event

log = logging.getLogger(__name__)

CHARGE_SUFFIX = ":key"  # the charge's request id: the caller's reservation id + this
_CHARGES: set[asyncio.Task[None]] = set()  # in flight, kept from the GC
MAX_CHARGES_IN_FLIGHT = 1000


def charge_later(rt: Runtime, key: RingKey | None, request_id: str, actual: Cost) -> None:
    """`charge`, off the answer's path (its two store calls never delay the last bytes)."""
    if key is None or not key.budget:
        return
    if len(_CHARGES) >= MAX_CHARGES_IN_FLIGHT:  # a store this slow: counted, not piled up
        log.warning("key budget of %s not charged: too many charges in flight", key.label)
        return
    task = asyncio.get_running_loop().create_task(charge(rt, key, request_id, actual))
    _CHARGES.add(task)
    task.add_done_callback(_CHARGES.discard)


async def charge(rt: Runtime, key: RingKey | None, request_id: str, actual: Cost) -> None:
    """Count `actual` against `key`'s budget (nothing for a key without one). A store that
    cannot be reached loses the charge, never the answer: the caller's own settlement is
    what bills; this only steers which key serves next."""
    if key is None or not key.budget:
        return
    rt.metrics.key_budget_charged.labels(key.pool, key.name).inc(actual.usd_micros)
    charge_id = request_id + CHARGE_SUFFIX
    try:
        held = await rt.store.reserve(charge_id, key.budget, Cost(), FailMode.OPEN)
        assert held.reservation is not None, "a zero cost never refuses"
        await rt.store.settle(held.reservation, actual)
    except QuotaStoreError as exc:
        log.warning("key budget of %s not charged: %s", key.label, exc)
        return
    after = [_after(state, actual) for state in held.states]
    _learn(rt, key, after, now=time.time())


def _after(state: LimitState, actual: Cost) -> LimitState:
    """The limit's counter once `actual` is added (the reservation's answer predates it)."""
    added = actual.amount(state.scoped.limit.measure)
    return LimitState(state.scoped, state.used + added, state.reset_after)


async def refresh(rt: Runtime) -> None:
    """Every budgeted key's counters, read from the store (the upkeep's round): what the
    fleet charged since. One script call per pool; a store down leaves what is known."""
    now = time.time()
    for pool, keys in rt.keys.current.pools.items():
        budgeted = [k for k in keys if k.budget]
        if not budgeted:
            continue
        limits = [s for k in budgeted for s in k.budget]
        try:
            states = await rt.store.peek(limits)
        except QuotaStoreError as exc:
            log.warning("key budgets of pool %s not refreshed: %s", pool, exc)
            continue
        start = 0
        for key in budgeted:
            _learn(rt, key, states[start : start + len(key.budget)], now=now)
            start += len(key.budget)


def _reset_after(state: LimitState) -> float:
    """Seconds until a full limit has room. A charge's answer predates the charge, so a
    window it opened reads 0 there: then the whole period, until a refresh reads the
    store's own (every interval)."""
    if state.reset_after > 0:
        return state.reset_after
    return float(state.scoped.limit.period_s or 0)


def _learn(rt: Runtime, key: RingKey, states: Sequence[LimitState], *, now: float) -> None:
    """Mark `key` spent until its fullest limit's window resets, or usable again."""
    full = [s for s in states if s.remaining == 0]
    spent = rt.key_chooser.spent
    was_spent = spent.get(key.label, 0.0) > now
    if not full:
        spent.pop(key.label, None)
        rt.metrics.key_budget_spent.labels(key.pool, key.name).set(0)
        return
    spent[key.label] = now + max(_reset_after(s) for s in full)
    rt.metrics.key_budget_spent.labels(key.pool, key.name).set(1)
    if not was_spent:
        limit = full[0].scoped.limit.name
        message = f"provider key {key.label}: budget {limit} used up, skipped until it resets"
        log.warning("%s", message)
        rt.events.publish(Event(kind="key_budget_spent", message=message, limit=limit))
