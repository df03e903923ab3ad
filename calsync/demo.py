"""``calsync demo``: a local Kafka broker, the Google and Microsoft emulators and a
worker, end to end.

It registers three Google calendars, a Microsoft 365 mailbox and a CalDAV calendar on
a local Radicale, edits them while it runs, and prints the normalized events as a
consumer of ``calsync.events`` sees them. Everything runs on loopback and is thrown
away at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import socket
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from calsync.codecs.avro import decode_event
from calsync.emulators.google import GoogleEmulator
from calsync.emulators.microsoft import MicrosoftEmulator
from calsync.model import ChangeKind, UnifiedEvent
from calsync.settings import Settings
from calsync.testing.broker import KafkaBroker
from calsync.testing.caldav_servers import DavAdmin, RadicaleServer
from calsync.testing.ports import free_port
from calsync.testing.topics import TopicReader
from calsync.testing.worker import WorkerProcess

CALENDARS = {
    "alice": ("alice@example.com", "Europe/Zurich"),
    "bob": ("bob@example.com", "America/New_York"),
    "room-1": ("room-1@example.com", "UTC"),
}
#: CalDAV calendars on a local Radicale: resource id -> time zone (polled, no push)
DAV_CALENDARS = {"room-2": "Europe/Berlin"}
#: Microsoft 365 mailboxes (Graph): resource id -> (user id, mailbox time zone)
MAILBOXES = {"carol": ("carol@contoso.com", "America/Los_Angeles")}
CLIENT_ID, CLIENT_SECRET = "demo-client", "demo-client-secret"


def _port(preferred: int) -> int:
    """``preferred`` when it is free, else one :func:`free_port` picks."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
        return preferred


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _describe(event: UnifiedEvent) -> str:
    if event.change is ChangeKind.DELETE:
        body = "DELETE"
    else:
        assert event.start_utc is not None and event.end_utc is not None
        end_format = "%H:%M" if event.end_utc.date() == event.start_utc.date() else "%a %d %b %H:%M"
        span = f"{event.start_utc:%a %d %b %H:%M}-{event.end_utc.strftime(end_format)} UTC"
        kind = "all-day " if event.is_all_day else ""
        state = event.status_intent.value if event.status_intent else "?"
        body = f"UPSERT {kind}{span} {state}"
    latency = f"{event.latency_ms} ms" if event.latency_ms is not None else "-"
    return f"  {event.resource_id:<7} {body:<48} id={event.system_event_id[:8]} latency={latency}"


def _seed(emulator: GoogleEmulator, rng: random.Random) -> dict[str, list[str]]:
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    ids: dict[str, list[str]] = {}
    for name, (calendar, zone) in CALENDARS.items():
        emulator.add_calendar(calendar, time_zone=zone)
        ids[name] = []
        for n in range(4):
            start = day + timedelta(days=n, hours=9 + rng.randrange(8))
            event = emulator.insert_event(
                calendar,
                {
                    "summary": f"{name} meeting {n} (never leaves the adapter)",
                    "start": {"dateTime": start.isoformat()},
                    "end": {"dateTime": (start + timedelta(minutes=45)).isoformat()},
                },
                notify=False,
            )
            ids[name].append(str(event["id"]))
    weekly = day + timedelta(hours=8)
    emulator.insert_event(
        CALENDARS["alice"][0],
        {
            "summary": "standup",
            "start": {"dateTime": weekly.isoformat(), "timeZone": "Europe/Zurich"},
            "end": {
                "dateTime": (weekly + timedelta(minutes=15)).isoformat(),
                "timeZone": "Europe/Zurich",
            },
            "recurrence": ["RRULE:FREQ=WEEKLY;COUNT=4"],
        },
        notify=False,
    )
    offsite = (day + timedelta(days=7)).date()
    emulator.insert_event(
        CALENDARS["bob"][0],
        {
            "summary": "offsite",
            "start": {"date": offsite.isoformat()},
            "end": {"date": (offsite + timedelta(days=2)).isoformat()},
        },
        notify=False,
    )
    return ids


def _seed_graph(graph: MicrosoftEmulator) -> list[str]:
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    ids = []
    for name, (user, zone) in MAILBOXES.items():
        graph.add_mailbox(user, time_zone=zone)
        for n in range(3):
            start = day + timedelta(days=n, hours=17 + n)  # mornings in California
            wall = "%Y-%m-%dT%H:%M:%S.0000000"
            event = graph.create_event(
                user,
                {
                    "subject": f"{name} 1:1 {n} (never leaves the adapter)",
                    "start": {"dateTime": start.strftime(wall), "timeZone": "UTC"},
                    "end": {
                        "dateTime": (start + timedelta(minutes=30)).strftime(wall),
                        "timeZone": "UTC",
                    },
                    "showAs": ["busy", "tentative", "oof"][n],
                },
                notify=False,
            )
            ids.append(str(event["id"]))
    return ids


def _edit_graph(graph: MicrosoftEmulator, ids: list[str], rng: random.Random) -> str:
    user = MAILBOXES["carol"][0]
    start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=rng.randrange(1, 9))
    wall = "%Y-%m-%dT%H:%M:%S.0000000"
    graph.update_event(
        user,
        rng.choice(ids),
        {
            "start": {"dateTime": start.strftime(wall), "timeZone": "Pacific Standard Time"},
            "end": {
                "dateTime": (start + timedelta(hours=1)).strftime(wall),
                "timeZone": "Pacific Standard Time",
            },
        },
    )
    return "move on carol's Microsoft 365 calendar (Windows zone: Pacific Standard Time)"


def _dav_event(uid: str, start: datetime, rrule: str | None = None) -> str:
    fmt = "%Y%m%dT%H%M%SZ"
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//calsync demo//EN",
        "BEGIN:VEVENT",
        f"UID:{uid}",
        f"DTSTAMP:{datetime.now(UTC).strftime(fmt)}",
        f"DTSTART:{start.strftime(fmt)}",
        f"DTEND:{(start + timedelta(minutes=45)).strftime(fmt)}",
        "SUMMARY:room booking (never leaves the adapter)",
        *([f"RRULE:{rrule}"] if rrule else []),
        "END:VEVENT",
        "END:VCALENDAR",
        "",
    ]
    return "\r\n".join(lines)


async def _seed_dav(admin: DavAdmin, home_url: str) -> str:
    url = await admin.make_calendar(home_url, "room-2")
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    await admin.put(
        url,
        "weekly.ics",
        _dav_event("weekly-review", day + timedelta(hours=13), "FREQ=WEEKLY;COUNT=3"),
    )
    await admin.put(url, "once.ics", _dav_event("workshop", day + timedelta(days=2, hours=9)))
    return url


async def _edit_dav(admin: DavAdmin, url: str, rng: random.Random) -> str:
    start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=rng.randrange(1, 9))
    await admin.put(url, "once.ics", _dav_event("workshop", start))
    return "move on room-2's CalDAV calendar (Radicale, polled)"


def _edit(emulator: GoogleEmulator, ids: dict[str, list[str]], rng: random.Random) -> str:
    name = rng.choice(sorted(CALENDARS))
    calendar = CALENDARS[name][0]
    action = rng.choice(["move", "add", "delete", "tentative", "free"])
    if action != "add" and not ids[name]:
        action = "add"
    if action == "add":
        start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(
            days=rng.randrange(1, 9)
        )
        event = emulator.insert_event(
            calendar,
            {
                "summary": "new booking",
                "start": {"dateTime": start.isoformat()},
                "end": {"dateTime": (start + timedelta(minutes=30)).isoformat()},
            },
        )
        ids[name].append(str(event["id"]))
    elif action == "delete":
        emulator.delete_event(calendar, ids[name].pop(rng.randrange(len(ids[name]))))
    else:
        event_id = rng.choice(ids[name])
        changes: dict[str, Any]
        if action == "move":
            start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(
                days=rng.randrange(1, 9), hours=rng.randrange(24)
            )
            changes = {
                "start": {"dateTime": start.isoformat()},
                "end": {"dateTime": (start + timedelta(hours=1)).isoformat()},
            }
        elif action == "tentative":
            changes = {"status": "tentative"}
        else:
            changes = {"transparency": "transparent"}
        emulator.patch_event(calendar, event_id, changes)
    return f"{action} on {name}'s calendar"


async def _demo(duration: float, workdir: Path) -> None:
    rng = random.Random(7)
    _say("starting a single-node Kafka broker (jars from Maven Central, cached)…")
    broker = await asyncio.to_thread(KafkaBroker().__enter__)
    try:
        emulator = GoogleEmulator(seed=7)
        await emulator.start("127.0.0.1", _port(8710))
        graph = MicrosoftEmulator(seed=7)
        await graph.start("127.0.0.1")
        radicale = RadicaleServer()
        await asyncio.to_thread(radicale.start)
        dav_http = radicale.client()
        dav = DavAdmin(dav_http)
        try:
            emulator.add_client(CLIENT_ID, CLIENT_SECRET)
            ids = _seed(emulator, rng)
            graph.add_client(CLIENT_ID, CLIENT_SECRET)
            graph_ids = _seed_graph(graph)
            dav_url = await _seed_dav(dav, radicale.home_url)
            web_port = _port(6066)
            admin_token = secrets.token_urlsafe(32)
            settings = Settings(
                secret_key=secrets.token_urlsafe(32),
                admin_token=admin_token,
                kafka_bootstrap=broker.bootstrap,
                data_dir=workdir,
                web_port=web_port,
                public_url=f"http://127.0.0.1:{web_port}",
                app_id="calsync-demo",
                topic_partitions=4,
                google_api_url=emulator.api_url,
                google_token_url=emulator.token_url,
                google_client_id=CLIENT_ID,
                google_client_secret=CLIENT_SECRET,
                graph_api_url=graph.api_url,
                microsoft_authority=graph.authority,
                microsoft_client_id=CLIENT_ID,
                microsoft_client_secret=CLIENT_SECRET,
                microsoft_ca_bundle=graph.ca_bundle_path,
                poll_min_interval=2.0,
                poll_max_interval=30.0,
                # the demo's Radicale listens on loopback, refused by default
                caldav_allowed_networks=radicale.allowed_networks,
                log_level="warn",
                faust_pages=True,  # the demo shows Faust's /table/ pages too
            )
            worker = WorkerProcess(settings, log_path=workdir / "worker.log")
            _say(f"Kafka at {broker.bootstrap}; Google emulator at {emulator.base_url}")
            _say(f"Microsoft Graph emulator at {graph.api_url}, identity at {graph.authority}")
            _say(f"Radicale (CalDAV) at {radicale.url}")
            _say("starting the worker…")
            await asyncio.to_thread(worker.start)
            try:
                registrations = [
                    (
                        name,
                        "google",
                        calendar,
                        zone,
                        {"refresh_token": emulator.issue_refresh_token(CLIENT_ID)},
                    )
                    for name, (calendar, zone) in CALENDARS.items()
                ]
                registrations += [
                    (
                        name,
                        "microsoft",
                        user,
                        zone,
                        {"refresh_token": graph.issue_refresh_token(CLIENT_ID)},
                    )
                    for name, (user, zone) in MAILBOXES.items()
                ]
                registrations += [
                    (
                        name,
                        "caldav",
                        dav_url,
                        zone,
                        {"username": radicale.username, "password": radicale.password},
                    )
                    for name, zone in DAV_CALENDARS.items()
                ]
                async with httpx.AsyncClient(base_url=worker.url) as client:
                    for name, provider, calendar, zone, credentials in registrations:
                        response = await client.post(
                            "/api/resources",
                            headers={"Authorization": f"Bearer {admin_token}"},
                            json={
                                "resource_id": name,
                                "provider": provider,
                                "calendar_id": calendar,
                                "time_zone": zone,
                                "credentials": credentials,
                            },
                        )
                        response.raise_for_status()
                _say(f"registered {', '.join([*CALENDARS, *MAILBOXES, *DAV_CALENDARS])}")
                _say(
                    f"web pages: {worker.url}/dashboard/ (sign in with the admin token below), "
                    f"{worker.url}/status/, {worker.url}/table/ (tables), "
                    f"{worker.url}/api/availability/alice (who is free when), "
                    f"with the header 'Authorization: Bearer {admin_token}'"
                )
                _say(f"worker log: {worker.log_path}")
                _say("events on calsync.events (Avro, no titles or attendees):")
                reader = await TopicReader(broker.bootstrap, settings.topic("events")).start()
                try:
                    await _loop(
                        reader, emulator, ids, graph, graph_ids, dav, dav_url, rng, duration
                    )
                finally:
                    await reader.aclose()
            finally:
                _say("stopping the worker…")
                await asyncio.to_thread(worker.stop)
        finally:
            await dav_http.aclose()
            await asyncio.to_thread(radicale.stop)
            await graph.aclose()
            await emulator.aclose()
    finally:
        await asyncio.to_thread(broker.stop)


async def _loop(
    reader: TopicReader,
    emulator: GoogleEmulator,
    ids: dict[str, list[str]],
    graph: MicrosoftEmulator,
    graph_ids: list[str],
    dav: DavAdmin,
    dav_url: str,
    rng: random.Random,
    duration: float,
) -> None:
    started = time.monotonic()
    next_edit = started + 8.0
    printed = 0
    edits = 0
    while not duration or time.monotonic() - started < duration:
        await reader.poll(0.3)
        for value in reader.values[printed:]:
            print(_describe(decode_event(value)), flush=True)
        printed = len(reader.values)
        if time.monotonic() >= next_edit:
            edits += 1
            if edits % 5 == 0:
                change = await _edit_dav(dav, dav_url, rng)
            elif edits % 4 == 0:
                change = _edit_graph(graph, graph_ids, rng)
            else:
                change = _edit(emulator, ids, rng)
            _say(f"editing: {change}")
            next_edit = time.monotonic() + 4.0


def run_demo(*, duration: float = 0.0) -> int:
    """Run the demo until ``duration`` seconds have passed (0: until Ctrl-C)."""
    with (
        tempfile.TemporaryDirectory(prefix="calsync-demo-") as tmp,
        contextlib.suppress(KeyboardInterrupt),
    ):
        asyncio.run(_demo(duration, Path(tmp)))
    _say("done")
    return 0
