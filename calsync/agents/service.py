"""What the agents do, as plain async methods over tables and an :class:`Outbox`.

The agents in :mod:`calsync.app` only feed records into a :class:`SyncService`;
everything here runs without Faust when handed dicts and an outbox, which is how it
is unit-tested.

Two lanes of :mod:`calsync.agents.dispatch` run ``calsync.notifications``: the *live*
lane takes pushes that need only a delta; the *bulk* lane takes everything else (first
syncs, full resyncs, reconciliations, polls) and keeps channels subscribed. They run
concurrently, so a
backfill of thousands of events never delays a live change; a per-resource lock
keeps each resource's syncs one at a time.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Protocol
from urllib.parse import quote

from calsync.agents.outbox import Outbox
from calsync.crypto import SecretBox, WebhookSigner
from calsync.errors import (
    AuthorizationRevoked,
    CalsyncError,
    CursorExpired,
    InternalError,
    ProviderError,
    ProviderRejected,
    RateLimited,
)
from calsync.model import PROVIDER_ORIGINS, UnifiedEvent
from calsync.providers.base import Provider, Subscription, Window
from calsync.retry import doubling_delay, retry_delay
from calsync.settings import Settings
from calsync.streams.records import (
    Command,
    CommandKind,
    Notification,
    Reason,
    RetryEnvelope,
    StatusEvent,
)
from calsync.sync import sync_resource
from calsync.tables.records import Channel, Resource, SyncState, Timer

log = logging.getLogger(__name__)

#: A channel this close to expiry (seconds) is replaced by the bulk lane.
CHANNEL_RENEW_MARGIN = 3600.0


class Lane(enum.StrEnum):
    LIVE = "live"
    BULK = "bulk"


_LIVE_REASONS = frozenset({Reason.PUSH.value, Reason.RENEW.value, Reason.LIFECYCLE.value})


def lane_of(notification: Notification) -> Lane:
    """Pushes needing only a delta, renewals and reauthorizations are live (quick, one
    request or a few); full syncs, reconciliations, polls and backfills are bulk."""
    if notification.reason in _LIVE_REASONS and not notification.full:
        return Lane.LIVE
    return Lane.BULK


def retry_timer_key(envelope_key: str) -> str:
    return f"retry:{envelope_key}"


def reconcile_timer_key(resource_id: str) -> str:
    return f"reconcile:{resource_id}"


def renew_timer_key(resource_id: str) -> str:
    return f"renew:{resource_id}"


def poll_timer_key(resource_id: str) -> str:
    return f"poll:{resource_id}"


#: Providers with no push at all: calsync polls them (adaptively) instead.
POLLED_PROVIDERS = frozenset({"caldav"})


class ProviderSource(Protocol):
    """Hands out the provider of a resource; ``forget`` drops a cached one."""

    def get(self, resource_id: str, resource: Resource) -> Provider: ...

    def forget(self, resource_id: str) -> None: ...

    def adopt(self, resource_id: str, resource: Resource) -> None:
        """``resource`` now holds credentials the cached provider rotated itself: keep it."""
        ...


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
    ) -> None:
        self.settings = settings
        self.resources = resources
        self.sync_state = sync_state
        self.channels = channels
        self.timers = timers
        self.outbox = outbox
        self.providers = providers
        self.clock = clock
        self.rng = rng or random.Random()
        self._on_timer = on_timer
        self._signer = WebhookSigner(settings.secret_key)
        self._secrets = SecretBox(settings.secret_key)
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._deferred_until: dict[str, float] = {}
        # Resources whose work the bulk lane is doing now, and the live notifications
        # for them that arrived meanwhile (handled by the bulk lane once it is done).
        self._bulk_running: set[str] = set()
        self._behind_bulk: defaultdict[str, list[Notification]] = defaultdict(list)

    # -- helpers -----------------------------------------------------------------

    def window(self, at: float) -> Window:
        now = datetime.fromtimestamp(at, UTC)
        return Window(
            start=now - timedelta(days=self.settings.horizon_past_days),
            end=now + timedelta(days=self.settings.horizon_future_days),
        )

    async def _status(self, resource_id: str, status: str, detail: str = "", **data: Any) -> None:
        event = StatusEvent(
            resource_id=resource_id,
            status=status,
            at=self.clock(),
            detail=detail,
            data=data or None,
        )
        await self.outbox.status(event)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def _set_timer(self, key: str, timer: Timer) -> None:
        self.timers[key] = timer
        if self._on_timer is not None:
            self._on_timer(key, timer)

    def _schedule_reconcile(self, rid: str, provider: str) -> None:
        period = self.settings.reconcile_period
        spread = period * self.settings.reconcile_jitter
        due = self.clock() + period + self.rng.uniform(-spread, spread)
        notification = Notification(
            provider=provider,
            resource_id=rid,
            reason=Reason.RECONCILE.value,
            received_at=due,
            full=True,
            timer_key=reconcile_timer_key(rid),
        )
        self._set_timer(reconcile_timer_key(rid), Timer(due_at=due, notification=notification))

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
        key = notification.timer_key
        if key and key.startswith(("retry:", "renew:", "poll:")):
            self.timers.pop(key, None)  # released: the timer is done
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
        rid = notification.resource_id
        resource = self.resources.get(rid)
        if resource is None:
            log.info("notification for unknown resource %s ignored", rid)
            return
        state = self.sync_state.get(rid) or SyncState()
        if resource.state == "removed":
            await self._retire(rid, resource, state)
            return
        if resource.state != "active":
            log.info("resource %s is %s; not calling the provider", rid, resource.state)
            return
        if notification.reason == Reason.RECONCILE.value:
            self._schedule_reconcile(rid, resource.provider)  # the next one, whatever happens now
        if notification.lifecycle == "subscriptionRemoved":
            self.channels.pop(rid, None)  # gone at the provider: the bulk lane recreates it
        now = self.clock()
        if lane is Lane.LIVE and (
            notification.reason == Reason.RENEW.value
            or notification.lifecycle == "reauthorizationRequired"
        ):
            if now < state.not_before:
                await self._defer(notification, state.not_before, lane)
            else:
                await self._renew(notification, resource, state)
            return
        if lane is Lane.LIVE:
            if await self._message_gap(rid, notification):
                return
            if notification.received_at < state.fetch_started_at:
                return  # the last fetch started after this push arrived: already covered
            if state.cursor is None or state.cursor_expired_at:
                # Never synced, or the cursor expired and a full resync is queued in
                # the bulk lane: a full listing is bulk work. Duplicates are cheap,
                # the bulk lane skips those a sync already covered.
                await self.outbox.notify(notification.derive(full=True, timer_key=None))
                return
        elif (
            notification.reason == Reason.PUSH.value
            and notification.received_at < state.fetch_started_at
        ):
            return  # a push handed over by the live lane, covered by a sync since
        if now < state.not_before:
            await self._defer(notification, state.not_before, lane)
            return
        started = now
        cursor = None if notification.full else state.cursor
        provider: Provider | None = None
        progress: dict[str, str] = {}
        try:
            provider = self.providers.get(rid, resource)
            if lane is Lane.BULK and resource.provider not in POLLED_PROVIDERS:
                await self._ensure_channel(rid, resource, provider)
            if cursor is None:
                await self._status(rid, "resync_started", reason=notification.reason)
            outcome = await sync_resource(
                provider,
                resource_id=rid,
                cursor=cursor,
                index=dict(state.index or {}),
                window=self.window(started),
                emit=partial(self.outbox.events, rid),
                now=self._now,
                caused_at=datetime.fromtimestamp(notification.received_at, UTC),
                # A full listing in the live lane would hold up every other resource's
                # pushes for as long as it runs: the bulk lane does it instead.
                full_on_expiry=lane is Lane.BULK,
                progress=progress,
            )
        except CursorExpired as exc:
            resource = self._keep_rotated(rid, resource, provider)
            if lane is Lane.BULK or cursor is None:
                await self._failed(notification, resource, self._keep_progress(rid, progress), exc)
                return
            await self._hand_over_resync(notification, progress, exc)
            return
        except CalsyncError as exc:
            resource = self._keep_rotated(rid, resource, provider)
            await self._failed(notification, resource, self._keep_progress(rid, progress), exc)
            return
        except Exception as exc:  # a bug must not kill the worker or block the partition
            log.exception("sync of %s failed unexpectedly", rid)
            resource = self._keep_rotated(rid, resource, provider)
            internal = InternalError(f"internal error: {exc!r}")
            await self._failed(notification, resource, self._keep_progress(rid, progress), internal)
            return
        self._keep_rotated(rid, resource, provider)
        poll_interval = 0.0
        if resource.provider in POLLED_PROVIDERS:
            poll_interval = self._schedule_poll(
                rid, resource, state.poll_interval, changed=bool(outcome.upserts or outcome.deletes)
            )
        current = self.sync_state.get(rid) or state  # _ensure_channel may have written it
        self.sync_state[rid] = SyncState(
            cursor=outcome.cursor,
            index=outcome.index,
            fetch_started_at=started,
            synced_at=self.clock(),
            time_zone=outcome.time_zone,
            fetches=state.fetches + 1,
            poll_interval=poll_interval,
            subscribe_failures=current.subscribe_failures,
            subscribe_retry_at=current.subscribe_retry_at,
        )
        self._deferred_until.pop(rid, None)
        for item in outcome.quarantined:
            await self._status(rid, "quarantined", item.reason, item=item.item_hash)
        counts = {"upserts": outcome.upserts, "deletes": outcome.deletes}
        if outcome.full:
            if notification.reason != Reason.RECONCILE.value:
                self._schedule_reconcile(rid, resource.provider)
            expired = outcome.cursor_expired or bool(state.cursor_expired_at)
            await self._status(rid, "resync_finished", cursor_expired=expired, counts=counts)
        await self._status(rid, "synced", counts=counts, lane=lane.value)

    def _keep_progress(self, rid: str, progress: dict[str, str]) -> SyncState:
        """After a failed walk, store the index as of its last acknowledged emission
        (with the old cursor), so the retry does not emit those changes again.

        Safe with any cursor: the index is exactly what consumers were told, and a
        full listing still deletes what it does not find, once it completes.
        """
        state = self.sync_state.get(rid) or SyncState()
        if progress != (state.index or {}):
            state = state.derive(index=dict(progress))
            self.sync_state[rid] = state
        return state

    async def _hand_over_resync(
        self, notification: Notification, progress: dict[str, str], exc: CursorExpired
    ) -> None:
        """The live lane found the cursor expired: the full resync goes to the bulk lane.

        The old cursor stays (only a completed resync replaces it); the index keeps what
        was emitted before the expiry, and the resync diffs against it, emitting deletes
        for whatever vanished. ``cursor_expired_at`` sends further pushes the same way.
        """
        rid = notification.resource_id
        state = self._keep_progress(rid, progress)
        self.sync_state[rid] = state.derive(cursor_expired_at=self.clock())
        await self.outbox.notify(notification.derive(full=True, timer_key=None))
        await self._status(rid, "cursor_expired", str(exc), handed_to=Lane.BULK.value)

    async def on_rotated(self, rid: str, credentials: dict[str, str]) -> None:
        """A provider rotated its credentials mid-request: store them now, twice over.

        The table write serves this worker at once; the ``rotate`` command on the
        commands topic (acknowledged before the request goes on) survives a crash
        that loses the table write, and is applied again on replay.
        """
        encrypted = {k: self._secrets.encrypt(v) for k, v in credentials.items()}
        await self.outbox.command(
            Command(
                kind=CommandKind.ROTATE.value,
                resource_id=rid,
                issued_at=self.clock(),
                credentials=encrypted,
            )
        )
        resource = self.resources.get(rid)
        if resource is not None:
            updated = resource.derive(credentials={**resource.credentials, **encrypted})
            self.resources[rid] = updated
            self.providers.adopt(rid, updated)

    def _keep_rotated(self, rid: str, resource: Resource, provider: Provider | None) -> Resource:
        """Store credentials the provider rotated (Microsoft refresh tokens), encrypted.

        Called whether the sync succeeded or not: a rotated refresh token replaced the
        old one at the provider, so losing it would lose the grant.
        """
        rotated = provider.rotated_credentials() if provider is not None else None
        if not rotated:
            return resource
        credentials = dict(resource.credentials)
        credentials.update({k: self._secrets.encrypt(v) for k, v in rotated.items()})
        updated = resource.derive(credentials=credentials)
        self.resources[rid] = updated
        self.providers.adopt(rid, updated)
        return updated

    async def _renew(
        self, notification: Notification, resource: Resource, state: SyncState
    ) -> None:
        """Renew the resource's subscription (Graph) or replace its channel (Google)."""
        rid = notification.resource_id
        channel = self.channels.get(rid)
        provider: Provider | None = None
        try:
            provider = self.providers.get(rid, resource)
            if channel is None or not provider.renewable:
                await self._ensure_channel(rid, resource, provider, force=True)
            else:
                old = Subscription(
                    channel.channel_id, channel.provider_resource_id, channel.expires_at_ms
                )
                try:
                    sub = await provider.renew(old, self._subscription_ttl(resource))
                except ProviderRejected as exc:
                    if exc.status != 404:
                        await self._subscription_failed(rid, resource, f"could not renew: {exc}")
                        return
                    self.channels.pop(rid, None)  # gone: create a new one
                    await self._ensure_channel(rid, resource, provider, force=True)
                else:
                    self.channels[rid] = channel.derive(expires_at_ms=sub.expires_at_ms)
                    self._schedule_renewal(rid, resource, sub.expires_at_ms)
                    self._subscription_ok(rid)
                    await self._status(rid, "subscription_renewed", expires_at_ms=sub.expires_at_ms)
        except CalsyncError as exc:
            resource = self._keep_rotated(rid, resource, provider)
            await self._failed(notification, resource, state, exc)
            return
        self._keep_rotated(rid, resource, provider)

    def _subscription_ttl(self, resource: Resource) -> int:
        if resource.provider == "microsoft":
            return self.settings.graph_subscription_minutes * 60
        return self.settings.google_channel_ttl

    def _schedule_renewal(self, rid: str, resource: Resource, expires_at_ms: int) -> None:
        """Renew ``renew_fraction`` of the lifetime before expiry, jittered by a tenth of that."""
        now = self.clock()
        remaining = expires_at_ms / 1000 - now
        lead = remaining * self.settings.renew_fraction
        due = now + remaining - lead + self.rng.uniform(-lead / 10, lead / 10)
        notification = Notification(
            provider=resource.provider,
            resource_id=rid,
            reason=Reason.RENEW.value,
            received_at=due,
            timer_key=renew_timer_key(rid),
        )
        self._set_timer(renew_timer_key(rid), Timer(due_at=due, notification=notification))

    def _schedule_poll(
        self, rid: str, resource: Resource, previous: float, *, changed: bool
    ) -> float:
        """Poll again soon after a change, backing off (doubling) while nothing changes;
        jittered by a tenth either way. Returns the interval used."""
        low, high = self.settings.poll_min_interval, self.settings.poll_max_interval
        interval = low if changed or not previous else min(high, max(low, previous * 2))
        due = self.clock() + interval * self.rng.uniform(0.9, 1.1)
        notification = Notification(
            provider=resource.provider,
            resource_id=rid,
            reason=Reason.POLL.value,
            received_at=due,
            timer_key=poll_timer_key(rid),
        )
        self._set_timer(poll_timer_key(rid), Timer(due_at=due, notification=notification))
        return interval

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
            await self._status(
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
        if isinstance(exc, AuthorizationRevoked):
            self.resources[rid] = resource.derive(state="reauth_required")
            self.providers.forget(rid)
            await self._status(rid, "reauth_required", str(exc))
            return
        attempt = notification.attempt + 1
        if getattr(exc, "retriable", False) and attempt < self.settings.max_attempts:
            requested = exc.retry_after if isinstance(exc, RateLimited) else None
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
                await self._status(rid, "rate_limited", str(exc), retry_after=requested)
            await self._status(rid, "retry_scheduled", str(exc), attempt=attempt, delay=delay)
            return
        await self.outbox.deadletter(
            rid, {"notification": notification.asdict(), "error": str(exc), "attempt": attempt}
        )
        await self._status(rid, "failed", str(exc), attempt=attempt)

    async def _retire(self, rid: str, resource: Resource, state: SyncState) -> None:
        """Emit deletes for everything known of a removed resource and forget it."""
        if state.index:
            now = self._now()
            origin = PROVIDER_ORIGINS[resource.provider]
            await self.outbox.events(
                rid,
                [
                    UnifiedEvent.delete(origin, rid, key, emitted_at=now)
                    for key in sorted(state.index)
                ],
            )
        self.sync_state.pop(rid, None)
        self.timers.pop(reconcile_timer_key(rid), None)
        self.timers.pop(renew_timer_key(rid), None)
        self.timers.pop(poll_timer_key(rid), None)

    # -- retries -----------------------------------------------------------------

    async def on_retry(self, envelope: RetryEnvelope) -> None:
        """Keep the envelope as a timer; the dispatcher releases it when it is due.

        Acking the envelope right after this is safe: the timer is in a changelogged
        table, so a worker that dies while the retry waits loses nothing.
        """
        key = retry_timer_key(envelope.key or uuid.uuid4().hex)
        notification = envelope.notification.derive(timer_key=key)
        self._set_timer(key, Timer(due_at=envelope.due_at, notification=notification))

    # -- commands ----------------------------------------------------------------

    async def on_command(self, command: Command) -> None:
        async with self._locks[command.resource_id]:
            await self._command(command)

    async def _command(self, command: Command) -> None:
        rid = command.resource_id
        kind = command.kind
        if kind == CommandKind.REGISTER.value:
            await self._register(command)
        elif kind == CommandKind.REMOVE.value:
            resource = self.resources.get(rid)
            if resource is None:
                return
            await self._unsubscribe(rid, resource)
            self.resources[rid] = resource.derive(state="removed")
            self.providers.forget(rid)
            await self.outbox.notify(self._command_notification(command, resource.provider))
            await self._status(rid, "removed")
        elif kind == CommandKind.ROTATE.value:
            await self._rotate(command)
        elif kind == CommandKind.RESYNC.value:
            resource = self.resources.get(rid)
            if resource is not None:
                notification = self._command_notification(command, resource.provider, full=True)
                await self.outbox.notify(notification)
        else:
            log.warning("unknown command %r for %s ignored", kind, rid)

    def _command_notification(
        self, command: Command, provider: str, *, full: bool = False
    ) -> Notification:
        return Notification(
            provider=provider,
            resource_id=command.resource_id,
            reason=Reason.COMMAND.value,
            received_at=command.issued_at,
            full=full,
        )

    async def _rotate(self, command: Command) -> None:
        """Apply rotated credentials (again, after a crash); a resource marked
        ``reauth_required`` because it was replayed with the stale token recovers."""
        rid = command.resource_id
        resource = self.resources.get(rid)
        if resource is None or not command.credentials:
            return
        credentials = {**resource.credentials, **command.credentials}
        if credentials != resource.credentials:
            resource = resource.derive(credentials=credentials)
            self.resources[rid] = resource
            self.providers.forget(rid)
        if resource.state == "reauth_required":
            self.resources[rid] = resource.derive(state="active")
            await self._status(rid, "recovered", "rotated credentials applied")
            await self.outbox.notify(
                self._command_notification(command, resource.provider, full=True)
            )

    async def _register(self, command: Command) -> None:
        """Store the resource; the bulk lane subscribes it and runs the first full sync."""
        rid = command.resource_id
        if not (command.provider and command.calendar_id and command.credentials):
            await self._status(rid, "failed", "register command without provider or credentials")
            return
        previous = self.resources.get(rid)
        resource = Resource(
            provider=command.provider,
            calendar_id=command.calendar_id,
            registered_at=command.issued_at,
            credentials=dict(command.credentials),
            time_zone=command.time_zone,
            busy_policy=dict(command.busy_policy) if command.busy_policy is not None else None,
            own_address=command.own_address,
        )
        self.resources[rid] = resource
        self.providers.forget(rid)
        if previous is not None:
            await self._unsubscribe_previous(rid, previous, resource)
        state = self.sync_state.get(rid)
        if state is not None and (state.not_before or state.subscribe_retry_at):
            # New credentials may fix what held or refused the old ones: try at once.
            self.sync_state[rid] = state.derive(
                not_before=0.0, subscribe_failures=0, subscribe_retry_at=0.0
            )
        if previous is not None and previous.state == "reauth_required":
            await self._status(rid, "recovered", "new credentials")
        await self.outbox.notify(self._command_notification(command, resource.provider, full=True))
        await self._status(
            rid, "registered", provider=resource.provider, issued_at=command.issued_at
        )

    async def _ensure_channel(
        self, rid: str, resource: Resource, provider: Provider, *, force: bool = False
    ) -> None:
        """Create a push channel if the resource has none, it is about to expire, or
        ``force``; an old channel is stopped once the new one exists (the overlap is
        harmless: pushes are pings). Retriable failures propagate (the work is retried
        as a whole); a refusal schedules another attempt with a doubling delay (see
        :meth:`_subscription_failed`), and until it is due only ``force`` tries sooner.
        """
        channel = self.channels.get(rid)
        margin_ms = CHANNEL_RENEW_MARGIN * 1000
        if (
            not force
            and channel is not None
            and channel.expires_at_ms > self.clock() * 1000 + margin_ms
        ):
            return
        state = self.sync_state.get(rid)
        if not force and state is not None and state.subscribe_retry_at > self.clock():
            return  # refused lately: the renew timer tries again when the backoff ends
        channel_id = f"cs-{uuid.uuid4().hex}"
        base = self.settings.public_url.rstrip("/")
        lifecycle_address: str | None = None
        if resource.provider == "microsoft":
            query = f"?resource={quote(rid, safe='')}"
            address = f"{base}/webhooks/microsoft{query}"
            lifecycle_address = f"{base}/webhooks/microsoft/lifecycle{query}"
            token = self._signer.client_state(rid)
        else:
            address = f"{base}/webhooks/{resource.provider}"
            # the token lapses with the channel: a replay of it outlives neither
            expires_at_ms = int((self.clock() + self._subscription_ttl(resource)) * 1000)
            token = self._signer.channel_token(channel_id, rid, expires_at_ms=expires_at_ms)
        try:
            sub = await provider.subscribe(
                channel_id,
                address,
                token,
                self._subscription_ttl(resource),
                lifecycle_address=lifecycle_address,
            )
        except ProviderError as exc:
            if exc.retriable or isinstance(exc, AuthorizationRevoked):
                raise
            await self._subscription_failed(rid, resource, f"could not subscribe: {exc}")
            return
        self.channels[rid] = Channel(
            channel_id=sub.channel_id,
            provider_resource_id=sub.provider_resource_id,
            expires_at_ms=sub.expires_at_ms,
            created_at=self.clock(),
        )
        self._schedule_renewal(rid, resource, sub.expires_at_ms)
        self._subscription_ok(rid)
        await self._status(rid, "subscription_renewed", expires_at_ms=sub.expires_at_ms)
        if channel is not None and channel.channel_id != sub.channel_id:
            await self._stop_channel(rid, provider, channel)

    async def _subscription_failed(self, rid: str, resource: Resource, detail: str) -> None:
        """The provider refused a subscription (a failed validation handshake, an
        expiry it would not accept, ...): try again after a doubling delay, capped.

        A refusal is not retriable in the usual sense (the same request fails the same
        way at once) but its cause is often passing: the webhook endpoint was briefly
        unreachable, clocks disagreed. The count of consecutive failures and the next
        attempt's time live in ``sync_state`` (they survive a crash and show in the
        resource's description); the attempt itself is a ``renew:`` timer, which the
        live lane handles like any renewal.
        """
        state = self.sync_state.get(rid) or SyncState()
        failures = state.subscribe_failures + 1
        delay = doubling_delay(
            failures,
            base=self.settings.subscribe_retry_base_delay,
            cap=self.settings.subscribe_retry_max_delay,
            rng=self.rng,
        )
        due = self.clock() + delay
        self.sync_state[rid] = state.derive(subscribe_failures=failures, subscribe_retry_at=due)
        notification = Notification(
            provider=resource.provider,
            resource_id=rid,
            reason=Reason.RENEW.value,
            received_at=due,
            timer_key=renew_timer_key(rid),
        )
        self._set_timer(renew_timer_key(rid), Timer(due_at=due, notification=notification))
        await self._status(rid, "subscription_lost", detail, attempt=failures, next_attempt_at=due)

    def _subscription_ok(self, rid: str) -> None:
        """A subscription was created or renewed: forget earlier refusals."""
        state = self.sync_state.get(rid)
        if state is not None and (state.subscribe_failures or state.subscribe_retry_at):
            self.sync_state[rid] = state.derive(subscribe_failures=0, subscribe_retry_at=0.0)

    async def _unsubscribe(self, rid: str, resource: Resource) -> None:
        channel = self.channels.pop(rid, None)
        if channel is None:
            return
        try:
            provider = self.providers.get(rid, resource)
        except CalsyncError:
            return
        await self._stop_channel(rid, provider, channel)

    async def _unsubscribe_previous(self, rid: str, previous: Resource, current: Resource) -> None:
        """Stop the channel of a resource registered again, with the new credentials
        first: the old ones are often why it was registered again (a revoked grant),
        and a channel left running pings until it expires. The old ones are the
        fallback (a registration that moved to another provider or account)."""
        channel = self.channels.pop(rid, None)
        if channel is None:
            return
        candidates = [current] if current.provider == previous.provider else []
        if previous.state == "active" and previous.credentials != current.credentials:
            candidates.append(previous)
        for candidate in candidates:
            try:
                provider = self.providers.get(rid, candidate)
            except CalsyncError:
                continue
            if await self._stop_channel(rid, provider, channel):
                break
        self.providers.forget(rid)  # the next get builds the provider of ``current``

    async def _stop_channel(self, rid: str, provider: Provider, channel: Channel) -> bool:
        """Stop ``channel``; whether the provider confirmed (failures are only logged)."""
        try:
            await provider.unsubscribe(
                Subscription(
                    channel.channel_id, channel.provider_resource_id, channel.expires_at_ms
                )
            )
        except ProviderError as exc:
            log.info("stopping channel %s of %s failed: %s", channel.channel_id, rid, exc)
            return False
        return True
