"""The tests' poll helper (`tests/waiting.py`): a wait that never sees its condition hold
must fail the test, loudly and saying what it waited for; one that does returns at once."""

from __future__ import annotations

import asyncio

import pytest

from tests.waiting import wait_until, wait_until_async


def test_a_condition_that_holds_returns_on_the_first_check() -> None:
    calls: list[int] = []

    def holds() -> bool:
        calls.append(1)
        return True

    wait_until(holds, seconds=0)  # returns (does not raise) when the condition holds
    assert calls == [1]


def test_a_condition_that_comes_true_is_polled_until_it_does() -> None:
    calls: list[int] = []

    def third_time() -> bool:
        calls.append(1)
        return len(calls) >= 3

    wait_until(third_time)
    assert len(calls) == 3


def test_a_condition_that_never_holds_raises_naming_it_and_the_detail() -> None:
    never = False
    with pytest.raises(TimeoutError) as caught:
        wait_until(lambda: never, seconds=0.05, detail=lambda: "the sidecar's log")
    message = str(caught.value)
    assert message.startswith("waited 0.05s for ")
    assert "lambda: never" in message
    assert message.endswith("\nthe sidecar's log")


def test_a_named_condition_is_described_by_its_name() -> None:
    def replayed() -> bool:
        return False

    with pytest.raises(TimeoutError, match=r"for .*replayed$"):
        wait_until(replayed, seconds=0)


def test_async_wait_takes_plain_and_async_conditions() -> None:
    seen: list[str] = []

    async def probe() -> bool:
        seen.append("async")
        return len(seen) >= 2

    def flag() -> bool:
        seen.append("plain")
        return True

    async def scenario() -> None:
        await wait_until_async(probe)
        await wait_until_async(flag)

    asyncio.run(scenario())
    assert seen == ["async", "async", "plain"]


def test_async_wait_that_never_holds_raises() -> None:
    async def never() -> bool:
        return False

    with pytest.raises(TimeoutError, match=r"waited 0.05s for .*never"):
        asyncio.run(wait_until_async(never, seconds=0.05))
