"""Long walks (over a worker's resources, over a fetched batch) give the event loop its turns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

from calsync.pacing import paced


def slow(n: int, seconds: float) -> Iterator[int]:
    """``n`` items, each taking ``seconds`` of the loop's time (a RocksDB read and a
    decode, say)."""
    for i in range(n):
        time.sleep(seconds)
        yield i


async def test_a_walk_gives_the_loop_a_turn_once_its_budget_is_spent() -> None:
    turns = 0
    walking = True

    async def other_work() -> None:  # a request waiting for the loop
        nonlocal turns
        while walking:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    before = turns
    seen = [item async for item in paced(slow(10, 0.002), budget=0.001)]
    walking = False
    await other
    assert seen == list(range(10))
    # every item outlasted the budget, so the loop had a turn after each
    assert turns - before >= 10


async def test_fast_items_are_all_walked_in_order() -> None:
    items = list(range(5_000))
    assert [item async for item in paced(iter(items))] == items
    assert [item async for item in paced(iter(()))] == []
