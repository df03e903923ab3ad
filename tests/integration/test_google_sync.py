"""Google Calendar synced end to end: emulator → gateway → worker (subprocess, RocksDB) → topic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx

from calsync.crypto import WebhookSigner
from calsync.emulators.google import GoogleEmulator
from calsync.model import ChangeKind, UnifiedEvent
from calsync.settings import Settings
from calsync.streams.records import StatusEvent
from calsync.testing.topics import TopicReader
from calsync.testing.worker import WorkerProcess
from tests.conftest import ADMIN_TOKEN

CALENDAR = "team@example.com"
BASE = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)


@dataclass
class World:
    emulator: GoogleEmulator
    settings: Settings
    worker: WorkerProcess
    events: TopicReader
    refresh_token: str

    async def register(self, resource_id: str = "team") -> None:
        body = {
            "resource_id": resource_id,
            "provider": "google",
            "calendar_id": CALENDAR,
            "credentials": {"refresh_token": self.refresh_token},
        }
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{self.worker.url}/api/resources",
                json=body,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
        assert response.status_code == 202, response.text

    def decoded(self) -> list[UnifiedEvent]:
        return self.events.events()

    async def wait_for_count(self, count: int, timeout: float = 90.0) -> None:
        try:
            await self.events.wait_for(lambda r: len(r.values) >= count, timeout=timeout)
        except TimeoutError:
            raise AssertionError(
                f"saw {len(self.events.values)} of {count} events\n{self.worker.tail()}"
            ) from None


def insert(emulator: GoogleEmulator, n: int, *, notify: bool = False) -> str:
    start = BASE + timedelta(hours=n)
    event = emulator.insert_event(
        CALENDAR,
        {
            "summary": f"private meeting {n}",
            "start": {"dateTime": start.isoformat()},
            "end": {"dateTime": (start + timedelta(minutes=30)).isoformat()},
        },
        notify=notify,
    )
    return str(event["id"])


@asynccontextmanager
async def google_world(kafka_settings) -> AsyncIterator[World]:  # type: ignore[no-untyped-def]
    async with GoogleEmulator() as emulator:
        emulator.add_calendar(CALENDAR, time_zone="Europe/Zurich")
        emulator.add_client("test-client", "test-client-secret")
        refresh_token = emulator.issue_refresh_token("test-client")
        settings = kafka_settings(
            google_api_url=emulator.api_url, google_token_url=emulator.token_url
        )
        worker = WorkerProcess(settings)
        await asyncio.to_thread(worker.start)
        events = await TopicReader(settings.kafka_bootstrap, settings.topic("events")).start()
        try:
            yield World(emulator, settings, worker, events, refresh_token)
        finally:
            await events.aclose()
            await asyncio.to_thread(worker.stop)


def list_calls(emulator: GoogleEmulator) -> list[dict[str, list[str]]]:
    return [
        r.query
        for r in emulator.requests
        if r.method == "GET" and r.path.endswith("/events") and r.status == 200
    ]


async def test_full_sync_over_pages_then_pushed_changes(kafka_settings) -> None:
    async with google_world(kafka_settings) as world:
        ids = [insert(world.emulator, n) for n in range(600)]
        await world.register()
        await world.wait_for_count(600)
        await world.events.settle(quiet=1.0)
        initial = world.decoded()
        assert len(initial) == 600
        assert all(e.change is ChangeKind.UPSERT for e in initial)
        assert {e.native_event_id for e in initial} == set(ids)
        assert len({e.system_event_id for e in initial}) == 600
        full_pages = [q for q in list_calls(world.emulator) if "syncToken" not in q]
        assert len(full_pages) == 3  # 250 + 250 + 100

        edited, deleted = ids[10], ids[20]
        new_start = BASE + timedelta(days=3, hours=5)
        world.emulator.patch_event(
            CALENDAR,
            edited,
            {
                "start": {"dateTime": new_start.isoformat()},
                "end": {"dateTime": (new_start + timedelta(hours=1)).isoformat()},
            },
        )
        world.emulator.delete_event(CALENDAR, deleted)
        added = insert(world.emulator, 1000, notify=True)
        await world.wait_for_count(603)
        await world.events.settle(quiet=3.0)
        changes = world.decoded()[600:]
        assert {(e.native_event_id, e.change) for e in changes} == {
            (edited, ChangeKind.UPSERT),
            (deleted, ChangeKind.DELETE),
            (added, ChangeKind.UPSERT),
        }
        assert len(changes) == 3
        assert all(e.latency_ms is not None and e.latency_ms >= 0 for e in changes)
        (moved,) = [e for e in changes if e.native_event_id == edited]
        assert moved.start_utc == new_start and moved.end_utc == new_start + timedelta(hours=1)
        delta_fetches = [q for q in list_calls(world.emulator) if "syncToken" in q]
        assert 1 <= len(delta_fetches) <= 3

        # A forged push to the worker's own gateway is refused and changes nothing.
        notifications = TopicReader(
            world.settings.kafka_bootstrap, world.settings.topic("notifications")
        )
        await notifications.start()
        await notifications.settle(quiet=1.0)
        before = len(notifications.values)
        expires_at_ms = int((datetime.now(UTC) + timedelta(days=1)).timestamp() * 1000)
        forged = WebhookSigner("not-the-secret-key-000").channel_token(
            "cs-x", "team", expires_at_ms=expires_at_ms
        )
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{world.worker.url}/webhooks/google",
                headers={
                    "X-Goog-Channel-ID": "cs-x",
                    "X-Goog-Channel-Token": forged,
                    "X-Goog-Resource-State": "exists",
                    "X-Goog-Message-Number": "99",
                    "X-Goog-Resource-ID": "r",
                },
            )
        assert response.status_code == 403
        await notifications.settle(quiet=1.5)
        await world.events.settle(quiet=0.5)
        assert len(notifications.values) == before
        assert len(world.events.values) == 603
        await notifications.aclose()


async def test_expired_sync_token_resyncs_and_emits_only_the_deletes(kafka_settings) -> None:
    async with google_world(kafka_settings) as world:
        ids = [insert(world.emulator, n) for n in range(40)]
        await world.register()
        await world.wait_for_count(40)
        await world.events.settle(quiet=1.0)
        world.emulator.invalidate_sync_tokens(CALENDAR)
        gone = ids[5:10]
        for event_id in gone:
            world.emulator.delete_event(CALENDAR, event_id)
        await world.wait_for_count(45)
        await world.events.settle(quiet=3.0)
        after = world.decoded()[40:]
        assert sorted((e.native_event_id, e.change) for e in after) == sorted(
            (event_id, ChangeKind.DELETE) for event_id in gone
        )
        status = TopicReader(world.settings.kafka_bootstrap, world.settings.topic("status"))
        await status.start()
        await status.settle(quiet=1.0)
        finished = [
            s for s in map(StatusEvent.loads, status.values) if s.status == "resync_finished"
        ]
        assert any(s.data and s.data.get("cursor_expired") for s in finished)
        await status.aclose()


async def killed_mid_first_sync(world: World) -> tuple[list[str], set[str]]:
    """600 events, a first sync SIGKILLed after its first page and before its last; the
    ids inserted and those on the topic at the kill. The pages stay slow until the
    caller clears the emulator's faults."""
    ids = [insert(world.emulator, n) for n in range(600)]
    # Slow pages so the kill lands between the first and the last page.
    world.emulator.faults.add("latency", seconds=3.0, method="GET", path=r"/events$")
    await world.register()
    await world.wait_for_count(250, timeout=60)
    world.worker.kill()
    await world.events.settle(quiet=1.0)
    at_kill = {e.native_event_id for e in world.decoded()}
    assert 250 <= len(at_kill) < 600, "the kill must land mid-sync"
    return ids, at_kill


async def test_sigkill_mid_full_sync_loses_nothing(kafka_settings) -> None:
    async with google_world(kafka_settings) as world:
        ids, _ = await killed_mid_first_sync(world)
        world.emulator.faults.clear()
        await asyncio.to_thread(world.worker.start)
        await world.events.wait_for(
            lambda r: {e.native_event_id for e in r.events()} >= set(ids), timeout=120
        )
        final = world.decoded()
        assert {e.native_event_id for e in final} == set(ids)
        assert all(e.change is ChangeKind.UPSERT for e in final)


async def test_an_event_deleted_after_a_kill_mid_first_sync_is_deleted_on_the_topic(
    kafka_settings,
) -> None:
    """The first sync emits page 1 and dies; the provider deletes one of page 1's
    events before the worker is back. The new walk lists the calendar without it, so
    only a durable record of what page 1 emitted can make calsync emit its delete (found
    by the scale benchmark: the event stayed on the topic for good)."""
    async with google_world(kafka_settings) as world:
        ids, emitted = await killed_mid_first_sync(world)
        gone = sorted(emitted)[0]
        world.emulator.delete_event(CALENDAR, gone, notify=False)
        world.emulator.faults.clear()
        await asyncio.to_thread(world.worker.start)
        live = set(ids) - {gone}

        def final(events: list[UnifiedEvent]) -> set[str]:
            view: set[str] = set()
            for e in events:
                (view.discard if e.change is ChangeKind.DELETE else view.add)(e.native_event_id)
            return view

        try:
            await world.events.wait_for(lambda r: final(r.events()) == live, timeout=120)
        except TimeoutError:
            view = final(world.decoded())
            raise AssertionError(
                f"missing {len(live - view)}, stale {sorted(view - live)[:5]}\n"
                f"{world.worker.tail()}"
            ) from None


async def test_a_20000_event_calendar_syncs_and_its_index_answers(kafka_settings) -> None:
    """A calendar's table values pass Kafka's default 1 MiB record limit near 20,000
    occurrences (its availability index, its sync state): the worker must write them,
    not stop on ``MessageSizeTooLargeError`` (found by the scale benchmark)."""
    count = 20_000
    async with google_world(kafka_settings) as world:
        bodies = [
            {
                "summary": f"private meeting {n}",
                "start": {"dateTime": (BASE + timedelta(minutes=24 * n)).isoformat()},
                "end": {"dateTime": (BASE + timedelta(minutes=24 * n + 20)).isoformat()},
            }
            for n in range(count)
        ]
        ids = {str(e["id"]) for e in world.emulator.insert_events(CALENDAR, bodies)}
        await world.register()
        await world.events.wait_for(
            lambda r: {e.native_event_id for e in r.events()} >= ids, timeout=300
        )
        async with httpx.AsyncClient(timeout=30) as client:
            window = {"start": BASE.isoformat(), "end": (BASE + timedelta(days=2)).isoformat()}
            for _ in range(600):  # the index is stored with the batch's sync state
                answer = await client.get(
                    f"{world.worker.url}/api/availability/team",
                    params=window,
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                )
                assert answer.status_code == 200, answer.text
                if len(answer.json()["busy"]) == 2 * 24 * 60 // 24:
                    break
                await asyncio.sleep(0.5)
        # two days of 20-minute meetings every 24 minutes: 120 busy intervals
        assert len(answer.json()["busy"]) == 120, answer.json()["busy"][:3]
        assert world.worker.running, world.worker.tail()
