"""CalDAV end to end against real Radicale and Xandikos: the worker polls them."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import icalendar
import pytest

from calsync.model import ChangeKind, UnifiedEvent
from calsync.streams.records import StatusEvent
from calsync.testing.caldav_servers import DavAdmin, DavServer, RadicaleServer, XandikosServer
from tests.conftest import ADMIN_TOKEN
from tests.integration.conftest import BASE, GoogleWorld, google_world

SERVERS = {"radicale": RadicaleServer, "xandikos": XandikosServer}


@pytest.fixture(scope="module", params=sorted(SERVERS))
def dav_server(request: pytest.FixtureRequest) -> Iterator[DavServer]:
    with SERVERS[request.param]() as server:
        yield server


def ics(uid: str, start: datetime, *, minutes: int = 30, rrule: str | None = None) -> str:
    fmt = "%Y%m%dT%H%M%SZ"
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//calsync tests//EN",
        "BEGIN:VEVENT",
        f"UID:{uid}",
        f"DTSTAMP:{datetime.now(UTC).strftime(fmt)}",
        f"DTSTART:{start.strftime(fmt)}",
        f"DTEND:{(start + timedelta(minutes=minutes)).strftime(fmt)}",
        "SUMMARY:private meeting",
        *([f"RRULE:{rrule}"] if rrule else []),
        "END:VEVENT",
        "END:VCALENDAR",
        "",
    ]
    return "\r\n".join(lines)


class DavWorld:
    """A calendar on a real server, the worker polling it, and the truth we keep."""

    def __init__(self, world: GoogleWorld, server: DavServer, admin: DavAdmin, url: str) -> None:
        self.world, self.server, self.admin, self.url = world, server, admin, url
        self.truth: dict[str, datetime] = {}

    async def put(self, uid: str, start: datetime) -> None:
        await self.admin.put(self.url, f"{uid}.ics", ics(uid, start))
        self.truth[uid] = start

    async def delete(self, uid: str) -> None:
        await self.admin.delete(self.url, f"{uid}.ics")
        del self.truth[uid]

    async def register(self, name: str) -> None:
        body = {
            "resource_id": name,
            "provider": "caldav",
            "calendar_id": self.url,
            "time_zone": "Europe/Berlin",
            "credentials": {"username": self.server.username, "password": self.server.password},
        }
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{self.world.worker.url}/api/resources",
                json=body,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
        assert response.status_code == 202, response.text

    def seen(self, name: str) -> dict[str, datetime | None]:
        """What a consumer folding ``calsync.events`` believes of calendar ``name``."""
        return {k[1]: v[0] for k, v in self.world.view().items() if k[0] == name}

    async def converged(self, name: str, timeout: float = 30.0) -> None:
        """Wait (at most ``timeout`` seconds) until the consumer's view of ``name`` is
        what the server holds, checking first that ``truth`` is what it holds."""
        assert await self.on_server() == self.truth
        deadline = time.monotonic() + timeout
        while True:
            view = self.seen(name)
            if view == self.truth:
                return
            if time.monotonic() > deadline:
                missing = {k for k in self.truth if view.get(k) != self.truth[k]}
                extra = set(view) - set(self.truth)
                raise AssertionError(
                    f"not converged: {len(missing)} missing/wrong, {len(extra)} extra\n"
                    f"{self.world.worker.tail()}"
                )
            await self.world.events.poll(0.3)

    async def stays_converged(self, name: str, polls: int = 2, timeout: float = 30.0) -> None:
        """After :meth:`converged`: ``polls`` more polls of ``name`` go by (at least one
        of them started after convergence) and the view still equals the truth, so
        no late event (a stale start, a delete of a live event) follows convergence."""
        synced = await self._synced(name)
        deadline = time.monotonic() + timeout
        while await self._synced(name) < synced + polls:
            assert time.monotonic() < deadline, f"no poll of {name}\n{self.world.worker.tail()}"
            await self.world.events.poll(0.3)
        await self.world.events.poll(0.3)
        assert self.seen(name) == self.truth

    async def _synced(self, name: str) -> int:
        return sum(
            1 for s in await self.world.statuses() if s.resource_id == name and s.status == "synced"
        )

    def agree_since(self, mark: int, name: str) -> list[UnifiedEvent]:
        """The events of ``name`` emitted since ``mark``; each upsert among them carries
        the start the server holds now (no stale interval is ever emitted)."""
        events = [e for e in self.world.decoded()[mark:] if e.resource_id == name]
        for e in events:
            if e.change is ChangeKind.UPSERT:
                assert e.start_utc == self.truth.get(e.native_event_id), (
                    f"{e.native_event_id}: emitted {e.start_utc}, "
                    f"server has {self.truth.get(e.native_event_id)}"
                )
        return events

    async def on_server(self) -> dict[str, datetime]:
        """The server's own state: each event's UID and DTSTART, read back with one
        CalDAV ``calendar-query`` report, independently of calsync's CalDAV client."""
        async with self.server.client() as http:
            answer = await http.request(
                "REPORT",
                self.url,
                content=_EVERYTHING,
                headers={"Depth": "1", "Content-Type": "application/xml; charset=utf-8"},
            )
        assert answer.status_code == 207, answer.text
        state: dict[str, datetime] = {}
        members = ET.fromstring(answer.content)  # noqa: S314 - our own test server
        for data in members.iter("{urn:ietf:params:xml:ns:caldav}calendar-data"):
            for event in icalendar.Calendar.from_ical(data.text or "").walk("VEVENT"):
                state[str(event["UID"])] = event.decoded("DTSTART")
        return state


_EVERYTHING = b"""<?xml version="1.0" encoding="utf-8"?>
<C:calendar-query xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">
  <D:prop><C:calendar-data/></D:prop>
  <C:filter><C:comp-filter name="VCALENDAR"/></C:filter>
</C:calendar-query>"""


async def dav_world(world: GoogleWorld, server: DavServer) -> DavWorld:
    http = server.client()
    admin = DavAdmin(http)
    url = await admin.make_calendar(server.home_url)
    return DavWorld(world, server, admin, url)


def settings_for(server: DavServer) -> dict[str, object]:
    return {
        "caldav_ca_bundle": server.ca_bundle_path,
        "caldav_allowed_networks": server.allowed_networks,
        "poll_min_interval": 0.5,
        "poll_max_interval": 2.0,
    }


async def test_caldav_sync_edits_deletes_inserts_and_invalid_tokens(
    kafka_settings, dav_server: DavServer
) -> None:
    """Polls carry edits, deletes and inserts, and an invalid sync token (the collection
    made again) ends in a full resync. What is judged is what a consumer ends up with,
    against the server's own state, never the order or timing of the polls: on a busy
    machine a poll may land in the middle of a change, and a later one completes it."""
    async with google_world(kafka_settings, **settings_for(dav_server)) as world:
        dav = await dav_world(world, dav_server)
        for n in range(20):
            await dav.put(f"ev{n}", BASE + timedelta(hours=n))
        await dav.register("cal")
        await dav.converged("cal")
        first = dav.agree_since(0, "cal")
        # the first full sync emits each event once, as an upsert
        assert sorted(e.native_event_id for e in first) == sorted(dav.truth)

        mark = len(world.decoded())
        await dav.put("ev3", BASE + timedelta(days=2, hours=3))  # edit
        await dav.delete("ev4")
        await dav.put("ev99", BASE + timedelta(days=3))
        # no pushes and a daily reconciliation: only the polls (every 0.5 to 2 s) can
        # bring the changes within this bound
        await dav.converged("cal", timeout=30)
        changes = dav.agree_since(mark, "cal")
        # only what changed is emitted (a poll in the middle of the changes may split
        # them over two polls; that changes nothing here)
        assert {(e.native_event_id, e.change) for e in changes} == {
            ("ev3", ChangeKind.UPSERT),
            ("ev4", ChangeKind.DELETE),
            ("ev99", ChangeKind.UPSERT),
        }
        await dav.stays_converged("cal")

        # The collection is deleted and made again: the stored sync token is now
        # invalid (Radicale 403, Xandikos 412) and some events are gone.
        mark = len(world.decoded())
        await dav.admin.delete_collection(dav.url)
        await dav.admin.make_calendar(dav.server.home_url, dav.url.rstrip("/").rsplit("/", 1)[1])
        gone = {"ev0", "ev1", "ev2"}
        kept = dict(dav.truth)
        dav.truth.clear()
        for uid, start in kept.items():
            if uid not in gone:
                await dav.put(uid, start)
        await dav.converged("cal", timeout=60)
        await dav.stays_converged("cal")
        # A poll may land while the collection is being filled again; it then sees the
        # events not yet put back as deleted, and a later one puts them back. So judge
        # the outcome: the view is the server's (above), each gone event was deleted,
        # and every upsert carried the server's start.
        after = dav.agree_since(mark, "cal")
        assert gone <= {e.native_event_id for e in after if e.change is ChangeKind.DELETE}
        statuses = [StatusEvent.loads(v) for v in (await _status_values(world))]
        assert any(
            s.status == "resync_finished" and s.data and s.data.get("cursor_expired")
            for s in statuses
        )


async def _status_values(world: GoogleWorld) -> list[bytes]:
    return [s.dumps() for s in await world.statuses()]


async def test_caldav_sigkill_mid_sync_loses_nothing(kafka_settings, dav_server: DavServer) -> None:
    async with google_world(kafka_settings, **settings_for(dav_server)) as world:
        dav = await dav_world(world, dav_server)
        gate = asyncio.Semaphore(4)  # a real server: do not flood it

        async def put(n: int) -> None:
            async with gate:
                await dav.put(f"big{n}", BASE + timedelta(minutes=30 * n))

        await asyncio.gather(*(put(n) for n in range(800)))
        await dav.register("big")
        await world.events.wait_for(lambda r: len(r.values) >= 50, timeout=60)
        world.worker.kill()
        await world.events.settle(quiet=1.0)
        assert len({e.native_event_id for e in world.decoded()}) < 800, "too fast to test"
        await asyncio.to_thread(world.worker.start)
        await dav.converged("big", timeout=120)


async def test_shipped_calendars_never_crash_the_worker(kafka_settings) -> None:
    """The icalendar and recurring-ical-events test calendars, served by Radicale:
    whatever cannot be represented is quarantined with a status, nothing else stops."""
    import pathlib
    from zoneinfo import ZoneInfo

    import recurring_ical_events

    from calsync.errors import MalformedProviderData
    from calsync.model import Window
    from calsync.normalize.recurrence import expand_object

    files = sorted(
        p
        for package in (icalendar, recurring_ical_events)
        for p in pathlib.Path(package.__file__).parent.rglob("*.ics")
    )[::4]  # a spread sample keeps the test fast
    with RadicaleServer() as server:
        async with google_world(kafka_settings, **settings_for(server)) as world:
            dav = await dav_world(world, server)
            accepted: list[bytes] = []
            async with server.client() as http:
                for n, path in enumerate(files):
                    body = path.read_bytes()
                    response = await http.put(
                        f"{dav.url}f{n}.ics",
                        content=body,
                        headers={"Content-Type": "text/calendar; charset=utf-8"},
                    )
                    if response.status_code in (200, 201, 204):
                        accepted.append((await http.get(f"{dav.url}f{n}.ics")).content)
            assert len(accepted) >= 10
            now = datetime.now(UTC)
            window = Window(now - timedelta(days=30), now + timedelta(days=365))
            malformed = 0  # refused objects, and notices of partly expanded ones
            for body in accepted:
                try:
                    expansion = expand_object(
                        body, window=window, default_zone=ZoneInfo("Europe/Berlin")
                    )
                except MalformedProviderData:
                    malformed += 1
                else:
                    malformed += len(expansion.notices)
            await dav.register("zoo")
            deadline = time.monotonic() + 60
            while not any(s.status == "synced" for s in await world.statuses()):
                assert time.monotonic() < deadline, world.worker.tail()
                await asyncio.sleep(0.5)
            quarantined = [s for s in await world.statuses() if s.status == "quarantined"]
            assert len(quarantined) == malformed
            assert all(s.data and len(s.data["item"]) == 16 for s in quarantined)
            # the worker is alive and the calendar goes on
            await dav.put("canary", BASE + timedelta(hours=5))
            await world.events.wait_for(
                lambda r: any(e.native_event_id == "canary" for e in r.events()), timeout=30
            )


async def test_moving_horizon_emits_newly_visible_occurrences(kafka_settings) -> None:
    """With a two-day horizon, a daily series shows more instances as days pass (the
    daily reconciliation moves the horizon); the worker's clock runs 10,000x here."""
    from calsync.clock import ScaledClock

    rate = 10_000.0
    origin = time.time()
    clock = ScaledClock(origin=origin, rate=rate)
    with RadicaleServer() as server:
        async with google_world(
            kafka_settings,
            clock=clock,
            clock_rate=rate,
            clock_origin=origin,
            horizon_future_days=2,
            reconcile_period=6 * 3600.0,
            reconcile_jitter=0.0,
            caldav_ca_bundle=server.ca_bundle_path,
            caldav_allowed_networks=server.allowed_networks,
            # polls are paced by the scaled clock but rate-limited in real time: keep
            # them rare (a couple of real seconds) so they leave room for the
            # reconciliations this test is about
            poll_min_interval=6 * 3600.0,
            poll_max_interval=12 * 3600.0,
        ) as world:
            dav = await dav_world(world, server)

            def now() -> datetime:  # the worker's "now": its clock is this one
                return datetime.fromtimestamp(clock(), UTC)

            # The series starts a day after the worker's "now" once it runs, not when the
            # test began: starting the servers and the worker on a busy machine takes
            # many "days" at this rate.
            start = now().replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
            starts = [start + timedelta(days=d) for d in range(8)]
            ids = [f"daily/{s.strftime('%Y%m%dT%H%M%SZ')}" for s in starts]
            await dav.admin.put(
                dav.url, "daily.ics", ics("daily", start, rrule="FREQ=DAILY;COUNT=8")
            )
            await dav.register("series")

            def instance_ids() -> set[str]:
                return {k[1] for k in world.view() if k[0] == "series"}

            deadline = time.monotonic() + 30
            while not instance_ids():
                assert time.monotonic() < deadline, world.worker.tail()
                await world.events.poll(0.3)
            first = instance_ids()
            # whenever the worker synced, its horizon ended before the one of "now"
            horizon = now() + timedelta(days=2)
            assert first <= {i for i, s in zip(ids, starts, strict=True) if s < horizon}
            # the last instance starts about 6 days past the horizon of the "now" when the
            # series was written: at this rate over 50 s, longer than the wait above
            assert ids[-1] not in first
            # it becomes visible when "now" passes day 5 (a 2-day horizon)
            deadline = time.monotonic() + 150
            while ids[-1] not in instance_ids():
                assert time.monotonic() < deadline, (
                    f"{sorted(instance_ids())}\n{world.worker.tail()}"
                )
                await world.events.poll(0.3)


async def test_hostile_and_lossy_series_are_collapsed_or_kept_with_a_status(
    kafka_settings,
) -> None:
    """Against Radicale: a minutely invitation becomes one collapsed block (a status
    says so) and does not stall the worker; a two-RRULE series expands their union."""
    with RadicaleServer() as server:
        async with google_world(kafka_settings, **settings_for(server)) as world:
            dav = await dav_world(world, server)
            start = datetime.now(UTC).replace(microsecond=0, second=0) - timedelta(days=1)
            await dav.admin.put(
                dav.url, "flood.ics", ics("flood", start, minutes=1, rrule="FREQ=MINUTELY")
            )
            two = ics("two", BASE, rrule="FREQ=DAILY;COUNT=2").replace(
                "RRULE:FREQ=DAILY;COUNT=2", "RRULE:FREQ=DAILY;COUNT=2\r\nRRULE:FREQ=WEEKLY;COUNT=2"
            )
            await dav.admin.put(dav.url, "two.ics", two)
            await dav.register("hostile")
            fmt = "%Y%m%dT%H%M%SZ"
            want = {
                "flood/collapsed",
                *(f"two/{(BASE + timedelta(days=d)).strftime(fmt)}" for d in (0, 1, 7)),
            }
            deadline = time.monotonic() + 60
            while {k[1] for k in world.view() if k[0] == "hostile"} != want:
                assert time.monotonic() < deadline, (
                    f"{sorted(k[1] for k in world.view())}\n{world.worker.tail()}"
                )
                await world.events.poll(0.3)
            block = world.view()[("hostile", "flood/collapsed")]
            assert block[0] == start
            statuses = [s for s in await world.statuses() if s.status == "quarantined"]
            assert [s.detail.split(":")[0] for s in statuses] == ["collapsed"]
            # the worker goes on: a new event arrives
            await dav.put("canary", BASE + timedelta(hours=5))
            await world.events.wait_for(
                lambda r: any(e.native_event_id == "canary" for e in r.events()), timeout=30
            )


async def test_caldav_polling_goes_on_after_the_collection_was_gone(
    kafka_settings, dav_server: DavServer
) -> None:
    """A poll that finds the collection missing (deleted and not yet made again, as
    while a client re-creates it) fails; the polls that follow still run, and once the
    collection is back the calendar converges to what it holds."""
    async with google_world(kafka_settings, **settings_for(dav_server)) as world:
        dav = await dav_world(world, dav_server)
        for n in range(5):
            await dav.put(f"ev{n}", BASE + timedelta(hours=n))
        await dav.register("cal")
        await dav.converged("cal")

        async def failures() -> int:
            return sum(1 for s in await world.statuses() if s.status == "failed")

        assert await failures() == 0
        await dav.admin.delete_collection(dav.url)
        deadline = time.monotonic() + 30
        while not await failures():  # a poll found the collection missing
            assert time.monotonic() < deadline, world.worker.tail()
            await asyncio.sleep(0.3)
        await dav.admin.make_calendar(dav.server.home_url, dav.url.rstrip("/").rsplit("/", 1)[1])
        dav.truth.clear()
        for n in (1, 3, 7):
            await dav.put(f"ev{n}", BASE + timedelta(days=1, hours=n))
        await dav.converged("cal", timeout=30)
