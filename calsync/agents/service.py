"""What the agents do, as plain async methods over tables and an :class:`Outbox`.

The agents in :mod:`calsync.agents.wiring` only feed records into a
:class:`SyncService`; everything here runs without Faust when handed dicts and an
outbox, which is how it is unit-tested.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Protocol

import httpx

from calsync.agents.outbox import Outbox
from calsync.crypto import SecretBox, WebhookSigner
from calsync.errors import (
    AuthorizationRevoked,
    CalsyncError,
    InternalError,
    ProviderError,
    RateLimited,
)
from calsync.model import ProviderOrigin, UnifiedEvent
from calsync.providers.base import Provider, Subscription, Window
from calsync.providers.google import GoogleProvider, GoogleTokenSource
from calsync.retry import retry_delay
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
from calsync.tables.records import Channel, Resource, SyncState

log = logging.getLogger(__name__)

_COALESCED_REASONS = frozenset({Reason.PUSH.value, Reason.POLL.value})


class ProviderSource(Protocol):
    """Hands out the provider of a resource; ``forget`` drops a cached one."""

    def get(self, resource_id: str, resource: Resource) -> Provider: ...

    def forget(self, resource_id: str) -> None: ...


class ProviderFactory:
    """Builds (and caches, per resource and credential) the provider for a resource."""

    def __init__(self, settings: Settings, client_factory: Callable[[], httpx.AsyncClient]):
        self._settings = settings
        self._secrets = SecretBox(settings.secret_key)
        self._client_factory = client_factory
        self._client: httpx.AsyncClient | None = None
        self._cache: dict[str, tuple[tuple[str, ...], Provider]] = {}

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def get(self, resource_id: str, resource: Resource) -> Provider:
        fingerprint = (
            resource.provider,
            resource.calendar_id,
            *sorted(resource.credentials.values()),
        )
        cached = self._cache.get(resource_id)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        if resource.provider != "google":
            raise CalsyncError(f"provider {resource.provider!r} is not supported")
        settings = self._settings
        tokens = GoogleTokenSource(
            refresh_token=self._secrets.decrypt(resource.credentials["refresh_token"]),
            token_url=settings.google_token_url,
            client_id=settings.google_client_id,
            client_secret=settings.google_client_secret,
        )
        provider = GoogleProvider(
            client=self._http(),
            api_url=settings.google_api_url,
            calendar_id=resource.calendar_id,
            tokens=tokens,
            time_zone=resource.time_zone,
        )
        self._cache[resource_id] = (fingerprint, provider)
        return provider

    def forget(self, resource_id: str) -> None:
        self._cache.pop(resource_id, None)

    async def aclose(self) -> None:
        self._cache.clear()
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


class SyncService:
    """Handles notifications, retries and commands for the resources a worker owns.

    Tables are keyed by resource id and co-partitioned with the topics, so only the
    worker that owns a resource's partition ever calls these for it.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        resources: MutableMapping[str, Resource],
        sync_state: MutableMapping[str, SyncState],
        channels: MutableMapping[str, Channel],
        outbox: Outbox,
        providers: ProviderSource,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.resources = resources
        self.sync_state = sync_state
        self.channels = channels
        self.outbox = outbox
        self.providers = providers
        self.clock = clock
        self.rng = rng or random.Random()
        self._signer = WebhookSigner(settings.secret_key)

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

    # -- notifications -----------------------------------------------------------

    async def on_notification(self, notification: Notification) -> None:
        """Sync the resource if this notification is not already covered.

        Never raises for provider trouble: failures become retries, dead letters
        and status events, so one resource never blocks its partition.
        """
        rid = notification.resource_id
        resource = self.resources.get(rid)
        if resource is None:
            log.info("notification for unknown resource %s ignored", rid)
            return
        state = self.sync_state.get(rid) or SyncState()
        if resource.state == "removed":
            await self._retire(rid, state)
            return
        if resource.state != "active":
            log.info("resource %s is %s; not calling the provider", rid, resource.state)
            return
        if (
            notification.reason in _COALESCED_REASONS
            and not notification.full
            and notification.received_at < state.fetch_started_at
        ):
            return  # the last fetch started after this push arrived: already covered
        started = self.clock()
        cursor = None if notification.full else state.cursor
        if cursor is None:
            await self._status(rid, "resync_started", reason=notification.reason)
        try:
            provider = self.providers.get(rid, resource)
            outcome = await sync_resource(
                provider,
                resource_id=rid,
                cursor=cursor,
                index=dict(state.index or {}),
                window=self.window(started),
                emit=partial(self.outbox.events, rid),
                now=self._now,
                caused_at=datetime.fromtimestamp(notification.received_at, UTC),
            )
        except CalsyncError as exc:
            await self._failed(notification, resource, exc)
            return
        except Exception as exc:  # a bug must not kill the worker or block the partition
            log.exception("sync of %s failed unexpectedly", rid)
            await self._failed(notification, resource, InternalError(f"internal error: {exc!r}"))
            return
        self.sync_state[rid] = SyncState(
            cursor=outcome.cursor,
            index=outcome.index,
            fetch_started_at=started,
            synced_at=self.clock(),
            time_zone=outcome.time_zone,
            fetches=state.fetches + 1,
        )
        for item in outcome.quarantined:
            await self._status(rid, "quarantined", item.reason, item=item.item_hash)
        counts = {"upserts": outcome.upserts, "deletes": outcome.deletes}
        if outcome.full:
            await self._status(
                rid, "resync_finished", cursor_expired=outcome.cursor_expired, counts=counts
            )
        await self._status(rid, "synced", counts=counts)

    async def _failed(self, notification: Notification, resource: Resource, exc: Exception) -> None:
        rid = notification.resource_id
        if isinstance(exc, AuthorizationRevoked):
            self.resources[rid] = Resource(
                provider=resource.provider,
                calendar_id=resource.calendar_id,
                registered_at=resource.registered_at,
                credentials=resource.credentials,
                time_zone=resource.time_zone,
                state="reauth_required",
            )
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
            envelope = RetryEnvelope(
                notification=notification.derive(attempt=attempt),
                attempt=attempt,
                due_at=self.clock() + delay,
                last_error=str(exc),
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

    async def _retire(self, rid: str, state: SyncState) -> None:
        """Emit deletes for everything known of a removed resource and forget it."""
        if state.index:
            now = self._now()
            await self.outbox.events(
                rid,
                [
                    UnifiedEvent.delete(ProviderOrigin.GOOGLE, rid, key, emitted_at=now)
                    for key in sorted(state.index)
                ],
            )
        if rid in self.sync_state:
            del self.sync_state[rid]

    # -- retries -----------------------------------------------------------------

    async def on_retry(self, envelope: RetryEnvelope) -> None:
        """Wait until the envelope is due, then put its notification back in line."""
        delay = envelope.due_at - self.clock()
        if delay > 0:
            await asyncio.sleep(delay)
        await self.outbox.notify(envelope.notification)

    # -- commands ----------------------------------------------------------------

    async def on_command(self, command: Command) -> None:
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

    async def _register(self, command: Command) -> None:
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
        )
        self.resources[rid] = resource
        self.providers.forget(rid)
        if previous is not None and previous.state == "reauth_required":
            await self._status(rid, "recovered", "new credentials")
        await self._subscribe(rid, resource)
        await self.outbox.notify(self._command_notification(command, resource.provider, full=True))
        await self._status(rid, "registered", provider=resource.provider)

    async def _subscribe(self, rid: str, resource: Resource) -> None:
        channel_id = f"cs-{uuid.uuid4().hex}"
        address = f"{self.settings.public_url.rstrip('/')}/webhooks/{resource.provider}"
        token = self._signer.channel_token(channel_id, rid)
        try:
            provider = self.providers.get(rid, resource)
            sub = await provider.subscribe(
                channel_id, address, token, self.settings.google_channel_ttl
            )
        except CalsyncError as exc:
            await self._status(rid, "subscription_lost", f"could not create channel: {exc}")
            return
        old = self.channels.get(rid)
        self.channels[rid] = Channel(
            channel_id=sub.channel_id,
            provider_resource_id=sub.provider_resource_id,
            expires_at_ms=sub.expires_at_ms,
            created_at=self.clock(),
        )
        await self._status(rid, "subscription_renewed", expires_at_ms=sub.expires_at_ms)
        if old is not None:
            await self._stop_channel(rid, provider, old)

    async def _unsubscribe(self, rid: str, resource: Resource) -> None:
        channel = self.channels.get(rid)
        if channel is None:
            return
        del self.channels[rid]
        try:
            provider = self.providers.get(rid, resource)
        except CalsyncError:
            return
        await self._stop_channel(rid, provider, channel)

    async def _stop_channel(self, rid: str, provider: Provider, channel: Channel) -> None:
        try:
            await provider.unsubscribe(
                Subscription(
                    channel.channel_id, channel.provider_resource_id, channel.expires_at_ms
                )
            )
        except ProviderError as exc:
            log.info("stopping channel %s of %s failed: %s", channel.channel_id, rid, exc)
