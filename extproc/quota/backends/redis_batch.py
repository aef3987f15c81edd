"""Group commit for the quota script: the calls one worker makes in one event-loop turn go to
Redis together, as one pipeline (one write, one read, one wake-up for all the answers).

Each call is still its own EVALSHA, so each request's check-and-debit stays atomic on the
server and the script is the one the semantics suite tests; only the trip is shared. At low
load a batch holds one call and goes out at the end of the turn that made it (no added wait).
Under load, while a batch is on the wire, new calls wait for the next one: the batch grows
with the load instead of the round trips (`make bench` reads Redis's own count of reads:
2 per plain request alone, 0.6 at saturation). One batch in flight coalesced best (A/B in
docs/performance.md: 0.97 reads per request with two in flight, 0.60 with one); a batch out longer
than `stall_s` (50 ms, or the store timeout if shorter: Redis answers in well under a
millisecond) lets the next one go on another connection, up to `MAX_IN_FLIGHT`, so that
one stalled answer does not hold up every call (a void or the breaker's probe included)
until it times out.

Why a pipeline of EVALSHAs rather than one script taking many requests: the same script, the
same keys per call (one hash tag each, so a batch spans namespaces on a single Redis), and
measured in `make bench`, Redis's CPU per call falls with the read and write system calls
that batching removes, which is most of what a small script call costs. A Cluster client
does not batch (its pipeline splits by node and re-checks scripts; `RedisBackend` calls the
script directly there).

Errors stay per call: a NOSCRIPT answer (restart, failover, SCRIPT FLUSH) loads the script
and runs that call again; any other error answer (READONLY included) goes to its caller,
whose retry rules apply; a connection error fails every call of the batch.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

from redis import exceptions as redis_errors

Call = tuple[Sequence[str], Sequence[str | float], "asyncio.Future[Any]"]

MAX_IN_FLIGHT = 4  # batches on the wire at once, the first's answer being late
DEFAULT_STALL_S = 0.05
MAX_BATCH = 256  # calls per pipeline: bounds one write and one answer's parse


class ScriptBatch:
    """Runs one Lua script for many callers, a pipeline per event-loop turn."""

    def __init__(self, client: Any, script: str, *, stall_s: float = DEFAULT_STALL_S) -> None:
        self._client = client
        self._script = script
        self._sha = hashlib.sha1(script.encode()).hexdigest()  # noqa: S324 - Redis's script id
        self._stall_s = stall_s
        self._pending: list[Call] = []
        self._in_flight: dict[asyncio.Task[None], float] = {}  # batch -> when it went out
        self._scheduled = False
        self._recheck: asyncio.TimerHandle | None = None

    def call(self, keys: Sequence[str], args: Sequence[str | float]) -> asyncio.Future[Any]:
        """The script's answer for `keys`, `args`, once the batch holding it returns."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((keys, args, future))
        self._schedule(loop)
        return future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._scheduled:
            return
        if self._may_send(loop.time()):
            self._scheduled = True
            loop.call_soon(self._flush)
        elif self._recheck is None:  # the batch out is late: look again when it is stalled
            newest = max(self._in_flight.values())
            self._recheck = loop.call_at(newest + self._stall_s, self._stalled)

    def _may_send(self, now: float) -> bool:
        """None out; or every batch out is stalled and there is room for one more."""
        if not self._in_flight:
            return True
        stalled = all(now - sent >= self._stall_s for sent in self._in_flight.values())
        return stalled and len(self._in_flight) < MAX_IN_FLIGHT

    def _stalled(self) -> None:
        self._recheck = None
        if self._pending:
            self._schedule(asyncio.get_running_loop())

    def _flush(self) -> None:
        """End of the turn: send what has gathered (as much as one batch holds)."""
        self._scheduled = False
        loop = asyncio.get_running_loop()
        if not self._pending or not self._may_send(loop.time()):
            return
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        task = loop.create_task(self._send(batch))
        self._in_flight[task] = loop.time()
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        del self._in_flight[task]
        if self._recheck is not None and not self._in_flight:
            self._recheck.cancel()
            self._recheck = None
        if self._pending:
            self._schedule(asyncio.get_running_loop())

    async def _send(self, batch: list[Call]) -> None:
        try:
            answers = await self._run([(keys, args) for keys, args, _ in batch])
        except BaseException as exc:  # handed to every caller of the batch; re-raised below
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(_for_caller(exc))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), answer in zip(batch, answers, strict=True):
            if future.done():  # its caller gave up (deadline, client gone)
                continue
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)

    async def _run(self, calls: list[tuple[Sequence[str], Sequence[str | float]]]) -> list[Any]:
        answers = await self._pipeline(calls)
        missing = [i for i, answer in enumerate(answers) if _noscript(answer)]
        if missing:
            await self._client.script_load(self._script)
            again = await self._pipeline([calls[i] for i in missing])
            for i, answer in zip(missing, again, strict=True):
                answers[i] = answer
        return answers

    async def _pipeline(
        self, calls: list[tuple[Sequence[str], Sequence[str | float]]]
    ) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
        answers: list[Any] = await pipe.execute(raise_on_error=False)
        return answers


def _noscript(answer: Any) -> bool:
    return isinstance(answer, redis_errors.NoScriptError) or (
        isinstance(answer, redis_errors.ResponseError) and str(answer).startswith("NOSCRIPT")
    )


def _for_caller(exc: BaseException) -> BaseException:
    """A batch cancelled (shutdown) fails its callers as a store error would, not as a
    cancellation of tasks that were not cancelled."""
    if isinstance(exc, asyncio.CancelledError):
        return redis_errors.ConnectionError("quota store batch cancelled")
    return exc
