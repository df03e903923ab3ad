"""The sync agent's work, as plain async methods over tables and an :class:`Outbox`.

The agents (:mod:`calsync.agents.sync`, ``commands``, ``timers``) only feed records into a
:class:`SyncService`;
everything here runs without Faust when handed dicts and an outbox, which is how it
is unit-tested. The service is the notification handling itself (this module) and
three parts it owns, each over the same :class:`~calsync.agents.context.ServiceContext`:
:class:`~calsync.agents.subscriptions.Subscriptions` (push channels),
:class:`~calsync.agents.commands.Commands` (admin commands and credential rotation)
and the timer :class:`~calsync.agents.timers.Scheduler` (retries, reconciliations,
renewals, polls).

Two lanes of :mod:`calsync.agents.dispatch` run ``calsync.notifications``: the *live*
lane takes pushes that need only a delta; the *bulk* lane takes everything else (first
syncs, full resyncs, reconciliations, polls) and keeps channels subscribed. They run
concurrently, so a backfill of thousands of events never delays a live change; a
per-resource lock keeps each resource's syncs one at a time.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from calsync.agents.commands import Commands
from calsync.agents.context import ProviderSource, ServiceContext
from calsync.agents.outbox import Outbox
from calsync.agents.subscriptions import Subscriptions
from calsync.agents.timers import Scheduler
from calsync.availability.index import BusyIndex, Entry, IndexCache
from calsync.crypto import SecretBox, WebhookSigner
from calsync.errors import (
    AuthorizationRevoked,
    CalendarTooLarge,
    CalsyncError,
    CodecError,
    CursorExpired,
    InternalError,
    RateLimited,
    TokenRefreshFailed,
    TransientProviderError,
)
from calsync.model import UnifiedEvent, Window
from calsync.providers import registry
from calsync.providers.spec import PushKind
from calsync.retry import retry_delay
from calsync.settings import Settings
from calsync.streams.records import Command, Notification, Reason, RetryEnvelope
from calsync.sync import SyncOutcome, sync_resource
from calsync.tables.records import Channel, Resource, SyncState, Timer

__all__ = ["Lane", "ProviderSource", "SyncService", "lane_of"]


def _digest(value: bytes) -> str:
    return hashlib.blake2b(value, digest_size=16).hexdigest()


log = logging.getLogger(__name__)

#: The index version of an occurrence that may have reached ``calsync.events``: stored
#: before its emission (:meth:`SyncService._announce`). No provider version is empty,
#: so the next walk re-emits the occurrence if it still exists and deletes it if not.
MAYBE_EMITTED = ""


#: Seconds between two early releases of one provider's waiting retries
#: (:meth:`SyncService._answered_again`).
RELEASE_INTERVAL = 15.0


class Lane(enum.StrEnum):
    LIVE = "live"
    BULK = "bulk"


_LIVE_REASONS = frozenset(
    {Reason.PUSH.value, Reason.RENEW.value, Reason.LIFECYCLE.value, Reason.HOLDS.value}
)


def lane_of(notification: Notification) -> Lane:
    """Pushes needing only a delta, renewals and reauthorizations are live (quick, one
    request or a few); full syncs, reconciliations, polls and backfills are bulk."""
    if notification.reason in _LIVE_REASONS and not notification.full:
        return Lane.LIVE
    return Lane.BULK


def _is_renewal(notification: Notification) -> bool:
    return (
        notification.reason == Reason.RENEW.value
        or notification.lifecycle == "reauthorizationRequired"
    )


class SyncService:
    """Handles notifications, retries and commands for the resources a worker owns.

    Tables are keyed by resource id and co-partitioned with the topics, so only the
    worker that owns a resource's partition ever calls these for it. Every table
    write happens inside the handling of a consumed record (Faust's rule).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        resources: MutableMapping[str, Resource],
        sync_state: MutableMapping[str, SyncState],
        channels: MutableMapping[str, Channel],
        timers: MutableMapping[str, Timer],
        outbox: Outbox,
        providers: ProviderSource,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        on_timer: Callable[[str, Timer], None] | None = None,
        busy: MutableMapping[str, bytes] | None = None,
        on_busy: Callable[[str, list[Entry]], Awaitable[None]] | None = None,
        on_holds_due: Callable[[str], Awaitable[None]] | None = None,
        durable: Callable[[str], Awaitable[None]] | None = None,
        on_recovered: Callable[[str], None] | None = None,
        busy_cache: IndexCache | None = None,
    ) -> None:
        self.context = ServiceContext(
            settings=settings,
            resources=resources,
            sync_state=sync_state,
            channels=channels,
            outbox=outbox,
            providers=providers,
            clock=clock,
            rng=rng or random.Random(),
        )
        self.settings = settings
        self.resources = resources
        self.sync_state = sync_state
        self.channels = channels
        self.timers = timers
        #: the availability index (:mod:`calsync.availability.index`), by resource id
        self.busy: MutableMapping[str, bytes] = busy if busy is not None else {}
        #: the big calendars' indexes as last stored, so their next sync need not
        #: decode them (checked against the stored value's digest)
        self._busy_cache = busy_cache if busy_cache is not None else IndexCache()
        self._on_busy = on_busy
        self._on_holds_due = on_holds_due
        #: waits until the last ``sync_state`` write of a resource is acknowledged by
        #: the broker (:meth:`calsync.tables.declare.AckedTable.written`)
        self._durable = durable
        #: called with a provider's name when it answers again after an outage (the
        #: worker releases that provider's waiting retries early)
        self._on_recovered = on_recovered
        #: providers with trouble on their side (5xx, network) since their last release
        self._outage: set[str] = set()
        #: provider -> when its waiting retries were last released early
        self._released: dict[str, float] = {}
        #: the sync state :meth:`_announce` last stored, per resource syncing now
        self._announced_state: dict[str, SyncState] = {}
        self.outbox = outbox
        self.providers = providers
        self.clock = clock
        self.rng = self.context.rng
        self.scheduler = Scheduler(self.context, timers, on_timer)
        self.subscriptions = Subscriptions(
            self.context, self.scheduler, WebhookSigner(settings.secret_key)
        )
        self.commands = Commands(self.context, self.subscriptions, SecretBox(settings.secret_key))
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._deferred_until: dict[str, float] = {}
        # Resources whose work the bulk lane is doing now, and the live notifications
        # for them that arrived meanwhile (handled by the bulk lane once it is done).
        self._bulk_running: set[str] = set()
        self._behind_bulk: defaultdict[str, list[Notification]] = defaultdict(list)

    def window(self, at: float) -> Window:
        return Window.around(
            datetime.fromtimestamp(at, UTC),
            past_days=self.settings.horizon_past_days,
            future_days=self.settings.horizon_future_days,
        )

    # -- notifications -----------------------------------------------------------

    async def on_notification(self, notification: Notification, lane: Lane) -> None:
        """Handle a notification if it belongs to ``lane`` (the dispatcher passes
        ``lane_of(notification)``).

        Never raises for provider trouble: failures become retries, dead letters and
        status events, so one resource never blocks its partition.
        """
        if lane_of(notification) is not lane:
            return
        rid = notification.resource_id
        self.scheduler.released(notification.timer_key)
        if notification.reason == Reason.HOLDS.value:
            if self._on_holds_due is not None:
                await self._on_holds_due(rid)  # holds keep their own per-resource order
            return
        if lane is Lane.LIVE and rid in self._bulk_running:
            # Waiting for the lock would hold every other resource's pushes behind this
            # resource's backfill or resync. The bulk lane handles this notification
            # when it is done; until then the bulk lane has not acked its own record,
            # which precedes this one or (replayed) starts a sync that covers it, so a
            # crash meanwhile loses nothing.
            self._behind_bulk[rid].append(notification)
            return
        async with self._locks[rid]:
            if lane is Lane.LIVE:
                await self._handle(notification, lane)
                return
            self._bulk_running.add(rid)
            try:
                await self._handle(notification, lane)
                await self._catch_up(rid)
            finally:
                self._bulk_running.discard(rid)

    async def _catch_up(self, rid: str) -> None:
        """Handle, as the live lane would, what the live lane left to the bulk lane."""
        for _ in range(3):
            waiting = self._behind_bulk.pop(rid, [])
            if not waiting:
                return
            for notification in waiting:
                await self._handle(notification, Lane.LIVE)
        # Pushes keep arriving: put the rest back in line rather than hold the bulk lane.
        for notification in self._behind_bulk.pop(rid, []):
            await self.outbox.notify(notification.derive(timer_key=None))

    async def _handle(self, notification: Notification, lane: Lane) -> None:
        admitted = await self._admit(notification)
        if admitted is None:
            return
        resource, state = admitted
        if lane is Lane.LIVE and await self._live_shortcut(notification, resource, state):
            return
        if lane is Lane.BULK and (
            notification.reason == Reason.PUSH.value
            and notification.received_at < state.fetch_started_at
        ):
            return  # a push handed over by the live lane, covered by a sync since
        if self.clock() < state.not_before:
            await self._defer(notification, state.not_before, lane)
            return
        await self._sync(notification, lane, resource, state)

    async def _admit(self, notification: Notification) -> tuple[Resource, SyncState] | None:
        """The resource and its state when the provider may be called for it; retires a
        removed resource; keeps the reconciliation schedule and lifecycle removals."""
        rid = notification.resource_id
        resource = self.resources.get(rid)
        if resource is None:
            log.info("notification for unknown resource %s ignored", rid)
            return None
        state = self.sync_state.get(rid) or SyncState()
        if resource.state == "removed":
            await self._retire(rid, resource, state)
            return None
        if resource.state != "active":
            log.info("resource %s is %s; not calling the provider", rid, resource.state)
            return None
        if notification.reason == Reason.RECONCILE.value:
            self.scheduler.reconcile(rid, resource.provider)  # the next one, whatever happens
        if notification.lifecycle == "subscriptionRemoved":
            self.channels.pop(rid, None)  # gone at the provider: the bulk lane recreates it
        return resource, state

    async def _live_shortcut(
        self, notification: Notification, resource: Resource, state: SyncState
    ) -> bool:
        """Whether the live lane is done with ``notification`` without a delta sync:
        a renewal, a push it drops or covered, or a full sync it hands to the bulk lane."""
        if _is_renewal(notification):
            if self.clock() < state.not_before:
                await self._defer(notification, state.not_before, Lane.LIVE)
            else:
                await self._renew(notification, resource, state)
            return True
        if await self._message_gap(notification.resource_id, notification):
            return True
        if notification.received_at < state.fetch_started_at:
            return True  # the last fetch started after this push arrived: already covered
        if state.cursor is None or state.cursor_expired_at:
            # Never synced, or the cursor expired and a full resync is queued in the bulk
            # lane: a full listing is bulk work. Duplicates are cheap, the bulk lane skips
            # those a sync already covered.
            await self.outbox.notify(notification.derive(full=True, timer_key=None))
            return True
        return False

    async def _sync(
        self, notification: Notification, lane: Lane, resource: Resource, state: SyncState
    ) -> None:
        rid = notification.resource_id
        started = self.clock()
        cursor = None if notification.full else state.cursor
        known = dict(state.index or {})
        busy, complete = self._busy_index(rid, known, state)
        if not complete:
            # No index of this resource's busy time (kept since calsync 0.3, or lost, or
            # a walk cut short before storing it): rebuild it from a full listing that
            # re-emits every occurrence. Consumers see upserts of versions they already
            # have, which changes nothing for them. The ids the sync state knows stay,
            # as maybe emitted, so the listing deletes those the provider no longer has.
            cursor, known = None, dict.fromkeys(known, MAYBE_EMITTED)
        changed: list[Entry] = []
        applied = [not complete]  # whether the index differs from the stored one
        announced: set[str] = set()  # ids stored as maybe emitted during this sync

        async def announce(events: list[UnifiedEvent]) -> None:
            await self._announce(rid, events, announced)

        async def emit(events: list[UnifiedEvent]) -> None:
            # The index takes exactly what the broker acknowledged, in order, so that
            # stored with the cursor (or the progress) it never disagrees with the topic.
            await self.outbox.events(rid, events)
            changed.extend(busy.apply(events, synced_at=int(self.clock())))
            applied[0] = True

        progress: dict[str, str] = {}
        try:
            provider = self.providers.get(rid, resource)
            if lane is Lane.BULK and registry.spec(resource.provider).push is not PushKind.POLL:
                await self.subscriptions.ensure(rid, resource, provider)
            if cursor is None:
                await self.context.status(rid, "resync_started", reason=notification.reason)
            outcome = await sync_resource(
                provider,
                resource_id=rid,
                cursor=cursor,
                index=known,
                window=self.window(started),
                emit=emit,
                now=self.context.now,
                caused_at=datetime.fromtimestamp(notification.received_at, UTC),
                # A full listing in the live lane would hold up every other resource's
                # pushes for as long as it runs: the bulk lane does it instead.
                full_on_expiry=lane is Lane.BULK,
                progress=progress,
                # each page's new ids are stored before its events go out (_announce)
                prepare=announce,
            )
        except CursorExpired as exc:
            kept = self._keep_progress(rid, progress, busy, announced)
            await self._indexed(rid, changed)
            if lane is Lane.BULK or cursor is None:
                # The full listing itself was refused (a page token expired in the walk,
                # a 410 storm). Retried in full with backoff, as any retriable trouble:
                # dead-lettered at once, the calendar stayed unsynced until a push or its
                # daily reconciliation (114 of 10,000 in a 410 storm, docs/benchmarks.md).
                await self._failed(notification.derive(full=True), resource, kept, exc)
                return
            await self._hand_over_resync(notification, progress, busy, exc, announced)
            return
        except CalsyncError as exc:
            kept = self._keep_progress(rid, progress, busy, announced)
            await self._indexed(rid, changed)
            await self._failed(notification, resource, kept, exc)
            return
        except Exception as exc:  # a bug must not kill the worker or block the partition
            log.exception("sync of %s failed unexpectedly", rid)
            internal = InternalError(f"internal error: {exc!r}")
            kept = self._keep_progress(rid, progress, busy, announced)
            await self._indexed(rid, changed)
            await self._failed(notification, resource, kept, internal)
            return
        finally:
            self._announced_state.pop(rid, None)
        digest = state.busy_digest
        if applied[0] or rid not in self.busy:
            digest = self._store_busy(rid, busy)
        else:
            self._busy_cache.keep(rid, digest, busy)  # unchanged: still the stored value
        await self._synced(notification, lane, resource, state, outcome, started, digest)
        await self._indexed(rid, changed)

    def _busy_index(
        self, rid: str, known: dict[str, str], state: SyncState
    ) -> tuple[BusyIndex, bool]:
        """The stored index of ``rid``, and whether it is the one stored with ``state``.

        The sync state keeps the digest of the index value stored with it: the two
        tables' changelogs are written separately, so after a crash one may be newer
        than the other; then the index is rebuilt rather than trusted.
        """
        value = self.busy.get(rid)
        digest = _digest(value) if value is not None else ""
        busy = self._busy_cache.take(rid, digest)
        if busy is None:
            try:
                busy = BusyIndex.decode(value)
            except CodecError:
                log.warning("availability index of %s cannot be read; rebuilding it", rid)
                return BusyIndex(), False
        if state.busy_digest:
            return busy, value is not None and digest == state.busy_digest
        return busy, len(busy) == len(known) or not known  # stored before digests were

    def _store_busy(self, rid: str, busy: BusyIndex) -> str:
        """Store ``busy`` as the index of ``rid``; returns the value's digest. The
        caller hands ``busy`` over (kept for the next sync) and changes it no more."""
        value = busy.encode()
        self.busy[rid] = value
        digest = _digest(value)
        self._busy_cache.keep(rid, digest, busy)
        return digest

    async def _indexed(self, rid: str, changed: list[Entry]) -> None:
        """Tell the holds about busy time that changed (conflicts with accepted holds)."""
        if changed and self._on_busy is not None:
            await self._on_busy(rid, changed)

    async def _synced(
        self,
        notification: Notification,
        lane: Lane,
        resource: Resource,
        state: SyncState,
        outcome: SyncOutcome,
        started: float,
        busy_digest: str,
    ) -> None:
        """Store the new cursor and index, schedule what follows, say what happened."""
        rid = notification.resource_id
        poll_interval = 0.0
        if registry.spec(resource.provider).push is PushKind.POLL:
            changed = bool(outcome.upserts or outcome.deletes)
            poll_interval = self.scheduler.poll(
                rid, resource.provider, state.poll_interval, changed=changed
            )
        else:
            self.scheduler.catchup(rid, resource.provider)  # in case a push is lost
        current = self.sync_state.get(rid) or state  # the subscription may have written it
        self.sync_state[rid] = SyncState(
            cursor=outcome.cursor,
            index=outcome.index,
            fetch_started_at=started,
            synced_at=self.clock(),
            time_zone=outcome.time_zone,
            fetches=state.fetches + 1,
            poll_interval=poll_interval,
            last_change_latency_ms=outcome.last_latency_ms or current.last_change_latency_ms,
            subscribe_failures=current.subscribe_failures,
            subscribe_retry_at=current.subscribe_retry_at,
            busy_digest=busy_digest,
        )
        self._deferred_until.pop(rid, None)
        self._answered_again(resource.provider)
        for item in outcome.quarantined:
            await self.context.status(rid, "quarantined", item.reason, item=item.item_hash)
        counts = {"upserts": outcome.upserts, "deletes": outcome.deletes}
        if outcome.full:
            if notification.reason != Reason.RECONCILE.value:
                self.scheduler.reconcile(rid, resource.provider)
            expired = outcome.cursor_expired or bool(state.cursor_expired_at)
            await self.context.status(rid, "resync_finished", cursor_expired=expired, counts=counts)
        extra: dict[str, Any] = {}
        if outcome.upserts or outcome.deletes:
            # end-to-end: from the notification's cause to the events being acknowledged
            extra["lag_ms"] = max(0, int((self.clock() - notification.received_at) * 1000))
        await self.context.status(
            rid, "synced", counts=counts, lane=lane.value, reason=notification.reason, **extra
        )

    def _answered_again(self, provider: str) -> None:
        """A sync of ``provider`` succeeded. After an outage (a 5xx or network failure
        since the last release), its waiting retries are released now rather than at
        their backed-off due times, up to ``retry_max_delay`` away: a provider back
        after five minutes had its last calendars converge 250 s later
        (docs/benchmarks.md §7). At most once per :data:`RELEASE_INTERVAL`, so a
        provider that fails every other call still gets backoff."""
        if provider not in self._outage or self._on_recovered is None:
            return
        now = self.clock()
        if now - self._released.get(provider, float("-inf")) < RELEASE_INTERVAL:
            return  # not yet: a success after the interval releases
        self._outage.discard(provider)
        self._released[provider] = now
        self._on_recovered(provider)

    async def _announce(self, rid: str, events: list[UnifiedEvent], announced: set[str]) -> None:
        """Before ``events`` are emitted, store durably the ids among them that the
        stored index does not know, as :data:`MAYBE_EMITTED`.

        A walk keeps what it emitted in memory until it ends; a worker killed in the
        middle of one would leave no trace of it, and the next walk (a full listing
        from the old index) could never delete an event the dead worker emitted and
        the provider deleted meanwhile: it stays on the topic for good. With the ids
        stored first, the next walk re-emits each one it finds (its version cannot
        match) and deletes the others; a delete of an id that never reached the topic
        is harmless. Costs one acknowledged ``sync_state`` write per emission that
        brings new ids (each batch of a first sync, whose batches double from one page
        to :data:`calsync.sync.MAX_BATCH_PAGES`, so that these writes stay linear in
        the calendar's size; an insert in a delta); the walk calls this as its
        ``prepare``, while the previous batch is still in flight, so the wait for that
        write overlaps the previous emission's.
        """
        # Read once per sync (its first emission), then kept here: the walk is the only
        # writer of this resource's sync state while it runs, and decoding a large
        # index at every page would double the cost.
        state = self._announced_state.get(rid) or self.sync_state.get(rid) or SyncState()
        index = state.index or {}
        new = [e.native_event_id for e in events if e.native_event_id not in index]
        if not new:
            return
        limit = self.settings.max_events_per_calendar
        if len(index) + len(set(new)) > limit:
            # Checked before anything is emitted or stored: the stored state would pass
            # the table value limit, and a worker that cannot write it stops.
            raise CalendarTooLarge(
                f"more than {limit:,} events inside the horizon: paused "
                "(raise CALSYNC_MAX_EVENTS_PER_CALENDAR, then resume)",
                limit=limit,
            )
        announced.update(new)
        state = state.derive(index={**index, **dict.fromkeys(new, MAYBE_EMITTED)})
        self.sync_state[rid] = state
        self._announced_state[rid] = state
        if self._durable is not None:
            await self._durable(rid)

    def _keep_progress(
        self, rid: str, progress: dict[str, str], busy: BusyIndex, announced: set[str]
    ) -> SyncState:
        """After a failed walk, store the index as of its last acknowledged emission
        (with the old cursor), so the retry does not emit those changes again; the
        availability index ``busy`` holds the same emissions and is stored with it.
        Ids the walk announced (:meth:`_announce`) and did not see acknowledged stay
        as maybe emitted: a failed send may still have reached the topic.

        Safe with any cursor: the index is what consumers may have been told, and a
        full listing still deletes what it does not find, once it completes.
        """
        digest = self._store_busy(rid, busy)
        state = self.sync_state.get(rid) or SyncState()
        kept = {**dict.fromkeys(announced - progress.keys(), MAYBE_EMITTED), **progress}
        if kept != (state.index or {}) or digest != state.busy_digest:
            state = state.derive(index=kept, busy_digest=digest)
            self.sync_state[rid] = state
        return state

    async def _hand_over_resync(
        self,
        notification: Notification,
        progress: dict[str, str],
        busy: BusyIndex,
        exc: CursorExpired,
        announced: set[str],
    ) -> None:
        """The live lane found the cursor expired: the full resync goes to the bulk lane.

        The old cursor stays (only a completed resync replaces it); the index keeps what
        was emitted before the expiry, and the resync diffs against it, emitting deletes
        for whatever vanished. ``cursor_expired_at`` sends further pushes the same way.
        """
        rid = notification.resource_id
        state = self._keep_progress(rid, progress, busy, announced)
        self.sync_state[rid] = state.derive(cursor_expired_at=self.clock())
        await self.outbox.notify(notification.derive(full=True, timer_key=None))
        await self.context.status(rid, "cursor_expired", str(exc), handed_to=Lane.BULK.value)

    async def _renew(
        self, notification: Notification, resource: Resource, state: SyncState
    ) -> None:
        """Renew the resource's subscription (Graph) or replace its channel (Google)."""
        try:
            await self.subscriptions.renew(notification.resource_id, resource)
        except CalsyncError as exc:
            await self._failed(notification, resource, state, exc)

    async def _message_gap(self, rid: str, notification: Notification) -> bool:
        """Whether a numbered channel push (Google) is done with: dropped, or turned
        into a reconciliation. ``False`` lets it ask for a delta like any push.

        A push from a channel that is not the resource's current one is dropped: its
        token may be a replay from a rotated channel, and the current channel covers
        every change anyway. A jump of more than ``google_message_gap`` asks for a
        reconciliation; a jump beyond ``google_message_jump_limit`` is not believed
        (neither recorded nor a reason to reconcile), so one absurd number cannot
        switch gap detection off for the channel.
        """
        number = notification.message_number
        if number is None:
            return False
        channel = self.channels.get(rid)
        if channel is None or notification.channel_id != channel.channel_id:
            log.debug("push of %s from stale channel %s dropped", rid, notification.channel_id)
            return True
        last = channel.last_message_number
        if number - last > self.settings.google_message_jump_limit:
            log.info("push of %s numbered %d after %d: not believed", rid, number, last)
            return False
        if number > last:
            self.channels[rid] = channel.derive(last_message_number=number)
        if last and number - last > self.settings.google_message_gap:
            await self.context.status(
                rid, "resync_started", "push message numbers jumped", gap=number - last
            )
            await self.outbox.notify(
                notification.derive(reason=Reason.RECONCILE.value, full=True, timer_key=None)
            )
            return True
        return False

    async def _defer(self, notification: Notification, until: float, lane: Lane) -> None:
        """The provider asked us to wait: come back at ``until`` through the retry topic."""
        rid = notification.resource_id
        if lane is Lane.LIVE and self._deferred_until.get(rid, 0.0) >= until:
            return  # a deferred sync of this resource is already waiting; it covers this push
        if lane is Lane.LIVE:
            self._deferred_until[rid] = until
        await self.outbox.retry(
            RetryEnvelope(
                notification=notification.derive(timer_key=None),
                attempt=notification.attempt,
                due_at=until,
                last_error="held: the provider asked us to wait",
                key=uuid.uuid4().hex,
            )
        )

    async def _failed(
        self, notification: Notification, resource: Resource, state: SyncState, exc: Exception
    ) -> None:
        rid = notification.resource_id
        state = self.sync_state.get(rid) or state  # written meanwhile (progress, backoff)
        resource = self.resources.get(rid) or resource  # rotated credentials, meanwhile
        if isinstance(exc, CalendarTooLarge):
            self.resources[rid] = resource.derive(state="paused")
            await self.context.status(rid, "paused", str(exc), reason="too_large", limit=exc.limit)
            return
        if isinstance(exc, AuthorizationRevoked):
            self.resources[rid] = resource.derive(state="reauth_required")
            self.providers.forget(rid)
            if registry.spec(resource.provider).connect:
                # where an administrator gets a new connect link for the calendar's owner
                reconnect = f"/api/resources/{quote(rid, safe='')}/reconnect"
                await self.context.status(rid, "reauth_required", str(exc), reconnect=reconnect)
            else:
                await self.context.status(rid, "reauth_required", str(exc))
            return
        attempt = notification.attempt + 1
        # the token endpoint failed, not the grant: the credentials are "refreshing"
        flag: dict[str, Any] = (
            {"credentials": "refreshing"} if isinstance(exc, TokenRefreshFailed) else {}
        )
        state = state.derive(
            failures=state.failures + 1,
            last_error=str(exc)[:300],
            credentials=flag.get("credentials", state.credentials),
        )
        self.sync_state[rid] = state
        if getattr(exc, "retriable", False) and self._keeps_trying(notification, attempt):
            requested = exc.retry_after if isinstance(exc, RateLimited) else None
            if isinstance(exc, TransientProviderError) and not isinstance(exc, RateLimited):
                self._outage.add(resource.provider)  # 5xx, timeouts, network
            delay = retry_delay(
                notification.attempt,
                requested=requested,
                base=self.settings.retry_base_delay,
                cap=self.settings.retry_max_delay,
                rng=self.rng,
            )
            due = self.clock() + delay
            if requested is not None:
                # No request before the time the provider asked for, whatever arrives meanwhile.
                self.sync_state[rid] = state.derive(not_before=max(state.not_before, due))
            envelope = RetryEnvelope(
                notification=notification.derive(attempt=attempt, timer_key=None),
                attempt=attempt,
                due_at=due,
                last_error=str(exc),
                key=uuid.uuid4().hex,
            )
            await self.outbox.retry(envelope)
            if isinstance(exc, RateLimited):
                await self.context.status(rid, "rate_limited", str(exc), retry_after=requested)
            await self.context.status(
                rid, "retry_scheduled", str(exc), attempt=attempt, delay=delay, **flag
            )
            return
        await self.outbox.deadletter(
            rid, {"notification": notification.asdict(), "error": str(exc), "attempt": attempt}
        )
        await self.context.status(rid, "failed", str(exc), attempt=attempt, **flag)
        if registry.spec(resource.provider).push is PushKind.POLL:
            # Polls are all a polled calendar has (no pushes): the poll this notification
            # released must not be the last one until the daily reconciliation. The next
            # one backs off like a poll that found nothing.
            interval = self.scheduler.poll(
                rid, resource.provider, state.poll_interval, changed=False
            )
            self.sync_state[rid] = state.derive(poll_interval=interval)

    def _keeps_trying(self, notification: Notification, attempt: int) -> bool:
        """Whether retriable trouble with ``notification`` is retried once more: until
        it has failed ``max_attempts`` times and waited ``retry_patience`` seconds
        since it arrived (``received_at``, kept by every retry)."""
        waited = self.clock() - notification.received_at
        return attempt < self.settings.max_attempts or waited < self.settings.retry_patience

    async def _retire(self, rid: str, resource: Resource, state: SyncState) -> None:
        """Emit deletes for everything known of a removed resource and forget it."""
        if state.index:
            now = self.context.now()
            origin = registry.spec(resource.provider).origin
            await self.outbox.events(
                rid,
                [
                    UnifiedEvent.delete(origin, rid, key, emitted_at=now)
                    for key in sorted(state.index)
                ],
            )
        self.sync_state.pop(rid, None)
        self.busy.pop(rid, None)
        self._busy_cache.discard(rid)
        self.scheduler.forget(rid)

    # -- retries and commands ----------------------------------------------------

    async def on_retry(self, envelope: RetryEnvelope) -> None:
        """Keep the envelope as a timer; the dispatcher releases it when it is due.

        Acking the envelope right after this is safe: the timer is in a changelogged
        table, so a worker that dies while the retry waits loses nothing.
        """
        self.scheduler.retry(envelope)

    async def on_command(self, command: Command) -> None:
        async with self._locks[command.resource_id]:
            await self.commands.apply(command)

    async def on_rotated(self, rid: str, credentials: dict[str, str]) -> None:
        """A provider rotated its credentials mid-request (see :mod:`calsync.agents.commands`)."""
        await self.commands.on_rotated(rid, credentials)
