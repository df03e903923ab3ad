"""The sync algorithm: walk a provider's changes, diff them against what was known,
and hand the resulting unified events to ``emit`` page by page. No Kafka in here.

Contract: ``emit`` returns only after the events it was given are durably produced;
:func:`sync_resource` returns the new cursor and index only after every page was
emitted, so a caller that stores them afterwards never stores a cursor ahead of
its events (a crash replays, it never skips). A walk that fails midway leaves in
its ``progress`` the index as of the last acknowledged emission: stored with the
old cursor, it lets the retry skip what consumers already have.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from calsync.errors import CursorExpired
from calsync.model import Change, Deletion, Occurrence, UnifiedEvent, Window
from calsync.providers.base import Provider, Quarantined

Emit = Callable[[list[UnifiedEvent]], Awaitable[None]]
Clock = Callable[[], datetime]

#: The most pages a walk emits at once (16 pages of 250: 4,000 events), so a live push
#: never queues behind a huge emission on the producer (test_resilience, under load).
MAX_BATCH_PAGES = 16


@dataclass(slots=True)
class SyncOutcome:
    """What a sync produced: the cursor and index to store, and counts for status."""

    cursor: str | None
    index: dict[str, str]
    time_zone: str | None
    full: bool
    upserts: int = 0
    deletes: int = 0
    cursor_expired: bool = False
    quarantined: list[Quarantined] = field(default_factory=list)
    #: ``latency_ms`` of the last event emitted (0: nothing emitted)
    last_latency_ms: int = 0


def diff_page(
    changes: list[Occurrence | Deletion],
    index: dict[str, str],
    window: Window,
    seen: set[str] | None,
) -> list[Change]:
    """Apply one page to ``index`` (in place); return what to emit, in page order.

    An occurrence whose version is already known is not re-emitted; one outside the
    window counts as a deletion (it left the horizon); a deletion of an id never
    known emits nothing. ``seen`` collects the ids present in a full listing. Order
    matters: a page may delete an id and then bring it back.
    """
    out: list[Change] = []
    for change in changes:
        key = change.native_event_id
        if isinstance(change, Occurrence) and window.overlaps(change.start_utc, change.end_utc):
            if seen is not None:
                seen.add(key)
            if index.get(key) != change.version:
                index[key] = change.version
                out.append(change)
        elif index.pop(key, None) is not None:
            out.append(change if isinstance(change, Deletion) else Deletion(key))
    return out


async def sync_resource(
    provider: Provider,
    *,
    resource_id: str,
    cursor: str | None,
    index: dict[str, str],
    window: Window,
    emit: Emit,
    now: Clock,
    caused_at: datetime,
    full_on_expiry: bool = True,
    progress: dict[str, str] | None = None,
    prepare: Emit | None = None,
) -> SyncOutcome:
    """Bring ``index`` up to date with the provider, emitting every change.

    ``cursor=None`` runs a full listing; an expired cursor falls back to one, unless
    ``full_on_expiry`` is false: then :class:`CursorExpired` propagates (the live lane
    hands the full listing to the bulk lane instead of running it inline). After a
    full listing that completed, every known id that did not appear is emitted as a
    delete; a listing that failed midway deletes nothing.

    ``progress``, if given, is set to ``index`` at once and then kept equal to the
    index as of the last acknowledged emission, also when the walk raises. A caller
    that stores it (with the *old* cursor) after a failure makes the retry skip what
    was already emitted: the diff finds those versions known. ``index`` itself is not
    modified. ``caused_at`` is when the notification behind this sync was received:
    ``latency_ms`` of each event is measured from it.

    Events are emitted in batches of whole pages: the first page alone, then batches
    twice as large each time, up to :data:`MAX_BATCH_PAGES` pages.

    ``prepare``, if given, is called with each batch of events as soon as its last
    page is diffed, while the previous batch may still be in flight; the batch is emitted
    only after ``prepare`` returned, and not at all if it raised (the walk then
    raises). It may run ahead of emissions, so it must be harmless for a batch that
    is never emitted (the sync service stores the batch's new ids as maybe emitted).
    """
    start = dict(index)  # ``progress`` may be ``index`` itself
    acked = progress if progress is not None else {}
    acked.clear()
    acked.update(start)
    walk = functools.partial(
        _walk, provider, resource_id, acked=acked, window=window, emit=emit, prepare=prepare
    )
    try:
        return await walk(cursor, dict(acked), now, caused_at)
    except CursorExpired:
        if cursor is None or not full_on_expiry:
            raise
    # Restart from what was acknowledged: changes of the expired walk that were
    # diffed but never emitted must be emitted by the full listing.
    outcome = await walk(None, dict(acked), now, caused_at)
    outcome.cursor_expired = True
    return outcome


async def _walk(
    provider: Provider,
    resource_id: str,
    cursor: str | None,
    index: dict[str, str],
    now: Clock,
    caused_at: datetime,
    *,
    acked: dict[str, str],
    window: Window,
    emit: Emit,
    prepare: Emit | None,
) -> SyncOutcome:
    """One walk; ``index`` is diffed in place, ``acked`` follows it one emission behind."""
    origin = provider.origin
    full = cursor is None
    seen: set[str] | None = set() if full else None
    outcome = SyncOutcome(cursor=cursor, index=index, time_zone=None, full=full)

    def events_for(changes: list[Change], token: str | None) -> list[UnifiedEvent]:
        emitted_at = now()
        latency = max(0, int((emitted_at - caused_at).total_seconds() * 1000))
        if changes:
            outcome.last_latency_ms = latency
        upsert = functools.partial(
            UnifiedEvent.upsert,
            emitted_at=emitted_at,
            sync_sequence_token=token,
            latency_ms=latency,
        )
        delete = functools.partial(
            UnifiedEvent.delete,
            emitted_at=emitted_at,
            sync_sequence_token=token,
            latency_ms=latency,
        )
        return [
            upsert(origin, resource_id, c)
            if isinstance(c, Occurrence)
            else delete(origin, resource_id, c.native_event_id)
            for c in changes
        ]

    def acknowledge(changes: list[Change]) -> None:
        for change in changes:
            if isinstance(change, Occurrence):
                acked[change.native_event_id] = change.version
            else:
                acked.pop(change.native_event_id, None)

    # A batch of pages is emitted while the next batch is fetched and prepared;
    # emissions still happen in order, and the caller gets the cursor only after the
    # last of them was acknowledged. Batches grow from one page to MAX_BATCH_PAGES:
    # ``prepare`` stores every id a sync has announced so far once per batch (the sync
    # service's write-ahead), so one write per page made a first sync of n events
    # cost O(n²) in table writes (50,000 events: 5 million ids written); doubling
    # batches make it O(n) while the first page still goes out at once.
    pending: asyncio.Task[None] | None = None
    pending_changes: list[Change] = []
    preparing: list[asyncio.Task[None]] = []
    batch_changes: list[Change] = []
    batch_events: list[UnifiedEvent] = []
    batch_pages, batch_size = 0, 1

    async def emit_when_prepared(
        ready: asyncio.Task[None] | None, events: list[UnifiedEvent]
    ) -> None:
        if ready is not None:
            await ready
        await emit(events)

    async def send_batch() -> None:
        nonlocal pending, pending_changes, batch_changes, batch_events, batch_pages
        changes, events = batch_changes, batch_events
        batch_changes, batch_events, batch_pages = [], [], 0
        ready = None
        if events and prepare is not None:
            # overlaps with the emission in flight: its wait for the broker, mostly
            ready = asyncio.ensure_future(prepare(events))
            preparing.append(ready)
        if pending is not None:
            await pending
            pending = None
            acknowledge(pending_changes)
        if events:
            pending = asyncio.ensure_future(emit_when_prepared(ready, events))
            pending_changes = changes

    try:
        async for page in provider.fetch_changes(cursor, window):
            outcome.time_zone = page.time_zone or outcome.time_zone
            outcome.quarantined.extend(page.quarantined)
            changes = diff_page(page.changes, index, window, seen)
            batch_changes.extend(changes)
            batch_events.extend(events_for(changes, page.cursor))
            batch_pages += 1
            upserts = sum(1 for c in changes if isinstance(c, Occurrence))
            outcome.upserts += upserts
            outcome.deletes += len(changes) - upserts
            if page.cursor is not None:
                outcome.cursor = page.cursor
            if batch_pages >= batch_size:
                await send_batch()
                batch_size = min(2 * batch_size, MAX_BATCH_PAGES)
        await send_batch()
        if pending is not None:
            await pending
            pending = None
            acknowledge(pending_changes)
    finally:
        if pending is not None:  # the walk failed while a page was being emitted
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
            if not pending.cancelled() and pending.exception() is None:
                acknowledge(pending_changes)  # it was produced before the failure
        for ready in preparing:  # none runs on after the walk, none fails unheard
            ready.cancel()
            with contextlib.suppress(BaseException):
                await ready
    if seen is not None:
        vanished = sorted(set(index) - seen)
        if vanished:
            deletions: list[Change] = [Deletion(key) for key in vanished]
            events = events_for(deletions, outcome.cursor)
            if prepare is not None:
                await prepare(events)
            await emit(events)
            acknowledge(deletions)
            for key in vanished:
                del index[key]
            outcome.deletes += len(vanished)
    return outcome
