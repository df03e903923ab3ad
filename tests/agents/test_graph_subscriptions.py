"""Graph subscriptions through SyncService, the real provider and the Microsoft emulator.

No Kafka: the service writes to dict tables and the list outbox; the emulator runs
in-process and validates subscriptions against a small webhook server here.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from aiohttp import web

from calsync.agents.service import Lane, SyncService
from calsync.crypto import SecretBox
from calsync.emulators.microsoft import MicrosoftEmulator
from calsync.providers.factory import ProviderFactory
from calsync.streams.records import Command
from calsync.testing.outbox import ListOutbox
from tests.conftest import SettingsFactory, free_port

CLIENT_ID, CLIENT_SECRET = "test-client", "test-client-secret"
MAILBOX = "ada@contoso.com"
#: The worker's clock runs this far ahead of Graph's.
SKEW = 120.0


@dataclass
class Hooks:
    """Answers Graph's validation handshake, once ``ready``."""

    url: str
    ready: bool = False

    async def handle(self, request: web.Request) -> web.Response:
        token = request.query.get("validationToken")
        if token is None or not self.ready:
            return web.Response(status=503)
        return web.Response(text=token, content_type="text/plain")


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    port = free_port()
    hooks = Hooks(f"http://127.0.0.1:{port}")
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", hooks.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield hooks
    await runner.cleanup()


@pytest.fixture
async def emulator() -> AsyncIterator[MicrosoftEmulator]:
    emu = MicrosoftEmulator(seed=7, validation_timeout=2.0)
    await emu.start()
    emu.add_client(CLIENT_ID, CLIENT_SECRET)
    emu.add_mailbox(MAILBOX)
    yield emu
    await emu.aclose()


async def test_a_refused_subscription_is_created_by_a_later_attempt(
    make_settings: SettingsFactory, emulator: MicrosoftEmulator, hooks: Hooks
) -> None:
    settings = make_settings(
        public_url=hooks.url,
        graph_api_url=emulator.api_url,
        microsoft_authority=emulator.authority,
        microsoft_client_id=CLIENT_ID,
        microsoft_client_secret=CLIENT_SECRET,
        microsoft_ca_bundle=emulator.ca_bundle_path,
    )
    clock = [time.time() + SKEW]

    def now() -> float:
        return clock[0]

    factory = ProviderFactory(settings, lambda: httpx.AsyncClient(timeout=10.0), clock=now)
    outbox = ListOutbox()
    service = SyncService(
        settings,
        resources={},
        sync_state={},
        channels={},
        timers={},
        outbox=outbox,
        providers=factory,
        clock=now,
    )
    box = SecretBox(settings.secret_key)
    try:
        await service.on_command(
            Command(
                kind="register",
                resource_id="ada",
                issued_at=clock[0],
                provider="microsoft",
                calendar_id=MAILBOX,
                credentials={"refresh_token": box.encrypt(emulator.issue_refresh_token(CLIENT_ID))},
            )
        )
        first_sync = outbox.notifications[-1]
        await service.on_notification(first_sync, Lane.BULK)
        # The webhook endpoint failed the handshake: no subscription, the sync went on.
        assert emulator.subscriptions == {} and "ada" not in service.channels
        assert "synced" in outbox.status_names()
        lost = [s for s in outbox.statuses if s.status == "subscription_lost"][-1]
        assert "ValidationError" in lost.detail  # the failed handshake
        timer = service.timers["renew:ada"]
        assert lost.data and lost.data["next_attempt_at"] == timer.due_at
        assert service.sync_state["ada"].subscribe_retry_at == timer.due_at

        hooks.ready = True  # the endpoint is back; the next attempt is due
        clock[0] = timer.due_at
        await service.on_notification(timer.notification, Lane.LIVE)
        # Created although the worker's clock is ahead of Graph's: the requested
        # expiry keeps a margin below the maximum.
        assert len(emulator.subscriptions) == 1, outbox.status_names()
        channel = service.channels["ada"]
        assert channel.channel_id in emulator.subscriptions
        state = service.sync_state["ada"]
        assert state.subscribe_failures == 0 and state.subscribe_retry_at == 0.0
        assert service.timers["renew:ada"].due_at > clock[0] + 24 * 3600  # the ordinary renewal
    finally:
        await factory.aclose()
