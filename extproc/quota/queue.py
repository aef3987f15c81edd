"""Capacity queues: which waiting request may take shared capacity next. Pure (no I/O):
the in-process store keeps a `TicketQueue` per capacity, and the Redis script does the same
arithmetic on a sorted set, so one sidecar and a fleet admit in the same order.

A ticket's score is its deadline: its arrival plus its class's longest wait. Ordering by
deadline (earliest first) puts a higher class ahead of a lower one that arrived at the same
time, keeps arrival order within a class, and ages a waiting request: a batch request that
has waited 58 s of its 60 scores like a fresh interactive one with 2 s to go, so nothing
that can be admitted in time waits past its maximum. A request may take capacity when the
limits have room for it *and* for everyone ahead of it (`room`), so a newcomer never
overtakes the queue, and several waiting requests can go in one refill.

A ticket is held for `hold_s` past each of its holder's calls: a holder that stops asking
(its client left, its sidecar died) loses its place within that time, without a word.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from extproc.quota.store import LimitState, Ticket
from extproc.quota.windows import KEY_PREFIX, Scope

ROOM_UNBOUNDED = 1 << 30  # no limit of the capacity counts this request


def queue_keys(scope: Scope) -> tuple[str, str]:
    """The sorted sets of a capacity's queue (member -> score) and of its tickets' holds
    (member -> until), under the capacity's hash tag (one Cluster slot with its limits)."""
    tag = f"{KEY_PREFIX}:{{ns:{scope.namespace}}}"
    return f"{tag}:queue", f"{tag}:queue:hold"


def room(states: Sequence[LimitState], needs: Sequence[int]) -> int:
    """How many requests of this size the limits admit now (the Lua script computes the
    same): the fewest any limit that counts them still has room for."""
    fits = ROOM_UNBOUNDED
    for state, need in zip(states, needs, strict=True):
        if need > 0:
            fits = min(fits, max(0, math.floor(state.remaining / need)))
    return fits


class TicketQueue:
    """One capacity's queue, in process: tickets sorted by (score, member)."""

    def __init__(self) -> None:
        self._order: list[tuple[float, str]] = []
        self._tickets: dict[str, tuple[float, float]] = {}  # member -> (score, held until)

    def __len__(self) -> int:
        return len(self._order)

    def prune(self, now: float) -> None:
        for member in [m for m, (_, until) in self._tickets.items() if until <= now]:
            self.remove(member)

    def ahead(self, ticket: Ticket) -> int:
        """Tickets with an earlier deadline (a ticket keeps its score: not its own)."""
        return bisect.bisect_left(self._order, (ticket.score, ""))

    def place(self, ticket: Ticket, now: float) -> None:
        """Join, or renew the place (the score is the ticket's, should it have changed)."""
        self.remove(ticket.member)
        bisect.insort(self._order, (ticket.score, ticket.member))
        self._tickets[ticket.member] = (ticket.score, now + ticket.hold_s)

    def remove(self, member: str) -> bool:
        held = self._tickets.pop(member, None)
        if held is None:
            return False
        index = bisect.bisect_left(self._order, (held[0], member))
        del self._order[index]
        return True

    def members(self) -> tuple[tuple[str, float], ...]:
        return tuple((member, score) for score, member in self._order)
