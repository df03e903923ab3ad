"""Integration fixtures: a gateway served in-process on the session's real broker."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiohttp import web

from calsync.emulators.google import GoogleEmulator
from calsync.emulators.microsoft import MicrosoftEmulator
from calsync.gateway.http import build_gateway_app
from calsync.gateway.publisher import KafkaPublisher
from calsync.model import ChangeKind, UnifiedEvent
from calsync.normalize.windows_zones import zone_for
from calsync.settings import Settings
from calsync.streams.records import StatusEvent
from calsync.streams.topics import ensure_topics
from calsync.testing.cluster import WorkerCluster
from calsync.testing.topics import TopicReader
from calsync.testing.worker import WorkerProcess
from tests.conftest import ADMIN_TOKEN, free_port

GatewayFactory = Callable[[Settings], Awaitable[str]]


@asynccontextmanager
async def serve_gateway(settings: Settings, port: int | None = None) -> AsyncIterator[str]:
    """The standalone gateway on ``port`` (default: a free one); yields its base URL."""
    await asyncio.to_thread(ensure_topics, settings)
    publisher = KafkaPublisher(settings.kafka_bootstrap)
    await publisher.start()
    runner = web.AppRunner(build_gateway_app(settings, publisher))
    await runner.setup()
    port = port or free_port()
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


CLIENT_ID, CLIENT_SECRET = "test-client", "test-client-secret"
BASE = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)


def event_body(n: int, *, hours: float = 0.5, day_offset: int = 0) -> dict[str, Any]:
    start = BASE + timedelta(days=day_offset, hours=n)
    return {
        "summary": f"private meeting {n}",
        "start": {"dateTime": start.isoformat()},
        "end": {"dateTime": (start + timedelta(hours=hours)).isoformat()},
    }


def ms_event_body(n: int, *, hours: float = 0.5, zone: str = "UTC") -> dict[str, Any]:
    """A Graph event n hours after BASE, written as wall time in ``zone`` (UTC here)."""
    start = BASE + timedelta(hours=n)
    fmt = "%Y-%m-%dT%H:%M:%S.0000000"
    return {
        "subject": f"private meeting {n}",
        "start": {"dateTime": start.strftime(fmt), "timeZone": zone},
        "end": {"dateTime": (start + timedelta(hours=hours)).strftime(fmt), "timeZone": zone},
        "showAs": "busy",
    }


def fold(
    events: list[UnifiedEvent],
) -> dict[tuple[str, str], tuple[datetime | None, str | None]]:
    """Fold events as a consumer does: (resource, id) -> (start, intent); deletes remove."""
    view: dict[tuple[str, str], tuple[datetime | None, str | None]] = {}
    for e in events:
        key = (e.resource_id, e.native_event_id)
        if e.change is ChangeKind.DELETE:
            view.pop(key, None)
        else:
            view[key] = (e.start_utc, e.status_intent.value if e.status_intent else None)
    return view


@dataclass
class GoogleWorld:
    """The emulators, one worker and readers of its topics; ``emulator`` is Google's,
    ``ms`` Microsoft's (when started)."""

    emulator: GoogleEmulator
    settings: Settings
    worker: WorkerProcess
    events: TopicReader
    ms: MicrosoftEmulator | None = None
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    providers: dict[str, str] = field(default_factory=dict)

    def calendar(self, name: str, *, time_zone: str = "UTC") -> str:
        """Add a Google calendar with its own OAuth grant; returns its calendar id."""
        calendar_id = f"{name}@example.com"
        self.emulator.add_calendar(calendar_id, time_zone=time_zone)
        self.refresh_tokens[name] = self.emulator.issue_refresh_token(CLIENT_ID)
        self.providers[name] = "google"
        return calendar_id

    def mailbox(self, name: str, *, time_zone: str = "UTC") -> str:
        """Add a Microsoft mailbox with its own grant; returns its user id."""
        assert self.ms is not None
        user_id = f"{name}@contoso.com"
        self.ms.add_mailbox(user_id, time_zone=time_zone)
        self.refresh_tokens[name] = self.ms.issue_refresh_token(CLIENT_ID)
        self.providers[name] = "microsoft"
        return user_id

    @property
    def admin_url(self) -> str:
        """Where the worker serves its admin API: its web port, or CALSYNC_ADMIN_BIND."""
        if self.settings.admin_address is None:
            return self.worker.url
        host, port = self.settings.admin_address
        return f"http://{host}:{port}"

    async def register(self, name: str, *, refresh_token: str | None = None) -> None:
        provider = self.providers.get(name, "google")
        domain = "contoso.com" if provider == "microsoft" else "example.com"
        body = {
            "resource_id": name,
            "provider": provider,
            "calendar_id": f"{name}@{domain}",
            "credentials": {"refresh_token": refresh_token or self.refresh_tokens[name]},
        }
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{self.admin_url}/api/resources",
                json=body,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
        assert response.status_code == 202, response.text

    async def api_status(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            response = await client.get(
                f"{self.admin_url}/api/status", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            )
        response.raise_for_status()
        return dict(response.json())

    def decoded(self) -> list[UnifiedEvent]:
        return self.events.events()

    def view(self) -> dict[tuple[str, str], tuple[datetime | None, str | None]]:
        """What a consumer that folds the topic believes: (resource, id) -> (start, intent)."""
        return fold(self.decoded())

    def truth(self, names: list[str]) -> dict[tuple[str, str], tuple[datetime | None, str | None]]:
        """The emulator's current events of those calendars, as the consumer should see them."""
        truth: dict[tuple[str, str], tuple[datetime | None, str | None]] = {}
        for name in names:
            if self.providers.get(name) == "microsoft":
                assert self.ms is not None
                for item in self.ms.list_live_events(f"{name}@contoso.com"):
                    wall = datetime.fromisoformat(item["start"]["dateTime"][:26])
                    zone = zone_for(item["start"].get("timeZone") or "UTC")
                    truth[(name, item["id"])] = (wall.replace(tzinfo=zone).astimezone(UTC), "busy")
                continue
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
async def google_world(  # type: ignore[no-untyped-def]
    kafka_settings,
    *,
    microsoft: bool = False,
    clock: Callable[[], float] | None = None,
    **overrides: Any,
) -> AsyncIterator[GoogleWorld]:
    """Started emulators (Google; Microsoft too if asked) and a worker configured for
    them; the worker's settings take ``overrides``. ``clock`` runs the emulators."""
    async with contextlib.AsyncExitStack() as stack:
        emulator = GoogleEmulator(seed=1234, clock=clock or time.time)
        await emulator.start()
        stack.push_async_callback(emulator.aclose)
        emulator.add_client(CLIENT_ID, CLIENT_SECRET)
        extra: dict[str, Any] = {}
        ms: MicrosoftEmulator | None = None
        if microsoft:
            ms = MicrosoftEmulator(seed=1234, clock=clock or time.time)
            await ms.start()
            stack.push_async_callback(ms.aclose)
            ms.add_client(CLIENT_ID, CLIENT_SECRET)
            extra = {
                "graph_api_url": ms.api_url,
                "microsoft_authority": ms.authority,
                "microsoft_client_id": CLIENT_ID,
                "microsoft_client_secret": CLIENT_SECRET,
                "microsoft_ca_bundle": ms.ca_bundle_path,
            }
        settings = kafka_settings(
            google_api_url=emulator.api_url,
            google_token_url=emulator.token_url,
            google_auth_url=emulator.auth_url,
            google_client_id=CLIENT_ID,
            google_client_secret=CLIENT_SECRET,
            **extra,
            **overrides,
        )
        worker = WorkerProcess(settings)
        await asyncio.to_thread(worker.start)
        stack.push_async_callback(asyncio.to_thread, worker.stop)
        events = await TopicReader(settings.kafka_bootstrap, settings.topic("events")).start()
        stack.push_async_callback(events.aclose)
        yield GoogleWorld(emulator, settings, worker, events, ms=ms)


# -- several workers of one app behind a standalone gateway (failover, availability) ----

View = dict[tuple[str, str], tuple[datetime | None, str | None]]


@dataclass
class Cluster:
    emulator: GoogleEmulator
    settings: Settings
    gateway: str
    workers: WorkerCluster
    events: TopicReader
    ids: dict[str, list[str]] = field(default_factory=dict)

    @property
    def notifications(self) -> str:
        return self.settings.topic("notifications")

    def add_calendars(self, count: int, events: int) -> list[str]:
        names = [f"cal{n:02d}" for n in range(len(self.ids), len(self.ids) + count)]
        for name in names:
            calendar = f"{name}@example.com"
            self.emulator.add_calendar(calendar)
            self.ids[name] = [
                str(e["id"])
                for e in self.emulator.insert_events(
                    calendar, (event_body(n % 24, day_offset=n // 24) for n in range(events))
                )
            ]
        return names

    async def register(self, names: list[str]) -> None:
        async with httpx.AsyncClient() as client:
            for name in names:
                body = {
                    "resource_id": name,
                    "provider": "google",
                    "calendar_id": f"{name}@example.com",
                    "credentials": {"refresh_token": self.emulator.issue_refresh_token(CLIENT_ID)},
                }
                response = await client.post(
                    f"{self.gateway}/api/resources",
                    json=body,
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                )
                assert response.status_code == 202, response.text

    def change(self, names: list[str], round_: int) -> None:
        """One pushed change per calendar: its first event moves to a new hour."""
        for name in names:
            self.emulator.patch_event(
                f"{name}@example.com",
                self.ids[name][0],
                event_body(round_ % 24, day_offset=60 + round_ // 24),
            )

    def view(self) -> View:
        return fold(self.events.events())

    def truth(self) -> View:
        truth: View = {}
        for name in self.ids:
            for event in self.emulator.list_live_events(f"{name}@example.com"):
                start = datetime.fromisoformat(event["start"]["dateTime"]).astimezone(UTC)
                truth[(name, event["id"])] = (start, "busy")
        return truth

    async def converge(self, *, deadline: float) -> None:
        """Poll calsync.events until its view equals the emulator (``deadline`` monotonic)."""
        while self.view() != self.truth():
            if time.monotonic() > deadline:
                view, truth = self.view(), self.truth()
                missing = sorted(k for k, v in truth.items() if view.get(k) != v)
                per_calendar = Counter(name for name, _ in missing)
                logs = "\n".join(w.tail(25) for w in self.workers.workers)
                stacks = "\n".join(
                    f"worker {i} is waiting in:\n{w.stacks()}"
                    for i, w in enumerate(self.workers.workers)
                )
                raise AssertionError(
                    f"not converged, {len(missing)} missing {missing[:8]}\n"
                    f"missing per calendar: {dict(per_calendar)}\n"
                    f"{await self.workers_status()}\n{stacks}\n{logs}"
                )
            await self.events.poll(0.2)

    async def workers_status(self) -> str:
        """Each running worker's ``/api/status`` (its dispatcher's partitions, retries
        and timers): what a convergence failure needs to be understood."""
        lines = []
        async with httpx.AsyncClient(timeout=5.0) as client:
            for worker in self.workers.workers:
                if not worker.running:
                    lines.append(f"worker {worker.pid}: not running")
                    continue
                try:
                    answer = await client.get(
                        f"{worker.url}/api/status",
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                    )
                    lines.append(f"worker {worker.pid}: {answer.text[:4000]}")
                except httpx.HTTPError as exc:
                    lines.append(f"worker {worker.pid}: status unavailable: {exc!r}")
        return "\n".join(lines)

    def agree_since(self, mark: int, *, earlier: View | None = None) -> None:
        """Every event emitted since ``mark`` says what the emulator says now (or said
        in ``earlier``, for changes still in flight at the mark): a replay repeats an
        event, it never emits one with other content."""
        truth = self.truth()
        for e in self.events.events()[mark:]:
            key = (e.resource_id, e.native_event_id)
            assert e.change is ChangeKind.UPSERT, e
            state = (e.start_utc, e.status_intent.value if e.status_intent else None)
            allowed = {truth.get(key), (earlier or {}).get(key)}
            assert state in allowed, f"{key}: emitted {state}, truth {truth.get(key)}"


@asynccontextmanager
async def cluster(
    kafka_settings: Any, *, workers: int = 2, start: bool = True, **overrides: Any
) -> AsyncIterator[Cluster]:
    async with contextlib.AsyncExitStack() as stack:
        emulator = GoogleEmulator(seed=4321)
        await emulator.start()
        stack.push_async_callback(emulator.aclose)
        emulator.add_client(CLIENT_ID, CLIENT_SECRET)
        base: Settings = kafka_settings(
            google_api_url=emulator.api_url,
            google_token_url=emulator.token_url,
            google_client_id=CLIENT_ID,
            google_client_secret=CLIENT_SECRET,
            **{"kafka_session_timeout": 6.0, **overrides},
        )
        gateway = await stack.enter_async_context(serve_gateway(base))
        settings = dataclasses.replace(base, public_url=gateway)
        group = WorkerCluster(settings, workers)
        stack.push_async_callback(asyncio.to_thread, group.stop)
        if start:
            await asyncio.to_thread(group.start)
        events = await TopicReader(settings.kafka_bootstrap, settings.topic("events")).start()
        stack.push_async_callback(events.aclose)
        yield Cluster(emulator, settings, gateway, group, events)
