"""SyncService over dict tables, the list outbox and the in-memory provider."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from calsync.agents.service import (
    MAYBE_EMITTED,
    RELEASE_INTERVAL,
    Lane,
    SyncService,
    _digest,
    lane_of,
)
from calsync.availability.index import BusyIndex, IndexCache, timeline_of
from calsync.availability.intervals import Flag
from calsync.crypto import SecretBox
from calsync.errors import (
    AuthorizationRevoked,
    CursorExpired,
    ProviderError,
    ProviderRejected,
    RateLimited,
    TokenRefreshFailed,
    TransientProviderError,
)
from calsync.model import ChangeKind, Occurrence, StatusIntent, Transparency, Window
from calsync.providers.base import ChangePage, Provider, Subscription
from calsync.streams.records import Command, Notification
from calsync.tables.records import Channel, Resource, SyncState
from calsync.testing.memory_provider import MemoryProvider
from calsync.testing.outbox import ListOutbox
from tests.conftest import SettingsFactory

NOW = datetime.now(UTC).replace(microsecond=0)


class FlakyProvider(MemoryProvider):
    """Raises the queued errors on the next fetches, then behaves.

    ``cursors`` records the cursor of every fetch (``None``: a full listing);
    ``throttle_at`` makes the next walk raise ``RateLimited`` instead of that page,
    ``expire_at`` raise ``CursorExpired`` (a 410) instead of that page;
    ``gate``, when set, holds full listings before their first page until it opens;
    ``subscribe_errors`` are raised by the next ``subscribe`` calls.
    """

    def __init__(self, *, page_size: int = 100) -> None:
        super().__init__(page_size=page_size)
        self.errors: list[ProviderError] = []
        self.cursors: list[str | None] = []
        self.throttle_at: int | None = None
        self.expire_at: int | None = None
        self.gate: asyncio.Event | None = None
        self.listing = asyncio.Event()  # set when a gated listing starts waiting
        self.subscribe_errors: list[ProviderError] = []
        self.subscribe_calls = 0

    async def fetch_changes(self, cursor: str | None, window: Window) -> AsyncIterator[ChangePage]:
        self.cursors.append(cursor)
        if self.errors:
            self.fetches += 1
            raise self.errors.pop(0)
        if cursor is None and self.gate is not None:
            self.listing.set()
            await self.gate.wait()
        throttle_at, self.throttle_at = self.throttle_at, None
        expire_at, self.expire_at = self.expire_at, None
        number = 0
        async for page in super().fetch_changes(cursor, window):
            number += 1
            if number == throttle_at:
                raise RateLimited("slow down", retry_after=5.0, status=429)
            if number == expire_at:
                raise CursorExpired("google cursor expired (410 fullSyncRequired)", status=410)
            yield page

    async def subscribe(
        self,
        channel_id: str,
        address: str,
        token: str,
        ttl_seconds: int,
        *,
        lifecycle_address: str | None = None,
    ) -> Subscription:
        self.subscribe_calls += 1
        if self.subscribe_errors:
            raise self.subscribe_errors.pop(0)
        return await super().subscribe(
            channel_id, address, token, ttl_seconds, lifecycle_address=lifecycle_address
        )


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


World = tuple[SyncService, "FlakyProvider", ListOutbox, list[float]]


@pytest.fixture
def make_world(make_settings: SettingsFactory) -> Callable[..., World]:
    """A factory: a SyncService on a FlakyProvider (``page_size``), settings overridden
    by keyword."""

    def factory(
        *, page_size: int = 100, on_recovered: Callable[[str], None] | None = None, **overrides: Any
    ) -> World:
        provider = FlakyProvider(page_size=page_size)
        outbox = ListOutbox()
        clock = [NOW.timestamp()]
        service = SyncService(
            make_settings(**overrides),
            resources={},
            sync_state={},
            channels={},
            timers={},
            outbox=outbox,
            providers=Source(provider),
            clock=lambda: clock[0],
            on_recovered=on_recovered,
            # every index kept between syncs, however small: each test checks the cache too
            busy_cache=IndexCache(min_entries=0),
        )
        return service, provider, outbox, clock

    return factory


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    return make_world()


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
    state = service.sync_state["r1"]  # no cursor, no version known: the replay starts over
    assert state.cursor is None and state.synced_at == 0
    # each id was stored as maybe emitted before the send (a failed send may still
    # land): the replay re-emits what exists and deletes what does not
    assert state.index == dict.fromkeys([f"ev{n}" for n in range(5)], MAYBE_EMITTED)
    assert state.failures == 1 and "broker down" in state.last_error  # the as_of says why
    assert outbox.retries and not outbox.dead  # retried, not given up


async def test_ids_are_stored_as_maybe_emitted_before_their_page_is_emitted(world) -> None:
    """What a worker killed in the middle of a walk leaves behind: the ids of the page it
    was emitting, so the next walk can delete those the provider deleted meanwhile."""
    service, provider, outbox, _ = world
    await service.on_command(register(service))
    for n in range(3):
        provider.put(occ(n))
    stored_at_send: list[dict[str, str]] = []
    send = outbox.events

    async def recording(resource_id, events):
        stored_at_send.append(dict(service.sync_state["r1"].index or {}))
        await send(resource_id, events)

    outbox.events = recording  # type: ignore[method-assign]
    await deliver(service, outbox.notifications[-1])
    assert stored_at_send == [dict.fromkeys(["ev0", "ev1", "ev2"], MAYBE_EMITTED)]
    # the walk that completed stored the real versions
    assert set(service.sync_state["r1"].index or {}) == {"ev0", "ev1", "ev2"}
    assert MAYBE_EMITTED not in (service.sync_state["r1"].index or {}).values()
    # the provider deletes ev1 while calsync thinks it may have emitted it: a full walk
    # from that state deletes it and re-emits the others
    service.sync_state["r1"] = service.sync_state["r1"].derive(
        cursor=None, index=dict.fromkeys(["ev0", "ev1", "ev2"], MAYBE_EMITTED)
    )
    provider.remove("ev1")
    outbox.events = send  # type: ignore[method-assign]
    before = len(outbox.emitted)
    await deliver(service, outbox.notifications[-1].derive(full=True))
    changes = {(e.native_event_id, e.change.value) for e in outbox.emitted[before:]}
    assert changes == {("ev0", "upsert"), ("ev2", "upsert"), ("ev1", "delete")}


async def test_rate_limit_becomes_a_retry_with_the_requested_delay(world) -> None:
    service, provider, outbox, clock = world
    await service.on_command(register(service))
    provider.errors.append(RateLimited("slow down", retry_after=7.5, status=429))
    await deliver(service, outbox.notifications[-1])
    (envelope,) = outbox.retries
    assert envelope.due_at == pytest.approx(clock[0] + 7.5)
    assert envelope.attempt == 1 and envelope.notification.attempt == 1
    assert {"rate_limited", "retry_scheduled"} <= set(outbox.status_names())


async def test_a_failing_token_endpoint_marks_the_credentials_refreshing_until_a_sync(
    world,
) -> None:
    service, provider, outbox, _clock = world
    await service.on_command(register(service))
    provider.errors.append(TokenRefreshFailed("token endpoint answered 503", status=503))
    await deliver(service, outbox.notifications[-1])
    retry = [s for s in outbox.statuses if s.status == "retry_scheduled"][-1]
    assert (retry.data or {}).get("credentials") == "refreshing"
    assert service.sync_state["r1"].credentials == "refreshing"
    assert service.resources["r1"].state == "active"  # nobody has to reconnect anything
    (envelope,) = outbox.retries
    await deliver(service, envelope.notification)
    assert outbox.status_names()[-1] == "synced"
    assert service.sync_state["r1"].credentials == ""


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


async def revoked_after_a_sync(
    service: SyncService, provider: FlakyProvider, outbox: ListOutbox, clock: list[float]
) -> SyncState:
    """Register r1, sync two events, then lose the grant on a push: r1 waits for a
    reconnect with its stored cursor and index. Returns that sync state."""
    await service.on_command(register(service))
    provider.put(occ(1))
    provider.put(occ(2))
    await deliver(service, outbox.notifications[-1])
    synced = service.sync_state["r1"]
    assert synced.cursor is not None
    provider.put(occ(3))  # changed while the grant was revoked
    provider.errors.append(AuthorizationRevoked("invalid_grant"))
    clock[0] += 1
    await service.on_notification(push(clock[0] - 0.5), Lane.LIVE)
    assert service.resources["r1"].state == "reauth_required"
    assert service.sync_state["r1"].cursor == synced.cursor
    return synced


def upserted(outbox: ListOutbox) -> list[str]:
    return [e.native_event_id for e in outbox.emitted if e.change is ChangeKind.UPSERT]


async def test_a_reconnect_resumes_from_the_stored_cursor(world) -> None:
    service, provider, outbox, clock = world
    synced = await revoked_after_a_sync(service, provider, outbox, clock)
    box = SecretBox(service.settings.secret_key)
    reconnect = register(service).derive(credentials={"refresh_token": box.encrypt("rt-new")})
    await service.on_command(reconnect)
    resumed = outbox.notifications[-1]
    assert not resumed.full and resumed.reason == "command"
    recovered = [s for s in outbox.statuses if s.status == "recovered"][-1]
    assert recovered.data == {"resumed": True}
    listings = full_listings(provider)
    await deliver(service, resumed)
    assert full_listings(provider) == listings  # no full listing
    assert provider.cursors[-1] == synced.cursor
    assert upserted(outbox) == ["ev1", "ev2", "ev3"]  # each once: nothing re-emitted
    assert len(provider.subscriptions) == 1  # the bulk lane subscribed it again
    assert service.resources["r1"].state == "active"


async def test_a_reconnect_with_an_expired_cursor_lists_in_full_without_duplicates(
    world,
) -> None:
    service, provider, outbox, clock = world
    await revoked_after_a_sync(service, provider, outbox, clock)
    provider.invalidate_cursors()
    provider.items.pop("ev1")  # deleted meanwhile: only a listing shows it
    await service.on_command(register(service))
    resumed = outbox.notifications[-1]
    assert not resumed.full
    listings = full_listings(provider)
    await deliver(service, resumed)
    assert full_listings(provider) == listings + 1  # the cursor expired: a full listing
    assert upserted(outbox) == ["ev1", "ev2", "ev3"]  # the index kept: no re-emission
    deletes = [e.native_event_id for e in outbox.emitted if e.change is ChangeKind.DELETE]
    assert deletes == ["ev1"]
    assert service.sync_state["r1"].cursor is not None


async def test_a_registration_that_moves_the_calendar_lists_in_full(world) -> None:
    service, provider, outbox, clock = world
    await revoked_after_a_sync(service, provider, outbox, clock)
    await service.on_command(register(service).derive(calendar_id="other"))
    assert outbox.notifications[-1].full


async def test_rotated_credentials_resume_a_synced_resource_from_its_cursor(world) -> None:
    service, provider, outbox, clock = world
    synced = await revoked_after_a_sync(service, provider, outbox, clock)
    box = SecretBox(service.settings.secret_key)
    rotate = Command(
        kind="rotate",
        resource_id="r1",
        issued_at=clock[0],
        credentials={"refresh_token": box.encrypt("rt-2")},
    )
    await service.on_command(rotate)
    assert service.resources["r1"].state == "active"
    assert not outbox.notifications[-1].full
    await deliver(service, outbox.notifications[-1])
    assert provider.cursors[-1] == synced.cursor
    assert upserted(outbox) == ["ev1", "ev2", "ev3"]


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


def full_listings(provider: FlakyProvider) -> int:
    return sum(1 for cursor in provider.cursors if cursor is None)


async def release(service: SyncService, outbox: ListOutbox, clock: list[float]) -> None:
    """Let the last retry come due, as the retry agent and the dispatcher would."""
    envelope = outbox.retries[-1]
    clock[0] = max(clock[0], envelope.due_at)
    await service.on_retry(envelope)
    await deliver(service, service.timers[f"retry:{envelope.key}"].notification)


async def test_an_expired_cursor_is_resynced_in_the_bulk_lane_not_the_live_one(world) -> None:
    service, provider, outbox, clock = world
    await service.on_command(register(service))
    for n in range(5):
        provider.put(occ(n))
    await deliver(service, outbox.notifications[-1])
    old = service.sync_state["r1"]
    provider.invalidate_cursors()
    provider.items.pop("ev1")  # deleted while the cursor was invalid: only a listing shows it
    listings = full_listings(provider)

    clock[0] += 1
    await service.on_notification(push(clock[0] - 0.5), Lane.LIVE)
    assert full_listings(provider) == listings  # the live lane did not list in full
    handed = outbox.notifications[-1]
    assert handed.full and handed.reason == "push" and lane_of(handed) is Lane.BULK
    state = service.sync_state["r1"]
    assert state.cursor == old.cursor and state.index == old.index  # nothing lost meanwhile
    assert state.cursor_expired_at and "cursor_expired" in outbox.status_names()

    # A second push meanwhile goes the same way without asking the provider again.
    fetches = provider.fetches
    clock[0] += 1
    await service.on_notification(push(clock[0] - 0.5), Lane.LIVE)
    assert provider.fetches == fetches
    again = outbox.notifications[-1]
    assert again.full and again is not handed

    await service.on_notification(handed, Lane.BULK)
    assert full_listings(provider) == listings + 1
    assert [(e.native_event_id, e.change) for e in outbox.emitted[5:]] == [
        ("ev1", ChangeKind.DELETE)
    ]
    state = service.sync_state["r1"]
    assert state.cursor != old.cursor and not state.cursor_expired_at
    finished = [s for s in outbox.statuses if s.status == "resync_finished"][-1]
    assert finished.data and finished.data["cursor_expired"]
    await service.on_notification(again, Lane.BULK)  # covered by the resync: skipped
    assert full_listings(provider) == listings + 1
    clock[0] += 1
    provider.put(occ(9))
    await service.on_notification(push(clock[0] - 0.5), Lane.LIVE)  # deltas again
    assert provider.cursors[-1] == state.cursor
    assert outbox.emitted[-1].native_event_id == "ev9"


async def test_live_pushes_do_not_wait_behind_a_bulk_resync_of_their_resource(world) -> None:
    service, provider, outbox, clock = world
    await service.on_command(register(service))
    provider.put(occ(1))
    await deliver(service, outbox.notifications[-1])
    provider.gate = asyncio.Event()
    clock[0] += 1
    resync = asyncio.ensure_future(
        service.on_notification(push(clock[0]).derive(full=True, reason="reconcile"), Lane.BULK)
    )
    await asyncio.wait_for(provider.listing.wait(), timeout=10)
    provider.put(occ(2))
    clock[0] += 1
    # Would deadlock (the listing waits for the gate) if the live lane took the lock.
    await asyncio.wait_for(service.on_notification(push(clock[0]), Lane.LIVE), timeout=10)
    assert not resync.done()
    provider.put(occ(3))  # after the listing started: only the push's delta finds it
    provider.gate.set()
    await resync
    assert provider.cursors[-1] is not None  # the bulk lane ran the push's delta afterwards
    assert {e.native_event_id for e in outbox.emitted} == {"ev1", "ev2", "ev3"}


async def test_a_throttle_mid_first_sync_does_not_re_emit(world) -> None:
    service, provider, outbox, clock = world
    provider.page_size = 50
    await service.on_command(register(service))
    for n in range(350):
        provider.put(occ(n))
    provider.throttle_at = 4  # pages 2 and 3 are one batch, still in flight: cancelled
    await deliver(service, outbox.notifications[-1])
    assert outbox.retries and len(outbox.emitted) == 50
    assert service.sync_state["r1"].cursor is None  # no cursor until the listing completes
    provider.items.pop("ev7")  # one of those already emitted vanishes meanwhile
    await release(service, outbox, clock)
    upserts = [e.native_event_id for e in outbox.emitted if e.change is ChangeKind.UPSERT]
    assert len(upserts) == len(set(upserts)) == 350  # each event once
    deletes = [e.native_event_id for e in outbox.emitted if e.change is ChangeKind.DELETE]
    assert deletes == ["ev7"]
    assert set(service.sync_state["r1"].index or {}) == set(provider.items)


async def test_a_refused_subscription_is_retried_with_a_doubling_delay(world) -> None:
    service, provider, outbox, clock = world
    base = service.settings.subscribe_retry_base_delay
    provider.subscribe_errors = [
        ProviderRejected("Subscription validation request failed.", status=400),
        ProviderRejected("Subscription expiration can only be 10080 minutes", status=400),
    ]
    await service.on_command(register(service))
    await deliver(service, outbox.notifications[-1])
    assert "r1" not in service.channels and provider.subscribe_calls == 1
    lost = [s for s in outbox.statuses if s.status == "subscription_lost"][-1]
    timer = service.timers["renew:r1"]
    assert lost.data and lost.data["next_attempt_at"] == timer.due_at
    assert base * 0.9 <= timer.due_at - clock[0] <= base * 1.1
    state = service.sync_state["r1"]
    assert state.subscribe_failures == 1 and state.subscribe_retry_at == timer.due_at
    assert state.cursor is not None  # the sync itself went ahead

    # Bulk work before the attempt is due does not try sooner.
    clock[0] += 1
    await service.on_command(Command(kind="resync", resource_id="r1", issued_at=clock[0]))
    await deliver(service, outbox.notifications[-1])
    assert provider.subscribe_calls == 1

    clock[0] = timer.due_at
    await deliver(service, timer.notification)
    assert provider.subscribe_calls == 2
    timer = service.timers["renew:r1"]
    assert 2 * base * 0.9 <= timer.due_at - clock[0] <= 2 * base * 1.1
    assert service.sync_state["r1"].subscribe_failures == 2

    clock[0] = timer.due_at
    await deliver(service, timer.notification)
    assert provider.subscribe_calls == 3 and "r1" in service.channels
    state = service.sync_state["r1"]
    assert state.subscribe_failures == 0 and state.subscribe_retry_at == 0.0
    assert service.timers["renew:r1"] != timer  # now the ordinary renewal


async def test_subscription_retries_back_off_to_the_cap(world) -> None:
    service, provider, outbox, clock = world
    cap = service.settings.subscribe_retry_max_delay
    provider.subscribe_errors = [ProviderRejected("no", status=400) for _ in range(12)]
    await service.on_command(register(service))
    await deliver(service, outbox.notifications[-1])
    for _ in range(11):
        timer = service.timers["renew:r1"]
        clock[0] = timer.due_at
        await deliver(service, timer.notification)
    delay = service.timers["renew:r1"].due_at - clock[0]
    assert cap * 0.9 <= delay <= cap * 1.1
    assert not outbox.dead  # never given up


class Grants:
    """Providers per credential over one provider-side store of channels: a revoked
    grant cannot stop a channel, as at Google."""

    def __init__(self, service_box: SecretBox) -> None:
        self.box = service_box
        self.channels: dict[str, Subscription] = {}
        self.revoked: set[str] = set()
        self.providers: dict[str, MemoryProvider] = {}

    def get(self, resource_id: str, resource: Resource) -> Provider:
        token = self.box.decrypt(resource.credentials["refresh_token"])
        provider = self.providers.get(token)
        if provider is None:
            provider = self.providers[token] = GrantProvider(self, token)
        return provider

    def forget(self, resource_id: str) -> None:
        pass

    def adopt(self, resource_id: str, resource: Resource) -> None:
        pass


class GrantProvider(MemoryProvider):
    def __init__(self, grants: Grants, token: str) -> None:
        super().__init__()
        self.grants, self.token = grants, token
        self.subscriptions = grants.channels

    async def unsubscribe(self, subscription: Subscription) -> None:
        if self.token in self.grants.revoked:
            raise AuthorizationRevoked("invalid_grant")
        await super().unsubscribe(subscription)


async def test_re_registration_stops_the_old_channel_with_the_new_credentials(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    box = SecretBox(settings.secret_key)
    grants = Grants(box)
    outbox = ListOutbox()
    service = SyncService(
        settings,
        resources={},
        sync_state={},
        channels={},
        timers={},
        outbox=outbox,
        providers=grants,
        clock=lambda: NOW.timestamp(),
    )
    await service.on_command(register(service))
    await deliver(service, outbox.notifications[-1])
    (old_channel,) = grants.channels
    grants.revoked.add("rt")
    again = register(service).derive(credentials={"refresh_token": box.encrypt("rt-new")})
    await service.on_command(again)
    assert old_channel not in grants.channels  # stopped, not left pinging until it expires
    await deliver(service, outbox.notifications[-1])
    assert len(grants.channels) == 1 and old_channel not in grants.channels


def index_ids(service: SyncService) -> set[str]:
    return set(BusyIndex.decode(service.busy.get("r1")).entries)


async def test_the_availability_index_follows_what_was_emitted(world) -> None:
    """Mid-walk failures store the index as of the last acknowledged emission, like the
    sync state's own index; a completed sync stores exactly the provider's events."""
    service, provider, outbox, clock = world
    provider.page_size = 50
    await service.on_command(register(service))
    for n in range(350):
        provider.put(occ(n))
    provider.throttle_at = 4
    await deliver(service, outbox.notifications[-1])
    emitted = {e.native_event_id for e in outbox.emitted}
    assert len(emitted) == 50 and index_ids(service) == emitted
    provider.items.pop("ev7")
    await release(service, outbox, clock)
    assert index_ids(service) == set(provider.items) == set(service.sync_state["r1"].index or {})
    timeline = timeline_of(service.busy["r1"])
    start = occ(8).start_utc
    assert timeline.flags_at(int(start.timestamp())) == Flag.BUSY
    assert timeline.flags_at(int(occ(7).start_utc.timestamp())) == 0  # deleted


async def test_a_resource_without_an_index_is_rebuilt_by_a_full_listing(world) -> None:
    service, provider, outbox, clock = world
    await service.on_command(register(service))
    for n in range(3):
        provider.put(occ(n))
    await deliver(service, outbox.notifications[-1])
    del service.busy["r1"]  # as after an upgrade from a version without the index
    provider.put(occ(5))
    await deliver(service, push(clock[0]))
    assert provider.cursors[-1] is None  # a full listing, not a delta
    assert index_ids(service) == {"ev0", "ev1", "ev2", "ev5"}


async def test_an_index_older_than_its_sync_state_is_rebuilt(world) -> None:
    """The two tables' changelogs are written separately: after a crash the index may
    lag the sync state with the same number of entries; the digest notices."""
    service, provider, outbox, clock = world
    await service.on_command(register(service))
    for n in range(3):
        provider.put(occ(n))
    await deliver(service, outbox.notifications[-1])
    stale = service.busy["r1"]
    provider.put(dataclasses.replace(occ(1), start_utc=occ(4).start_utc, end_utc=occ(4).end_utc))
    clock[0] += 1
    await deliver(service, push(clock[0] - 0.5))
    service.busy["r1"] = stale  # the index's changelog record of that sync was lost
    clock[0] += 1
    await deliver(service, push(clock[0] - 0.5))
    assert provider.cursors[-1] is None  # rebuilt by a full listing
    at = int(occ(4).start_utc.timestamp())
    assert timeline_of(service.busy["r1"]).flags_at(at) == Flag.BUSY


async def test_an_index_rewritten_behind_the_kept_one_is_the_one_a_sync_applies_to(
    world,
) -> None:
    """The index kept from the last sync serves the next one only while it is still
    the stored value: here another worker (owning the partition for a while) stored
    an index with the same ids and the sync state that goes with it."""
    service, provider, outbox, clock = world
    await service.on_command(register(service))
    for n in range(3):
        provider.put(occ(n))
    await deliver(service, outbox.notifications[-1])
    moved = BusyIndex.decode(service.busy["r1"])
    entry = moved.entries["ev1"]
    moved.entries["ev1"] = entry._replace(start=entry.start + 7200, end=entry.end + 7200)
    value = moved.encode()
    service.busy["r1"] = value
    state = service.sync_state["r1"]
    service.sync_state["r1"] = state.derive(busy_digest=_digest(value))
    provider.put(occ(5))
    clock[0] += 1
    await deliver(service, push(clock[0] - 0.5))
    assert provider.cursors[-1] is not None  # a delta: the stored index was trusted
    stored = BusyIndex.decode(service.busy["r1"])
    assert set(stored.entries) == {"ev0", "ev1", "ev2", "ev5"}
    assert stored.entries["ev1"] == moved.entries["ev1"]  # the other worker's, not the kept one


async def test_pause_stops_provider_calls_and_resume_resyncs(world) -> None:
    service, provider, outbox, clock = world
    await service.on_command(register(service))
    provider.put(occ(1))
    await deliver(service, outbox.notifications[-1])
    fetches = provider.fetches
    await service.on_command(Command(kind="pause", resource_id="r1", issued_at=clock[0]))
    assert service.resources["r1"].state == "paused"
    assert outbox.status_names()[-1] == "paused"
    provider.put(occ(2))
    await deliver(service, push(clock[0] + 5))
    assert provider.fetches == fetches  # paused: the provider is not called
    await service.on_command(Command(kind="resume", resource_id="r1", issued_at=clock[0] + 6))
    assert service.resources["r1"].state == "active"
    resumed = outbox.notifications[-1]
    assert resumed.full and outbox.status_names()[-1] == "resumed"
    await deliver(service, resumed)
    assert {e.native_event_id for e in outbox.emitted} == {"ev1", "ev2"}
    # resuming what is not paused changes nothing
    written = (len(outbox.statuses), len(outbox.notifications))
    await service.on_command(Command(kind="resume", resource_id="r1", issued_at=clock[0] + 7))
    assert (len(outbox.statuses), len(outbox.notifications)) == written
    assert service.resources["r1"].state == "active"


async def test_synced_statuses_carry_the_lag_of_a_change(world) -> None:
    service, provider, outbox, clock = world
    await service.on_command(register(service))
    provider.put(occ(1))
    await deliver(service, outbox.notifications[-1])
    provider.put(occ(2))
    clock[0] += 3.0
    await deliver(service, push(clock[0] - 1.5))
    synced = [s for s in outbox.statuses if s.status == "synced"][-1]
    assert synced.data is not None
    assert synced.data["lag_ms"] == 1500 and synced.data["reason"] == "push"


async def test_a_polled_calendar_is_polled_again_after_a_failed_poll(world) -> None:
    """A CalDAV calendar has nothing but its polls: one that fails for good (the
    collection is gone for a moment: 404) still leaves the next poll scheduled."""
    service, provider, outbox, clock = world
    await service.on_command(
        register(service).derive(provider="caldav", calendar_id="https://dav.example/cal/")
    )
    provider.put(occ(1))
    await deliver(service, outbox.notifications[-1])
    poll = service.timers["poll:r1"]
    provider.errors.append(ProviderRejected("caldav 404", status=404))
    clock[0] = poll.due_at
    await deliver(service, poll.notification.derive(timer_key="poll:r1"))
    assert outbox.status_names()[-1] == "failed"
    after = service.timers["poll:r1"]
    assert after.due_at > clock[0]
    assert after.due_at - clock[0] <= service.settings.poll_max_interval
    provider.put(occ(2))
    clock[0] = after.due_at
    await deliver(service, after.notification.derive(timer_key="poll:r1"))
    assert outbox.status_names()[-1] == "synced"
    assert "ev2" in upserted(outbox)


async def test_a_lost_push_is_made_up_for_by_the_catch_up(world) -> None:
    """Providers drop pushes: a Google calendar that hears nothing is still asked for
    its delta within ``catchup_interval`` (give or take a tenth) of its last sync."""
    service, provider, outbox, clock = world
    interval = service.settings.catchup_interval
    await service.on_command(register(service))
    provider.put(occ(1))
    await deliver(service, outbox.notifications[-1])
    catchup = service.timers["poll:r1"]
    assert 0.9 * interval <= catchup.due_at - clock[0] <= 1.1 * interval
    assert not catchup.notification.full
    provider.put(occ(2))  # its push never comes
    clock[0] = catchup.due_at
    await deliver(service, catchup.notification.derive(timer_key="poll:r1"))
    assert outbox.status_names()[-1] == "synced"
    assert upserted(outbox) == ["ev1", "ev2"]  # only the delta: ev1 is not emitted again
    again = service.timers["poll:r1"]
    assert 0.9 * interval <= again.due_at - clock[0] <= 1.1 * interval


async def test_pushes_move_the_catch_up_only_past_half_an_interval(world) -> None:
    """A calendar pushed to every few seconds does not rewrite its catch-up timer on
    every sync, yet the catch-up never comes later than 1.1 intervals after a sync."""
    service, _, outbox, clock = world
    interval = service.settings.catchup_interval
    await service.on_command(register(service))
    await deliver(service, outbox.notifications[-1])
    first = service.timers["poll:r1"].due_at
    clock[0] += 0.4 * interval
    await deliver(service, push(clock[0]))
    assert outbox.status_names()[-1] == "synced"
    assert service.timers["poll:r1"].due_at == first
    clock[0] += 0.3 * interval  # the timer is now due within half an interval
    await deliver(service, push(clock[0]))
    moved = service.timers["poll:r1"].due_at
    assert 0.9 * interval <= moved - clock[0] <= 1.1 * interval


async def test_no_catch_up_when_turned_off(make_world) -> None:
    service, _, outbox, _ = make_world(catchup_interval=0)
    await service.on_command(register(service))
    await deliver(service, outbox.notifications[-1])
    assert outbox.status_names()[-1] == "synced"
    assert "poll:r1" not in service.timers


async def test_retriable_trouble_is_retried_for_the_patience_then_dead_lettered(world) -> None:
    """A 429 storm or a provider down for minutes outlasts eight quick attempts; a
    first sync dead-lettered then would leave the calendar empty until its daily
    reconciliation. Work is dead-lettered only once it has failed ``max_attempts``
    times and waited ``retry_patience`` seconds since it arrived."""
    service, provider, outbox, clock = world
    settings = service.settings
    await service.on_command(register(service))
    work = outbox.notifications[-1]
    arrived = work.received_at
    for _ in range(settings.max_attempts + 3):  # more failures than attempts, quickly
        provider.errors.append(TransientProviderError("google 503", status=503))
        await deliver(service, work)
        work = outbox.retries[-1].notification
        clock[0] = outbox.retries[-1].due_at
    assert outbox.dead == []
    assert work.received_at == arrived  # every retry keeps when the work arrived
    clock[0] = arrived + settings.retry_patience
    provider.errors.append(TransientProviderError("google 503", status=503))
    retries = len(outbox.retries)
    await deliver(service, work)
    assert len(outbox.retries) == retries
    assert [rid for rid, _ in outbox.dead] == ["r1"]
    assert outbox.status_names()[-1] == "failed"


async def test_a_full_listing_refused_with_410_is_listed_again_not_dead_lettered(
    make_world,
) -> None:
    """A 410 in the middle of the first full listing (a page token gone stale, a
    provider's 410 storm) is retriable trouble: the listing runs again, in full, after
    a backoff, without emitting again what the broken walk already emitted. Dead-lettered
    at once, the calendar stayed unsynced until a push or its daily reconciliation."""
    service, provider, outbox, clock = make_world(page_size=2)
    await service.on_command(register(service))
    for n in range(5):
        provider.put(occ(n))
    provider.expire_at = 2
    await deliver(service, outbox.notifications[-1])
    assert outbox.dead == []
    (envelope,) = outbox.retries
    assert envelope.notification.full and envelope.attempt == 1
    assert "retry_scheduled" in outbox.status_names()
    # what the broken walk emitted, if anything, is its first page
    assert set(upserted(outbox)) <= {"ev0", "ev1"}

    listings = full_listings(provider)
    await release(service, outbox, clock)
    assert full_listings(provider) == listings + 1
    assert outbox.dead == []
    assert sorted(upserted(outbox)) == [f"ev{n}" for n in range(5)]  # each once
    state = service.sync_state["r1"]
    assert set(state.index or {}) == {f"ev{n}" for n in range(5)} and state.cursor


async def test_a_calendar_past_the_event_bound_is_paused_not_stored(make_world) -> None:
    """Its stored state would pass the table value limit (and a worker that cannot
    write it stops): the walk stops at the bound, the resource is paused saying why,
    and no provider call is made for it until it is resumed."""
    service, provider, outbox, clock = make_world(page_size=3, max_events_per_calendar=5)
    await service.on_command(register(service))
    for n in range(8):
        provider.put(occ(n))
    await deliver(service, outbox.notifications[-1])
    assert service.resources["r1"].state == "paused"
    paused = [s for s in outbox.statuses if s.status == "paused"][-1]
    assert paused.data == {"reason": "too_large", "limit": 5}
    assert "CALSYNC_MAX_EVENTS_PER_CALENDAR" in paused.detail
    assert len(upserted(outbox)) <= 5  # the pages before the bound, acknowledged
    assert len(service.sync_state["r1"].index or {}) <= 5
    assert outbox.dead == []  # nothing to replay: resuming is the way back
    fetches = provider.fetches
    await deliver(service, push(clock[0] + 1))
    assert provider.fetches == fetches


async def test_a_provider_answering_again_after_an_outage_releases_its_retries(
    make_world,
) -> None:
    """After 5xx trouble, the next successful sync of that provider asks for its waiting
    retries at once (not at their backed-off due times), at most once per interval; a
    429 is no outage (the provider asked for the wait)."""
    recovered: list[str] = []
    service, provider, outbox, clock = make_world(on_recovered=recovered.append)
    await service.on_command(register(service))
    await deliver(service, outbox.notifications[-1])  # first sync, no trouble yet
    assert recovered == []

    provider.errors.append(TransientProviderError("google 503", status=503))
    clock[0] += 1
    await deliver(service, push(clock[0]))
    assert outbox.retries and recovered == []
    clock[0] += 1
    await deliver(service, push(clock[0]))  # it answers again
    assert recovered == ["google"]

    provider.errors.append(TransientProviderError("google 503", status=503))
    clock[0] += 1
    await deliver(service, push(clock[0]))
    clock[0] += 1
    await deliver(service, push(clock[0]))
    assert recovered == ["google"]  # too soon after the last release
    clock[0] += RELEASE_INTERVAL
    await deliver(service, push(clock[0]))
    assert recovered == ["google", "google"]  # the outage was remembered

    provider.errors.append(RateLimited("slow down", retry_after=1.0, status=429))
    clock[0] += RELEASE_INTERVAL + 1
    await deliver(service, push(clock[0]))
    clock[0] += 2
    await deliver(service, push(clock[0]))
    assert recovered == ["google", "google"]
