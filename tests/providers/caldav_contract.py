"""The provider contract for CalDAV, against a real server, plus what only CalDAV has.

A test module subclasses :class:`CalDAVContract` and provides a ``dav_server``
fixture (a started :class:`~calsync.testing.caldav_servers.DavServer`). Each test
gets a fresh calendar collection (:class:`CalDAVWorld`), changes it "on the server"
through :class:`~calsync.testing.caldav_servers.DavAdmin`, and reads it through
:class:`~calsync.providers.caldav.CalDAVProvider`, built by :func:`make_provider`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from calsync.errors import AuthorizationRevoked, CursorExpired
from calsync.model import Window
from calsync.providers.base import ChangePage
from calsync.providers.caldav import CalDAVProvider
from calsync.testing.caldav_servers import DavAdmin, DavServer
from tests.providers.contract import SECRET, Cap, ProviderContract, deletions, upserts

WINDOW = Window(datetime(2026, 1, 1, tzinfo=UTC), datetime(2028, 1, 1, tzinfo=UTC))
BASE = datetime(2026, 12, 1, 9, tzinfo=UTC)
PAGE_SIZE = 3


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


def make_provider(
    server: DavServer, client: httpx.AsyncClient, calendar_url: str, **options: object
) -> CalDAVProvider:
    """The one place the CalDAV tests build a CalDAVProvider (``options`` override)."""
    values: dict[str, object] = {
        "client": client,
        "url": calendar_url,
        "username": server.username,
        "password": server.password,
        "batch_size": PAGE_SIZE,
    }
    values.update(options)
    return CalDAVProvider(**values)  # type: ignore[arg-type]


class RevocableTransport(httpx.AsyncBaseTransport):
    """Stands in for the user revoking the app-specific password: once ``revoked``,
    every request reaches the real server with a password it refuses."""

    def __init__(self, inner: httpx.AsyncBaseTransport, username: str) -> None:
        self.inner = inner
        self.revoked = False
        self._refused = httpx.BasicAuth(username, "revoked-password")

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.revoked:
            request = next(self._refused.auth_flow(request))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class CalDAVWorld:
    """A fresh collection on a real server; an event ``key`` is ``<key>.ics`` with UID
    ``key``. The provider's client is its own (see :class:`RevocableTransport`)."""

    page_size = PAGE_SIZE
    push_address = ""  # Cap.PUSH is lacking

    def __init__(
        self,
        server: DavServer,
        admin: DavAdmin,
        calendar: str,
        client: httpx.AsyncClient,
        transport: RevocableTransport,
        use_sync_collection: bool | None,
    ) -> None:
        self.server, self.admin, self.calendar = server, admin, calendar
        self.client, self.transport = client, transport
        self.use_sync_collection = use_sync_collection

    def provider(self, **options: object) -> CalDAVProvider:
        options.setdefault("use_sync_collection", self.use_sync_collection)
        return make_provider(self.server, self.client, self.calendar, **options)

    def native_id(self, key: str) -> str:
        return key

    async def add(self, key: str, start: datetime, end: datetime) -> None:
        ics = make_ics(key, start, end=end, body=f"DESCRIPTION:{SECRET}\r\n")
        await self.admin.put(self.calendar, f"{key}.ics", ics)

    async def move(self, key: str, start: datetime, end: datetime) -> None:
        await self.add(key, start, end)

    async def delete(self, key: str) -> None:
        await self.admin.delete(self.calendar, f"{key}.ics")

    async def expire_cursor(self, cursor: str) -> str:
        # a sync-token the server never issued: what it answers for one it dropped
        scheme, version, raw = cursor.split(":", 2)
        body = json.loads(raw)
        body["t"] = (body["t"] or "") + "0badc0ffee"
        return f"{scheme}:{version}:{json.dumps(body)}"

    async def revoke_grant(self) -> None:
        self.transport.revoked = True

    async def add_malformed(self, key: str) -> None:
        # accepted by the server, refused by the normalizer: it ends before it starts
        await self.admin.put(
            self.calendar, f"{key}.ics", make_ics(key, end=BASE - timedelta(hours=1))
        )


@asynccontextmanager
async def caldav_world(
    server: DavServer, use_sync_collection: bool | None
) -> AsyncIterator[CalDAVWorld]:
    transport = RevocableTransport(httpx.AsyncHTTPTransport(verify=server.verify), server.username)
    async with (
        server.client() as admin_http,
        httpx.AsyncClient(transport=transport, timeout=10.0) as client,
    ):
        admin = DavAdmin(admin_http)
        calendar = await admin.make_calendar(server.home_url)
        yield CalDAVWorld(server, admin, calendar, client, transport, use_sync_collection)


async def collect(provider: CalDAVProvider, cursor: str | None) -> tuple[list[ChangePage], str]:
    pages = [page async for page in provider.fetch_changes(cursor, WINDOW)]
    assert pages, "a walk yields at least one page"
    assert all(page.cursor is None for page in pages[:-1]), "the cursor is on the last page only"
    last = pages[-1].cursor
    assert last is not None
    return pages, last


class CalDAVContract(ProviderContract):
    """Subclasses provide a ``dav_server`` fixture; ``use_sync_collection`` picks the method."""

    use_sync_collection: bool | None = None
    lacks = {
        Cap.RATE_LIMIT: "Radicale and Xandikos never throttle (503/429 forms: test_caldav.py)",
        Cap.TOKEN_REFRESH: "HTTP Basic with an app-specific password: no access token",
        Cap.PUSH: "CalDAV offers third parties no push (test_subscribe_is_refused)",
    }

    @pytest.fixture
    async def world(self, dav_server: DavServer) -> AsyncIterator[CalDAVWorld]:
        async with caldav_world(dav_server, self.use_sync_collection) as world:
            yield world

    async def test_removed_resource_deletes_every_occurrence_it_produced(
        self, world: CalDAVWorld
    ) -> None:
        await world.admin.put(world.calendar, "series.ics", recurring_ics("series"))
        provider = world.provider()
        pages, cursor = await collect(provider, None)
        produced = set(upserts(pages))
        assert len(produced) >= 2  # the series and its moved instance
        assert all(o.series_id == "series" for o in upserts(pages).values())
        await world.delete("series")
        pages, _ = await collect(provider, cursor)
        assert deletions(pages) == produced

    async def test_recreated_collection_invalidates_the_cursor(self, world: CalDAVWorld) -> None:
        await world.admin.put(world.calendar, "a.ics", make_ics("a"))
        _, cursor = await collect(world.provider(), None)
        await recreate(world)
        await world.admin.put(world.calendar, "b.ics", make_ics("b"))
        with pytest.raises(CursorExpired):
            await collect(world.provider(), cursor)
        pages, _ = await collect(world.provider(), None)
        assert set(upserts(pages)) == {"b"}

    async def test_wrong_password_is_authorization_revoked(self, world: CalDAVWorld) -> None:
        with pytest.raises(AuthorizationRevoked):
            await collect(world.provider(password="wrong"), None)

    async def test_discovery_from_the_server_root(self, world: CalDAVWorld) -> None:
        await world.admin.put(world.calendar, "a.ics", make_ics("a"))
        name = world.calendar.rstrip("/").rsplit("/", 1)[-1]
        provider = world.provider(url=world.server.url, calendar=name)
        calendars = await provider.discover_calendars()
        assert world.calendar in {c.url for c in calendars}
        pages, _ = await collect(provider, None)
        assert set(upserts(pages)) == {"a"}


async def recreate(world: CalDAVWorld) -> None:
    """Delete the world's collection and make a new one at the same URL."""
    await world.admin.delete_collection(world.calendar)
    await world.admin.make_calendar(
        world.server.home_url, world.calendar.rstrip("/").rsplit("/", 1)[-1]
    )
