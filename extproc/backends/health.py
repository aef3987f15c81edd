"""What backend health is, and what a store of it must do. No I/O here.

A *backend* is one model at one provider (later: through one key), named
`provider/model[/key]`. Two things are kept per backend, shared by the fleet:
- a **circuit breaker**: `failures` consecutive failed attempts (5xx, 429, no answer)
  open it for `cooldown_s`; then one request at a time may *probe* it (half-open); the
  probe's success closes it, its failure opens it again for another cooldown. A probe
  that never reports back frees its slot after `probe_ttl_s`.
- **headroom**: what the provider's rate-limit headers said on its last answer (requests
  and tokens remaining, when each resets, `retry-after`). Between answers, every request
  the fleet sends through a backend is taken off its known remainders, so sidecars stop
  before the provider would answer 429, not after.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

# A backend's state is forgotten this long after it was last written (a Redis key's TTL),
# or once everything it holds has passed, whichever is later: a backend taken out of every
# route leaves nothing behind, and a failure an hour old no longer counts toward opening.
FORGET_S = 3600.0


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    failures: int = 5  # consecutive failed attempts that open the breaker
    cooldown_s: float = 30.0  # open this long before a probe may go
    probe_ttl_s: float = 60.0  # a probe that never reports frees the slot after this


class Verdict(StrEnum):
    OK = "ok"  # closed, headroom left (or unknown)
    PROBE = "probe"  # half-open and this request holds the probe slot
    OPEN = "open"  # cooling down, or another request is probing it
    EXHAUSTED = "exhausted"  # the provider's limit for it is (about to be) reached


@dataclass(frozen=True, slots=True)
class Admit:
    """One backend's answer for one request. `wait_s`: for OPEN and EXHAUSTED, how long
    until it may be tried again (0 when unknown)."""

    verdict: Verdict
    wait_s: float = 0.0

    @property
    def usable(self) -> bool:
        return self.verdict in (Verdict.OK, Verdict.PROBE)


@dataclass(frozen=True, slots=True)
class Headroom:
    """What a provider's answer said about its limits; None where it said nothing. Times
    are seconds from when the answer arrived."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    requests_reset_s: float | None = None
    tokens_reset_s: float | None = None
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt's result. `ok`: True (an answer), False (5xx, 429, no answer: counts
    toward the breaker), None (another 4xx: the backend answered, the request was at fault;
    neither opens nor closes)."""

    ok: bool | None
    headroom: Headroom | None = None


class Transition(StrEnum):
    NONE = "none"
    OPENED = "opened"  # closed -> open: `failures` in a row
    REOPENED = "reopened"  # a probe failed
    CLOSED = "closed"  # a probe (or any attempt while open) succeeded


@dataclass(frozen=True, slots=True)
class BackendState:
    """What `ctl backends` shows of one backend."""

    backend: str
    state: str  # "closed" | "open" | "half-open"
    failures: int
    open_for_s: float  # 0 when not open
    remaining_requests: int | None
    remaining_tokens: int | None
    requests_reset_s: float | None
    tokens_reset_s: float | None
    retry_after_s: float | None


class HealthStore(Protocol):
    async def admit(self, backends: Sequence[str], *, tokens: int) -> list[Admit]:
        """One verdict per backend, in order, in one round trip. The first usable backend
        is *claimed*: its probe slot taken (PROBE), one request and `tokens` taken off its
        known headroom. The others are only read: they are fallbacks."""
        ...

    async def record(self, backend: str, outcome: Outcome) -> Transition:
        """One attempt's result; the breaker's transition, if any."""
        ...

    async def view(self, backends: Sequence[str]) -> list[BackendState]:
        """The state of these backends now, for operators (no claim, no change)."""
        ...
