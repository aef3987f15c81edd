"""Prometheus metrics: the OpenTelemetry GenAI conventions (`gen_ai_*`, named as the OTel
Prometheus exporter names them) beside the governance metrics (`tokengate_*`).

Cardinality is bounded by what the platform team configures, never by what a client sends:
`namespace` takes the namespaces that have a QuotaPolicy (plus `-` before the caller is
known), `key` the gateway keys those policies define (plus `-` without one), `provider` and
`gen_ai_provider_name` the provider families (openai, anthropic), `limit` the limits the
policies name, `gen_ai_operation_name` the five governed endpoints' operations, and the
model labels are bounded by `BoundedLabel` (MAX_MODEL_LABELS per worker, then `other`).

Recording stays cheap on the data path: every labelled series a request touches is looked
up once per label tuple and kept (`_series`), so a settlement costs one dict lookup plus the
increments, not one `labels()` call per metric.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from extproc.policy.model import FailMode
from extproc.providers import Usage
from extproc.telemetry.records import (
    ERROR_BUCKETS,
    GEN_AI_DURATION_BUCKETS,
    GEN_AI_LABELS,
    GEN_AI_OPERATIONS,
    GEN_AI_TOKEN_BUCKETS,
    GEN_AI_TPOT_BUCKETS,
    GEN_AI_TTFT_BUCKETS,
    ITL_BUCKETS,
    MAX_MODEL_LABELS,
    PHASE_BUCKETS,
    QUEUE_BUCKETS,
    RESERVATION_BUCKETS,
    TTFT_BUCKETS,
    WINDOWED,
    BoundedLabel,
    EndedSeries,
    Finished,
    SettledSeries,
    Settlement,
    StreamPace,
    ratio,
)

if TYPE_CHECKING:
    from extproc.quota.store import LimitState

__all__ = ["GEN_AI_OPERATIONS", "Finished", "Metrics", "Settlement", "StreamPace"]


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.model_label = BoundedLabel(MAX_MODEL_LABELS)
        # Series kept per label tuple (bounded as the labels are: see the module docstring).
        self._series: dict[tuple[str, ...], Any] = {}
        self._gen_ai(r)
        self.requests = Counter(
            "tokengate_requests",
            "Requests seen by the sidecar, by caller namespace, gateway key, provider, model "
            "and outcome.",
            ["namespace", "key", "provider", "model", "outcome"],
            registry=r,
        )
        self.tokens = Counter(
            "tokengate_tokens",
            "Tokens settled (provider usage when reported, else our count), by kind: prompt "
            "or completion.",
            ["namespace", "key", "provider", "model", "kind"],
            registry=r,
        )
        self.phase_seconds = Histogram(
            "tokengate_phase_seconds",
            "Sidecar time per ext_proc message, by phase.",
            ["phase"],
            buckets=PHASE_BUCKETS,
            registry=r,
        )
        self.refusals = Counter(
            "tokengate_refusals",
            "Requests refused by a limit, by caller namespace, gateway key, provider, model "
            "(- before the body named one) and limit name.",
            ["namespace", "key", "provider", "model", "limit"],
            registry=r,
        )
        self.limit_usage = Gauge(
            "tokengate_limit_usage_ratio",
            "How full a namespace's or a gateway key's limit was at this sidecar's latest "
            "decision about it: used / amount (1 = used up). `key` is - for the namespace's "
            "own limits; concurrency limits are left out.",
            ["namespace", "key", "limit", "measure"],
            registry=r,
            multiprocess_mode="mostrecent",
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
            "Streamed answers cut because a budget ran out, by caller namespace, gateway key, "
            "provider, model and limit.",
            ["namespace", "key", "provider", "model", "limit"],
            registry=r,
        )
        self.stream_debits = Counter(
            "tokengate_stream_debits",
            "Quota-store debits made by streams that outgrew their reservation.",
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "tokengate_time_to_first_token_seconds",
            "DEPRECATED, removed in the next release: use "
            "gen_ai_server_time_to_first_token_seconds (same measure, labelled). From "
            "admitting a streamed request to its first generated token.",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "tokengate_inter_token_seconds",
            "DEPRECATED, removed in the next release: use "
            "gen_ai_server_time_per_output_token_seconds (per answer, labelled). Time between "
            "generated tokens of a streamed answer (per chunk, per token).",
            buckets=ITL_BUCKETS,
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
            buckets=RESERVATION_BUCKETS,
            registry=r,
        )
        self.count_error = Histogram(
            "tokengate_completion_count_error_ratio",
            "(our completion count - provider's) / provider's, per streamed answer.",
            ["model"],
            buckets=ERROR_BUCKETS,
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
        self._zeroes()

    def _gen_ai(self, r: CollectorRegistry) -> None:
        """The OpenTelemetry GenAI conventions as the OTel Prometheus exporter renders them:
        dots become underscores, the unit `s` becomes `_seconds` (`{token}` adds nothing)."""
        self.gen_ai_token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Number of input and output tokens used per request (gen_ai.client.token.usage): "
            "the provider's usage when reported, else our count; by caller namespace too.",
            [*GEN_AI_LABELS, "gen_ai_token_type", "namespace"],
            buckets=GEN_AI_TOKEN_BUCKETS,
            registry=r,
        )
        self.gen_ai_time_to_first_token = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to generate the first token of a streamed answer, from its admission "
            "(gen_ai.server.time_to_first_token).",
            GEN_AI_LABELS,
            buckets=GEN_AI_TTFT_BUCKETS,
            registry=r,
        )
        self.gen_ai_time_per_output_token = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first one, per completed streamed answer "
            "(gen_ai.server.time_per_output_token).",
            GEN_AI_LABELS,
            buckets=GEN_AI_TPOT_BUCKETS,
            registry=r,
        )
        self.gen_ai_request_duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "Duration of a request to a governed endpoint, from its headers to its last byte "
            "(gen_ai.server.request.duration); error_type is empty for a success, else the "
            "`outcome` of tokengate_requests_total.",
            [*GEN_AI_LABELS, "error_type"],
            buckets=GEN_AI_DURATION_BUCKETS,
            registry=r,
        )

    def _zeroes(self) -> None:
        """Series whose label values are known up front exist from the start, at 0: an alert
        on rate() sees the first increment, and a dashboard finds the series."""
        for mode in FailMode:
            self.fail_mode_decisions.labels(mode.value)
        for state in ("up", "down"):
            self.store_transitions.labels(state)
        self._sources = {s: self.usage_source.labels(s) for s in ("provider", "partial", "counted")}
        self._reservation_parts = (
            self.reservation_error.labels("prompt"),
            self.reservation_error.labels("completion"),
        )

    def record_settlement(self, s: Settlement) -> None:
        """One settled request: its tokens, its cost, and how far the reservation was off
        (prompt: our count against the provider's; completion: reserved against used)."""
        model = self.model_label(s.model)
        index = ("s", s.namespace, s.key, s.provider, model, s.operation)
        series = self._series.get(index)
        if series is None:
            series = self._series[index] = SettledSeries(self, s, model)
        usage = s.usage
        series.prompt.inc(usage.prompt_tokens)
        series.completion.inc(usage.completion_tokens)
        series.input.observe(usage.prompt_tokens)
        if s.operation != "embeddings":  # an embedding generates no output tokens
            series.output.observe(usage.completion_tokens)
        source = self._sources.get(s.source)
        (source or self.usage_source.labels(s.source)).inc()
        if s.usd_micros:
            series.spend.inc(s.usd_micros)
        if s.source == "provider":
            prompt, completion = self._reservation_parts
            prompt.observe(ratio(s.counted_prompt, usage.prompt_tokens))
            completion.observe(ratio(s.reserved_completion, usage.completion_tokens))

    def record_finished(self, f: Finished) -> None:
        """A request ended: a governed endpoint's duration observed; counted by outcome."""
        model = self.model_label(f.model)
        index = ("f", f.namespace, f.key, f.provider, model, f.outcome, f.operation or "")
        series = self._series.get(index)
        if series is None:
            series = self._series[index] = EndedSeries(self, f, model)
        if series.duration is not None:
            series.duration.observe(f.seconds)
        series.count.inc()  # last: whoever sees a request counted sees all it recorded

    def stream_pace(self, operation: str, provider: str, model: str) -> StreamPace:
        """The TTFT and time-per-output-token series of a stream (kept per label tuple)."""
        label = self.model_label(model)
        index = ("p", operation, provider, label)
        series = self._series.get(index)
        if series is None:
            series = self._series[index] = StreamPace(self, operation, provider, label)
        pace: StreamPace = series
        return pace

    def record_limits(self, states: Iterable[LimitState]) -> None:
        """How full each namespace and key limit of a decision is (route limits and
        concurrency limits are left out)."""
        for state in states:
            scoped = state.scoped
            scope, limit = scoped.scope, scoped.limit
            if scope.route is not None or limit.measure not in WINDOWED:
                continue
            key = scope.key_name or "-"
            index = ("l", scope.namespace, key, limit.name, limit.measure)
            gauge = self._series.get(index)
            if gauge is None:
                gauge = self._series[index] = self.limit_usage.labels(
                    scope.namespace, key, limit.name, limit.measure.value
                )
            gauge.set(state.used / max(1, limit.amount))

    def observe_pace(self, *, first_token_s: float | None, per_token_s: float | None) -> None:
        """DEPRECATED histograms (see their help): a chunk's tokens arrived: the first token's
        delay, or the gap per token since the previous ones (`gate.stream.Pace`)."""
        if first_token_s is not None:
            self.time_to_first_token.observe(first_token_s)
        if per_token_s is not None:
            self.inter_token.observe(per_token_s)

    def observe_count_error(self, model: str, counted: int, usage: Usage | None) -> None:
        if usage is not None and usage.completion_tokens > 0:
            ratio = (counted - usage.completion_tokens) / usage.completion_tokens
            self.count_error.labels(self.model_label(model)).observe(ratio)

    def _priorities(self, r: CollectorRegistry) -> None:
        """Shared capacity, its queue and shedding, budget degradation (docs/priorities.md).
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
            buckets=QUEUE_BUCKETS,
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
