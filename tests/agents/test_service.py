"""SyncService over dict tables, the list outbox and the in-memory provider."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from calsync.agents.service import Lane, SyncService
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

    def adopt(self, resource_id: str, resource: Resource) -> None:
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
        timers={},
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


async def deliver(service: SyncService, notification: Notification) -> None:
    """What the app does: both lane agents see every notification."""
    for lane in Lane:
        await service.on_notification(notification, lane)


def push(at: float) -> Notification:
    return Notification(provider="google", resource_id="r1", reason="push", received_at=at)


async def test_register_asks_for_a_full_sync_that_subscribes(world) -> None:
    service, provider, outbox, _ = world
    await service.on_command(register(service))
    first = outbox.notifications[-1]
    assert first.full and first.reason == "command"
    await deliver(service, first)
    assert isinstance(service.channels["r1"], Channel)
    assert len(provider.subscriptions) == 1
    assert "subscription_renewed" in outbox.status_names()
    assert "reconcile:r1" in service.timers  # the next reconciliation is scheduled


async def test_push_burst_costs_at_most_two_fetches(world) -> None:
    service, provider, outbox, clock = world
    await service.on_command(register(service))
    provider.put(occ(1))
    await deliver(service, outbox.notifications[-1])
    assert provider.fetches == 1
    burst = [push(clock[0] + 0.01 * i) for i in range(10)]
    clock[0] += 1  # the burst is queued before the first of it is handled
    for n in burst:
        await deliver(service, n)
    assert provider.fetches == 2  # the full sync, then one delta covers the whole burst


async def test_lanes_split_the_work(world) -> None:
    service, provider, outbox, clock = world
    await service.on_command(register(service))
    full = outbox.notifications[-1]
    await service.on_notification(full, Lane.LIVE)
    assert provider.fetches == 0  # a full sync is bulk work
    await service.on_notification(full, Lane.BULK)
    assert provider.fetches == 1
    live = push(clock[0] + 1)
    clock[0] += 2
    await service.on_notification(live, Lane.BULK)
    assert provider.fetches == 1  # a push is live work
    await service.on_notification(live, Lane.LIVE)
    assert provider.fetches == 2


async def test_push_before_the_first_sync_becomes_bulk_work(world) -> None:
    service, provider, outbox, clock = world
    await service.on_command(register(service))
    await service.on_notification(push(clock[0] + 1), Lane.LIVE)
    assert provider.fetches == 0
    assert outbox.notifications[-1].full and outbox.notifications[-1].reason == "push"


async def test_a_hold_defers_every_request_until_the_provider_allows(world) -> None:
    service, provider, outbox, clock = world
    await service.on_command(register(service))
    await deliver(service, outbox.notifications[-1])
    provider.errors.append(RateLimited("slow down", retry_after=30.0, status=429))
    clock[0] += 1
    await deliver(service, push(clock[0] - 0.5))
    fetches = provider.fetches
    assert service.sync_state["r1"].not_before == pytest.approx(clock[0] + 30)
    for _ in range(5):  # pushes during the hold reach the provider not at all
        clock[0] += 1
        await deliver(service, push(clock[0] - 0.1))
    assert provider.fetches == fetches
    assert all(r.due_at >= service.sync_state["r1"].not_before for r in outbox.retries[1:])
    assert len(outbox.retries) == 2  # one retry, one deferral covering all five pushes
    clock[0] += 30
    await service.on_retry(outbox.retries[0])
    key = outbox.retries[0].key
    timer = service.timers[f"retry:{key}"]
    await deliver(service, timer.notification)
    assert provider.fetches == fetches + 1
    assert f"retry:{key}" not in service.timers  # consumed, cleared


async def test_message_number_jump_triggers_a_reconciliation(world) -> None:
    service, _, outbox, clock = world
    await service.on_command(register(service))
    await deliver(service, outbox.notifications[-1])
    channel = service.channels["r1"]
    gap = service.settings.google_message_gap

    def numbered(number: int) -> Notification:
        clock[0] += 1
        return push(clock[0] - 0.5).derive(channel_id=channel.channel_id, message_number=number)

    await deliver(service, numbered(5))
    await deliver(service, numbered(9))
    assert not any(n.reason == "reconcile" for n in outbox.notifications)
    await deliver(service, numbered(9 + gap + 1))
    assert outbox.notifications[-1].reason == "reconcile" and outbox.notifications[-1].full


async def test_cursor_is_stored_only_after_emission(world) -> None:
    service, provider, outbox, _ = world
    await service.on_command(register(service))
    for n in range(5):
        provider.put(occ(n))

    async def broken(resource_id, events):
        raise RuntimeError("broker down")

    outbox.events = broken  # type: ignore[method-assign]
    await deliver(service, outbox.notifications[-1])
    assert "r1" not in service.sync_state  # nothing stored: the replay starts over
    assert outbox.retries and not outbox.dead  # retried, not given up


async def test_rate_limit_becomes_a_retry_with_the_requested_delay(world) -> None:
    service, provider, outbox, clock = world
    await service.on_command(register(service))
    provider.errors.append(RateLimited("slow down", retry_after=7.5, status=429))
    await deliver(service, outbox.notifications[-1])
    (envelope,) = outbox.retries
    assert envelope.due_at == pytest.approx(clock[0] + 7.5)
    assert envelope.attempt == 1 and envelope.notification.attempt == 1
    assert {"rate_limited", "retry_scheduled"} <= set(outbox.status_names())


async def test_revoked_grant_stops_provider_calls(world) -> None:
    service, provider, outbox, clock = world
    await service.on_command(register(service))
    provider.errors.append(AuthorizationRevoked("invalid_grant"))
    await deliver(service, outbox.notifications[-1])
    assert service.resources["r1"].state == "reauth_required"
    fetches = provider.fetches
    await deliver(service, push(clock[0] + 5))
    assert provider.fetches == fetches
    await service.on_command(register(service))
    assert "recovered" in outbox.status_names()
    await deliver(service, outbox.notifications[-1])
    assert provider.fetches == fetches + 1


async def test_remove_emits_deletes_for_everything_known(world) -> None:
    service, provider, outbox, _ = world
    await service.on_command(register(service))
    provider.put(occ(1))
    provider.put(occ(2))
    await deliver(service, outbox.notifications[-1])
    await service.on_command(Command(kind="remove", resource_id="r1", issued_at=NOW.timestamp()))
    await deliver(service, outbox.notifications[-1])
    deletes = [e for e in outbox.emitted if e.change is ChangeKind.DELETE]
    assert {e.native_event_id for e in deletes} == {"ev1", "ev2"}
    assert provider.subscriptions == {}
    assert service.sync_state.get("r1") is None


async def test_state_survives_as_table_values(world) -> None:
    service, provider, outbox, _ = world
    await service.on_command(register(service))
    provider.put(occ(1))
    await deliver(service, outbox.notifications[-1])
    state = service.sync_state["r1"]
    assert isinstance(state, SyncState)
    assert SyncState.loads(state.dumps()) == state


async def test_rotated_credentials_are_stored_at_once_and_heal_a_stale_replay(world) -> None:
    service, _, outbox, _ = world
    await service.on_command(register(service))
    box = SecretBox(service.settings.secret_key)
    await service.on_rotated("r1", {"refresh_token": "rt-2"})
    stored = service.resources["r1"].credentials["refresh_token"]
    assert box.decrypt(stored) == "rt-2" and "rt-2" not in stored
    (rotate,) = outbox.commands
    assert rotate.kind == "rotate" and box.decrypt(rotate.credentials["refresh_token"]) == "rt-2"

    # a crash lost the table write; the replay used the stale token and was refused
    service.resources["r1"] = service.resources["r1"].derive(
        state="reauth_required", credentials={"refresh_token": box.encrypt("rt-1")}
    )
    await service.on_command(rotate)
    assert service.resources["r1"].state == "active"
    assert box.decrypt(service.resources["r1"].credentials["refresh_token"]) == "rt-2"
    assert "recovered" in outbox.status_names()
    assert outbox.notifications[-1].full


async def test_register_keeps_the_busy_policy(world) -> None:
    service, _, _, _ = world
    command = register(service).derive(busy_policy={"all_day_is_busy": False})
    await service.on_command(command)
    assert service.resources["r1"].busy_policy == {"all_day_is_busy": False}
    await service.on_command(register(service))
    assert service.resources["r1"].busy_policy is None
