"""SyncService over dict tables, the list outbox and the in-memory provider."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from calsync.agents.service import SyncService
from calsync.crypto import SecretBox
from calsync.errors import AuthorizationRevoked, ProviderError, RateLimited
from calsync.model import ChangeKind, Occurrence, StatusIntent, Transparency
from calsync.providers.base import ChangePage, Provider, Window
from calsync.streams.records import Command, Notification
from calsync.tables.records import Channel, Resource, SyncState
from calsync.testing.memory_provider import MemoryProvider
from calsync.testing.outbox import ListOutbox
from tests.conftest import SettingsFactory

NOW = datetime.now(UTC).replace(microsecond=0)


class FlakyProvider(MemoryProvider):
    """Raises the queued errors on the next fetches, then behaves."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[ProviderError] = []

    async def fetch_changes(self, cursor: str | None, window: Window) -> AsyncIterator[ChangePage]:
        if self.errors:
            self.fetches += 1
            raise self.errors.pop(0)
        async for page in super().fetch_changes(cursor, window):
            yield page


class Source:
    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    def get(self, resource_id: str, resource: Resource) -> Provider:
        return self.provider

    def forget(self, resource_id: str) -> None:
        pass


def occ(n: int) -> Occurrence:
    start = NOW + timedelta(days=1, hours=n)
    return Occurrence(
        f"ev{n}",
        start,
        start + timedelta(minutes=30),
        False,
        Transparency.OPAQUE,
        StatusIntent.BUSY,
    )


@pytest.fixture
def world(make_settings: SettingsFactory):
    provider = FlakyProvider()
    outbox = ListOutbox()
    clock = [NOW.timestamp()]
    service = SyncService(
        make_settings(),
        resources={},
        sync_state={},
        channels={},
        outbox=outbox,
        providers=Source(provider),
        clock=lambda: clock[0],
    )
    return service, provider, outbox, clock


def register(service: SyncService) -> Command:
    box = SecretBox(service.settings.secret_key)
    return Command(
        kind="register",
        resource_id="r1",
        issued_at=NOW.timestamp(),
        provider="google",
        calendar_id="primary",
        credentials={"refresh_token": box.encrypt("rt")},
    )


def push(at: float) -> Notification:
    return Notification(provider="google", resource_id="r1", reason="push", received_at=at)


async def test_register_subscribes_and_asks_for_a_full_sync(world) -> None:
    service, provider, outbox, _ = world
    await service.on_command(register(service))
    assert isinstance(service.channels["r1"], Channel)
    assert len(provider.subscriptions) == 1
    assert outbox.notifications[-1].full and outbox.notifications[-1].reason == "command"
    assert "subscription_renewed" in outbox.status_names()


async def test_push_burst_costs_at_most_two_fetches(world) -> None:
    service, provider, outbox, clock = world
    await service.on_command(register(service))
    provider.put(occ(1))
    await service.on_notification(outbox.notifications[-1])
    assert provider.fetches == 1
    burst = [push(clock[0] + 0.1 * i) for i in range(10)]  # all arrive while fetch 2 runs
    clock[0] += 0.05
    for n in burst:
        await service.on_notification(n)
        clock[0] += 1
    assert provider.fetches <= 3  # the full sync plus at most two for the burst


async def test_cursor_is_stored_only_after_emission(world) -> None:
    service, provider, outbox, _ = world
    await service.on_command(register(service))
    for n in range(5):
        provider.put(occ(n))

    async def broken(resource_id, events):
        raise RuntimeError("broker down")

    outbox.events = broken  # type: ignore[method-assign]
    await service.on_notification(outbox.notifications[-1])
    assert "r1" not in service.sync_state  # nothing stored: the replay starts over
    assert outbox.retries and not outbox.dead  # retried, not given up


async def test_rate_limit_becomes_a_retry_with_the_requested_delay(world) -> None:
    service, provider, outbox, clock = world
    await service.on_command(register(service))
    provider.errors.append(RateLimited("slow down", retry_after=7.5, status=429))
    await service.on_notification(outbox.notifications[-1])
    (envelope,) = outbox.retries
    assert envelope.due_at == pytest.approx(clock[0] + 7.5)
    assert envelope.attempt == 1 and envelope.notification.attempt == 1
    assert {"rate_limited", "retry_scheduled"} <= set(outbox.status_names())


async def test_revoked_grant_stops_provider_calls(world) -> None:
    service, provider, outbox, clock = world
    await service.on_command(register(service))
    provider.errors.append(AuthorizationRevoked("invalid_grant"))
    await service.on_notification(outbox.notifications[-1])
    assert service.resources["r1"].state == "reauth_required"
    fetches = provider.fetches
    await service.on_notification(push(clock[0] + 5))
    assert provider.fetches == fetches
    await service.on_command(register(service))
    assert "recovered" in outbox.status_names()
    await service.on_notification(outbox.notifications[-1])
    assert provider.fetches == fetches + 1


async def test_remove_emits_deletes_for_everything_known(world) -> None:
    service, provider, outbox, _ = world
    await service.on_command(register(service))
    provider.put(occ(1))
    provider.put(occ(2))
    await service.on_notification(outbox.notifications[-1])
    await service.on_command(Command(kind="remove", resource_id="r1", issued_at=NOW.timestamp()))
    await service.on_notification(outbox.notifications[-1])
    deletes = [e for e in outbox.emitted if e.change is ChangeKind.DELETE]
    assert {e.native_event_id for e in deletes} == {"ev1", "ev2"}
    assert provider.subscriptions == {}
    assert service.sync_state.get("r1") is None


async def test_state_survives_as_table_values(world) -> None:
    service, provider, outbox, _ = world
    await service.on_command(register(service))
    provider.put(occ(1))
    await service.on_notification(outbox.notifications[-1])
    state = service.sync_state["r1"]
    assert isinstance(state, SyncState)
    assert SyncState.loads(state.dumps()) == state
