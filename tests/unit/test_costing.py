"""Dollar costs against usd limits: priced from the table, never a silent zero."""

from __future__ import annotations

import pytest

from extproc.errors import ConfigError, PermissionDenied
from extproc.policy.model import (
    Algorithm,
    Backend,
    Limit,
    Measure,
    ModelRoute,
    PolicySnapshot,
    QuotaPolicy,
)
from extproc.policy.prices import PriceTable
from extproc.quota import Cost, Scope, ScopedLimit
from extproc.quota.costing import Costing, check_prices

TABLE = PriceTable.parse(
    """
apiVersion: tokengate.dev/v1
kind: PriceTable
prices:
  - {model: "gpt-4o", input: 2.50, cachedInput: 1.25, output: 10.00}
""",
    file="prices.yaml",
)
NS = Scope("team")
TOKENS = [ScopedLimit(NS, Limit("tpm", Measure.TOKENS, 1000, 60, Algorithm.BUCKET))]
DOLLARS = [*TOKENS, ScopedLimit(NS, Limit("spend", Measure.USD, 50_000_000, 86400))]


def test_callers_without_usd_limits_need_no_price() -> None:
    costing = Costing.for_request(None, TOKENS, "some-unknown-model")
    assert costing.estimate(100, 50) == Cost(requests=1, tokens=150, usd_micros=0)


def test_usd_limits_without_a_price_are_refused_not_free() -> None:
    for table in (None, TABLE):
        with pytest.raises(PermissionDenied) as refused:
            Costing.for_request(table, DOLLARS, "gpt-5-unpriced")
        assert refused.value.code == "model_not_priced"
        assert "gpt-5-unpriced" in refused.value.message


def test_estimate_actual_and_stream_debit_in_micro_dollars() -> None:
    costing = Costing.for_request(TABLE, DOLLARS, "gpt-4o")
    # 1,000 prompt tokens at $2.50/M = 2,500 micro-dollars; 100 output at $10/M = 1,000.
    assert costing.estimate(1000, 100) == Cost(1, 1100, 3500)
    # 400 of the prompt tokens were cached ($1.25/M): 600*2.5 + 400*1.25 + 100*10 = 3,000.
    assert costing.actual(1000, 100, cached=400) == Cost(1, 1100, 3000)
    assert costing.more_completion(64) == Cost(0, 64, 640)


def _snapshot(*models: str, routes: tuple[ModelRoute, ...] = ()) -> PolicySnapshot:
    policy = QuotaPolicy(
        name="a", namespace="team-a", limits=tuple(s.limit for s in DOLLARS),
        model_patterns=models, source="team-a.yaml",
    )  # fmt: skip
    return PolicySnapshot(
        policies={"team-a": policy}, keys_by_sha256={}, version="t", loaded_at=0.0,
        model_routes=routes,
    )  # fmt: skip


def test_start_up_check_names_an_allowed_model_without_a_price() -> None:
    check_prices(_snapshot("gpt-4o", "claude-*"), TABLE)  # patterns are checked per request
    with pytest.raises(ConfigError, match="no price for allowed model 'gpt-5-unpriced'"):
        check_prices(_snapshot("gpt-4o", "gpt-5-unpriced"), TABLE)
    with pytest.raises(ConfigError, match=r"team-a\.yaml"):
        check_prices(_snapshot("gpt-4o"), None)


def test_start_up_check_prices_a_routed_alias_by_its_backends() -> None:
    def route(*backends: str) -> ModelRoute:
        return ModelRoute(
            name="fast", namespace=None, model="fast",
            backends=tuple(Backend(provider="openai", model=m) for m in backends),
        )  # fmt: skip

    check_prices(_snapshot("gpt-4o", "fast", routes=(route("gpt-4o"),)), TABLE)
    with pytest.raises(ConfigError, match=r"'gpt-5-unpriced' \(served by ModelRoute 'fast'\)"):
        check_prices(_snapshot("gpt-5*", "fast", routes=(route("gpt-5-unpriced"),)), TABLE)
    # A backend the namespace does not allow is never sent to, so it needs no price.
    check_prices(_snapshot("gpt-4o", "fast", routes=(route("gpt-4o", "o1-pro"),)), TABLE)
