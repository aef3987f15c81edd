"""How large an answer the caller's budget still allows: pure arithmetic, no I/O.

The gateway writes the completion cap the provider enforces (`max_tokens`, …) clamped to
what the tightest token or dollar limit still allows after the prompt, so that a plain
answer, a stream or a reasoning model's hidden tokens cannot outrun the budget. Both
answers come from what the store already says about a decision, so clamping costs no extra
round trip when the request fits, and one more reserve per limit that refuses otherwise:
- after an allowed reserve, the room left on each token/dollar limit (`room_after`);
- after a refusal by such a limit, how much completion would have fitted it (`fit_within`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from extproc.policy.model import Measure
from extproc.quota.costing import Costing
from extproc.quota.store import LimitState, Refusal

_SPENDING = (Measure.TOKENS, Measure.USD)


def _completion_tokens(measure: Measure, amount: int, costing: Costing) -> int:
    """`amount` of a limit's measure as completion tokens (dollars at the output price)."""
    if measure is Measure.TOKENS:
        return amount
    return costing.completion_tokens_within(amount)


def room_after(states: Iterable[LimitState], costing: Costing) -> int | None:
    """Completion tokens every token and dollar limit can still take after a reserve; None
    when the caller has no such limit (nothing to clamp to)."""
    rooms = [
        _completion_tokens(s.scoped.limit.measure, s.remaining, costing)
        for s in states
        if s.scoped.limit.measure in _SPENDING
    ]
    return min(rooms) if rooms else None


def fit_within(refusal: Refusal, costing: Costing, *, completion: int) -> int | None:
    """The total completion that the refusing limit would have taken beside the prompt
    (negative: not even the prompt fits); None when it is not a token or dollar limit
    (a request or concurrency limit cannot be met by asking for less)."""
    measure = refusal.scoped.limit.measure
    if measure not in _SPENDING:
        return None
    room = refusal.scoped.limit.amount - refusal.used
    prompt_part = refusal.needed - (
        completion if measure is Measure.TOKENS else costing.estimate(0, completion).usd_micros
    )
    return _completion_tokens(measure, room - prompt_part, costing) if room > prompt_part else -1


def at_minimum(refusal: Refusal, costing: Costing, *, completion: int, minimum: int) -> Refusal:
    """The refusal restated for the smallest answer worth sending, so the 429 says what even
    that needs (not what the first, larger ask needed)."""
    measure = refusal.scoped.limit.measure
    if measure is Measure.TOKENS:
        needed = refusal.needed - completion + minimum
    elif measure is Measure.USD:
        extra = costing.estimate(0, minimum).usd_micros - costing.estimate(0, completion).usd_micros
        needed = refusal.needed + extra
    else:
        return refusal
    return replace(refusal, needed=needed)


def per_choice(total: int, multiplier: int) -> int:
    """Each of `multiplier` completions may reach the cap: the cap is the total shared."""
    return total // multiplier
