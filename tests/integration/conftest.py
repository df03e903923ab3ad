"""Integration fixtures: a gateway served in-process on the session's real broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from calsync.gateway.http import build_gateway_app
from calsync.gateway.publisher import KafkaPublisher
from calsync.settings import Settings
from calsync.streams.topics import ensure_topics
from tests.conftest import free_port

GatewayFactory = Callable[[Settings], Awaitable[str]]


@asynccontextmanager
async def serve_gateway(settings: Settings) -> AsyncIterator[str]:
    """The standalone gateway on a free port; yields its base URL."""
    await asyncio.to_thread(ensure_topics, settings)
    publisher = KafkaPublisher(settings.kafka_bootstrap)
    await publisher.start()
    runner = web.AppRunner(build_gateway_app(settings, publisher))
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await publisher.aclose()


@pytest.fixture
async def kafka_settings(make_settings, kafka_bootstrap):  # type: ignore[no-untyped-def]
    """A settings factory bound to the session broker."""

    def factory(**overrides):  # type: ignore[no-untyped-def]
        return make_settings(kafka_bootstrap=kafka_bootstrap, **overrides)

    return factory
