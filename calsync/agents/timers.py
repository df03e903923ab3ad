"""Releases timers when they are due, and notices channels that went silent.

The :class:`TimerDispatcher` runs as a worker task (not a Faust timer: it needs a
50 ms cadence, and it must survive its own errors). It never writes a table: it
produces the timer's notification, and the agent that consumes it clears or
reschedules the timer. Its heap is rebuilt from the table every few seconds, so
timers of partitions gained in a rebalance (or recovered after a crash) are found.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from calsync.agents.outbox import Outbox
from calsync.streams.records import Notification, Reason
from calsync.tables.records import Channel, Timer

log = logging.getLogger(__name__)


class TimerDispatcher:
    """Fires due timers within ``interval`` of their due time, each once per ``refire_after``."""

    def __init__(
        self,
        *,
        timers: Mapping[str, Timer],
        channels: Mapping[str, Channel],
        outbox: Outbox,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        interval: float = 0.05,
        rebuild_every: float = 2.0,
        refire_after: float = 60.0,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self._timers = timers
        self._channels = channels
        self._outbox = outbox
        self._clock = clock
        self._monotonic = monotonic
        self._interval = interval
        self._rebuild_every = rebuild_every
        self._refire_after = refire_after
        self._on_tick = on_tick
        self._heap: list[tuple[float, str, Notification]] = []
        self._fired: dict[str, float] = {}
        self._last_rebuild = float("-inf")
        self.fired_count = 0

    def schedule(self, key: str, timer: Timer) -> None:
        """Add a timer written just now (the fast path; the rebuild would find it too)."""
        heapq.heappush(self._heap, (timer.due_at, key, timer.notification))
        self._fired.pop(key, None)

    def _rebuild(self, tick: float) -> None:
        entries: Iterable[tuple[str, Timer]] = list(self._timers.items())
        heap = [(t.due_at, key, t.notification) for key, t in entries]
        heapq.heapify(heap)
        self._heap = heap
        live = {key for _, key, _ in heap}
        self._fired = {k: at for k, at in self._fired.items() if k in live}
        self._last_rebuild = tick

    async def tick(self) -> int:
        """Release every due timer; returns how many were released.

        Due times are compared with ``clock`` (which tests may speed up); rebuilds and
        re-fires are paced by ``monotonic`` real time, whatever the clock does.
        """
        now = self._clock()
        tick = self._monotonic()
        if tick - self._last_rebuild >= self._rebuild_every:
            self._rebuild(tick)
            await self._check_channels(now, tick)
        due: list[tuple[str, Notification]] = []
        while self._heap and self._heap[0][0] <= now:
            _, key, notification = heapq.heappop(self._heap)
            fired_at = self._fired.get(key)
            if fired_at is not None and tick - fired_at < self._refire_after:
                continue  # released already; waiting for the agent to clear it
            due.append((key, notification))
        if due:
            # If this raises, nothing is marked fired: the next rebuild finds them again.
            await self._outbox.notify_all([n for _, n in due])
            for key, _ in due:
                self._fired[key] = tick
        self.fired_count += len(due)
        return len(due)

    async def _check_channels(self, now: float, tick: float) -> None:
        """A channel past its expiry delivers nothing: reconcile (and resubscribe) now."""
        for rid, channel in list(self._channels.items()):
            if channel.expires_at_ms and channel.expires_at_ms / 1000 < now:
                key = f"silent:{rid}"
                fired_at = self._fired.get(key)
                if fired_at is not None and tick - fired_at < self._refire_after:
                    continue
                self._fired[key] = tick
                await self._outbox.notify(
                    Notification(
                        provider="google",
                        resource_id=rid,
                        reason=Reason.RECONCILE.value,
                        received_at=now,
                        full=True,
                    )
                )

    async def run(self) -> None:
        """Tick forever; an error is logged, never allowed to kill the worker."""
        while True:
            try:
                if self._on_tick is not None:
                    self._on_tick()
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("timer dispatcher tick failed; continuing")
            await asyncio.sleep(self._interval)

    def describe(self) -> dict[str, Any]:
        return {"pending": len(self._heap), "released": self.fired_count}
