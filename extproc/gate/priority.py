"""Which class a request runs in, and which model its budget lets it have: pure rules, no I/O.

A request's class is its key's (`ApiKey.priority`), else its namespace policy's. The
`x-tokengate-priority` header may lower it to any class, or raise it up to the key's
`maxPriority` (never past: a caller cannot buy its way to the front by naming a class). An
unknown class in the header is a 400 that names the classes, not a silent default.

Budget degradation reads how full each of the policy's own limits was at this worker's
last decision for the namespace (`UsageSeen`): crossing a threshold switches the model of
the *next* request, and every worker learns it at its own next decision (the counters are
the shared store's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from extproc.errors import BadRequest, RateLimited
from extproc.policy.model import ApiKey, Degradation, Priority, QuotaPolicy
from extproc.quota.store import LimitState

CLASSES = ", ".join(p.value for p in Priority)


def request_class(policy: QuotaPolicy, key: ApiKey | None, asked: str | None) -> Priority:
    """The class a request runs in (see the module docstring)."""
    own = key.priority if key is not None and key.priority is not None else policy.priority
    ceiling = key.max_priority if key is not None and key.max_priority is not None else own
    if asked is None:
        return own
    try:
        wanted = Priority(asked.strip().lower())
    except ValueError:
        raise BadRequest(
            f"x-tokengate-priority must be one of {CLASSES}; got {asked[:40]!r}."
        ) from None
    if wanted.rank >= own.rank:  # down (or the same): always allowed
        return wanted
    return wanted if wanted.rank >= ceiling.rank else ceiling


@dataclass(frozen=True, slots=True)
class Fill:
    """How full one limit was at a decision, and until when its window runs."""

    ratio: float  # used / amount
    resets_at: float  # unix seconds


class UsageSeen:
    """How full each namespace limit was at this worker's last decision, for the degrade
    thresholds. Only namespaces with thresholds are recorded."""

    def __init__(self) -> None:
        self._fill: dict[str, dict[str, Fill]] = {}

    def record(self, policy: QuotaPolicy, states: Sequence[LimitState], *, now: float) -> None:
        if not policy.degrade:
            return
        fills = self._fill.setdefault(policy.namespace, {})
        for state in states:
            scoped = state.scoped
            if scoped.scope.key_name is None and scoped.scope.route is None:
                ratio = state.used / max(1, scoped.limit.amount)
                fills[scoped.limit.name] = Fill(ratio, now + state.reset_after)

    def fills(self, namespace: str) -> Mapping[str, Fill]:
        return self._fill.get(namespace, {})


@dataclass(frozen=True, slots=True)
class Degraded:
    """What the budget thresholds crossed mean for one request."""

    model: str  # the model to serve (the requested one when nothing applies)
    threshold: Degradation | None  # the threshold that chose it, if any


def degrade(
    policy: QuotaPolicy,
    key: ApiKey | None,
    klass: Priority,
    model: str,
    fills: Mapping[str, Fill],
    *,
    now: float,
) -> Degraded:
    """The model a request gets under its policy's crossed thresholds (the highest crossed
    one that names a cheaper model for it wins). Raises the 429 when a crossed threshold
    refuses its class. A key that forbids substitution keeps the requested model."""
    live = {name: f for name, f in fills.items() if f.resets_at > now}  # a new window: 0 %
    crossed = [
        d for d in policy.degrade if d.limit in live and live[d.limit].ratio * 100 >= d.at_percent
    ]
    for threshold in crossed:
        if klass in threshold.refuse:
            wait = live[threshold.limit].resets_at - now
            raise RateLimited(
                f"Budget threshold reached: limit '{threshold.limit}' of {policy.namespace} is "
                f"at {threshold.at_percent}% or more, and {klass.value} requests are refused "
                "until it resets.",
                limit=threshold.limit,
                retry_after=max(1.0, wait),
            )
    if key is not None and not key.allow_substitution:
        return Degraded(model, None)
    for threshold in reversed(crossed):  # the highest threshold speaks first
        cheaper = threshold.cheaper(model)
        if cheaper is not None:
            return Degraded(cheaper, threshold)
    return Degraded(model, None)
