"""MicrosoftProvider: the provider contract against the in-process Graph emulator (and
its identity platform, through the real MSAL), with both forms of an expired delta token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from calsync.emulators.microsoft import MicrosoftEmulator
from calsync.errors import RateLimited
from calsync.providers.microsoft import MicrosoftProvider, MicrosoftTokenSource
from tests.providers.contract import (
    BASE,
    HOUR,
    SECRET,
    ProviderContract,
    PushReceiver,
    push_receiver,  # noqa: F401 - a fixture
    walk,
)

CLIENT_ID, CLIENT_SECRET = "contract-client", "contract-secret"
MAILBOX = "ada@contoso.com"
PAGE_SIZE = 3


def make_provider(
    emu: MicrosoftEmulator, client: httpx.AsyncClient, tokens: MicrosoftTokenSource
) -> MicrosoftProvider:
    """The one place the contract builds a MicrosoftProvider (and its token source)."""
    return MicrosoftProvider(
        client=client, api_url=emu.api_url, user_id=MAILBOX, tokens=tokens, page_size=PAGE_SIZE
    )


def make_tokens(emu: MicrosoftEmulator, refresh_token: str) -> MicrosoftTokenSource:
    return MicrosoftTokenSource(
        refresh_token=refresh_token,
        authority=emu.authority,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        ca_bundle=emu.ca_bundle_path,
    )


def _when(moment: datetime) -> dict[str, str]:
    return {"dateTime": moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"}


class GraphWorld:
    """A mailbox on the emulator; Graph assigns the event ids."""

    page_size = PAGE_SIZE

    def __init__(
        self,
        emu: MicrosoftEmulator,
        client: httpx.AsyncClient,
        push_address: str,
        expiry_style: str,
    ) -> None:
        self.emu, self.client, self.push_address = emu, client, push_address
        self.expiry_style = expiry_style
        emu.add_client(CLIENT_ID, CLIENT_SECRET)
        emu.add_mailbox(MAILBOX, time_zone="W. Europe Standard Time")
        self.refresh_token = emu.issue_refresh_token(CLIENT_ID, [MAILBOX])
        self.ids: dict[str, str] = {}
        self.token_sources: list[MicrosoftTokenSource] = []

    def provider(self) -> MicrosoftProvider:
        # the newest refresh token of the grant, as the caller stores every rotation
        tokens = make_tokens(self.emu, self.emu.current_refresh_token(self.refresh_token))
        self.token_sources.append(tokens)
        return make_provider(self.emu, self.client, tokens)

    def native_id(self, key: str) -> str:
        return self.ids[key]

    async def add(self, key: str, start: datetime, end: datetime) -> None:
        event: dict[str, Any] = {
            "subject": SECRET,
            "body": {"contentType": "text", "content": SECRET},
            "start": _when(start),
            "end": _when(end),
            "showAs": "busy",
        }
        self.ids[key] = self.emu.create_event(MAILBOX, event, notify=False)["id"]

    async def move(self, key: str, start: datetime, end: datetime) -> None:
        changes = {"start": _when(start), "end": _when(end)}
        self.emu.update_event(MAILBOX, self.ids[key], changes, notify=False)

    async def delete(self, key: str) -> None:
        self.emu.delete_event(MAILBOX, self.ids[key], notify=False)

    async def expire_cursor(self, cursor: str) -> str:
        self.emu.expire_delta_tokens(MAILBOX, style=self.expiry_style)
        return cursor

    async def throttle(self, retry_after: float | None) -> None:
        self.emu.faults.add(
            "throttle_429",
            count=1,
            method="GET",
            path="calendarView/delta",
            retry_after=retry_after,
        )

    async def expire_access_token(self) -> None:
        self.emu.expire_access_tokens()

    def unauthorized_answers(self) -> int:
        return sum(1 for r in self.emu.requests if r.status == 401)

    async def revoke_grant(self) -> None:
        # Entra access tokens outlive a revocation until they expire (up to an hour):
        # expire them too, so the revocation is what the next call meets
        self.emu.revoke_refresh_token(self.refresh_token)
        self.emu.expire_access_tokens()

    async def add_malformed(self, key: str) -> None:
        self.ids[key] = f"AAMkAD-contract-{key}="
        raw = {
            "subject": SECRET,
            "start": {"dateTime": "garbage", "timeZone": "UTC"},
            "end": _when(BASE + HOUR),
            "type": "singleInstance",
        }
        self.emu.corrupt_event(MAILBOX, self.ids[key], raw, notify=False)


@pytest.fixture
async def graph_emulator() -> AsyncIterator[MicrosoftEmulator]:
    async with MicrosoftEmulator(seed=11, validation_timeout=2.0) as emu:
        yield emu


async def _world(
    emu: MicrosoftEmulator, push_address: str, expiry_style: str
) -> AsyncIterator[GraphWorld]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        world = GraphWorld(emu, client, push_address, expiry_style)
        yield world
        for tokens in world.token_sources:
            await tokens.aclose()


class TestMicrosoftContract(ProviderContract):
    """Expired delta tokens answer 410 with a ``Location`` (a sync reset)."""

    lacks = {}  # the emulator can do everything the contract asks

    @pytest.fixture
    async def world(
        self,
        graph_emulator: MicrosoftEmulator,
        push_receiver: PushReceiver,  # noqa: F811
    ) -> AsyncIterator[GraphWorld]:
        async for world in _world(graph_emulator, push_receiver.url, "410"):
            yield world


class TestMicrosoftContractSyncStateNotFound(TestMicrosoftContract):
    """Expired delta tokens answer 410 ``SyncStateNotFound`` instead."""

    @pytest.fixture
    async def world(
        self,
        graph_emulator: MicrosoftEmulator,
        push_receiver: PushReceiver,  # noqa: F811
    ) -> AsyncIterator[GraphWorld]:
        async for world in _world(graph_emulator, push_receiver.url, "syncStateNotFound"):
            yield world


# -- Graph-only ----------------------------------------------------------------------


async def test_application_throttled_is_rate_limited_with_its_delay(
    graph_emulator: MicrosoftEmulator,
    push_receiver: PushReceiver,  # noqa: F811
) -> None:
    async for world in _world(graph_emulator, push_receiver.url, "410"):
        await world.add("a", BASE, BASE + HOUR)
        graph_emulator.faults.add(
            "application_throttled_429", count=1, path="calendarView/delta", retry_after=2.5
        )
        with pytest.raises(RateLimited) as caught:
            await walk(world.provider(), None)
        assert caught.value.retry_after == 2.5
