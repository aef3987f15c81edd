"""Typed policy model. Instances are immutable: a reload builds a new `PolicySnapshot`.

Documents are Kubernetes-style YAML (see README "Writing quotas"); `loader` turns them into
these classes and `validate` guarantees every invariant documented here, so the data path
never re-checks them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from extproc.errors import InvariantError


class Measure(StrEnum):
    """What a limit counts. `usd` amounts are stored as micro-dollars (integers)."""

    REQUESTS = "requests"
    TOKENS = "tokens"
    USD = "usd"
    CONCURRENT = "concurrent"


class Algorithm(StrEnum):
    """How a limit counts over time (README "Writing quotas" says when to use which)."""

    BUCKET = "bucket"  # token bucket: refills continuously, bursts up to the limit
    SLIDING = "sliding"  # sliding-window counter: ~`amount` in any `per` (weighted estimate)
    CALENDAR = "calendar"  # fixed windows: days / months start at midnight in the time zone
    LEASE = "lease"  # concurrency: one lease per request in flight, with a TTL


class Priority(StrEnum):
    """Who goes first when capacity is short (docs/priorities.md), highest first."""

    INTERACTIVE = "interactive"
    STANDARD = "standard"
    BATCH = "batch"
    BACKGROUND = "background"

    @property
    def rank(self) -> int:
        """0 for the highest class: a lower rank goes first."""
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {p: i for i, p in enumerate(Priority)}
# How long a request of each class may wait for shared capacity, unless a Capacity says.
DEFAULT_MAX_WAIT_S = MappingProxyType(
    {Priority.INTERACTIVE: 2.0, Priority.STANDARD: 10.0, Priority.BATCH: 60.0,
     Priority.BACKGROUND: 0.0}
)  # fmt: skip


class FailMode(StrEnum):
    """What happens to a request when the quota store cannot be reached."""

    CLOSED = "closed"
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit. `period_s` is None exactly when `measure` is CONCURRENT (whose algorithm
    is LEASE). `months` > 0 makes a CALENDAR limit count calendar months (`period_s` is then
    nominal, 30 days a month, for display only)."""

    name: str
    measure: Measure
    amount: int
    period_s: int | None
    algorithm: Algorithm = Algorithm.CALENDAR
    months: int = 0

    def __post_init__(self) -> None:
        if self.period_s is None and self.algorithm is not Algorithm.LEASE:
            object.__setattr__(self, "algorithm", Algorithm.LEASE)


def cheaper_model(substitutions: tuple[tuple[str, str], ...], model: str) -> str | None:
    """The model of the first pattern `model` matches (None: none matches, or it is that
    model already)."""
    for pattern, cheaper in substitutions:
        if fnmatch.fnmatchcase(model, pattern):
            return cheaper if cheaper != model else None
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Degradation:
    """A budget threshold of a policy: once `limit` (one of the policy's own limits) is at
    `at_percent` % or more, requests for a model matching a pattern of `models` are sent to
    its cheaper model instead, and classes in `refuse` are refused (429)."""

    limit: str
    at_percent: int  # 1..100
    models: tuple[tuple[str, str], ...] = ()  # (fnmatch pattern, cheaper model), in order
    refuse: tuple[Priority, ...] = ()

    def cheaper(self, model: str) -> str | None:
        return cheaper_model(self.models, model)


@dataclass(frozen=True, slots=True)
class QuotaPolicy:
    """The quota of one namespace (`metadata.namespace`)."""

    name: str
    namespace: str
    limits: tuple[Limit, ...]
    model_patterns: tuple[str, ...] = ("*",)
    priority: Priority = Priority.STANDARD
    fail_mode: FailMode = FailMode.CLOSED
    # Completion tokens reserved when a request names no max_tokens.
    default_max_tokens: int = 1024
    # Streams reserve at most this many completion tokens up front and debit the rest as
    # they run (cut when the budget is gone). None: reserve the whole max_tokens.
    stream_reserve_tokens: int | None = None
    # IANA time zone of CALENDAR windows (a `1d` budget resets at local midnight).
    time_zone: str = "UTC"
    # Write the completion cap the provider enforces, clamped to what the budget still
    # allows (see quota/clamp.py); off: reserve and settle only, as before.
    clamp_completion: bool = True
    # The smallest answer worth forwarding: below it the request is refused (429).
    min_completion_tokens: int = 16
    source: str = ""
    # Budget thresholds, lowest first (`Degradation`).
    degrade: tuple[Degradation, ...] = ()

    def allows_model(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, p) for p in self.model_patterns)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A gateway key, stored only as the hex sha256 of the key; `limits` layer under the
    namespace's own."""

    name: str
    namespace: str
    sha256: str
    limits: tuple[Limit, ...] = ()
    source: str = ""
    # The class this key's requests get (None: the policy's), and the highest class its
    # `x-tokengate-priority` header may ask for (None: its own class).
    priority: Priority | None = None
    max_priority: Priority | None = None
    # False: this key's requests are never sent to a cheaper model (budget degradation or
    # shedding refuse them instead).
    allow_substitution: bool = True


EVERY_NAMESPACE = "*"


@dataclass(frozen=True, slots=True)
class Route:
    """A path forwarded without being governed: the gateway denies every route it does not
    govern unless one of these opens it. It names the methods and the path (exact, or a
    prefix written `/v1/files/*`), the provider whose upstream and key serve it, who may use
    it, and its own request and concurrency limits (counted per namespace, under the
    caller's own). `namespace` None: cluster-wide, written by the platform team."""

    name: str
    namespace: str | None
    methods: tuple[str, ...]
    path: str
    provider: str
    namespaces: tuple[str, ...] = (EVERY_NAMESPACE,)
    limits: tuple[Limit, ...] = ()
    source: str = ""

    def matches_path(self, path: str) -> bool:
        if self.path.endswith("/*"):
            prefix = self.path[:-1]
            return path.startswith(prefix) and len(path) > len(prefix)
        return path == self.path

    def allows(self, namespace: str) -> bool:
        return EVERY_NAMESPACE in self.namespaces or namespace in self.namespaces


# What a backend may generate when the client named no cap and its API requires one.
DEFAULT_BACKEND_MAX_TOKENS = 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class Backend:
    """One upstream that can serve a `ModelRoute`: the provider (whose API schema, upstream
    and key serve the request) and the model name that provider knows, which need not be the
    name the client sent. `max_tokens` is written as the completion cap only when the client
    named none and this backend's API requires one (Anthropic Messages does): a request
    translated from a schema where the cap is optional must still be valid there."""

    provider: str
    model: str
    max_tokens: int = DEFAULT_BACKEND_MAX_TOKENS
    # The `ProviderKeyPool` whose keys serve this backend (the loader checks that it exists
    # and holds keys of this backend's provider); None: the provider's configured key.
    key_pool: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRoute:
    """A model name as clients send it (exact, case-sensitive) and the backends that serve
    it, in the order they are tried: the first, then each fallback when the one before failed
    without answering. Retrying one backend is Envoy's retry policy, so a backend appears at
    most once. `namespace` None: cluster-wide (the platform team's); a namespaced route
    applies to its own namespace only and wins there over a cluster-wide one."""

    name: str
    namespace: str | None
    model: str
    backends: tuple[Backend, ...]
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Capacity:
    """Shared capacity (cluster-wide, the platform team's): what requests served by
    `provider` for a model matching `model_patterns` compete for, fleet-wide (a provider
    tier's requests and tokens per minute, concurrency). Namespace and key quotas are the
    first gate; this is the second. When it is short, requests wait in one fleet-wide queue
    ordered by deadline (arrival + their class's `max_wait_s`), so higher classes go first
    and a waiting request ages toward the front; one whose wait would pass its class's
    maximum is refused at once. Shedding, by the estimated wait: background is never queued;
    batch is refused past `refuse_batch_after_s`; standard goes to its `cheaper` model past
    `downgrade_standard_after_s`; interactive always waits for the requested model."""

    name: str
    provider: str
    limits: tuple[Limit, ...]
    model_patterns: tuple[str, ...] = ("*",)
    max_wait_s: Mapping[Priority, float] = field(default_factory=lambda: DEFAULT_MAX_WAIT_S)
    refuse_batch_after_s: float | None = None
    downgrade_standard_after_s: float | None = None
    cheaper: tuple[tuple[str, str], ...] = ()  # (fnmatch pattern, cheaper model), in order
    source: str = ""
    # A provider key pool's own tier: only requests served with that pool's keys (a
    # ModelRoute backend naming it). None: every request to the provider.
    key_pool: str | None = None

    def covers(self, provider: str, model: str, key_pool: str | None = None) -> bool:
        if self.key_pool is not None and key_pool != self.key_pool:
            return False
        return provider == self.provider and any(
            fnmatch.fnmatchcase(model, p) for p in self.model_patterns
        )

    def cheaper_model(self, model: str) -> str | None:
        return cheaper_model(self.cheaper, model)


# How long before a key's expiry the pool warns, when `warnBefore` is not written.
DEFAULT_WARN_BEFORE_S = 14 * 86400


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolKey:
    """One provider key of a pool: its name (for logs and metrics; never the key) and the
    file that holds it (read at run time, never by the loader). `expires_at` is the unix
    time from which the key is no longer used (a date written in the policy is used until
    the end of that UTC day); None: it does not expire. `limits`: the key's own budget
    (windowed requests, tokens or dollars it may serve), counted fleet-wide for the key
    whichever namespace it served."""

    name: str
    file: Path
    expires_at: float | None = None
    limits: tuple[Limit, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyPool:
    """A `ProviderKeyPool`: the keys of one provider that a `Backend` naming the pool is
    served with. Cluster-wide only (the platform team's): the keys are the provider account's.
    `warn_before_s`: how long before a key's expiry to warn."""

    name: str
    provider: str
    keys: tuple[PoolKey, ...]
    warn_before_s: float = DEFAULT_WARN_BEFORE_S
    source: str = ""


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """Everything the data path needs to decide, swapped whole on reload."""

    policies: Mapping[str, QuotaPolicy]  # by namespace
    keys_by_sha256: Mapping[str, ApiKey]
    version: str  # sha256 over the source files' content, first 16 hex digits
    loaded_at: float  # unix time
    sources: tuple[str, ...] = field(default=())
    routes: tuple[Route, ...] = ()  # what default deny lets through, in file order
    model_routes: tuple[ModelRoute, ...] = ()  # in file order; at most one per model and scope
    key_pools: tuple[KeyPool, ...] = ()  # in file order; names are unique
    capacities: tuple[Capacity, ...] = ()  # in file order; names are unique
    # model -> scope (a namespace, or None for cluster-wide) -> route. Built once here, so
    # the lookup on every governed request costs two dict reads, never a scan.
    _model_index: Mapping[str, Mapping[str | None, ModelRoute]] = field(
        init=False, repr=False, compare=False
    )
    _pool_index: Mapping[str, KeyPool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, dict[str | None, ModelRoute]] = {}
        for route in self.model_routes:
            scopes = index.setdefault(route.model, {})
            if route.namespace in scopes:
                raise InvariantError(
                    f"two ModelRoutes for model {route.model!r} in scope "
                    f"{route.namespace or '(cluster-wide)'}: the loader refuses this"
                )
            scopes[route.namespace] = route
        frozen = {model: MappingProxyType(scopes) for model, scopes in index.items()}
        object.__setattr__(self, "_model_index", MappingProxyType(frozen))
        pools: dict[str, KeyPool] = {}
        for pool in self.key_pools:
            if pool.name in pools:
                raise InvariantError(
                    f"two ProviderKeyPools named {pool.name!r}: the loader refuses this"
                )
            pools[pool.name] = pool
        object.__setattr__(self, "_pool_index", MappingProxyType(pools))

    def model_route(self, namespace: str, model: str) -> ModelRoute | None:
        """The route for `model` as a caller in `namespace` sent it: the namespace's own
        route, else the cluster-wide one, else None."""
        scopes = self._model_index.get(model)
        if scopes is None:
            return None
        own = scopes.get(namespace)
        return own if own is not None else scopes.get(None)

    def capacity_for(
        self, provider: str, model: str, key_pool: str | None = None
    ) -> Capacity | None:
        """The first `Capacity` (in file order) covering what serves a request."""
        for capacity in self.capacities:
            if capacity.covers(provider, model, key_pool):
                return capacity
        return None

    def key_pool(self, name: str) -> KeyPool | None:
        """The `ProviderKeyPool` called `name` (what `Backend.key_pool` names), else None."""
        return self._pool_index.get(name)
