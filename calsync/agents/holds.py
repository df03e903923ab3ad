"""The holds agent (``calsync.holds``) and the service behind it: holds decided in
partition order, written with their effects through a transactional outbox.

Every request of ``calsync.hold-requests`` is keyed by the resource whose
:class:`~calsync.availability.holds.HoldBook` it is for, so the worker that owns the
resource's partition decides it, one at a time (a per-resource lock also orders the
holds timer and the sync's conflict reports). For each request the service

1. reads the book (table ``holds``) and the resource's busy index (table ``busy``);
2. lets the book decide (pure), then stores the book **with its effects** (records
   for ``calsync.holds``, requests for other resources) in ``unsent``, and waits
   until the broker acknowledged that table write (Faust's own commit does not
   guarantee it: :class:`~calsync.tables.declare.AckedTable`);
3. writes the effects, then stores the book with ``unsent`` emptied.

A crash between 2 and 3 leaves the effects in the book; whoever handles the
resource next (the replayed request, on any worker) writes them first. So an effect
is written at least once, and a request is decided exactly once.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from calsync.agents.outbox import Outbox
from calsync.agents.timers import Scheduler
from calsync.availability.holds import (
    Conflict,
    Effects,
    HoldBook,
    HoldEvent,
    HoldEventKind,
)
from calsync.availability.index import BusyIndex, Entry, timeline_of
from calsync.codecs.holds import encode_hold_event
from calsync.model import system_event_id
from calsync.providers import registry
from calsync.streams.records import HoldRequest, StatusEvent
from calsync.tables.records import Resource

__all__ = ["HoldService"]

log = logging.getLogger(__name__)


class HoldService:
    """Decides hold requests for the resources a worker owns (module docstring)."""

    def __init__(
        self,
        *,
        busy: MutableMapping[str, bytes],
        holds: MutableMapping[str, bytes],
        resources: MutableMapping[str, Resource],
        outbox: Outbox,
        scheduler: Scheduler,
        clock: Callable[[], float] = time.time,
        durable: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.busy = busy
        self.holds = holds
        self.resources = resources
        self.outbox = outbox
        self.scheduler = scheduler
        self.clock = clock
        self._durable = durable
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def book(self, rid: str) -> HoldBook:
        return HoldBook.decode(rid, self.holds.get(rid))

    def _busy_conflict(self, rid: str) -> Callable[[int, int, int], Conflict | None]:
        resource = self.resources.get(rid)

        def find(start: int, end: int, mask: int) -> Conflict | None:
            if resource is None or resource.state == "removed":
                return Conflict(rid, "request", start, end, detail="not a registered resource")
            value = self.busy.get(rid)
            if timeline_of(value).is_free(start, end, mask):
                # the timeline says what the entries would (tests/availability/
                # test_index.py): a hold on free time, the usual answer, decodes no
                # entries (a room of 20,000 events: microseconds instead of 20 ms)
                return None
            index = BusyIndex.decode(value)
            found = sorted(index.overlapping(start, end, mask), key=lambda e: e.start)
            if not found:
                return None
            return _conflict(rid, resource, found[0], "busy at the provider")

        return find

    async def on_request(self, request: HoldRequest) -> None:
        """Decide one request of ``calsync.hold-requests`` (the agent's handler)."""
        rid = request.resource_id
        busy = self._busy_conflict(rid)

        def decide(book: HoldBook, now: float) -> Effects:
            effects = book.handle(request, now, busy)
            live = book.holds.get(request.hold_id)
            ended = book.ended.get(request.hold_id)
            state = live.state.value if live else (ended.outcome.value if ended else "-")
            log.info(
                "hold %s on %s: %s%s -> %s",
                request.hold_id,
                rid,
                request.kind,
                f" from {request.voter}" if request.voter else "",
                state,
            )
            return effects

        await self._run(rid, decide)

    async def housekeep(self, rid: str) -> None:
        """The holds timer of ``rid`` fired: expire, abort and ask what is due."""
        await self._run(rid, lambda book, now: book.housekeep(now))

    async def on_busy(self, rid: str, changed: list[Entry]) -> None:
        """The sync indexed new busy time for ``rid``: report what lands on a hold."""
        book = self.book(rid)
        resource = self.resources.get(rid)
        if not book.holds or resource is None:
            return
        now = self.clock()
        records: list[tuple[str, bytes]] = []
        for entry in changed:
            if not entry.flags & 5:  # busy or out of office: what a hold promised against
                continue
            for hold in book.conflicts_with(entry.start, entry.end):
                conflict = _conflict(rid, resource, entry, "a provider event landed on this hold")
                event = HoldEvent(
                    hold_id=hold.hold_id,
                    resource_id=rid,
                    kind=HoldEventKind.CONFLICT,
                    start=hold.start,
                    end=hold.end,
                    home=hold.home,
                    participants=hold.participants,
                    emitted_at=now,
                    expires_at=hold.expires_at or None,
                    conflict=conflict,
                )
                records.append((rid, encode_hold_event(event)))
                await self.outbox.status(
                    StatusEvent(
                        resource_id=rid,
                        status="hold_conflict",
                        at=now,
                        detail="a provider event landed on an accepted hold",
                        data={"hold_id": hold.hold_id, "conflict": conflict.to_json()},
                    )
                )
        if records:
            await self.outbox.holds(records)

    async def _run(self, rid: str, decide: Callable[[HoldBook, float], Effects]) -> None:
        async with self._locks[rid]:
            before = self.holds.get(rid)
            book = HoldBook.decode(rid, before)
            if book.unsent:  # left by a crash between storing and writing: write them first
                await self._write(book.unsent)
                book.unsent = []
            effects = decide(book, self.clock())
            if effects:
                book.unsent = _serialize(effects)
                self.holds[rid] = book.encode()
                if self._durable is not None:
                    # nobody hears of a decision that a crash could still take back
                    await self._durable(rid)
                await self._write(book.unsent)
                book.unsent = []
            after = book.encode()
            if after != before:
                self.holds[rid] = after
            resource = self.resources.get(rid)
            self.scheduler.holds(rid, resource.provider if resource else "", book.next_due())

    async def _write(self, unsent: list[dict[str, Any]]) -> None:
        events = [(u["k"], base64.b64decode(u["v"])) for u in unsent if u["t"] == "event"]
        requests = [HoldRequest.loads(u["v"]) for u in unsent if u["t"] == "request"]
        pending: list[Awaitable[None]] = []
        if events:
            pending.append(self.outbox.holds(events))
        if requests:
            pending.append(self.outbox.hold_requests(requests))
        await asyncio.gather(*pending)


def _conflict(rid: str, resource: Resource, entry: Entry, detail: str) -> Conflict:
    """Provider busy time (an index entry) standing in a hold's way."""
    origin = registry.spec(resource.provider).origin
    return Conflict(
        rid,
        "busy",
        entry.start,
        entry.end,
        flags=entry.flags,
        system_event_id=system_event_id(origin, rid, entry.native_event_id),
        detail=detail,
    )


def _serialize(effects: Effects) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"t": "event", "k": e.resource_id, "v": base64.b64encode(encode_hold_event(e)).decode()}
        for e in effects.events
    ]
    out += [{"t": "request", "k": r.resource_id, "v": r.dumps().decode()} for r in effects.requests]
    return out
