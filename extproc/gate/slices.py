"""Leased slices of a shared capacity: one worker's share of a capacity's rate, taken from
the shared quota store in one call and handed out locally, so that while no queue forms a
request finds room without a store round trip of its own (a turn costs ~80 us of sidecar
CPU per script call on Redis, `make bench`).

A slice is fetched in the background, after a request found the capacity with room for at
least `ROOM_FACTOR` slices, sized to what this worker let through in `SLICE_S` (x1.5,
at most `MAX_SLICE` requests); one used up or over ends at once, so the next request's
turn fetches the next. It is a reservation like any other (a ticket behind every
waiting one, so it is never taken ahead of the queue), used for at most `SLICE_S`, then
settled with what was used: unused units come back. Only capacities without a concurrency
limit are sliced (a lease belongs to one request). Costs of this, stated in the README:
while a slice is out, its unused units are unavailable to other workers (at most one slice
per worker and capacity, for 200 ms); when the capacity turns short, a worker holding a
slice still lets its own requests through until the slice ends, so a queue elsewhere may
be overtaken for at most `SLICE_S`; a worker killed with `-9` leaves its slice charged as
reserved until the capacity's window moves on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from extproc.errors import QuotaStoreError, Unavailable
from extproc.policy.model import FailMode
from extproc.quota import Reservation, ScopedLimit
from extproc.quota.failover import FailoverStore
from extproc.quota.queue import room
from extproc.quota.store import Cost, Decision, Ticket

log = logging.getLogger(__name__)

SLICE_S = 0.2
MAX_SLICE = 256
MIN_SLICE = 2
ROOM_FACTOR = 4  # a slice is fetched only while the capacity has room for this many
_BEHIND_EVERYONE = 1e12  # a slice's ticket score: after every waiting request's deadline


@dataclass(slots=True)
class _Slice:
    reservation: Reservation
    requests: int  # left
    tokens: int  # left
    expires: float  # monotonic
    used: Cost = field(default_factory=Cost)


class SliceBook:
    """This worker's slices, by capacity name."""

    def __init__(self, store: FailoverStore) -> None:
        self._store = store
        self._slices: dict[str, _Slice] = {}
        self._fetching: set[str] = set()
        self._seen: dict[str, tuple[float, int]] = {}  # capacity -> (window start, requests)
        self._rate: dict[str, float] = {}  # requests per second this worker let through
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count()
        self._me = os.urandom(4).hex()

    def take(self, capacity: str, cost: Cost, now: float) -> bool:
        """Let one request of `cost` through on this worker's slice, if it covers it."""
        self._count(capacity, now)
        held = self._slices.get(capacity)
        if held is None:
            return False
        if held.expires <= now or held.requests < cost.requests or held.tokens < cost.tokens:
            self._close(capacity)  # over or used up: the next turn may fetch another
            return False
        held.requests -= cost.requests
        held.tokens -= cost.tokens
        held.used += cost
        return True

    def offer(
        self, capacity: str, limits: Sequence[ScopedLimit], cost: Cost, decision: Decision,
        now: float,
    ) -> None:  # fmt: skip
        """After a request took its turn with a store round trip: fetch a slice in the
        background when the capacity has room to spare and this worker is busy enough."""
        if capacity in self._fetching or capacity in self._slices or not self._store.up:
            return
        size = min(MAX_SLICE, int(self._rate.get(capacity, 0.0) * SLICE_S * 1.5))
        if size < MIN_SLICE:
            return
        want = Cost(requests=size, tokens=size * max(1, cost.tokens))
        needs = [want.amount(s.limit.measure) for s in limits]
        if room(decision.states, needs) < ROOM_FACTOR:
            return
        self._fetching.add(capacity)
        task = asyncio.get_running_loop().create_task(self._fetch(capacity, limits, want, now))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch(
        self, capacity: str, limits: Sequence[ScopedLimit], want: Cost, now: float
    ) -> None:
        slice_id = f"slice-{self._me}-{next(self._ids)}"
        ticket = Ticket(member=f"slice/{slice_id}", score=_BEHIND_EVERYONE, hold_s=0.001)
        try:
            decision = await self._store.reserve(
                slice_id, limits, want, FailMode.CLOSED, ticket=ticket, keep=True
            )
        except (QuotaStoreError, Unavailable) as exc:
            log.debug("no slice of capacity %s: %s", capacity, exc)
            return
        finally:
            self._fetching.discard(capacity)
        if decision.reservation is None:
            return
        expires = now + SLICE_S  # from when it was asked for: the same clock as `take`'s
        self._slices[capacity] = _Slice(decision.reservation, want.requests, want.tokens, expires)

    def _close(self, capacity: str) -> None:
        """The slice is over: what was used stays taken, the rest comes back."""
        held = self._slices.pop(capacity)
        task = asyncio.get_running_loop().create_task(
            self._store.settle(held.reservation, held.used)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _count(self, capacity: str, now: float) -> None:
        """Requests per second this worker sent this capacity's way, per second window."""
        start, count = self._seen.get(capacity, (now, 0))
        if now - start >= 1.0:
            self._rate[capacity] = count / (now - start)
            start, count = now, 0
        self._seen[capacity] = (start, count + 1)

    async def aclose(self) -> None:
        """Give back what the slices did not use (the server's drain)."""
        for capacity in list(self._slices):
            self._close(capacity)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
