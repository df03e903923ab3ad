"""Push subscriptions: create, renew, retry after a refusal, stop.

A channel (Google) or subscription (Graph) is created by the bulk lane before a
resource's first full sync, and whenever it is missing or near expiry; a
``renew:<resource>`` timer renews it ``renew_fraction`` of its lifetime before it
lapses. How the provider pushes (:class:`~calsync.providers.spec.PushKind`), where
its webhooks arrive and how long a subscription lives come from its
:class:`~calsync.providers.spec.ProviderSpec`.
"""

from __future__ import annotations

import logging
import uuid
from urllib.parse import quote

from calsync.agents.context import ServiceContext
from calsync.agents.timers import Scheduler
from calsync.crypto import WebhookSigner
from calsync.errors import AuthorizationRevoked, CalsyncError, ProviderError, ProviderRejected
from calsync.providers import registry
from calsync.providers.base import Provider, Subscription
from calsync.providers.spec import PushKind
from calsync.retry import doubling_delay
from calsync.tables.records import Channel, Resource, SyncState

log = logging.getLogger(__name__)

#: A channel this close to expiry (seconds) is replaced by the bulk lane.
CHANNEL_RENEW_MARGIN = 3600.0


def _subscription(channel: Channel) -> Subscription:
    return Subscription(channel.channel_id, channel.provider_resource_id, channel.expires_at_ms)


class Subscriptions:
    """The push subscriptions of the resources a worker owns (the ``channels`` table)."""

    def __init__(
        self, context: ServiceContext, scheduler: Scheduler, signer: WebhookSigner
    ) -> None:
        self._context = context
        self._scheduler = scheduler
        self._signer = signer

    def _ttl(self, resource: Resource) -> int:
        ttl = registry.spec(resource.provider).subscription_ttl
        return ttl(self._context.settings) if ttl is not None else 0

    def _push_target(
        self, rid: str, resource: Resource, channel_id: str
    ) -> tuple[str, str, str | None]:
        """Where the provider should push, the token it echoes, and the lifecycle address."""
        context = self._context
        provider_spec = registry.spec(resource.provider)
        webhook = f"{context.settings.public_url.rstrip('/')}{provider_spec.webhook_path}"
        if provider_spec.push is PushKind.SUBSCRIPTION:
            query = f"?resource={quote(rid, safe='')}"
            return (
                f"{webhook}{query}",
                self._signer.client_state(rid),
                f"{webhook}/lifecycle{query}",
            )
        # the token lapses with the channel: a replay of it outlives neither
        expires_at_ms = int((context.clock() + self._ttl(resource)) * 1000)
        token = self._signer.channel_token(channel_id, rid, expires_at_ms=expires_at_ms)
        return webhook, token, None

    async def ensure(
        self, rid: str, resource: Resource, provider: Provider, *, force: bool = False
    ) -> None:
        """Create a push channel if the resource has none, it is about to expire, or
        ``force``; an old channel is stopped once the new one exists (the overlap is
        harmless: pushes are pings). Retriable failures propagate (the work is retried
        as a whole); a refusal schedules another attempt with a doubling delay (see
        :meth:`refused`), and until it is due only ``force`` tries sooner.
        """
        context = self._context
        channel = context.channels.get(rid)
        margin_ms = CHANNEL_RENEW_MARGIN * 1000
        if (
            not force
            and channel is not None
            and channel.expires_at_ms > context.clock() * 1000 + margin_ms
        ):
            return
        state = context.sync_state.get(rid)
        if not force and state is not None and state.subscribe_retry_at > context.clock():
            return  # refused lately: the renew timer tries again when the backoff ends
        channel_id = f"cs-{uuid.uuid4().hex}"
        address, token, lifecycle_address = self._push_target(rid, resource, channel_id)
        try:
            sub = await provider.subscribe(
                channel_id, address, token, self._ttl(resource), lifecycle_address=lifecycle_address
            )
        except ProviderError as exc:
            if exc.retriable or isinstance(exc, AuthorizationRevoked):
                raise
            await self.refused(rid, resource, f"could not subscribe: {exc}")
            return
        context.channels[rid] = Channel(
            channel_id=sub.channel_id,
            provider_resource_id=sub.provider_resource_id,
            expires_at_ms=sub.expires_at_ms,
            created_at=context.clock(),
            provider=resource.provider,
        )
        await self._renewed(rid, resource, sub)
        if channel is not None and channel.channel_id != sub.channel_id:
            await self._stop(rid, provider, channel)

    async def _renewed(self, rid: str, resource: Resource, sub: Subscription) -> None:
        """A subscription was created or renewed: schedule its renewal, forget refusals."""
        context = self._context
        self._scheduler.renewal(rid, resource.provider, sub.expires_at_ms)
        state = context.sync_state.get(rid)
        if state is not None and (state.subscribe_failures or state.subscribe_retry_at):
            context.sync_state[rid] = state.derive(subscribe_failures=0, subscribe_retry_at=0.0)
        await context.status(rid, "subscription_renewed", expires_at_ms=sub.expires_at_ms)

    async def renew(self, rid: str, resource: Resource) -> None:
        """Renew the resource's subscription in place (Graph) or replace its channel
        (Google). Raises :class:`CalsyncError` for what the caller retries."""
        context = self._context
        channel = context.channels.get(rid)
        provider = context.providers.get(rid, resource)
        if channel is None or not provider.renewable:
            await self.ensure(rid, resource, provider, force=True)
            return
        try:
            sub = await provider.renew(_subscription(channel), self._ttl(resource))
        except ProviderRejected as exc:
            if exc.status != 404:
                await self.refused(rid, resource, f"could not renew: {exc}")
                return
            context.channels.pop(rid, None)  # gone: create a new one
            await self.ensure(rid, resource, provider, force=True)
            return
        context.channels[rid] = channel.derive(expires_at_ms=sub.expires_at_ms)
        await self._renewed(rid, resource, sub)

    async def refused(self, rid: str, resource: Resource, detail: str) -> None:
        """The provider refused a subscription (a failed validation handshake, an
        expiry it would not accept, ...): try again after a doubling delay, capped.

        A refusal is not retriable in the usual sense (the same request fails the same
        way at once) but its cause is often passing: the webhook endpoint was briefly
        unreachable, clocks disagreed. The count of consecutive failures and the next
        attempt's time live in ``sync_state`` (they survive a crash and show in the
        resource's description); the attempt itself is a ``renew:`` timer, which the
        live lane handles like any renewal.
        """
        context = self._context
        settings = context.settings
        state = context.sync_state.get(rid) or SyncState()
        failures = state.subscribe_failures + 1
        delay = doubling_delay(
            failures,
            base=settings.subscribe_retry_base_delay,
            cap=settings.subscribe_retry_max_delay,
            rng=context.rng,
        )
        due = context.clock() + delay
        context.sync_state[rid] = state.derive(subscribe_failures=failures, subscribe_retry_at=due)
        self._scheduler.renewal_at(rid, resource.provider, due)
        await context.status(
            rid, "subscription_lost", detail, attempt=failures, next_attempt_at=due
        )

    async def unsubscribe(self, rid: str, resource: Resource) -> None:
        """Stop the resource's channel, if it has one (failures are only logged)."""
        channel = self._context.channels.pop(rid, None)
        if channel is None:
            return
        try:
            provider = self._context.providers.get(rid, resource)
        except CalsyncError:
            return
        await self._stop(rid, provider, channel)

    async def unsubscribe_previous(self, rid: str, previous: Resource, current: Resource) -> None:
        """Stop the channel of a resource registered again, with the new credentials
        first: the old ones are often why it was registered again (a revoked grant),
        and a channel left running pings until it expires. The old ones are the
        fallback (a registration that moved to another provider or account)."""
        context = self._context
        channel = context.channels.pop(rid, None)
        if channel is None:
            return
        candidates = [current] if current.provider == previous.provider else []
        if previous.state == "active" and previous.credentials != current.credentials:
            candidates.append(previous)
        for candidate in candidates:
            try:
                provider = context.providers.get(rid, candidate)
            except CalsyncError:
                continue
            if await self._stop(rid, provider, channel):
                break
        context.providers.forget(rid)  # the next get builds the provider of ``current``

    async def _stop(self, rid: str, provider: Provider, channel: Channel) -> bool:
        """Stop ``channel``; whether the provider confirmed (failures are only logged)."""
        try:
            await provider.unsubscribe(_subscription(channel))
        except ProviderError as exc:
            log.info("stopping channel %s of %s failed: %s", channel.channel_id, rid, exc)
            return False
        return True
