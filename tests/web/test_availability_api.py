"""The availability API's answers and refusals, on one worker's tables (no broker).

The tables are dicts filled the way the sync and the holds agent fill them; the
ownership says "this worker" (or "another one", for the routing refusals). Requests
that need the broker (holds) are covered by tests/integration/test_availability.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from calsync.availability.holds import HoldBook, fingerprint, new_hold_id
from calsync.availability.index import BusyIndex, Entry
from calsync.availability.intervals import Flag
from calsync.gateway.holds import HoldBoard
from calsync.gateway.http import Gateway
from calsync.streams.records import HoldRequest
from calsync.tables.records import Channel, Resource, SyncState
from calsync.web.availability import AvailabilityApi, IndexTables
from calsync.web.holds import HoldsApi
from calsync.web.routing import ROUTED, Router
from calsync.web.sites import new_application
from tests.conftest import ADMIN_TOKEN, SettingsFactory

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NOW = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)  # a Monday
T = int(NOW.timestamp())


class Here:
    """Every resource is this worker's, except those in ``elsewhere``."""

    def __init__(self, elsewhere: dict[str, str] | None = None) -> None:
        self.elsewhere = elsewhere or {}

    def owner(self, resource_id: str) -> str | None:
        return self.elsewhere.get(resource_id)


class NullPublisher:
    async def publish(self, topic: str, key: str, value: bytes) -> None:
        return None


def iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def tables() -> IndexTables:
    resources = {
        "dr-lee": Resource(provider="google", calendar_id="lee", registered_at=0.0, credentials={}),
        "room-4": Resource(provider="caldav", calendar_id="r4", registered_at=0.0, credentials={}),
        "gone": Resource(
            provider="microsoft",
            calendar_id="g",
            registered_at=0.0,
            credentials={},
            state="reauth_required",
        ),
    }
    index = BusyIndex(
        {
            "standup": Entry("standup", T + 3600, T + 5400, int(Flag.BUSY), T - 60),
            "maybe": Entry("maybe", T + 7200, T + 9000, int(Flag.TENTATIVE), T - 60),
        }
    )
    book = HoldBook("room-4")
    participants = ["room-4"]
    book.handle(
        HoldRequest(
            kind="prepare",
            hold_id=new_hold_id("k", participants),
            resource_id="room-4",
            issued_at=0.0,
            home="room-4",
            participants=participants,
            start=T + 3600,
            end=T + 7200,
            ttl=3600.0,
            fingerprint=fingerprint(participants, T + 3600, T + 7200, 3600.0),
        ),
        float(T),
        lambda s, e, m: None,
    )
    return IndexTables(
        resources=resources,
        sync_state={
            "dr-lee": SyncState(synced_at=T - 60.0),
            "room-4": SyncState(synced_at=T - 30.0),
        },
        channels={"dr-lee": Channel("c", "p", (T + 86400) * 1000, T - 100.0)},
        busy={"dr-lee": index.encode(), "room-4": BusyIndex().encode()},
        holds={"room-4": book.encode()},
    )


@pytest.fixture
async def client(make_settings: SettingsFactory) -> AsyncIterator[TestClient[Any, Any]]:
    settings = make_settings()
    gateway = Gateway(settings, NullPublisher())
    router = Router(settings, Here({"far-away": "http://127.0.0.1:9"}))
    data = tables()
    apis = (
        AvailabilityApi(settings, gateway, data, router, clock=lambda: float(T)),
        HoldsApi(settings, gateway, data.holds, router, HoldBoard, clock=lambda: float(T)),
    )
    app: web.Application = new_application(settings, [r for a in apis for r in a.routes()])
    async with TestClient(TestServer(app)) as test_client:
        yield test_client
    await apis[1].aclose()
    await router.aclose()


async def test_one_resource_with_its_freshness(client: TestClient[Any, Any]) -> None:
    response = await client.get(
        "/api/availability/dr-lee",
        params={"start": iso(T), "end": iso(T + 86400)},
        headers=AUTH,
    )
    assert response.status == 200
    body = await response.json()
    assert body["busy"] == [
        {"start": iso(T + 3600), "end": iso(T + 5400), "status": ["busy"], "all_day": False},
        {"start": iso(T + 7200), "end": iso(T + 9000), "status": ["tentative"], "all_day": False},
    ]
    assert body["as_of"]["fresh"] is True and body["as_of"]["synced_at"] == T - 60
    assert body["as_of"]["push"]["healthy"] is True


async def test_holds_and_staleness_are_reported(client: TestClient[Any, Any]) -> None:
    room = await (await client.get("/api/availability/room-4", headers=AUTH)).json()
    assert [h["state"] for h in room["holds"]] == ["accepted"]
    assert room["as_of"]["fresh"] is True  # polled 30 s ago
    gone = await (await client.get("/api/availability/gone", headers=AUTH)).json()
    assert gone["as_of"]["fresh"] is False
    assert "reconnect" in gone["as_of"]["reason"] and gone["as_of"]["synced_at"] is None


async def test_explain_names_the_event_not_its_content(client: TestClient[Any, Any]) -> None:
    response = await client.get(
        "/api/availability/dr-lee/explain", params={"at": iso(T + 3700)}, headers=AUTH
    )
    body = await response.json()
    assert body["verdict"] == "busy"
    (occurrence,) = body["occurrences"]
    assert occurrence["provider"] == "google" and len(occurrence["system_event_id"]) == 36
    assert "standup" not in str(body)  # not even the provider's own id
    tentative = await client.get(
        "/api/availability/dr-lee/explain", params={"at": iso(T + 7300)}, headers=AUTH
    )
    assert (await tentative.json())["verdict"] == "free"  # tentative does not block by default


async def test_slots_across_resources_in_working_hours(client: TestClient[Any, Any]) -> None:
    body = {
        "resources": [
            {
                "id": "dr-lee",
                "working_hours": {
                    "zone": "W. Europe Standard Time",  # a Windows name works too
                    "weekly": {"mon": [["09:00", "13:00"]]},
                },
            },
            "room-4",
        ],
        "start": iso(T),
        "end": iso(T + 86400),
        "duration_minutes": 30,
        "granularity_minutes": 30,
    }
    response = await client.post("/api/availability/query", json=body, headers=AUTH)
    assert response.status == 200, await response.text()
    slots = (await response.json())["slots"]
    starts = [s["start"] for s in slots]
    # 09:00-13:00 Berlin is 08:00-12:00 UTC; the standup (09:00-09:30 UTC) and the
    # room's hold (09:00-10:00) block, the tentative 10:00-10:30 does not
    assert starts == [iso(T + m * 60) for m in (0, 30, 120, 150, 180, 210)]
    assert all(s["as_of"] == iso(T - 60) and s["fresh"] for s in slots)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"resources": [], "start": iso(T), "end": iso(T + 60)}, "resources"),
        ({"resources": ["dr-lee"], "start": "tomorrow", "end": iso(T)}, "ISO 8601"),
        ({"resources": ["dr-lee"], "start": iso(T)}, "'end' is a required property"),
        ({"resources": ["dr-lee"], "start": "2026-12-07T08:00:00", "end": "x"}, "offset"),
        ({"resources": ["dr-lee"], "start": iso(T), "end": iso(T - 1)}, "after start"),
        ({"resources": ["dr-lee"], "start": iso(T), "end": iso(T + 90 * 86400)}, "62 days"),
        (
            {"resources": ["dr-lee"], "start": iso(T), "end": iso(T + 3600), "blocking": ["x"]},
            "is not one of",
        ),
        ({"resources": ["dr-lee", "dr-lee"], "start": iso(T), "end": iso(T + 3600)}, "twice"),
        (
            {"resources": ["dr-lee"], "start": iso(T), "end": iso(T + 3600), "required": 2},
            "required",
        ),
        ({"resources": ["nobody"], "start": iso(T), "end": iso(T + 3600)}, "unknown resources"),
        (
            {
                "resources": [{"id": "dr-lee", "working_hours": {"zone": "Mars/Olympus"}}],
                "start": iso(T),
                "end": iso(T + 3600),
            },
            "zone",
        ),
    ],
)
async def test_bad_queries_say_what_is_wrong(
    client: TestClient[Any, Any], body: dict[str, Any], words: str
) -> None:
    response = await client.post("/api/availability/query", json=body, headers=AUTH)
    assert 400 <= response.status < 500
    assert words in (await response.json())["error"]


async def test_a_routed_request_for_a_resource_owned_elsewhere_is_refused(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get(
        "/api/availability/far-away", headers={**AUTH, ROUTED: "other-worker"}
    )
    assert response.status == 503  # never forwarded twice
    response = await client.get("/api/availability/far-away", headers=AUTH)
    assert response.status == 503  # the owner cannot be reached: retry, not an error page


async def test_bad_hold_requests(client: TestClient[Any, Any]) -> None:
    for body, words in [
        ({"resources": ["dr-lee"], "start": iso(T), "end": iso(T + 60)}, "idempotency_key"),
        (
            {
                "resources": [f"r{n}" for n in range(21)],
                "start": iso(T),
                "end": iso(T + 60),
                "idempotency_key": "k",
            },
            "resources",
        ),
        (
            {
                "resources": ["dr-lee"],
                "start": iso(T),
                "end": iso(T + 60),
                "idempotency_key": "k",
                "ttl_seconds": 0,
            },
            "ttl_seconds",
        ),
    ]:
        response = await client.post("/api/holds", json=body, headers=AUTH)
        assert response.status == 400 and words in (await response.json())["error"]
    response = await client.get("/api/holds/not-a-hold", headers=AUTH)
    assert response.status == 400
    unknown = new_hold_id("nope", ["room-4"])
    assert (await client.get(f"/api/holds/{unknown}", headers=AUTH)).status == 404
    assert (await client.delete(f"/api/holds/{unknown}", headers=AUTH)).status == 404
