"""What a processor needs from the process: built once by the server, shared by streams."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

from extproc.control.ledger import Ledger
from extproc.control.overrides import OverrideBook
from extproc.events import EventBus
from extproc.metrics import Metrics
from extproc.policy.model import PolicySnapshot
from extproc.pricing import PriceTable
from extproc.quota.failover import QuotaStore
from extproc.reload import CredentialsHolder
from extproc.tokens import TokenCounter


class SnapshotHolder:
    """The policy snapshot in force. Replaced whole (one reference assignment), never
    mutated, so a request that read it sees one consistent version."""

    def __init__(self, snapshot: PolicySnapshot) -> None:
        self.current = snapshot

    def swap(self, snapshot: PolicySnapshot) -> None:
        self.current = snapshot


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = 4 * 1024 * 1024
    # Ask Envoy for this much time on a request body large enough to count off-thread.
    slow_count_timeout_s: float = 5.0


@dataclass(slots=True)
class Runtime:
    policies: SnapshotHolder
    store: QuotaStore
    counter: TokenCounter
    credentials: CredentialsHolder  # Envoy cluster name -> provider key, swapped whole
    metrics: Metrics
    limits: Limits = field(default_factory=Limits)
    prices: PriceTable | None = None
    events: EventBus = field(default_factory=EventBus)
    overrides: OverrideBook = field(default_factory=OverrideBook)
    ledger: Ledger = field(default_factory=Ledger)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _boot: str = field(default_factory=lambda: os.urandom(6).hex())

    def next_request_id(self) -> str:
        """Unique across restarts and workers; never taken from a client header."""
        return f"{self._boot}-{next(self._ids)}"
