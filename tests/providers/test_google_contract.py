"""GoogleProvider: the provider contract against the in-process Google emulator, plus
the Google-only forms of its errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from calsync.emulators.google import GoogleEmulator
from calsync.errors import RateLimited
from calsync.providers.google import GoogleProvider, GoogleTokenSource
from tests.providers.contract import (
    BASE,
    HOUR,
    SECRET,
    ProviderContract,
    PushReceiver,
    push_receiver,  # noqa: F401 - a fixture
    upserts,
    walk,
)

CLIENT_ID, CLIENT_SECRET = "contract-client", "contract-secret"
CALENDAR = "ada@example.com"
PAGE_SIZE = 3


def make_provider(
    emu: GoogleEmulator, client: httpx.AsyncClient, refresh_token: str
) -> GoogleProvider:
    """The one place the contract builds a GoogleProvider."""
    return GoogleProvider(
        client=client,
        api_url=emu.api_url,
        calendar_id=CALENDAR,
        tokens=GoogleTokenSource(
            refresh_token=refresh_token,
            token_url=emu.token_url,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
        ),
        page_size=PAGE_SIZE,
    )


def _when(moment: datetime) -> dict[str, str]:
    return {"dateTime": moment.isoformat()}


class GoogleWorld:
    """A calendar on the emulator; event ids are ``evt`` + the key in hex (base32hex)."""

    page_size = PAGE_SIZE

    def __init__(self, emu: GoogleEmulator, client: httpx.AsyncClient, push_address: str) -> None:
        self.emu, self.client, self.push_address = emu, client, push_address
        emu.add_client(CLIENT_ID, CLIENT_SECRET)
        emu.add_calendar(CALENDAR, time_zone="Europe/Zurich")
        self.refresh_token = emu.issue_refresh_token(CLIENT_ID, [CALENDAR])

    def provider(self) -> GoogleProvider:
        return make_provider(self.emu, self.client, self.refresh_token)

    def native_id(self, key: str) -> str:
        return "evt" + key.encode().hex()

    async def add(self, key: str, start: datetime, end: datetime) -> None:
        event: dict[str, Any] = {
            "id": self.native_id(key),
            "summary": SECRET,
            "description": SECRET,
            "start": _when(start),
            "end": _when(end),
        }
        self.emu.insert_event(CALENDAR, event, notify=False)

    async def move(self, key: str, start: datetime, end: datetime) -> None:
        changes = {"start": _when(start), "end": _when(end)}
        self.emu.patch_event(CALENDAR, self.native_id(key), changes, notify=False)

    async def delete(self, key: str) -> None:
        self.emu.delete_event(CALENDAR, self.native_id(key), notify=False)

    async def expire_cursor(self, cursor: str) -> str:
        self.emu.invalidate_sync_tokens(CALENDAR)
        return cursor

    async def throttle(self, retry_after: float | None) -> None:
        self.emu.faults.add(
            "rate_limit_429", count=1, method="GET", path=r"/events$", retry_after=retry_after
        )

    async def expire_access_token(self) -> None:
        self.emu.expire_access_tokens()

    def unauthorized_answers(self) -> int:
        return sum(1 for r in self.emu.requests if r.status == 401)

    async def revoke_grant(self) -> None:
        self.emu.revoke_refresh_token(self.refresh_token)

    async def add_malformed(self, key: str) -> None:
        raw = {"summary": SECRET, "start": {"dateTime": "garbage"}, "end": _when(BASE + HOUR)}
        self.emu.corrupt_event(CALENDAR, self.native_id(key), raw, notify=False)


@pytest.fixture
async def google_world(push_receiver: PushReceiver) -> AsyncIterator[GoogleWorld]:  # noqa: F811
    async with GoogleEmulator(seed=11) as emu, httpx.AsyncClient(timeout=10.0) as client:
        yield GoogleWorld(emu, client, push_receiver.url)


class TestGoogleContract(ProviderContract):
    lacks = {}  # the emulator can do everything the contract asks

    @pytest.fixture
    def world(self, google_world: GoogleWorld) -> GoogleWorld:
        return google_world


# -- Google-only ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rate_limit_403", "user_rate_limit_403", "quota_exceeded_403"])
async def test_403_rate_limit_reasons_are_rate_limited(
    google_world: GoogleWorld, kind: str
) -> None:
    await google_world.add("a", BASE, BASE + HOUR)
    google_world.emu.faults.add(kind, count=1, method="GET", path=r"/events$")
    with pytest.raises(RateLimited) as caught:
        await walk(google_world.provider(), None)
    assert caught.value.status == 403


async def test_listing_reads_the_calendar_zone(google_world: GoogleWorld) -> None:
    await google_world.add("a", BASE, BASE + HOUR)
    pages, _ = await walk(google_world.provider(), None)
    assert {page.time_zone for page in pages} == {"Europe/Zurich"}
    assert set(upserts(pages)) == {google_world.native_id("a")}
