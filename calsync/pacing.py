"""Long walks on the event loop, in slices.

A worker answers HTTP (the availability API, webhooks) on the same event loop that
walks its tables (heartbeats, summaries, metrics) and decodes followed topics. A walk
over 10,000 resources done in one go held the loop for tens of milliseconds;
:func:`paced` gives the loop a turn every :data:`SLICE` seconds instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

T = TypeVar("T")

#: Longest stretch, in seconds, a long walk holds the event loop: the availability API
#: answers on the same loop, and its p99 target is 5 ms.
SLICE = 0.001


async def paced(items: Iterable[T], budget: float = SLICE) -> AsyncIterator[T]:
    """``items``, giving the event loop a turn whenever ``budget`` seconds have passed
    since the last one: a walk over thousands of table entries (each a RocksDB read
    and a decode), or a fetched batch of thousands of records, never holds the loop
    for more than about ``budget`` plus one item."""
    clock = time.perf_counter
    since = clock()
    for item in items:
        yield item
        if clock() - since >= budget:
            await asyncio.sleep(0)
            since = clock()
