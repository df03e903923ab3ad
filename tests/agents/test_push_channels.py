"""Google channel pushes in the sync service: only the current channel counts, and
message numbers are believed only within a bound."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from calsync.agents.service import Lane, SyncService
from calsync.crypto import SecretBox, WebhookSigner
from calsync.providers.base import Subscription
from calsync.streams.records import Command, Notification
from calsync.testing.memory_provider import MemoryProvider
from calsync.testing.outbox import ListOutbox
from tests.agents.test_service import Source
from tests.conftest import SettingsFactory

NOW = datetime.now(UTC).replace(microsecond=0).timestamp()


class TokenKeepingProvider(MemoryProvider):
    """Remembers the token each channel was made with, as Google does."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: dict[str, str] = {}

    async def subscribe(  # type: ignore[override]
        self, channel_id: str, address: str, token: str, ttl_seconds: int, **kwargs: object
    ) -> Subscription:
        self.tokens[channel_id] = token
        return await super().subscribe(channel_id, address, token, ttl_seconds, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def synced(make_settings: SettingsFactory):  # type: ignore[no-untyped-def]
    provider = TokenKeepingProvider()
    outbox = ListOutbox()
    clock = [NOW]
    service = SyncService(
        make_settings(),
        resources={},
        sync_state={},
        channels={},
        timers={},
        outbox=outbox,
        providers=Source(provider),
        clock=lambda: clock[0],
    )
    box = SecretBox(service.settings.secret_key)
    await service.on_command(
        Command(
            kind="register",
            resource_id="r1",
            issued_at=NOW,
            provider="google",
            calendar_id="primary",
            credentials={"refresh_token": box.encrypt("rt")},
        )
    )
    await deliver(service, outbox.notifications[-1])
    assert provider.fetches == 1
    return service, provider, outbox, clock


async def deliver(service: SyncService, notification: Notification) -> None:
    for lane in Lane:
        await service.on_notification(notification, lane)


def numbered(clock: list[float], channel_id: str, number: int) -> Notification:
    clock[0] += 1
    return Notification(
        provider="google",
        resource_id="r1",
        reason="push",
        received_at=clock[0] - 0.5,
        channel_id=channel_id,
        message_number=number,
    )


async def test_pushes_of_a_replaced_channel_cost_nothing(synced) -> None:  # type: ignore[no-untyped-def]
    service, provider, outbox, clock = synced
    old = service.channels["r1"].channel_id
    await deliver(service, numbered(clock, old, 5))
    assert provider.fetches == 2
    await service.subscriptions.ensure("r1", service.resources["r1"], provider, force=True)
    assert service.channels["r1"].channel_id != old
    sent = len(outbox.notifications)
    for number in (6, 5000, 2**53):  # a replayed token, with any number
        await deliver(service, numbered(clock, old, number))
    assert provider.fetches == 2  # no fetch
    assert len(outbox.notifications) == sent  # no reconciliation
    await deliver(service, numbered(clock, "cs-never-made", 7))
    assert provider.fetches == 2


async def test_pushes_without_a_channel_are_dropped(synced) -> None:  # type: ignore[no-untyped-def]
    service, provider, _, clock = synced
    channel_id = service.channels.pop("r1").channel_id
    await deliver(service, numbered(clock, channel_id, 5))
    assert provider.fetches == 1


async def test_an_absurd_number_neither_reconciles_nor_silences_the_channel(synced) -> None:  # type: ignore[no-untyped-def]
    service, _, outbox, clock = synced
    channel_id = service.channels["r1"].channel_id
    await deliver(service, numbered(clock, channel_id, 5))
    await deliver(service, numbered(clock, channel_id, 2**63 - 1))
    assert service.channels["r1"].last_message_number == 5
    assert not any(n.reason == "reconcile" for n in outbox.notifications)
    # gap detection still works for the channel's real numbers
    gap = service.settings.google_message_gap
    await deliver(service, numbered(clock, channel_id, 5 + gap + 1))
    assert outbox.notifications[-1].reason == "reconcile"


async def test_the_first_number_is_bounded_too(synced) -> None:  # type: ignore[no-untyped-def]
    service, _, _, clock = synced
    channel_id = service.channels["r1"].channel_id
    limit = service.settings.google_message_jump_limit
    await deliver(service, numbered(clock, channel_id, limit + 1))
    assert service.channels["r1"].last_message_number == 0


async def test_the_channel_token_lapses_with_the_channel(synced) -> None:  # type: ignore[no-untyped-def]
    service, provider, _, _ = synced
    channel = service.channels["r1"]
    claim = WebhookSigner(service.settings.secret_key).verify_channel_token(
        channel.channel_id, provider.tokens[channel.channel_id]
    )
    assert claim is not None and claim.resource_id == "r1"
    ttl = service.settings.google_channel_ttl
    assert claim.expires_at_ms == int((NOW + ttl) * 1000)
    assert not claim.expired(NOW + ttl - 1) and claim.expired(NOW + ttl + 1)
