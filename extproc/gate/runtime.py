"""What a processor needs from the process: built once by the server, shared by streams."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from extproc.backends.health import HealthPolicy, HealthStore
from extproc.backends.memory import MemoryHealth
from extproc.gate.credentials import Secret
from extproc.gate.identity import Caller
from extproc.gate.key_ring import KeyChooser, KeyRing
from extproc.gate.priority import UsageSeen
from extproc.gate.slices import SliceBook
from extproc.policy.model import PolicySnapshot
from extproc.policy.overrides import OverrideBook
from extproc.policy.prices import PriceTable
from extproc.providers.tokens import TokenCounter
from extproc.quota.failover import FailoverStore
from extproc.telemetry.events import Event, EventBus
from extproc.telemetry.ledger import Ledger
from extproc.telemetry.metrics import Metrics

T = TypeVar("T")


class Current(Generic[T]):
    """A configuration value in force (the policy snapshot, the provider keys). Replaced
    whole (one reference assignment), never mutated, so a request that read it sees one
    consistent version for its whole life."""

    def __init__(self, value: T) -> None:
        self.current = value

    def swap(self, value: T) -> None:
        self.current = value


SnapshotHolder = Current[PolicySnapshot]
CredentialsHolder = Current[Mapping[str, Secret]]  # Envoy cluster name -> provider key


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = 4 * 1024 * 1024
    # Ask Envoy for this much time on a request body large enough to count off-thread.
    slow_count_timeout_s: float = 5.0
    # Model routes: a streamed answer's time to response headers before the next backend.
    first_byte_timeout_s: float = 30.0


@dataclass(slots=True)
class Runtime:
    policies: SnapshotHolder
    store: FailoverStore
    counter: TokenCounter
    credentials: CredentialsHolder  # Envoy cluster name -> provider key, swapped whole
    metrics: Metrics
    limits: Limits = field(default_factory=Limits)
    prices: PriceTable | None = None
    events: EventBus = field(default_factory=EventBus)
    overrides: OverrideBook = field(default_factory=OverrideBook)
    ledger: Ledger = field(default_factory=Ledger)
    # Model routes' backends: breakers and provider headroom (Redis with a shared store).
    health: HealthStore = field(default_factory=lambda: MemoryHealth(HealthPolicy()))
    # Provider key pools: the keys read from their files (swapped whole), and the turns.
    keys: Current[KeyRing] = field(default_factory=lambda: Current(KeyRing()))
    key_chooser: KeyChooser = field(default_factory=KeyChooser)
    # How full each namespace's limits were at its last decision (budget degradation).
    usage_seen: UsageSeen = field(default_factory=UsageSeen)
    # This worker's leased slices of shared capacities (a shared store only).
    slices: SliceBook = field(init=False)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _boot: str = field(default_factory=lambda: os.urandom(6).hex())

    def __post_init__(self) -> None:
        self.slices = SliceBook(self.store)

    def publish(self, kind: str, message: str, caller: Caller, limit: str) -> None:
        """An event about one caller, for `tokengate ctl events`."""
        self.events.publish(Event(kind, message, caller.namespace, caller.key_name or "", limit))

    def next_request_id(self) -> str:
        """Unique across restarts and workers; never taken from a client header."""
        return f"{self._boot}-{next(self._ids)}"
