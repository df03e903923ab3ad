"""Microsoft 365 through Graph end to end: emulator (TLS authority, msal) → gateway →
worker (subprocess, RocksDB) → topic; and ten days of subscription life in seconds."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from datetime import time as datetime_time
from zoneinfo import ZoneInfo

import pytest

from calsync.clock import ScaledClock
from calsync.model import ChangeKind
from tests.integration.conftest import BASE, event_body, google_world, ms_event_body


async def test_graph_full_sync_over_pages_then_pushed_changes(kafka_settings) -> None:
    async with google_world(kafka_settings, microsoft=True) as world:
        assert world.ms is not None
        user = world.mailbox("alice")
        ids = [
            str(world.ms.create_event(user, ms_event_body(n), notify=False)["id"])
            for n in range(250)
        ]
        await world.register("alice")
        await world.wait_for_count(250)
        await world.events.settle(quiet=1.0)
        initial = world.decoded()
        assert len(initial) == 250 and {e.native_event_id for e in initial} == set(ids)
        assert all(e.change is ChangeKind.UPSERT for e in initial)
        assert {e.provider_origin.value for e in initial} == {"microsoft_graph_v1"}
        account = world.ms.account_of(world.refresh_tokens["alice"])
        pages = [r for r in world.ms.requests_for(account=account) if "delta" in r.path]
        assert len(pages) >= 3  # 100 + 100 + 50

        world.ms.update_event(user, ids[3], ms_event_body(60, hours=2))
        world.ms.delete_event(user, ids[4])
        added = str(world.ms.create_event(user, ms_event_body(70))["id"])
        await world.wait_for_count(253)
        await world.events.settle(quiet=3.0)
        changes = world.decoded()[250:]
        assert {(e.native_event_id, e.change) for e in changes} == {
            (ids[3], ChangeKind.UPSERT),
            (ids[4], ChangeKind.DELETE),
            (added, ChangeKind.UPSERT),
        }
        assert len(changes) == 3
        assert all(e.latency_ms is not None for e in changes)
        await world.wait_converged(["alice"], timeout=10)
        # the rotated refresh token was stored again, encrypted: the grant still works
        statuses = {s.status for s in await world.statuses()}
        assert "reauth_required" not in statuses


@pytest.mark.parametrize("style", ["410", "syncStateNotFound"])
async def test_graph_expired_delta_state_resyncs_with_deletes(kafka_settings, style: str) -> None:
    async with google_world(kafka_settings, microsoft=True) as world:
        assert world.ms is not None
        user = world.mailbox("bob")
        ids = [
            str(world.ms.create_event(user, ms_event_body(n), notify=False)["id"])
            for n in range(30)
        ]
        await world.register("bob")
        await world.wait_for_count(30)
        await world.events.settle(quiet=1.0)
        world.ms.expire_delta_tokens(user, style=style)
        for event_id in ids[:4]:
            world.ms.delete_event(user, event_id)
        await world.wait_for_count(34)
        await world.events.settle(quiet=3.0)
        after = world.decoded()[30:]
        assert sorted((e.native_event_id, e.change) for e in after) == sorted(
            (i, ChangeKind.DELETE) for i in ids[:4]
        )


async def test_graph_sigkill_mid_full_sync_loses_nothing(kafka_settings) -> None:
    async with google_world(kafka_settings, microsoft=True) as world:
        assert world.ms is not None
        user = world.mailbox("carol")
        world.ms.create_events(user, (ms_event_body(n) for n in range(600)))
        world.ms.faults.add("latency", seconds=2.0, method="GET", path="calendarView/delta")
        await world.register("carol")
        await world.wait_for_count(100, timeout=60)
        world.worker.kill()
        await world.events.settle(quiet=1.0)
        assert 100 <= len({e.native_event_id for e in world.decoded()}) < 600
        world.ms.faults.clear()
        await asyncio.to_thread(world.worker.start)
        await world.wait_converged(["carol"], timeout=120)


async def test_graph_missed_lifecycle_catches_dropped_changes(kafka_settings) -> None:
    async with google_world(kafka_settings, microsoft=True) as world:
        assert world.ms is not None
        user = world.mailbox("dave")
        ids = [
            str(world.ms.create_event(user, ms_event_body(n), notify=False)["id"])
            for n in range(10)
        ]
        await world.register("dave")
        await world.wait_for_count(10)
        world.ms.faults.drop_push_probability = 1.0
        world.ms.update_event(user, ids[1], ms_event_body(40))
        world.ms.delete_event(user, ids[2])
        world.ms.create_event(user, ms_event_body(41))
        await world.ms.flush_pushes()
        await world.events.settle(quiet=2.0)
        assert len(world.decoded()) == 10  # nothing arrived: every push was dropped
        world.ms.faults.drop_push_probability = 0.0
        (subscription,) = [s for s in world.ms.subscriptions.values() if s.user_id == user]
        world.ms.send_lifecycle(subscription.id, "missed")
        await world.wait_converged(["dave"], timeout=30)


async def test_ten_days_of_subscription_life_in_seconds(kafka_settings) -> None:
    days = 10
    rate = 86_400 * days / 40  # ten days in forty seconds
    origin = time.time()
    clock = ScaledClock(origin=origin, rate=rate)
    async with google_world(
        kafka_settings,
        microsoft=True,
        clock=clock,
        clock_rate=rate,
        clock_origin=origin,
        reconcile_period=60 * 86_400.0,  # only renewals keep these alive
    ) as world:
        assert world.ms is not None
        calendar = world.calendar("gcal")
        user = world.mailbox("mbox")
        g_ids = [
            str(world.emulator.insert_event(calendar, event_body(n + 24 * 20), notify=False)["id"])
            for n in range(3)
        ]
        m_ids = [
            str(world.ms.create_event(user, ms_event_body(n + 24 * 20), notify=False)["id"])
            for n in range(3)
        ]
        await world.register("gcal")
        await world.register("mbox")
        await world.wait_for_count(6)
        first_channels = {c.id for c in world.emulator.channels.values() if not c.stopped}
        first_subscriptions = {s.id for s in world.ms.subscriptions.values()}
        assert first_channels and first_subscriptions

        while clock() < origin + days * 86_400:
            await world.events.poll(0.5)
        now = clock()
        live_channels = [
            c
            for c in world.emulator.channels.values()
            if c.calendar_id == calendar and not c.stopped and c.expiration_ms > now * 1000
        ]
        live_subscriptions = [
            s for s in world.ms.subscriptions.values() if s.user_id == user and s.expires_at > now
        ]
        assert live_channels, "the Google channel lapsed"
        assert live_subscriptions, "the Graph subscription lapsed"
        assert {c.id for c in live_channels}.isdisjoint(first_channels)  # replaced, not renewed
        assert {s.id for s in live_subscriptions} == first_subscriptions  # renewed in place

        world.emulator.patch_event(calendar, g_ids[0], event_body(24 * 20 + 12))
        world.ms.update_event(user, m_ids[0], ms_event_body(24 * 20 + 12))
        await world.wait_converged(["gcal", "mbox"], timeout=20)


async def test_graph_all_day_events_anchor_in_the_mailboxs_own_zone(kafka_settings) -> None:
    # registered without a time_zone: the worker asks Graph for the mailbox's zone
    # (a Windows name, as Outlook stores it) and anchors all-day events there
    async with google_world(kafka_settings, microsoft=True) as world:
        assert world.ms is not None
        zone_name, zone = "Pacific Standard Time", ZoneInfo("America/Los_Angeles")
        user = world.mailbox("erin", time_zone=zone_name)
        day = (BASE + timedelta(days=3)).date()
        fmt = "%Y-%m-%dT00:00:00.0000000"
        body = {
            "subject": "offsite",
            "isAllDay": True,
            "start": {"dateTime": day.strftime(fmt), "timeZone": zone_name},
            "end": {"dateTime": (day + timedelta(days=1)).strftime(fmt), "timeZone": zone_name},
            "showAs": "oof",
        }
        event_id = str(world.ms.create_event(user, body, notify=False)["id"])
        await world.register("erin")
        await world.wait_for_count(1)
        (event,) = world.decoded()
        assert event.native_event_id == event_id and event.is_all_day
        local_midnight = datetime.combine(day, datetime_time(0), tzinfo=zone)
        assert event.start_utc == local_midnight.astimezone(UTC)
        assert event.end_utc == (local_midnight + timedelta(days=1)).astimezone(UTC)
        account = world.ms.account_of(world.refresh_tokens["erin"])
        paths = [r.path for r in world.ms.requests_for(account=account)]
        assert any(path.endswith("/mailboxSettings/timeZone") for path in paths)
