"""Provider key pools on the request path: which key of a pool an attempt uses.

A `ProviderKeyPool` names several keys of one provider (mounted Secret files). The
reloader reads them into a `KeyRing` (swapped whole when a file or the policy changes);
this module only chooses. A key is usable while it was readable, has not expired and has
not answered 401 since it was last rotated (a rotated file is a new fingerprint, so a
fixed key is back in rotation without a restart). Usable keys take turns.

Keys are shown by pool and name, or by a fingerprint (the first 12 hex digits of their
SHA-256): never by value.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

from extproc.gate.credentials import Secret


@dataclass(frozen=True, slots=True)
class RingKey:
    pool: str
    name: str
    secret: Secret
    expires_at: float | None  # unix seconds; None: never
    warn_before_s: float
    # Hashed once when the key is read, not on every choice (each request filters by it).
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint", fingerprint(self.secret))

    @property
    def label(self) -> str:
        """How logs, metrics, events and the answer header name it."""
        return f"{self.pool}/{self.name}"


def fingerprint(secret: Secret) -> str:
    return hashlib.sha256(secret.reveal().encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class KeyRing:
    """Every pool's readable keys, in policy order."""

    pools: Mapping[str, tuple[RingKey, ...]] = field(default_factory=dict)

    def usable(
        self, pool: str, *, now: float, disabled: frozenset[str] | set[str]
    ) -> tuple[RingKey, ...]:
        return tuple(
            key
            for key in self.pools.get(pool, ())
            if (key.expires_at is None or key.expires_at > now) and key.fingerprint not in disabled
        )


class KeyChooser:
    """One worker's turns over each pool's usable keys, and the keys it saw answer 401."""

    def __init__(self) -> None:
        self._turns: dict[str, itertools.count[int]] = {}
        self.disabled: set[str] = set()  # fingerprints

    def choose(self, ring: KeyRing, pool: str, *, now: float) -> RingKey | None:
        usable = ring.usable(pool, now=now, disabled=self.disabled)
        if not usable:
            return None
        turn = next(self._turns.setdefault(pool, itertools.count()))
        return usable[turn % len(usable)]

    def disable(self, key: RingKey) -> bool:
        """Out of rotation until its file holds another key; True the first time."""
        if key.fingerprint in self.disabled:
            return False
        self.disabled.add(key.fingerprint)
        return True
