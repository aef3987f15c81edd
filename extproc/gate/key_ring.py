"""Provider key pools on the request path: which key of a pool an attempt uses.

A `ProviderKeyPool` names several keys of one provider (mounted Secret files). The
reloader reads them into a `KeyRing` (swapped whole when a file or the policy changes);
this module only chooses. A key is usable while it was readable, has not expired and has
not answered 401 since it was last rotated (a rotated file is a new fingerprint, so a
fixed key is back in rotation without a restart) and, when it has a budget, has budget
left (`key_budgets`). Usable keys take turns.

Keys are shown by pool and name, or by a fingerprint (the first 12 hex digits of their
SHA-256): never by value.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

from extproc.errors import Unavailable
from extproc.gate.credentials import Secret
from extproc.quota.windows import Scope, ScopedLimit

POOL_SCOPE = "pool:"  # a key budget's counters: never a namespace (those have no ':')


@dataclass(frozen=True, slots=True)
class RingKey:
    pool: str
    name: str
    secret: Secret
    expires_at: float | None  # unix seconds; None: never
    warn_before_s: float
    budget: tuple[ScopedLimit, ...] = ()  # the key's own limits (`PoolKey.limits`)
    # Hashed once when the key is read, not on every choice (each request filters by it).
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint", fingerprint(self.secret))

    @property
    def label(self) -> str:
        """How logs, metrics, events and the answer header name it."""
        return f"{self.pool}/{self.name}"


def budget_scope(pool: str, name: str) -> Scope:
    """Whose counters a key's budget uses: one per pool (a Redis Cluster slot), one key each."""
    return Scope(namespace=POOL_SCOPE + pool, key_name=name)


def fingerprint(secret: Secret) -> str:
    return hashlib.sha256(secret.reveal().encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class KeyRing:
    """Every pool's readable keys, in policy order."""

    pools: Mapping[str, tuple[RingKey, ...]] = field(default_factory=dict)

    def usable(
        self,
        pool: str,
        *,
        now: float,
        disabled: frozenset[str] | set[str],
        spent: Mapping[str, float] | None = None,
    ) -> tuple[RingKey, ...]:
        """`spent`: label -> unix time until which that key's budget is used up."""
        spent = spent or {}
        return tuple(
            key
            for key in self.pools.get(pool, ())
            if (key.expires_at is None or key.expires_at > now)
            and key.fingerprint not in disabled
            and spent.get(key.label, 0.0) <= now
        )


class KeyChooser:
    """One worker's turns over each pool's usable keys, the keys it saw answer 401 and the
    keys whose budget it knows to be used up (`key_budgets` keeps that current)."""

    def __init__(self) -> None:
        self._turns: dict[str, itertools.count[int]] = {}
        self.disabled: set[str] = set()  # fingerprints
        self.spent: dict[str, float] = {}  # label -> unix time its budget has room again

    def choose(self, ring: KeyRing, pool: str, *, now: float) -> RingKey | None:
        usable = ring.usable(pool, now=now, disabled=self.disabled, spent=self.spent)
        if not usable:
            return None
        turn = next(self._turns.setdefault(pool, itertools.count()))
        return usable[turn % len(usable)]

    def require(self, ring: KeyRing, pool: str, *, now: float) -> RingKey:
        """`choose`, or the 503 that says why a pool has none."""
        key = self.choose(ring, pool, now=now)
        if key is None:
            raise no_usable_key(pool)
        return key

    def has_usable(self, ring: KeyRing, pool: str, *, now: float) -> bool:
        """Whether `choose` would find a key (without taking a turn)."""
        return bool(ring.usable(pool, now=now, disabled=self.disabled, spent=self.spent))

    def disable(self, key: RingKey) -> bool:
        """Out of rotation until its file holds another key; True the first time."""
        if key.fingerprint in self.disabled:
            return False
        self.disabled.add(key.fingerprint)
        return True


def no_usable_key(pool: str) -> Unavailable:
    return Unavailable(
        f"No usable key in provider key pool {pool} (expired, refused by the provider, or its "
        "budget used up)."
    )
