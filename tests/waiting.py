"""Waiting for an effect that follows asynchronously (a disconnect, an expiry, a restart):
re-check a condition until it holds, bounded. Not a sleep used as synchronisation: the test
proceeds the moment the condition holds, and a condition that never holds raises
`TimeoutError` naming what was awaited, so a wait can never pass silently."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable

POLL_S = 0.02


def wait_until(
    condition: Callable[[], bool],
    *,
    seconds: float = 10.0,
    detail: Callable[[], object] | None = None,
) -> None:
    """`detail` is read only on timeout and goes into the error (e.g. a process's log)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        threading.Event().wait(POLL_S)
    if condition():
        return
    raise TimeoutError(_message(condition, seconds, detail))


async def wait_until_async(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    seconds: float = 10.0,
    detail: Callable[[], object] | None = None,
) -> None:
    """As `wait_until`, inside an event loop; the condition may be a plain or an async
    callable (a probe of a store is a coroutine, a flag is not)."""

    async def holds() -> bool:
        result = condition()
        return bool(await result) if inspect.isawaitable(result) else bool(result)

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await holds():
            return
        await asyncio.sleep(POLL_S)  # poll interval of a bounded wait for a condition
    if await holds():
        return
    raise TimeoutError(_message(condition, seconds, detail))


def _message(
    condition: Callable[[], object], seconds: float, detail: Callable[[], object] | None
) -> str:
    text = f"waited {seconds:g}s for {_describe(condition)}"
    return text if detail is None else f"{text}\n{detail()}"


def _describe(condition: Callable[[], object]) -> str:
    """A lambda by its source line (its name says nothing), anything else by its name."""
    name = getattr(condition, "__qualname__", None) or repr(condition)
    if getattr(condition, "__name__", "") != "<lambda>":
        return name
    try:
        lines, _ = inspect.getsourcelines(condition)
    except (OSError, TypeError):
        return name
    return " ".join(line.strip() for line in lines)[:300]
