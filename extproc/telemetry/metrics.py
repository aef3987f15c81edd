"""Prometheus metrics. Label values that come from clients (model names) are bounded, so a
caller cannot blow up the time-series count by inventing model names."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from extproc.providers import Usage

# ext_proc messages are handled in tens of microseconds; the buckets resolve that.
_PHASE_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_QUEUE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
# Reservations err high by design (a whole max_tokens for a short answer): wide buckets.
_RESERVATION_BUCKETS = (-0.5, -0.1, -0.01, 0.0, 0.01, 0.1, 0.5, 1.0, 3.0, 10.0, 100.0)
_ERROR_BUCKETS = (-0.5, -0.2, -0.1, -0.05, -0.01, -0.001, 0.001, 0.01, 0.05, 0.1, 0.2, 0.5)
MAX_MODEL_LABELS = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class Settlement:
    """What one settlement records."""

    namespace: str
    key: str  # the gateway key's name, "-" without one
    model: str
    provider: str
    usage: Usage
    usd_micros: int
    source: str  # provider | partial | counted
    counted_prompt: int  # our count of the prompt
    reserved_completion: int  # completion tokens the reservation held at admission


def _ratio(estimate: int, actual: int) -> float:
    """(estimate - actual) / actual: positive = reserved more than used."""
    return (estimate - actual) / max(1, actual)


class BoundedLabel:
    """Passes through the first `limit` distinct values, then answers `other`."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return "other"
        self._seen.add(value)
        return value


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.model_label = BoundedLabel(MAX_MODEL_LABELS)
        self.requests = Counter(
            "tokengate_requests",
            "Requests seen by the sidecar, by caller namespace, model and outcome.",
            ["namespace", "model", "outcome"],
            registry=r,
        )
        self.tokens = Counter(
            "tokengate_tokens",
            "Tokens settled (provider usage when reported, else our count).",
            ["namespace", "model", "kind"],
            registry=r,
        )
        self.phase_seconds = Histogram(
            "tokengate_phase_seconds",
            "Sidecar time per ext_proc message, by phase.",
            ["phase"],
            buckets=_PHASE_BUCKETS,
            registry=r,
        )
        self.refusals = Counter(
            "tokengate_refusals",
            "Requests refused by a limit, by namespace and limit name.",
            ["namespace", "limit"],
            registry=r,
        )
        # multiprocess_mode: how several workers' values combine (see workers.py).
        self.streams_open = Gauge(
            "tokengate_ext_proc_streams_open", "ext_proc streams open now.", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.policy_version = Gauge(
            "tokengate_policy_info",
            "The policy snapshot in force (value 1), by version.",
            ["version"],
            registry=r,
            multiprocess_mode="max",
        )
        self.usage_source = Counter(
            "tokengate_usage_source",
            "Settled requests by where their count came from: provider (its usage), partial "
            "(what it reported before the answer ended early, raised by our count), counted.",
            ["source"],
            registry=r,
        )
        self.streams_cut = Counter(
            "tokengate_streams_cut",
            "Streamed answers cut because a budget ran out, by namespace and limit.",
            ["namespace", "limit"],
            registry=r,
        )
        self.stream_debits = Counter(
            "tokengate_stream_debits",
            "Quota-store debits made by streams that outgrew their reservation.",
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "tokengate_time_to_first_token_seconds",
            "From admitting a streamed request to its first generated token.",
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "tokengate_inter_token_seconds",
            "Time between generated tokens of a streamed answer (per chunk, per token).",
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self.spend = Counter(
            "tokengate_spend_usd_micros",
            "Settled cost in micro-dollars (needs a price for the model in the price table).",
            ["namespace", "key", "model", "provider"],
            registry=r,
        )
        self.reservation_error = Histogram(
            "tokengate_reservation_error_ratio",
            "(reserved - settled) / settled per request, on provider usage: `prompt` is our "
            "count against the provider's, `completion` the reserved answer against the used.",
            ["part"],
            buckets=_RESERVATION_BUCKETS,
            registry=r,
        )
        self.count_error = Histogram(
            "tokengate_completion_count_error_ratio",
            "(our completion count - provider's) / provider's, per streamed answer.",
            ["model"],
            buckets=_ERROR_BUCKETS,
            registry=r,
        )

        self.store_up = Gauge(
            "tokengate_quota_store_up",
            "1 while the shared quota store answers, 0 while fail modes apply.",
            registry=r,
            multiprocess_mode="min",
        )
        self.store_transitions = Counter(
            "tokengate_quota_store_transitions",
            "Quota store reachability changes, by new state (up / down).",
            ["state"],
            registry=r,
        )
        self.fail_mode_decisions = Counter(
            "tokengate_fail_mode_decisions",
            "Requests decided by a policy's fail mode while the quota store was away.",
            ["mode"],
            registry=r,
        )
        # Model routes: label values are backends the policies name (provider/model).
        self.backend_attempts = Counter(
            "tokengate_backend_attempts",
            "Attempts sent to a model route's backends, by backend and outcome (ok, failed: "
            "5xx/429/no answer, client_error: another 4xx).",
            ["backend", "outcome"],
            registry=r,
        )
        self.backend_skipped = Counter(
            "tokengate_backend_skipped",
            "Backends left out of a request's chain before sending, by reason (open: its "
            "breaker; exhausted: its provider's rate limit is reached or about to be).",
            ["backend", "reason"],
            registry=r,
        )
        self.backend_transitions = Counter(
            "tokengate_backend_transitions",
            "Circuit-breaker transitions seen by this sidecar (opened, reopened, closed).",
            ["backend", "transition"],
            registry=r,
        )
        self.key_expiry = Gauge(
            "tokengate_provider_key_expiry_seconds",
            "Provider key pools: seconds until a key's expiry date (0: expired, not used).",
            ["pool", "key"],
            registry=r,
            multiprocess_mode="min",
        )
        self.key_uses = Counter(
            "tokengate_provider_key_uses",
            "Attempts sent with each key of a provider key pool.",
            ["pool", "key"],
            registry=r,
        )
        self.keys_disabled = Counter(
            "tokengate_provider_keys_disabled",
            "Pool keys taken out of rotation after their provider answered 401 (until rotated).",
            ["pool", "key"],
            registry=r,
        )
        self.key_budget_spent = Gauge(
            "tokengate_provider_key_budget_spent",
            "1 while a pool key's own budget is used up (it is skipped until its window "
            "resets), 0 otherwise; keys with a budget only.",
            ["pool", "key"],
            registry=r,
            multiprocess_mode="max",
        )
        self.key_budget_charged = Counter(
            "tokengate_provider_key_budget_charged_usd_micros",
            "What answers served with a budgeted pool key were charged to its budget "
            "(micro-dollars; 0 without a price table).",
            ["pool", "key"],
            registry=r,
        )
        self._priorities(r)
        self.settlements_queued = Gauge(
            "tokengate_settlements_queued",
            "Settlements waiting for the quota store to come back (replayed, idempotent).",
            registry=r,
            multiprocess_mode="livesum",
        )

    def record_settlement(self, s: Settlement) -> None:
        """One settled request: its tokens, its cost, and how far the reservation was off
        (prompt: our count against the provider's; completion: reserved against used)."""
        label = self.model_label(s.model)
        self.tokens.labels(s.namespace, label, "prompt").inc(s.usage.prompt_tokens)
        self.tokens.labels(s.namespace, label, "completion").inc(s.usage.completion_tokens)
        self.usage_source.labels(s.source).inc()
        if s.usd_micros:
            self.spend.labels(s.namespace, s.key, label, s.provider).inc(s.usd_micros)
        if s.source == "provider":
            self.reservation_error.labels("prompt").observe(
                _ratio(s.counted_prompt, s.usage.prompt_tokens)
            )
            self.reservation_error.labels("completion").observe(
                _ratio(s.reserved_completion, s.usage.completion_tokens)
            )

    def observe_pace(self, *, first_token_s: float | None, per_token_s: float | None) -> None:
        """A chunk's tokens arrived: the first token's delay, or the gap per token since the
        previous ones (`gate.stream.Pace`)."""
        if first_token_s is not None:
            self.time_to_first_token.observe(first_token_s)
        if per_token_s is not None:
            self.inter_token.observe(per_token_s)

    def observe_count_error(self, model: str, counted: int, usage: Usage | None) -> None:
        if usage is not None and usage.completion_tokens > 0:
            ratio = (counted - usage.completion_tokens) / usage.completion_tokens
            self.count_error.labels(self.model_label(model)).observe(ratio)

    def _priorities(self, r: CollectorRegistry) -> None:
        """Shared capacity, its queue and shedding, budget degradation (README "Priorities").
        `capacity` is a Capacity's name and `class` a priority class: both bounded by the
        policy (a handful of capacities, four classes)."""
        self.queue_depth = Gauge(
            "tokengate_queue_depth",
            "Requests this sidecar holds waiting for a shared capacity, by class.",
            ["capacity", "class"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_wait = Histogram(
            "tokengate_queue_wait_seconds",
            "How long requests waited for a shared capacity before they were let through "
            "(0 when it had room at once), by class.",
            ["capacity", "class"],
            buckets=_QUEUE_BUCKETS,
            registry=r,
        )
        self.shed = Counter(
            "tokengate_shed",
            "Requests shed by a shared capacity, by class and action: refused (its class is "
            "shed, or its wait would pass its class's maximum), downgraded (sent to the "
            "cheaper model), gone (its client left while it waited).",
            ["capacity", "class", "action"],
            registry=r,
        )
        self.degraded = Counter(
            "tokengate_degraded",
            "Requests sent to a cheaper model, by namespace and why: budget (a policy's "
            "degrade threshold) or capacity (shedding).",
            ["namespace", "reason"],
            registry=r,
        )
