"""The contract every CalDAV backend passes, against a real server.

A test module subclasses :class:`CalDAVContract` and provides a ``dav_server``
fixture (a started :class:`~calsync.testing.caldav_servers.DavServer`). Each test
gets a fresh calendar collection, changes it "on the server" through
:class:`~calsync.testing.caldav_servers.DavAdmin`, and reads it through
:class:`~calsync.providers.caldav.CalDAVProvider`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from calsync.errors import AuthorizationRevoked, CursorExpired
from calsync.model import Deletion, Occurrence
from calsync.providers.base import ChangePage, Window
from calsync.providers.caldav import CalDAVProvider
from calsync.testing.caldav_servers import DavAdmin, DavServer

WINDOW = Window(datetime(2026, 1, 1, tzinfo=UTC), datetime(2028, 1, 1, tzinfo=UTC))
BASE = datetime(2026, 12, 1, 9, tzinfo=UTC)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def make_ics(
    uid: str,
    start: datetime = BASE,
    minutes: int = 60,
    *,
    body: str = "",
    end: datetime | None = None,
) -> str:
    finish = end if end is not None else start + timedelta(minutes=minutes)
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//calsync//tests//EN\r\n"
        f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260101T000000Z\r\n"
        f"DTSTART:{_stamp(start)}\r\nDTEND:{_stamp(finish)}\r\n"
        f"SUMMARY:secret meeting {uid}\r\n{body}END:VEVENT\r\n"
        "END:VCALENDAR\r\n"
    )


def recurring_ics(uid: str) -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//calsync//tests//EN\r\n"
        f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260101T000000Z\r\n"
        f"DTSTART:{_stamp(BASE)}\r\nDTEND:{_stamp(BASE + timedelta(hours=1))}\r\n"
        "RRULE:FREQ=DAILY;COUNT=3\r\nEND:VEVENT\r\n"
        f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260101T000000Z\r\n"
        f"RECURRENCE-ID:{_stamp(BASE + timedelta(days=1))}\r\n"
        f"DTSTART:{_stamp(BASE + timedelta(days=1, hours=3))}\r\n"
        f"DTEND:{_stamp(BASE + timedelta(days=1, hours=4))}\r\n"
        "END:VEVENT\r\nEND:VCALENDAR\r\n"
    )


@dataclass
class Env:
    server: DavServer
    http: httpx.AsyncClient
    admin: DavAdmin
    calendar: str


async def collect(provider: CalDAVProvider, cursor: str | None) -> tuple[list[ChangePage], str]:
    pages = [page async for page in provider.fetch_changes(cursor, WINDOW)]
    assert pages, "a walk yields at least one page"
    assert all(page.cursor is None for page in pages[:-1]), "the cursor is on the last page only"
    last = pages[-1].cursor
    assert last is not None
    return pages, last


def upserts(pages: list[ChangePage]) -> dict[str, Occurrence]:
    return {
        c.native_event_id: c for page in pages for c in page.changes if isinstance(c, Occurrence)
    }


def deletions(pages: list[ChangePage]) -> set[str]:
    return {c.native_event_id for page in pages for c in page.changes if isinstance(c, Deletion)}


class CalDAVContract:
    """Subclasses provide a ``dav_server`` fixture; ``use_sync_collection`` picks the method."""

    use_sync_collection: bool | None = None

    @pytest.fixture
    async def env(self, dav_server: DavServer) -> AsyncIterator[Env]:
        async with dav_server.client() as http:
            admin = DavAdmin(http)
            calendar = await admin.make_calendar(dav_server.home_url)
            yield Env(dav_server, http, admin, calendar)

    def provider(
        self, env: Env, *, password: str | None = None, url: str | None = None, **kw: object
    ) -> CalDAVProvider:
        options: dict[str, object] = {
            "batch_size": 3,
            "use_sync_collection": self.use_sync_collection,
        }
        options.update(kw)
        return CalDAVProvider(
            client=env.http,
            url=url or env.calendar,
            username=env.server.username,
            password=env.server.password if password is None else password,
            **options,  # type: ignore[arg-type]
        )

    async def test_full_listing_spans_several_multiget_batches(self, env: Env) -> None:
        for n in range(7):
            await env.admin.put(
                env.calendar, f"ev{n}.ics", make_ics(f"uid-{n}", BASE + timedelta(hours=n))
            )
        pages, _ = await collect(self.provider(env), None)
        assert len(pages) >= 3
        assert all(page.full for page in pages)
        found = upserts(pages)
        assert set(found) == {f"uid-{n}" for n in range(7)}
        assert found["uid-2"].start_utc == BASE + timedelta(hours=2)
        assert found["uid-2"].end_utc == BASE + timedelta(hours=3)
        assert not deletions(pages)
        assert "secret" not in repr(pages)

    async def test_cursor_round_trip_without_changes(self, env: Env) -> None:
        await env.admin.put(env.calendar, "a.ics", make_ics("a"))
        provider = self.provider(env)
        _, cursor = await collect(provider, None)
        pages, cursor2 = await collect(provider, cursor)
        assert not any(page.full for page in pages)
        assert [c for page in pages for c in page.changes] == []
        pages, _ = await collect(provider, cursor2)
        assert [c for page in pages for c in page.changes] == []

    async def test_edits_deletes_and_inserts_appear_as_changes(self, env: Env) -> None:
        for name in ("keep", "edit", "drop"):
            await env.admin.put(env.calendar, f"{name}.ics", make_ics(name))
        provider = self.provider(env)
        _, cursor = await collect(provider, None)
        moved = BASE + timedelta(days=2)
        await env.admin.put(env.calendar, "edit.ics", make_ics("edit", moved, 30))
        await env.admin.delete(env.calendar, "drop.ics")
        await env.admin.put(env.calendar, "new.ics", make_ics("new"))
        pages, cursor = await collect(provider, cursor)
        assert not any(page.full for page in pages)
        found = upserts(pages)
        assert set(found) == {"edit", "new"}
        assert found["edit"].start_utc == moved
        assert found["edit"].end_utc == moved + timedelta(minutes=30)
        assert deletions(pages) == {"drop"}
        pages, _ = await collect(provider, cursor)
        assert [c for page in pages for c in page.changes] == []

    async def test_removed_resource_deletes_every_occurrence_it_produced(self, env: Env) -> None:
        await env.admin.put(env.calendar, "series.ics", recurring_ics("series"))
        provider = self.provider(env)
        pages, cursor = await collect(provider, None)
        produced = set(upserts(pages))
        assert len(produced) >= 2  # the series and its moved instance
        assert all(o.series_id == "series" for o in upserts(pages).values())
        await env.admin.delete(env.calendar, "series.ics")
        pages, _ = await collect(provider, cursor)
        assert deletions(pages) == produced

    async def test_garbage_sync_token_is_cursor_expired(self, env: Env) -> None:
        await env.admin.put(env.calendar, "a.ics", make_ics("a"))
        provider = self.provider(env)
        _, cursor = await collect(provider, None)
        scheme, version, raw = cursor.split(":", 2)
        body = json.loads(raw)
        body["t"] = (body["t"] or "") + "0badc0ffee"
        forged = f"{scheme}:{version}:{json.dumps(body)}"
        with pytest.raises(CursorExpired):
            await collect(provider, forged)

    async def test_recreated_collection_invalidates_the_cursor(self, env: Env) -> None:
        await env.admin.put(env.calendar, "a.ics", make_ics("a"))
        provider = self.provider(env)
        _, cursor = await collect(provider, None)
        await env.admin.delete_collection(env.calendar)
        await env.admin.make_calendar(
            env.server.home_url, env.calendar.rstrip("/").rsplit("/", 1)[-1]
        )
        await env.admin.put(env.calendar, "b.ics", make_ics("b"))
        with pytest.raises(CursorExpired):
            await collect(self.provider(env), cursor)
        pages, _ = await collect(self.provider(env), None)
        assert set(upserts(pages)) == {"b"}

    async def test_wrong_password_is_authorization_revoked(self, env: Env) -> None:
        async with env.server.client(password="wrong") as http:
            provider = CalDAVProvider(
                client=http, url=env.calendar, username=env.server.username, password="wrong"
            )
            with pytest.raises(AuthorizationRevoked):
                await collect(provider, None)

    async def test_malformed_resource_is_quarantined_and_the_rest_arrives(self, env: Env) -> None:
        await env.admin.put(env.calendar, "good.ics", make_ics("good"))
        # accepted by the server, refused by the normalizer: it ends before it starts
        await env.admin.put(env.calendar, "bad.ics", make_ics("bad", end=BASE - timedelta(hours=1)))
        pages, _ = await collect(self.provider(env), None)
        assert set(upserts(pages)) == {"good"}
        quarantined = [q for page in pages for q in page.quarantined]
        assert len(quarantined) == 1
        assert "bad" not in quarantined[0].item_hash

    async def test_discovery_from_the_server_root(self, env: Env) -> None:
        await env.admin.put(env.calendar, "a.ics", make_ics("a"))
        name = env.calendar.rstrip("/").rsplit("/", 1)[-1]
        provider = self.provider(env, url=env.server.url, calendar=name)
        calendars = await provider.discover_calendars()
        assert env.calendar in {c.url for c in calendars}
        pages, _ = await collect(provider, None)
        assert set(upserts(pages)) == {"a"}
