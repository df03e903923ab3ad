"""ProviderFactory: a resource's busy policy reaches its provider; a policy change rebuilds it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from calsync.crypto import SecretBox
from calsync.errors import AuthorizationRevoked, CalsyncError, TransientProviderError
from calsync.model import Occurrence, StatusIntent
from calsync.providers.caldav import UNREACHABLE
from calsync.providers.factory import ProviderFactory
from calsync.tables.records import Resource
from tests.conftest import SECRET_KEY, SettingsFactory
from tests.providers.caldav_contract import WINDOW, make_ics
from tests.providers.test_caldav import CAL, CALENDAR_PROPS, PATH, sync_body

HREF = f"{PATH}t.ics"
TENTATIVE_ICS = make_ics("t", body="STATUS:TENTATIVE\r\n")
BOX = SecretBox(SECRET_KEY)


def tentative_calendar(request: httpx.Request) -> httpx.Response:
    """One calendar holding one ``STATUS:TENTATIVE`` event."""
    if request.method == "PROPFIND":
        return httpx.Response(207, text=CALENDAR_PROPS)
    if b"sync-collection" in request.content:
        return httpx.Response(207, text=sync_body("t1", (HREF, 200)))
    return httpx.Response(
        207,
        text=(
            '<d:multistatus xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">'
            f'<d:response><d:href>{HREF}</d:href><d:propstat><d:prop><d:getetag>"e"</d:getetag>'
            f"<c:calendar-data>{TENTATIVE_ICS}</c:calendar-data>"
            "</d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>"
            "</d:multistatus>"
        ),
    )


def caldav_resource(busy_policy: dict[str, bool] | None = None) -> Resource:
    return Resource(
        provider="caldav",
        calendar_id=CAL,
        registered_at=1.0,
        credentials={"username": BOX.encrypt("a@example.com"), "password": BOX.encrypt("pw")},
        busy_policy=busy_policy,
    )


@pytest.fixture
def factory(make_settings: SettingsFactory) -> ProviderFactory:
    def mock() -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(tentative_calendar))

    return ProviderFactory(make_settings(), mock, caldav_client_factory=mock)


async def intents(factory: ProviderFactory, resource: Resource) -> list[StatusIntent]:
    provider = factory.get("r1", resource)
    return [
        change.status_intent
        async for page in provider.fetch_changes(None, WINDOW)
        for change in page.changes
        if isinstance(change, Occurrence)
    ]


async def test_the_resources_policy_reaches_the_provider(factory: ProviderFactory) -> None:
    try:
        assert await intents(factory, caldav_resource()) == [StatusIntent.TENTATIVE]
        strict = caldav_resource({"tentative_is_busy": True})
        assert await intents(factory, strict) == [StatusIntent.BUSY]
    finally:
        await factory.aclose()


async def test_a_policy_change_rebuilds_the_provider(factory: ProviderFactory) -> None:
    resource = caldav_resource()
    strict = resource.derive(busy_policy={"declined_is_free": False})
    try:
        first = factory.get("r1", resource)
        assert factory.get("r1", resource.derive()) is first
        changed = factory.get("r1", strict)
        assert changed is not first
        assert factory.get("r1", strict.derive()) is changed
    finally:
        await factory.aclose()


@pytest.mark.parametrize(
    "busy_policy",
    [{"weekends_are_free": True}, {"declined_is_free": "no"}],
)
async def test_a_malformed_policy_is_a_calsync_error(
    factory: ProviderFactory, busy_policy: dict[str, bool]
) -> None:
    with pytest.raises(CalsyncError, match="busy_policy"):
        factory.get("r1", caldav_resource(busy_policy))
    await factory.aclose()


@pytest.fixture
async def local_dav() -> AsyncIterator[str]:
    """A "server" on 127.0.0.1 that refuses every login (401)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/alice/cal/"


@pytest.mark.parametrize(
    ("allowed", "error"),
    [("", TransientProviderError), ("127.0.0.0/8", AuthorizationRevoked)],
)
async def test_caldav_connections_follow_the_allowed_networks(
    make_settings: SettingsFactory, local_dav: str, allowed: str, error: type[Exception]
) -> None:
    # the default CalDAV client is the guarded one, even with the shared client mocked
    factory = ProviderFactory(
        make_settings(caldav_allowed_networks=allowed),
        lambda: httpx.AsyncClient(transport=httpx.MockTransport(tentative_calendar)),
    )
    try:
        with pytest.raises(error) as caught:
            await intents(factory, caldav_resource().derive(calendar_id=local_dav))
        if error is TransientProviderError:
            assert str(caught.value) == UNREACHABLE
    finally:
        await factory.aclose()
