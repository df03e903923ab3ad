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


# -- a Google world: emulator in-process, worker as a subprocess, readers on its topics ----

import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402

from calsync.emulators.google import GoogleEmulator  # noqa: E402
from calsync.model import ChangeKind, UnifiedEvent  # noqa: E402
from calsync.streams.records import StatusEvent  # noqa: E402
from calsync.testing.topics import TopicReader  # noqa: E402
from calsync.testing.worker import WorkerProcess  # noqa: E402
from tests.conftest import ADMIN_TOKEN  # noqa: E402

CLIENT_ID, CLIENT_SECRET = "test-client", "test-client-secret"
BASE = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)


def event_body(n: int, *, hours: float = 0.5, day_offset: int = 0) -> dict[str, Any]:
    start = BASE + timedelta(days=day_offset, hours=n)
    return {
        "summary": f"private meeting {n}",
        "start": {"dateTime": start.isoformat()},
        "end": {"dateTime": (start + timedelta(hours=hours)).isoformat()},
    }


@dataclass
class GoogleWorld:
    """The emulator, one worker and readers of its topics; plus a truth the test keeps."""

    emulator: GoogleEmulator
    settings: Settings
    worker: WorkerProcess
    events: TopicReader
    refresh_tokens: dict[str, str] = field(default_factory=dict)

    def calendar(self, name: str, *, time_zone: str = "UTC") -> str:
        """Add a calendar with its own OAuth grant; returns its calendar id."""
        calendar_id = f"{name}@example.com"
        self.emulator.add_calendar(calendar_id, time_zone=time_zone)
        self.refresh_tokens[name] = self.emulator.issue_refresh_token(CLIENT_ID)
        return calendar_id

    async def register(self, name: str, *, refresh_token: str | None = None) -> None:
        body = {
            "resource_id": name,
            "provider": "google",
            "calendar_id": f"{name}@example.com",
            "credentials": {"refresh_token": refresh_token or self.refresh_tokens[name]},
        }
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{self.worker.url}/api/resources",
                json=body,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
        assert response.status_code == 202, response.text

    async def api_status(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{self.worker.url}/api/status")
        response.raise_for_status()
        return dict(response.json())

    def decoded(self) -> list[UnifiedEvent]:
        return self.events.events()

    def view(self) -> dict[tuple[str, str], tuple[datetime | None, str | None]]:
        """What a consumer that folds the topic believes: (resource, id) -> (start, intent)."""
        view: dict[tuple[str, str], tuple[datetime | None, str | None]] = {}
        for e in self.decoded():
            key = (e.resource_id, e.native_event_id)
            if e.change is ChangeKind.DELETE:
                view.pop(key, None)
            else:
                view[key] = (e.start_utc, e.status_intent.value if e.status_intent else None)
        return view

    def truth(self, names: list[str]) -> dict[tuple[str, str], tuple[datetime | None, str | None]]:
        """The emulator's current events of those calendars, as the consumer should see them."""
        truth: dict[tuple[str, str], tuple[datetime | None, str | None]] = {}
        for name in names:
            for event in self.emulator.list_live_events(f"{name}@example.com"):
                start = datetime.fromisoformat(event["start"]["dateTime"]).astimezone(UTC)
                truth[(name, event["id"])] = (start, "busy")
        return truth

    async def wait_for_count(self, count: int, timeout: float = 90.0) -> None:
        try:
            await self.events.wait_for(lambda r: len(r.values) >= count, timeout=timeout)
        except TimeoutError:
            raise AssertionError(
                f"saw {len(self.events.values)} of {count} events\n{self.worker.tail()}"
            ) from None

    async def wait_converged(self, names: list[str], timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while self.view() != self.truth(names):
            if time.monotonic() > deadline:
                view, truth = self.view(), self.truth(names)
                missing = {k: v for k, v in truth.items() if view.get(k) != v}
                extra = {k: v for k, v in view.items() if k not in truth}
                raise AssertionError(
                    f"not converged: {len(missing)} missing/wrong, {len(extra)} extra\n"
                    f"{list(missing.items())[:5]} {list(extra.items())[:5]}\n{self.worker.tail()}"
                )
            await self.events.poll(0.3)

    async def statuses(self) -> list[StatusEvent]:
        reader = TopicReader(self.settings.kafka_bootstrap, self.settings.topic("status"))
        await reader.start()
        try:
            await reader.settle(quiet=0.5)
            return [StatusEvent.loads(v) for v in reader.values]
        finally:
            await reader.aclose()


@asynccontextmanager
async def google_world(kafka_settings, **overrides: Any) -> AsyncIterator[GoogleWorld]:  # type: ignore[no-untyped-def]
    """A started emulator and worker; the worker's settings take ``overrides``."""
    async with GoogleEmulator(seed=1234) as emulator:
        emulator.add_client(CLIENT_ID, CLIENT_SECRET)
        settings = kafka_settings(
            google_api_url=emulator.api_url,
            google_token_url=emulator.token_url,
            google_client_id=CLIENT_ID,
            google_client_secret=CLIENT_SECRET,
            **overrides,
        )
        worker = WorkerProcess(settings)
        await asyncio.to_thread(worker.start)
        events = await TopicReader(settings.kafka_bootstrap, settings.topic("events")).start()
        try:
            yield GoogleWorld(emulator, settings, worker, events)
        finally:
            await events.aclose()
            await asyncio.to_thread(worker.stop)
