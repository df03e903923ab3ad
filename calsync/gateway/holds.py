"""What became of hold requests, read from ``calsync.holds`` (no tables needed).

Whoever takes ``POST /api/holds`` writes the requests and then waits here for the
home resource's decision: :class:`HoldBoard` keeps the recent hold records (bounded)
and wakes the waiters; :class:`HoldFollower` is a board fed by a group-less consumer
of the holds topic (:class:`~calsync.streams.follower.TopicFollower`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Collection

from calsync.availability.holds import HoldEvent, HoldEventKind
from calsync.codecs.holds import decode_hold_event
from calsync.errors import CodecError
from calsync.streams.follower import Followed

__all__ = ["HoldBoard", "HoldFollower"]

log = logging.getLogger(__name__)


class HoldBoard:
    """The last records of the most recent ``max_holds`` holds, and who waits for them."""

    def __init__(self, *, max_holds: int = 20_000, per_hold: int = 8) -> None:
        self._max_holds = max_holds
        self._per_hold = per_hold
        self._seq = 0
        self._records: OrderedDict[str, list[tuple[int, HoldEvent]]] = OrderedDict()
        self._changed = asyncio.Event()

    def mark(self) -> int:
        """A point in the board's history: records fed later have a greater sequence."""
        return self._seq

    async def ready(self) -> None:
        """Ready to be waited on (a follower starts reading here)."""

    async def aclose(self) -> None:
        """Stop following (nothing to stop for a plain board)."""

    def feed(self, event: HoldEvent) -> None:
        self._seq += 1
        records = self._records.setdefault(event.hold_id, [])
        self._records.move_to_end(event.hold_id)
        records.append((self._seq, event))
        del records[: -self._per_hold]
        while len(self._records) > self._max_holds:
            self._records.popitem(last=False)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def find(
        self, hold_id: str, *, resource_id: str, kinds: Collection[HoldEventKind], after: int
    ) -> HoldEvent | None:
        for seq, event in self._records.get(hold_id, ()):
            if seq > after and event.resource_id == resource_id and event.kind in kinds:
                return event
        return None

    async def wait_for(
        self,
        hold_id: str,
        *,
        resource_id: str,
        kinds: Collection[HoldEventKind],
        after: int,
        wait: float,
    ) -> HoldEvent | None:
        """The first record of ``hold_id`` about ``resource_id`` of one of ``kinds``
        fed after the mark ``after``, waiting up to ``wait`` seconds; ``None`` if none."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            found = self.find(hold_id, resource_id=resource_id, kinds=kinds, after=after)
            remaining = deadline - loop.time()
            if found is not None or remaining <= 0:
                return found
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)


class HoldFollower(Followed[HoldEvent], HoldBoard):
    """A :class:`HoldBoard` fed by one group-less consumer of the holds topic."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        lookback: float = 120.0,
        client_id: str = "calsync-hold-follower",
    ) -> None:
        HoldBoard.__init__(self)
        self._follow(bootstrap, topic, lookback=lookback, client_id=client_id)

    def decode(self, value: bytes | None) -> HoldEvent | None:
        try:
            return decode_hold_event(value or b"")
        except CodecError:
            return None
