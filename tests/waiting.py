"""Waiting for an effect that follows asynchronously (a disconnect, an expiry, a restart):
re-check a condition until it holds, bounded. Not a sleep used as synchronisation: the test
proceeds the moment the condition holds and fails if it never does."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

POLL_S = 0.02


def wait_until(condition: Callable[[], bool], *, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        threading.Event().wait(POLL_S)
    return condition()


async def wait_until_async(
    condition: Callable[[], Awaitable[bool]], *, seconds: float = 10.0
) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await condition():
            return True
        await asyncio.sleep(POLL_S)  # poll interval of a bounded wait for a condition
    return await condition()
