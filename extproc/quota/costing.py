"""What a request costs against a caller's limits: tokens always, dollars when the caller
has `usd` limits — and then only with a price for the model, never a silent zero."""

from __future__ import annotations

import re
from collections.abc import Sequence

from extproc.errors import ConfigError, PermissionDenied
from extproc.policy.model import Measure, PolicySnapshot
from extproc.policy.prices import PICO_PER_MICRO, Price, PriceTable
from extproc.quota.store import Cost
from extproc.quota.windows import ScopedLimit


class Costing:
    def __init__(self, price: Price | None) -> None:
        self._price = price

    @classmethod
    def for_request(
        cls, prices: PriceTable | None, limits: Sequence[ScopedLimit], model: str
    ) -> Costing:
        """The model's price when the table has one (so that spend is reported even without
        dollar limits); a caller with dollar limits and no price is refused, never charged 0."""
        price = prices.price_for(model) if prices is not None else None
        if price is None and any(s.limit.measure is Measure.USD for s in limits):
            raise PermissionDenied(
                f"No price for model '{model}' in the gateway's price table, so its dollar "
                "limits cannot be enforced; ask the platform team to add it.",
                code="model_not_priced",
            )
        return cls(price)

    def estimate(self, prompt: int, completion: int) -> Cost:
        """A reservation: never below what the answer can cost (no cache discount)."""
        usd = 0 if self._price is None else self._price.estimate_micros(prompt, completion)
        return Cost(requests=1, tokens=prompt + completion, usd_micros=usd)

    def actual(self, prompt: int, completion: int, cached: int = 0, cache_write: int = 0) -> Cost:
        usd = (
            0 if self._price is None
            else self._price.cost_micros(prompt, completion, cached, cache_write)
        )  # fmt: skip
        return Cost(requests=1, tokens=prompt + completion, usd_micros=usd)

    def completion_tokens_within(self, usd_micros: int) -> int:
        """How many completion tokens `usd_micros` pays for (unbounded without a price: a
        caller without dollar limits is never clamped by dollars)."""
        if self._price is None or self._price.output_pico == 0:
            return max(0, usd_micros) * 10**9
        return max(0, usd_micros) * PICO_PER_MICRO // self._price.output_pico

    def more_completion(self, tokens: int) -> Cost:
        """A stream's debit: `tokens` more generated tokens."""
        usd = 0 if self._price is None else self._price.cost_micros(0, tokens)
        return Cost(tokens=tokens, usd_micros=usd)


def check_prices(snapshot: PolicySnapshot, prices: PriceTable | None) -> None:
    """Start-up check: a namespace with `usd` limits whose allow-list names an exact model
    the table does not price would refuse every request for it; say so now. A name a
    `ModelRoute` serves is checked by the backends it sends to (those the namespace allows).
    (Patterns can only be checked per request: see `Costing.for_request`.)"""
    for policy in snapshot.policies.values():
        if not any(limit.measure is Measure.USD for limit in policy.limits):
            continue
        for model in policy.model_patterns:
            if _WILDCARD.search(model):
                continue
            route = snapshot.model_route(policy.namespace, model)
            served = (
                [b.model for b in route.backends if policy.allows_model(b.model)]
                if route is not None
                else [model]
            )
            for name in served:
                if prices is None or prices.price_for(name) is None:
                    via = f" (served by ModelRoute {route.name!r})" if route is not None else ""
                    raise ConfigError(
                        f"{policy.source}: namespace {policy.namespace!r} has usd limits but "
                        f"the price table has no price for allowed model {name!r}{via}"
                    )


_WILDCARD = re.compile(r"[*?\[]")
