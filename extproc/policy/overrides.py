"""Operator overrides: block a namespace or key, or give one of its limits extra quota, for a
while and for a recorded reason.

Fleet-wide through the shared store: an override is written to one Redis hash, and every
sidecar refreshes its copy each reload interval (1 s by default), so the data path reads a
local snapshot and pays no store round trip for it. With the in-process store the book is
local. Every override expires; expired ones are dropped on refresh.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from redis import exceptions as redis_errors

from extproc.errors import QuotaStoreError

REDIS_KEY = "tg:overrides"
BLOCK = "block"
EXTRA = "extra"


@dataclass(frozen=True, slots=True, kw_only=True)
class Override:
    namespace: str
    key: str  # "" for the namespace itself
    kind: str  # block | extra
    limit: str  # extra: which limit grows
    amount: int  # extra: by how much
    expires_at: float
    reason: str

    @property
    def expires_iso(self) -> str:
        return datetime.fromtimestamp(self.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    @property
    def field(self) -> str:
        return f"{self.namespace}/{self.key}/{self.kind}/{self.limit}"


@dataclass(frozen=True, slots=True)
class Applied:
    """What the overrides mean for one caller right now."""

    block: Override | None
    extra: dict[str, int]  # limit name -> extra amount


NOTHING = Applied(None, {})


class OverrideBook:
    def __init__(self, *, client: Any = None, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._clock = clock
        self._all: dict[str, Override] = {}  # swapped whole on refresh

    def applied(self, namespace: str, key: str | None) -> Applied:
        if not self._all:
            return NOTHING
        now, block = self._clock(), None
        extra: dict[str, int] = {}
        for override in self._all.values():
            if override.expires_at <= now or override.namespace != namespace:
                continue
            if override.key not in ("", key or ""):
                continue
            if override.kind == BLOCK:
                block = override
            else:
                extra[override.limit] = extra.get(override.limit, 0) + override.amount
        return Applied(block, extra) if block or extra else NOTHING

    async def add(self, override: Override) -> None:
        if self._client is not None:
            try:
                await self._client.hset(REDIS_KEY, override.field, json.dumps(asdict(override)))
            except (TimeoutError, redis_errors.RedisError, OSError) as exc:
                raise QuotaStoreError("cannot store the override") from exc
        self._all = {**self._all, override.field: override}

    async def refresh(self) -> None:
        """Take the fleet's overrides from the store (and drop the expired ones there)."""
        if self._client is None:
            now = self._clock()
            self._all = {f: o for f, o in self._all.items() if o.expires_at > now}
            return
        try:
            raw: dict[bytes, bytes] = await self._client.hgetall(REDIS_KEY)
        except (TimeoutError, redis_errors.RedisError, OSError):
            return  # keep the last copy while the store is away
        now, current, expired = self._clock(), {}, []
        for field, value in raw.items():
            override = Override(**json.loads(value))
            if override.expires_at > now:
                current[field.decode()] = override
            else:
                expired.append(field)
        self._all = current
        if expired:
            try:
                await self._client.hdel(REDIS_KEY, *expired)
            except (TimeoutError, redis_errors.RedisError, OSError):
                return
