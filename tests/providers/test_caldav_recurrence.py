"""CalDAVProvider and :mod:`calsync.normalize.recurrence` together (MockTransport): what was
collapsed or dropped reaches the sync as quarantine reasons, and expansion leaves
the event loop free."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from calsync.model import Deletion, Occurrence
from calsync.normalize import recurrence
from calsync.providers.base import hash_item_id
from calsync.providers.caldav import CalDAVProvider
from tests.providers.caldav_contract import collect
from tests.providers.test_caldav import CAL, CALENDAR_PROPS, PATH, sync_body

MINUTELY = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:test\r\nBEGIN:VEVENT\r\nUID:flood\r\n"
    "DTSTART:20260101T000000Z\r\nDURATION:PT1M\r\nRRULE:FREQ=MINUTELY\r\nEND:VEVENT\r\n"
    "END:VCALENDAR\r\n"
)
TWO_MASTERS = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:test\r\n"
    "BEGIN:VEVENT\r\nUID:dup\r\nSEQUENCE:1\r\nDTSTART:20261201T090000Z\r\n"
    "DURATION:PT1H\r\nEND:VEVENT\r\n"
    "BEGIN:VEVENT\r\nUID:dup\r\nSEQUENCE:2\r\nDTSTART:20261201T100000Z\r\n"
    "DURATION:PT1H\r\nRRULE:FREQ=DAILY;COUNT=2\r\nRRULE:FREQ=WEEKLY;COUNT=2\r\nEND:VEVENT\r\n"
    "END:VCALENDAR\r\n"
)


def serving(bodies: dict[str, str]) -> httpx.MockTransport:
    """A calendar holding ``bodies`` (name -> iCalendar text), listed by sync-collection."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "PROPFIND":
            return httpx.Response(207, text=CALENDAR_PROPS)
        if b"sync-collection" in request.content:
            members = [(f"{PATH}{name}.ics", 200) for name in bodies]
            return httpx.Response(207, text=sync_body("t1", *members))
        parts = [
            f"<d:response><d:href>{PATH}{name}.ics</d:href><d:propstat><d:prop>"
            f'<d:getetag>"e"</d:getetag><c:calendar-data>{body}</c:calendar-data>'
            "</d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>"
            for name, body in bodies.items()
        ]
        return httpx.Response(
            207,
            text='<d:multistatus xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">'
            f"{''.join(parts)}</d:multistatus>",
        )

    return httpx.MockTransport(handle)


async def fetch(bodies: dict[str, str]) -> list[Any]:
    async with httpx.AsyncClient(transport=serving(bodies)) as http:
        provider = CalDAVProvider(client=http, url=CAL, username="a@example.com", password="pw")
        pages, _ = await collect(provider, None)
        return pages


async def test_collapsed_and_dropped_parts_are_reported_with_what_was_kept() -> None:
    pages = await fetch({"flood": MINUTELY, "dup": TWO_MASTERS})
    changes = [c for page in pages for c in page.changes]
    assert not any(isinstance(c, Deletion) for c in changes)
    ids = sorted(c.native_event_id for c in changes if isinstance(c, Occurrence))
    assert ids == [
        "dup/20261201T100000Z",
        "dup/20261202T100000Z",
        "dup/20261208T100000Z",
        "flood/collapsed",
    ]
    reasons = {(q.item_hash, q.reason.split(":")[0]) for page in pages for q in page.quarantined}
    assert reasons == {
        (hash_item_id(f"{PATH}flood.ics"), "collapsed"),
        (hash_item_id(f"{PATH}dup.ics"), "dropped"),
    }


async def test_expansion_leaves_the_event_loop_responsive(monkeypatch: pytest.MonkeyPatch) -> None:
    """A heartbeat task keeps running while a series is expanded (in a worker thread)."""
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    during: list[int] = []
    real = recurrence.expand_object

    def observed(*args: Any, **kwargs: Any) -> recurrence.Expansion:
        before = ticks
        try:
            return real(*args, **kwargs)
        finally:
            during.append(ticks - before)

    monkeypatch.setattr(recurrence, "expand_object", observed)
    beating = asyncio.create_task(heartbeat())
    try:
        await fetch({"flood": MINUTELY})
    finally:
        beating.cancel()
    assert during, "the provider expanded the resource"
    assert min(during) >= 3, f"heartbeats during expansion: {during}"
