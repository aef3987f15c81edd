"""Enforcement events (refusals, cuts, fail-mode transitions, reloads, overrides, resets),
published by the data path and streamed by the control API's WatchEvents.

Publishing never blocks and never fails: each subscriber has a bounded queue, and a
subscriber too slow to keep up loses its oldest events (counted), not the data path's time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

SUBSCRIBER_QUEUE = 1000


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # refusal | cut | store_down | store_up | reload | reload_error | override | reset
    #            | backend_opened | backend_reopened | backend_closed (model routes)
    #            | key_expiring | key_disabled | key_budget_spent (provider key pools)
    #            | shed (a shared capacity refused or downgraded a request)
    message: str
    namespace: str = ""
    key: str = ""
    limit: str = ""
    at: float = field(default_factory=time.time)


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self.dropped = 0

    def publish(self, event: Event) -> None:
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(event)

    async def subscribe(self) -> AsyncIterator[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)
        self._subscribers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
