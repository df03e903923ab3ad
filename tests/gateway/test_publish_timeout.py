"""A broker that does not acknowledge: the gateway answers 503 with Retry-After within
``gateway_publish_timeout``, instead of holding the webhook for the whole outage."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from calsync.crypto import WebhookSigner
from calsync.gateway.http import Gateway
from calsync.gateway.status import StatusBoard
from tests.conftest import ADMIN_TOKEN, SettingsFactory

NOW = 1_800_000_000.0


class StalledPublisher:
    """A broker that is away: a write is never acknowledged."""

    def __init__(self) -> None:
        self.attempts = 0

    async def publish(self, topic: str, key: str, value: bytes) -> None:
        self.attempts += 1
        await asyncio.sleep(3600)


class FailingPublisher:
    async def publish(self, topic: str, key: str, value: bytes) -> None:
        raise ConnectionError("broker unreachable")


async def answers(
    make_settings: SettingsFactory, publisher: object, timeout: float
) -> list[tuple[int, str | None, float]]:
    settings = make_settings(gateway_publish_timeout=timeout)
    gateway = Gateway(settings, publisher, clock=lambda: NOW, statuses=StatusBoard())  # type: ignore[arg-type]
    app = web.Application()
    app.add_routes(gateway.routes())
    token = WebhookSigner(settings.secret_key).channel_token(
        "cs-1", "room-1", expires_at_ms=int((NOW + 3600) * 1000)
    )
    push = {
        "X-Goog-Channel-ID": "cs-1",
        "X-Goog-Channel-Token": token,
        "X-Goog-Resource-State": "exists",
        "X-Goog-Message-Number": "7",
    }
    register = {
        "resource_id": "room-1",
        "provider": "google",
        "calendar_id": "primary",
        "credentials": {"refresh_token": "1//refresh"},
    }
    results = []
    async with TestClient(TestServer(app)) as client:
        for send in (
            lambda: client.post("/webhooks/google", headers=push),
            lambda: client.post(
                "/api/resources",
                json=register,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ),
        ):
            started = time.monotonic()
            response = await asyncio.wait_for(send(), 30)
            await response.read()
            results.append(
                (response.status, response.headers.get("Retry-After"), time.monotonic() - started)
            )
    return results


async def test_an_unacknowledged_write_is_503_with_retry_after_within_the_timeout(
    make_settings: SettingsFactory,
) -> None:
    publisher = StalledPublisher()
    for status, retry_after, took in await answers(make_settings, publisher, 0.5):
        assert (status, retry_after) == (503, "1")
        assert took < 10, f"answered after {took:.1f}s"
    assert publisher.attempts == 2


async def test_a_failed_write_is_503_with_retry_after(make_settings: SettingsFactory) -> None:
    for status, retry_after, _ in await answers(make_settings, FailingPublisher(), 4.2):
        assert (status, retry_after) == (503, "5")
