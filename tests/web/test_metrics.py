"""calsync.web.metrics: what the event counters and latency histogram add up to."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from calsync.model import Occurrence, ProviderOrigin, StatusIntent, Transparency, UnifiedEvent
from calsync.web.metrics import Metrics


def sample(metrics: Metrics, name: str, labels: dict[str, str]) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def event(
    origin: ProviderOrigin, native: str, *, delete: bool, latency_ms: int | None
) -> UnifiedEvent:
    now = datetime(2026, 12, 2, 9, tzinfo=UTC)
    if delete:
        return UnifiedEvent.delete(origin, "r", native, emitted_at=now, latency_ms=latency_ms)
    occurrence = Occurrence(
        native_event_id=native,
        start_utc=now,
        end_utc=now + timedelta(hours=1),
        is_all_day=False,
        transparency=Transparency.OPAQUE,
        status_intent=StatusIntent.BUSY,
    )
    return UnifiedEvent.upsert(origin, "r", occurrence, emitted_at=now, latency_ms=latency_ms)


def test_events_are_counted_by_provider_and_change_and_each_latency_observed() -> None:
    metrics = Metrics()
    batch = [
        event(ProviderOrigin.GOOGLE, "a", delete=False, latency_ms=20),
        event(ProviderOrigin.GOOGLE, "b", delete=False, latency_ms=3000),
        event(ProviderOrigin.GOOGLE, "c", delete=True, latency_ms=None),
        event(ProviderOrigin.MICROSOFT, "d", delete=False, latency_ms=40),
    ]
    metrics.observe_events(batch)
    metrics.observe_events(batch[:1])
    total = "calsync_events_emitted_total"
    assert sample(metrics, total, {"provider": "google", "change": "upsert"}) == 3
    assert sample(metrics, total, {"provider": "google", "change": "delete"}) == 1
    assert sample(metrics, total, {"provider": "microsoft", "change": "upsert"}) == 1
    assert metrics.totals["events"] == 5
    latency = "calsync_webhook_to_event_seconds"
    assert sample(metrics, f"{latency}_count", {"provider": "google"}) == 3
    assert sample(metrics, f"{latency}_sum", {"provider": "google"}) == 0.02 + 3.0 + 0.02
    assert sample(metrics, f"{latency}_count", {"provider": "microsoft"}) == 1


async def test_api_requests_are_timed_by_route_and_say_so_in_server_timing() -> None:
    """An availability answer carries ``Server-Timing: app;dur=<ms>`` and is counted
    under its route's pattern (never the resource id); other routes are not timed."""
    metrics = Metrics()

    async def answer(request: web.Request) -> web.Response:
        await asyncio.sleep(0.02)
        return web.json_response({"resource_id": request.match_info["resource_id"]})

    async def other(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application(middlewares=[metrics.middleware()])
    app.add_routes(
        [web.get("/api/availability/{resource_id}", answer), web.get("/api/resources", other)]
    )
    async with TestClient(TestServer(app)) as client:
        for rid in ("dr-lee", "room-4"):
            response = await client.get(f"/api/availability/{rid}")
            assert response.status == 200
            timing = response.headers["Server-Timing"]
            assert timing.startswith("app;dur=")
            assert 20.0 <= float(timing.removeprefix("app;dur=")) < 20_000.0
        response = await client.get("/api/resources")
        assert "Server-Timing" not in response.headers
    name = "calsync_api_request_seconds"
    route = {"route": "/api/availability/{resource_id}"}
    assert sample(metrics, f"{name}_count", route) == 2
    assert sample(metrics, f"{name}_sum", route) >= 0.04
    families = [m for m in metrics.registry.collect() if m.name == name]
    routes = {s.labels.get("route") for f in families for s in f.samples} - {None}
    assert routes == {"/api/availability/{resource_id}"}
