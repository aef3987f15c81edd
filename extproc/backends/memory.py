"""In-process backend health: the store of a single worker on a single node, and the reference
the Redis script (`health.lua`) mirrors step for step; the semantics suite holds both to the
same answers.

Everything runs on the event loop thread with no await between reading a backend and claiming
it, so an admit is atomic without a lock. Absent fields mean "unknown" (headroom) or "never"
(breaker times, 0.0), exactly as an absent hash field does in Redis.

Order of an admit's checks, per backend (the first that applies decides):
1. `retry-after` not yet passed: EXHAUSTED — the provider named the time itself;
2. open (cooling down): OPEN;  half-open with the probe slot taken: OPEN;
3. requests or tokens known to be gone before their reset: EXHAUSTED — so a half-open backend
   the provider would refuse is not probed (the probe would only fail and reopen it);
4. half-open: PROBE; else OK.
A remaining count is known only until its reset time; one stated without any reset time
is counted down but never exhausts (nobody could say when to try again).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from extproc.backends.health import (
    FORGET_S,
    Admit,
    BackendState,
    Headroom,
    HealthPolicy,
    HealthStore,
    Outcome,
    Transition,
    Verdict,
)


@dataclass(slots=True)
class _Entry:
    """One backend's state; times are absolute, on the store's clock."""

    failures: int = 0
    open_until: float = 0.0  # 0: never opened (closed)
    probe_until: float = 0.0  # 0: no probe out
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    requests_reset_at: float | None = None
    tokens_reset_at: float | None = None
    retry_at: float | None = None
    forget_at: float = 0.0

    def empty(self) -> bool:
        headroom = (self.remaining_requests, self.remaining_tokens, self.requests_reset_at,
                    self.tokens_reset_at, self.retry_at)  # fmt: skip
        breaker = (self.failures, self.open_until, self.probe_until) == (0, 0.0, 0.0)
        return breaker and all(field is None for field in headroom)


class MemoryHealth(HealthStore):
    def __init__(
        self, policy: HealthPolicy, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    async def admit(self, backends: Sequence[str], *, tokens: int) -> list[Admit]:
        now = self._clock()
        answers = []
        claimed = False
        for backend in backends:
            entry = self._entry(backend, now)
            answer = _verdict(entry, now, tokens)
            if claimed and answer.verdict is Verdict.PROBE:  # only the claimed one probes
                answer = Admit(Verdict.OPEN)
            if answer.usable and not claimed:
                claimed = True
                if entry is not None:  # nothing known: nothing to claim or count down
                    _claim(entry, answer.verdict, now, tokens, self._policy.probe_ttl_s)
                    self._store(backend, entry, now)
            answers.append(answer)
        return answers

    async def record(self, backend: str, outcome: Outcome) -> Transition:
        now = self._clock()
        entry = self._entry(backend, now) or _Entry()
        _forget_passed(entry, now)
        transition = _breaker(entry, outcome.ok, now, self._policy)
        if outcome.headroom is not None:
            _learn(entry, outcome.headroom, now)
        self._store(backend, entry, now)
        return transition

    async def view(self, backends: Sequence[str]) -> list[BackendState]:
        now = self._clock()
        return [_state(backend, self._entry(backend, now), now) for backend in backends]

    def _entry(self, backend: str, now: float) -> _Entry | None:
        entry = self._entries.get(backend)
        if entry is not None and entry.forget_at <= now:  # as Redis expires the key
            del self._entries[backend]
            return None
        return entry

    def _store(self, backend: str, entry: _Entry, now: float) -> None:
        """A write: an empty state is deleted, any other kept `FORGET_S` past its last write
        and past every time it holds (as the script's PEXPIRE)."""
        if entry.empty():
            self._entries.pop(backend, None)
            return
        latest = max(
            entry.open_until, entry.probe_until, entry.requests_reset_at or 0.0,
            entry.tokens_reset_at or 0.0, entry.retry_at or 0.0,
        )  # fmt: skip
        entry.forget_at = now + max(FORGET_S, latest - now)
        self._entries[backend] = entry


def _verdict(entry: _Entry | None, now: float, tokens: int) -> Admit:
    if entry is None:
        return Admit(Verdict.OK)
    retry = _from_now(entry.retry_at, now)
    if retry is not None:
        return Admit(Verdict.EXHAUSTED, retry)
    if entry.open_until > now:
        return Admit(Verdict.OPEN, entry.open_until - now)
    if entry.open_until > 0 and entry.probe_until > now:
        return Admit(Verdict.OPEN, entry.probe_until - now)
    requests, wait = entry.remaining_requests, _from_now(entry.requests_reset_at, now)
    if wait is not None and requests is not None and requests <= 0:
        return Admit(Verdict.EXHAUSTED, wait)
    remaining, wait = entry.remaining_tokens, _from_now(entry.tokens_reset_at, now)
    if wait is not None and remaining is not None and remaining < tokens:
        return Admit(Verdict.EXHAUSTED, wait)
    return Admit(Verdict.PROBE if entry.open_until > 0 else Verdict.OK)


def _claim(entry: _Entry, verdict: Verdict, now: float, tokens: int, probe_ttl_s: float) -> None:
    """The request goes to this backend: it holds the probe slot, and the fleet's picture of
    the provider's remainders shrinks by what it will take."""
    _forget_passed(entry, now)
    if verdict is Verdict.PROBE:
        entry.probe_until = now + probe_ttl_s
    if entry.remaining_requests is not None:
        entry.remaining_requests = max(0, entry.remaining_requests - 1)
    if entry.remaining_tokens is not None:
        entry.remaining_tokens = max(0, entry.remaining_tokens - tokens)


def _forget_passed(entry: _Entry, now: float) -> None:
    """A remainder whose reset has passed says nothing any more: the provider refilled it."""
    if entry.requests_reset_at is not None and entry.requests_reset_at <= now:
        entry.remaining_requests = entry.requests_reset_at = None
    if entry.tokens_reset_at is not None and entry.tokens_reset_at <= now:
        entry.remaining_tokens = entry.tokens_reset_at = None
    if entry.retry_at is not None and entry.retry_at <= now:
        entry.retry_at = None


def _breaker(entry: _Entry, ok: bool | None, now: float, policy: HealthPolicy) -> Transition:
    if ok is None:  # the request was at fault: an answered probe frees the slot all the same
        entry.probe_until = 0.0
        return Transition.NONE
    was_open = entry.open_until > 0
    if ok:
        entry.failures, entry.open_until, entry.probe_until = 0, 0.0, 0.0
        return Transition.CLOSED if was_open else Transition.NONE
    entry.failures += 1
    if was_open:  # the probe failed (or a request sent before it opened): cool down again
        entry.open_until, entry.probe_until = now + policy.cooldown_s, 0.0
        return Transition.REOPENED
    if entry.failures >= policy.failures:
        entry.open_until = now + policy.cooldown_s
        return Transition.OPENED
    return Transition.NONE


def _learn(entry: _Entry, said: Headroom, now: float) -> None:
    """What the answer's headers stated replaces what was known; the rest stays."""
    if said.remaining_requests is not None:
        entry.remaining_requests = said.remaining_requests
    if said.remaining_tokens is not None:
        entry.remaining_tokens = said.remaining_tokens
    if said.requests_reset_s is not None:
        entry.requests_reset_at = now + said.requests_reset_s
    if said.tokens_reset_s is not None:
        entry.tokens_reset_at = now + said.tokens_reset_s
    if said.retry_after_s is not None:
        entry.retry_at = now + said.retry_after_s


def _state(backend: str, entry: _Entry | None, now: float) -> BackendState:
    if entry is None:
        return BackendState(backend, "closed", 0, 0.0, None, None, None, None, None)
    state = "closed" if entry.open_until <= 0 else "open" if entry.open_until > now else "half-open"
    return BackendState(
        backend=backend,
        state=state,
        failures=entry.failures,
        open_for_s=max(0.0, entry.open_until - now),
        remaining_requests=_known(entry.remaining_requests, entry.requests_reset_at, now),
        remaining_tokens=_known(entry.remaining_tokens, entry.tokens_reset_at, now),
        requests_reset_s=_from_now(entry.requests_reset_at, now),
        tokens_reset_s=_from_now(entry.tokens_reset_at, now),
        retry_after_s=_from_now(entry.retry_at, now),
    )


def _known(remaining: int | None, reset_at: float | None, now: float) -> int | None:
    return None if reset_at is not None and reset_at <= now else remaining


def _from_now(at: float | None, now: float) -> float | None:
    return at - now if at is not None and at > now else None
