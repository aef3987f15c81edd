"""What one attempt at a backend tells the fleet: its outcome and its provider's headroom,
recorded in backend health off the reply's path (a report never delays an answer, and a
health store that cannot be reached loses the report, not the request)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from extproc.backends.headroom import anthropic_headroom, openai_headroom
from extproc.backends.health import Outcome, Transition
from extproc.errors import QuotaStoreError
from extproc.gate.key_ring import RingKey
from extproc.gate.runtime import Runtime
from extproc.telemetry.events import Event

log = logging.getLogger(__name__)

_REPORTS: set[asyncio.Task[None]] = set()  # reports in flight, kept from the GC
MAX_REPORTS_IN_FLIGHT = 1000


def outcome_of(provider: str, status: int, headers: Mapping[str, str]) -> Outcome:
    """2xx: an answer; 429 or 5xx: a failure of the backend; any other status: the request
    was at fault (neither opens nor closes a breaker). Headroom from either way."""
    if provider == "anthropic":
        headroom = anthropic_headroom(headers, now=time.time())
    else:
        headroom = openai_headroom(headers)
    if 200 <= status < 300:
        return Outcome(ok=True, headroom=headroom)
    if status == 429 or status >= 500:
        return Outcome(ok=False, headroom=headroom)
    return Outcome(ok=None, headroom=headroom)


def report(rt: Runtime, backend: str, outcome: Outcome, *, answered: bool = True) -> None:
    """Count the attempt now and record it in the background. `answered` False: no response
    headers came (connect failure, reset, first-byte timeout, or the client left)."""
    label = {True: "ok", False: "failed", None: "client_error"}[outcome.ok]
    if not answered:
        label = "no_answer"
    rt.metrics.backend_attempts.labels(backend, label).inc()
    if len(_REPORTS) >= MAX_REPORTS_IN_FLIGHT or not rt.store.up:
        return  # a slow or absent store loses reports, never piles them up
    task = asyncio.get_running_loop().create_task(_record(rt, backend, outcome))
    _REPORTS.add(task)
    task.add_done_callback(_REPORTS.discard)


async def _record(rt: Runtime, backend: str, outcome: Outcome) -> None:
    try:
        transition = await rt.health.record(backend, outcome)
    except QuotaStoreError as exc:
        log.warning("backend health not recorded for %s: %s", backend, exc)
        return
    if transition is not Transition.NONE:
        rt.metrics.backend_transitions.labels(backend, transition.value).inc()
        rt.events.publish(
            Event(f"backend_{transition.value}", f"backend {backend} {transition.value}")
        )
        log.warning("backend %s: circuit breaker %s", backend, transition.value)


def rejected(rt: Runtime, key: RingKey) -> None:
    """A pool key its provider answered 401: out of this worker's rotation until its file
    holds another key, and said so (by pool and name, never the key)."""
    if rt.key_chooser.disable(key):
        rt.metrics.keys_disabled.labels(key.pool, key.name).inc()
        message = f"provider key {key.label} answered 401: out of rotation until rotated"
        log.error("%s", message)
        rt.events.publish(Event(kind="key_disabled", message=message))
