"""Backend health in Redis, shared by the fleet: every sidecar skips a backend the moment any
of them has seen it fail or run out, and only one request in the whole fleet probes a
half-open backend.

Each operation is one call of `health.lua` (atomic on the server, timed by the server's
clock, so sidecars whose clocks differ still agree on when a cooldown ends). Every backend's
hash carries the `{health}` hash tag: an admit reads all of a request's backends and claims
one in a single call, on a single Cluster slot. The client is the quota store's (`connect`
in extproc.quota.backends.redis), and calls go out the same way: EVALSHA with a reload on
NOSCRIPT, group-committed per event-loop turn on a single Redis (`ScriptBatch`), within a
deadline (`deadline.py`) that tells a dead store (`StoreTimeout`) from a starved loop
(`LoopStarved`) when given the quota store's running `LoopLag`. Any failure is a
`QuotaStoreError`; what to do without health (route as if every backend were healthy, or
not) is the caller's choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from extproc.backends.health import (
    FORGET_S,
    Admit,
    BackendState,
    HealthPolicy,
    HealthStore,
    Outcome,
    Transition,
    Verdict,
)
from extproc.errors import QuotaStoreError
from extproc.quota.backends.redis_batch import DEFAULT_STALL_S, ScriptBatch
from extproc.quota.deadline import LoopLag
from extproc.quota.windows import KEY_PREFIX

SCRIPT = Path(__file__).with_name("health.lua").read_text()
_VIEW_FIELDS = 8  # values per backend in a view's answer


def health_key(backend: str) -> str:
    """The hash of one backend; the `{health}` tag keeps every backend in one slot."""
    return f"{KEY_PREFIX}:{{health}}:{backend}"


class RedisHealth(HealthStore):
    def __init__(
        self,
        client: Any,
        policy: HealthPolicy,
        *,
        timeout_s: float,
        lag: LoopLag | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """`client`: a redis-py asyncio client (or Cluster client), usually the quota
        store's; this store never closes it. `lag`: the quota store's event-loop monitor, so
        that a starved loop is not taken for a dead store (without one, the deadline is a
        plain timeout). `clock` is for tests only; in service the script reads TIME."""
        self._client = client
        self._policy = policy
        self._timeout_s = timeout_s
        self._lag = lag if lag is not None else LoopLag()
        self._clock = clock
        self._script = client.register_script(SCRIPT)
        self._batch = (
            None
            if isinstance(client, RedisCluster)
            else ScriptBatch(client, SCRIPT, stall_s=min(timeout_s, DEFAULT_STALL_S))
        )

    async def admit(self, backends: Sequence[str], *, tokens: int) -> list[Admit]:
        if not backends:
            return []
        answer = await self._run("admit", backends, [tokens, self._policy.probe_ttl_s])
        return [
            Admit(Verdict(_text(answer[i])), float(answer[i + 1])) for i in range(0, len(answer), 2)
        ]

    async def record(self, backend: str, outcome: Outcome) -> Transition:
        ok = "" if outcome.ok is None else "1" if outcome.ok else "0"
        said = outcome.headroom
        headroom = (
            ["", "", "", "", ""]
            if said is None
            else [_opt(said.remaining_requests), _opt(said.remaining_tokens),
                  _opt(said.requests_reset_s), _opt(said.tokens_reset_s),
                  _opt(said.retry_after_s)]
        )  # fmt: skip
        policy = self._policy
        args = [ok, policy.failures, policy.cooldown_s, *headroom]
        return Transition(_text(await self._run("record", [backend], args)))

    async def view(self, backends: Sequence[str]) -> list[BackendState]:
        if not backends:
            return []
        answer = await self._run("view", backends, [])
        return [
            _state(backend, answer[i * _VIEW_FIELDS : (i + 1) * _VIEW_FIELDS])
            for i, backend in enumerate(backends)
        ]

    async def _run(self, op: str, backends: Sequence[str], extra: Sequence[str | float]) -> Any:
        keys = [health_key(b) for b in backends]
        now = "" if self._clock is None else repr(self._clock())
        args: list[str | float] = [op, now, FORGET_S, *extra]
        try:
            return await self._call(keys, args)
        except (TimeoutError, redis_errors.RedisError, OSError) as exc:
            raise QuotaStoreError(f"health store {op} failed: {type(exc).__name__}") from exc

    async def _call(self, keys: list[str], args: list[str | float]) -> Any:
        """One script call within the deadline (which raises StoreTimeout or LoopStarved,
        both QuotaStoreErrors, itself)."""
        async with self._lag.deadline(self._timeout_s):
            if self._batch is not None:
                return await self._batch.call(keys, args)
            return await self._script(keys=keys, args=args)


def _opt(value: float | None) -> str | float:
    return "" if value is None else value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _number(value: Any) -> float | None:
    text = _text(value)
    return None if text == "" else float(text)


def _count(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _state(backend: str, row: Sequence[Any]) -> BackendState:
    return BackendState(
        backend=backend,
        state=_text(row[0]),
        failures=int(float(row[1])),
        open_for_s=float(row[2]),
        remaining_requests=_count(row[3]),
        remaining_tokens=_count(row[4]),
        requests_reset_s=_number(row[5]),
        tokens_reset_s=_number(row[6]),
        retry_after_s=_number(row[7]),
    )
