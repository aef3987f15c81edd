"""Prometheus metrics. Label values that come from clients (model names) are bounded, so a
caller cannot blow up the time-series count by inventing model names."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
MAX_MODEL_LABELS = 200


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
        self.streams_open = Gauge(
            "tokengate_ext_proc_streams_open", "ext_proc streams open now.", registry=r
        )
        self.policy_version = Gauge(
            "tokengate_policy_info",
            "The policy snapshot in force (value 1), by version.",
            ["version"],
            registry=r,
        )
