"""From policy to counters and back: which limits apply to a caller, what a refusal says,
and the `x-ratelimit-*` headers a response carries. Pure code, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from extproc.errors import RateLimited
from extproc.policy.model import ApiKey, Limit, Measure, QuotaPolicy, Route
from extproc.quota.store import LimitState, Refusal
from extproc.quota.windows import Scope, ScopedLimit, describe_limit_period, format_duration


def limits_for(
    policy: QuotaPolicy, key: ApiKey | None, extra: Mapping[str, int] | None = None
) -> tuple[ScopedLimit, ...]:
    """The namespace's limits, then the key's own limits layered under them; `extra` raises
    limits by name (an operator's temporary override)."""
    ns_scope, tz = Scope(policy.namespace), policy.time_zone

    def grown(limit: Limit) -> Limit:
        more = extra.get(limit.name, 0) if extra else 0
        return replace(limit, amount=limit.amount + more) if more else limit

    limits = [ScopedLimit(ns_scope, grown(limit), tz) for limit in policy.limits]
    if key is not None:
        key_scope = Scope(policy.namespace, key.name)
        limits.extend(ScopedLimit(key_scope, grown(limit), tz) for limit in key.limits)
    return tuple(limits)


def route_limits(route: Route, policy: QuotaPolicy) -> tuple[ScopedLimit, ...]:
    """A forwarded route's own limits, counted for the caller's namespace on that route."""
    scope = Scope(policy.namespace, route=route.name)
    return tuple(ScopedLimit(scope, limit, policy.time_zone) for limit in route.limits)


def _figure(measure: Measure, amount: int) -> str:
    """An amount as people read it: dollars for `usd` (stored as micro-dollars)."""
    return f"${amount / 1_000_000:.2f}" if measure is Measure.USD else str(amount)


def _amount(measure: Measure, amount: int) -> str:
    if measure is Measure.USD:
        return _figure(measure, amount)
    if measure is Measure.CONCURRENT:
        return f"{amount} concurrent requests"
    return f"{amount} {measure.value}"


def refusal_error(refusal: Refusal) -> RateLimited:
    scoped = refusal.scoped
    limit = scoped.limit
    per = "" if limit.period_s is None else f" per {describe_limit_period(limit)}"
    who = scoped.scope.label
    measure = limit.measure
    limit_text = _amount(measure, limit.amount) + per
    if refusal.never_fits:
        message = (
            f"Request too large for limit '{limit.name}' of {who}: it needs "
            f"{_figure(measure, refusal.needed)} but the limit is {limit_text}. "
            "Lower max_tokens or the prompt."
        )
    else:
        message = (
            f"Rate limit reached for limit '{limit.name}' of {who}: limit {limit_text}, "
            f"used {_figure(measure, refusal.used)}, "
            f"requested {_figure(measure, refusal.needed)}. "
            f"Please try again in {format_duration(refusal.retry_after)}."
        )
    return RateLimited(message, limit=limit.name, retry_after=refusal.retry_after)


def _tightest(states: Iterable[LimitState], measure: Measure) -> LimitState | None:
    best: LimitState | None = None
    for state in states:
        if state.scoped.limit.measure is measure and (
            best is None or state.remaining < best.remaining
        ):
            best = state
    return best


def ratelimit_headers(states: Iterable[LimitState]) -> dict[str, str]:
    """OpenAI-style headers for the tightest request and token limits (when the caller has
    such limits at all)."""
    states = tuple(states)
    headers: dict[str, str] = {}
    for measure, suffix in ((Measure.REQUESTS, "requests"), (Measure.TOKENS, "tokens")):
        state = _tightest(states, measure)
        if state is None:
            continue
        headers[f"x-ratelimit-limit-{suffix}"] = str(state.scoped.limit.amount)
        headers[f"x-ratelimit-remaining-{suffix}"] = str(state.remaining)
        headers[f"x-ratelimit-reset-{suffix}"] = format_duration(state.reset_after)
    return headers
