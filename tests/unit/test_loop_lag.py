"""Store-call deadlines that discount a starved event loop (extproc/quota/deadline.py): the
lag arithmetic on an injected clock, then the deadline on a real loop, where an answer that
arrived while the loop was blocked is read instead of timed out. The starvation is the
stimulus (a busy loop holding the thread), never a wait for something to happen."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from extproc.quota.deadline import JITTER_S, LoopLag, LoopStarved, StoreTimeout


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def busy(seconds: float) -> None:
    """Hold the event loop's thread, as a CPU-starved process or a blocking section does."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_late_ticks_count_as_starved_and_jitter_does_not() -> None:
    async def scenario() -> None:
        clock = FakeClock(100.0)
        lag = LoopLag(tick_s=1.0, clock=clock)  # its real tick never comes during the test
        lag.ensure_running()
        lag.observe(101.0 + JITTER_S / 2)  # a little late: scheduler jitter, not starvation
        lag.observe(102.5)  # ~0.5 s late
        assert lag.starved(100.0, 102.5) == pytest.approx(0.5 - JITTER_S / 2)
        assert lag.starved(102.3, 102.5) == pytest.approx(0.2)  # only the part since
        assert lag.starved(102.5, 104.0) == pytest.approx(0.5)  # the gap still open
        assert lag.starved(103.9, 104.0) == pytest.approx(0.1)
        assert lag.starved(102.5, 103.0) == 0.0  # the next tick is not due yet
        await lag.aclose()
        assert lag.starved(100.0, 104.0) == 0.0  # no monitor: its last tick is stale

    asyncio.run(scenario())


async def _answered_while_starved(lag: LoopLag, *, timeout_s: float, starve_s: float) -> bytes:
    """Await an answer on a socket under a deadline; the answer is written while the loop is
    held, so it is readable in the same loop iteration as the expired timer (as a Redis
    reply that sat in the socket while the process had no CPU)."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    loop = asyncio.get_running_loop()

    def starve() -> None:
        theirs.sendall(b"answer\n")
        busy(starve_s)

    try:
        async with lag.deadline(timeout_s):
            loop.call_soon(starve)
            return await reader.readline()
    finally:
        writer.close()
        theirs.close()


def test_an_answer_that_came_while_the_loop_was_starved_is_taken() -> None:
    async def scenario() -> bytes:
        lag = LoopLag()
        lag.ensure_running()
        try:
            return await _answered_while_starved(lag, timeout_s=0.1, starve_s=0.4)
        finally:
            await lag.aclose()

    assert asyncio.run(scenario()) == b"answer\n"


def test_without_the_monitor_the_same_starvation_times_out() -> None:
    """The failure the monitor prevents: a plain timeout fires with the answer in hand."""

    async def scenario() -> bytes:
        return await _answered_while_starved(LoopLag(), timeout_s=0.1, starve_s=0.4)

    with pytest.raises(StoreTimeout):
        asyncio.run(scenario())


def test_a_silent_store_times_out_after_the_timeout_of_running_time() -> None:
    async def scenario() -> float:
        lag = LoopLag()
        lag.ensure_running()
        start = time.monotonic()
        try:
            async with lag.deadline(0.1):
                await asyncio.Event().wait()  # no answer, ever
        except StoreTimeout:
            return time.monotonic() - start
        finally:
            await lag.aclose()
        raise AssertionError("no timeout")

    assert 0.1 <= asyncio.run(scenario()) < 1.0


def test_a_loop_starved_past_the_wall_cap_gives_up_as_starved() -> None:
    async def scenario() -> None:
        lag = LoopLag()
        lag.ensure_running()
        loop = asyncio.get_running_loop()
        try:
            async with lag.deadline(0.05, wall_cap_s=0.3):
                for n in range(4):  # starved most of the time, running a little between
                    loop.call_later(n * 0.16, busy, 0.15)
                await asyncio.Event().wait()  # never answered
        finally:
            await lag.aclose()

    with pytest.raises(LoopStarved):
        asyncio.run(scenario())


def test_a_cancellation_from_elsewhere_is_not_turned_into_a_timeout() -> None:
    entered = asyncio.Event()

    async def guarded(lag: LoopLag) -> None:
        async with lag.deadline(10.0):
            entered.set()
            await asyncio.Event().wait()

    async def scenario() -> None:
        lag = LoopLag()
        lag.ensure_running()
        task = asyncio.create_task(guarded(lag))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await lag.aclose()

    asyncio.run(scenario())
