"""What the metrics record and the series they touch: the values a settlement or a finished
request hands over, the bucket boundaries, and the per-label-tuple series caches
(`metrics.Metrics` keeps one per tuple, so a request costs one lookup, not a `labels()`
call per metric)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Counter, Histogram

from extproc.policy.model import Measure
from extproc.providers import Usage


class Families(Protocol):
    """The metric families the series caches take their series from (`Metrics` is one)."""

    tokens: Counter
    spend: Counter
    requests: Counter
    gen_ai_token_usage: Histogram
    gen_ai_request_duration: Histogram
    gen_ai_time_to_first_token: Histogram
    gen_ai_time_per_output_token: Histogram


# ext_proc messages are handled in tens of microseconds; the buckets resolve that.
PHASE_BUCKETS = (
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
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
QUEUE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
# Reservations err high by design (a whole max_tokens for a short answer): wide buckets.
RESERVATION_BUCKETS = (-0.5, -0.1, -0.01, 0.0, 0.01, 0.1, 0.5, 1.0, 3.0, 10.0, 100.0)
ERROR_BUCKETS = (-0.5, -0.2, -0.1, -0.05, -0.01, -0.001, 0.001, 0.01, 0.05, 0.1, 0.2, 0.5)
MAX_MODEL_LABELS = 200

# The bucket boundaries the OpenTelemetry GenAI semantic conventions recommend
# (docs/gen-ai/gen-ai-metrics.md, "ExplicitBucketBoundaries").
GEN_AI_TOKEN_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
GEN_AI_DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
GEN_AI_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
GEN_AI_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
# `gen_ai.operation.name` of each governed endpoint (`gate.endpoints`), from the conventions'
# well-known values: the Responses API and Anthropic's Messages API are chat operations.
GEN_AI_OPERATIONS = {
    "chat.completions": "chat",
    "messages": "chat",
    "responses": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}
GEN_AI_LABELS = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model"]
# Limits whose fill is a budget worth a gauge (a concurrency limit's use is momentary).
WINDOWED = frozenset({Measure.REQUESTS, Measure.TOKENS, Measure.USD})


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
    operation: str = "chat"  # gen_ai.operation.name (GEN_AI_OPERATIONS)


@dataclass(frozen=True, slots=True, kw_only=True)
class Finished:
    """One request at its end (`Processor.count_finished`)."""

    namespace: str  # "-" when the caller was never identified
    key: str  # "-" without a gateway key
    provider: str
    model: str  # "-" before the body named one
    outcome: str  # the `outcome` label: ok, cut, rate_limited, upstream_error, …
    operation: str | None  # a governed endpoint's gen_ai.operation.name; None for the others
    seconds: float  # from the request headers to the end of the ext_proc stream


def ratio(estimate: int, actual: int) -> float:
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


class SettledSeries:
    """The series one settlement label tuple increments."""

    __slots__ = ("completion", "input", "output", "prompt", "spend")

    def __init__(self, m: Families, s: Settlement, model: str) -> None:
        self.prompt = m.tokens.labels(s.namespace, s.key, s.provider, model, "prompt")
        self.completion = m.tokens.labels(s.namespace, s.key, s.provider, model, "completion")
        self.spend = m.spend.labels(s.namespace, s.key, model, s.provider)
        gen_ai = (s.operation, s.provider, model)
        self.input = m.gen_ai_token_usage.labels(*gen_ai, "input", s.namespace)
        self.output = m.gen_ai_token_usage.labels(*gen_ai, "output", s.namespace)


class EndedSeries:
    """The series one finished-request label tuple increments."""

    __slots__ = ("count", "duration")

    def __init__(self, m: Families, f: Finished, model: str) -> None:
        self.count = m.requests.labels(f.namespace, f.key, f.provider, model, f.outcome)
        self.duration = None
        if f.operation is not None:
            error_type = "" if f.outcome == "ok" else f.outcome
            self.duration = m.gen_ai_request_duration.labels(
                f.operation, f.provider, model, error_type
            )


class StreamPace:
    """The latency series of one (operation, provider, model): looked up once per stream."""

    __slots__ = ("first_token", "per_output_token")

    def __init__(self, m: Families, operation: str, provider: str, model: str) -> None:
        self.first_token = m.gen_ai_time_to_first_token.labels(operation, provider, model)
        self.per_output_token = m.gen_ai_time_per_output_token.labels(operation, provider, model)
