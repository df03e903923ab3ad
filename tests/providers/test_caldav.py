"""CalDAVProvider: the provider contract against real Radicale and Xandikos (and Radicale
read by the ctag/etag fallback), plus MockTransport units
for server forms the two real servers do not produce (500 and 207 token errors, iCloud)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from calsync.errors import CursorExpired, RateLimited, TransientProviderError
from calsync.providers.caldav import CalDAVProvider
from calsync.testing.caldav_servers import DavServer, RadicaleServer, XandikosServer
from tests.providers.caldav_contract import (
    BASE,
    CalDAVContract,
    CalDAVWorld,
    collect,
    deletions,
    make_ics,
    recreate,
    upserts,
)
from tests.providers.contract import HOUR, Cap


@pytest.fixture(scope="session")
def radicale_server() -> Iterator[DavServer]:
    with RadicaleServer() as server:
        yield server


@pytest.fixture(scope="session")
def xandikos_server() -> Iterator[DavServer]:
    with XandikosServer() as server:
        yield server


class TestRadicale(CalDAVContract):
    @pytest.fixture
    def dav_server(self, radicale_server: DavServer) -> DavServer:
        return radicale_server


class TestXandikos(CalDAVContract):
    @pytest.fixture
    def dav_server(self, xandikos_server: DavServer) -> DavServer:
        return xandikos_server


class TestRadicaleCtagEtagFallback(CalDAVContract):
    """The fallback for servers without sync-collection, read from Radicale by force."""

    use_sync_collection = False

    @pytest.fixture
    def dav_server(self, radicale_server: DavServer) -> DavServer:
        return radicale_server

    lacks = {
        **CalDAVContract.lacks,
        Cap.CURSOR_EXPIRY: "the cursor holds the etags themselves: nothing on the server expires",
    }

    async def test_a_sync_collection_cursor_is_cursor_expired(self, world: CalDAVWorld) -> None:
        # the fallback keeps no token; a cursor made by sync-collection is refused
        await world.add("a", BASE, BASE + HOUR)
        _, sync_cursor = await collect(world.provider(use_sync_collection=True), None)
        with pytest.raises(CursorExpired):
            await collect(world.provider(), sync_cursor)

    async def test_recreated_collection_invalidates_the_cursor(self, world: CalDAVWorld) -> None:
        # etags never expire: a recreated collection reads as deletions and inserts
        await world.add("a", BASE, BASE + HOUR)
        _, cursor = await collect(world.provider(), None)
        await recreate(world)
        await world.add("b", BASE, BASE + HOUR)
        pages, _ = await collect(world.provider(), cursor)
        assert set(upserts(pages)) == {"b"}
        assert deletions(pages) == {"a"}


# -- MockTransport units ---------------------------------------------------------

CAL = "https://p52-caldav.example.com/123/calendars/work/"
PATH = "/123/calendars/work/"

CALENDAR_PROPS = f"""<?xml version="1.0"?>
<d:multistatus xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">
 <d:response><d:href>{PATH}</d:href><d:propstat><d:prop>
  <d:resourcetype><d:collection/><c:calendar/></d:resourcetype>
  <d:supported-report-set><d:supported-report><d:report><d:sync-collection/></d:report>
  </d:supported-report></d:supported-report-set>
 </d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>
</d:multistatus>"""


def sync_body(token: str, *members: tuple[str, int]) -> str:
    parts = []
    for href, status in members:
        if status == 404:
            parts.append(
                f"<d:response><d:href>{href}</d:href>"
                "<d:status>HTTP/1.1 404 Not Found</d:status></d:response>"
            )
        else:
            parts.append(
                f'<d:response><d:href>{href}</d:href><d:propstat><d:prop><d:getetag>"e"</d:getetag>'
                "</d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>"
            )
    return (
        f'<d:multistatus xmlns:d="DAV:"><d:sync-token>{token}</d:sync-token>'
        f"{''.join(parts)}</d:multistatus>"
    )


def multiget_body(*hrefs: str) -> str:
    parts = [
        f'<d:response><d:href>{href}</d:href><d:propstat><d:prop><d:getetag>"e"</d:getetag>'
        f"<c:calendar-data>{make_ics(href.rsplit('/', 1)[-1].removesuffix('.ics'))}"
        "</c:calendar-data></d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>"
        for href in hrefs
    ]
    return (
        '<d:multistatus xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">'
        f"{''.join(parts)}</d:multistatus>"
    )


Handler = Callable[[httpx.Request], httpx.Response]


def scenario(sync: Handler) -> Handler:
    """PROPFIND answers the calendar's props; multiget answers found; sync is the test's."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "PROPFIND":
            return httpx.Response(207, text=CALENDAR_PROPS)
        if b"sync-collection" in request.content:
            return sync(request)
        hrefs = [
            part.split(b"</d:href>")[0].decode() for part in request.content.split(b"<d:href>")[1:]
        ]
        return httpx.Response(207, text=multiget_body(*hrefs))

    return handle


async def run(handler: Handler, cursor: str | None = None) -> tuple[list[object], str]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        provider = CalDAVProvider(client=http, url=CAL, username="a@example.com", password="pw")
        pages, new_cursor = await collect(provider, cursor)
        return list(pages), new_cursor


async def first_cursor() -> str:
    _, cursor = await run(scenario(lambda r: httpx.Response(207, text=sync_body("t1"))))
    return cursor


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, ""),
        (412, ""),
        (403, '<error xmlns="DAV:"><valid-sync-token/></error>'),
        (
            207,
            '<d:multistatus xmlns:d="DAV:"><d:error><d:valid-sync-token/></d:error>'
            "</d:multistatus>",
        ),
        (
            207,
            f'<d:multistatus xmlns:d="DAV:"><d:response><d:href>{PATH}</d:href>'
            "<d:status>HTTP/1.1 403 Forbidden</d:status></d:response></d:multistatus>",
        ),
    ],
)
async def test_invalid_token_forms_are_cursor_expired(status: int, body: str) -> None:
    cursor = await first_cursor()
    with pytest.raises(CursorExpired):
        await run(scenario(lambda r: httpx.Response(status, text=body)), cursor)


async def test_500_without_a_token_is_transient_not_expired() -> None:
    with pytest.raises(TransientProviderError) as caught:
        await run(scenario(lambda r: httpx.Response(500)))
    assert not isinstance(caught.value, CursorExpired)


async def test_icloud_lists_the_collection_itself_among_changes() -> None:
    cursor = await first_cursor()
    body = sync_body("t2", (PATH, 200), (f"{PATH}ev1.ics", 200))
    pages, new_cursor = await run(scenario(lambda r: httpx.Response(207, text=body)), cursor)
    assert set(upserts(pages)) == {"ev1"}  # type: ignore[arg-type]
    assert '"t":"t2"' in new_cursor


async def test_404_members_on_a_full_listing_are_ignored() -> None:
    body = sync_body("t1", (f"{PATH}gone.ics", 404), (f"{PATH}ev1.ics", 200))
    pages, _ = await run(scenario(lambda r: httpx.Response(207, text=body)))
    assert set(upserts(pages)) == {"ev1"}  # type: ignore[arg-type]


async def test_503_with_retry_after_is_rate_limited() -> None:
    def throttled(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": "120"})

    with pytest.raises(RateLimited) as caught:
        await run(scenario(throttled))
    assert caught.value.retry_after == 120


async def test_507_truncation_is_followed() -> None:
    calls: list[bytes] = []

    def sync(request: httpx.Request) -> httpx.Response:
        calls.append(request.content)
        if len(calls) == 1:
            first = sync_body("t1", (f"{PATH}a.ics", 200)).replace(
                "</d:multistatus>",
                f"<d:response><d:href>{PATH}</d:href><d:status>HTTP/1.1 507 Insufficient "
                "Storage</d:status></d:response></d:multistatus>",
            )
            return httpx.Response(207, text=first)
        assert b"<d:sync-token>t1</d:sync-token>" in request.content
        return httpx.Response(207, text=sync_body("t2", (f"{PATH}b.ics", 200)))

    pages, cursor = await run(scenario(sync))
    assert set(upserts(pages)) == {"a", "b"}  # type: ignore[arg-type]
    assert '"t":"t2"' in cursor
    assert all(page.full for page in pages)  # type: ignore[attr-defined]


async def test_subscribe_is_refused() -> None:
    from calsync.errors import ProviderRejected

    async with httpx.AsyncClient() as http:
        provider = CalDAVProvider(client=http, url=CAL, username="u", password="p")
        with pytest.raises(ProviderRejected):
            await provider.subscribe("c", "https://example.com/hook", "tok", 60)
