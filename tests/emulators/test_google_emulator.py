"""The Google Calendar emulator, driven over real HTTP as the provider adapter will be.

Each test starts an in-process emulator on a free port (same event loop) and
talks to it with ``httpx.AsyncClient``; pushes go to a small aiohttp receiver.
Expected bodies and headers are the ones in the Google Calendar API v3 reference and
Google's OAuth 2.0 docs for refreshing an access token.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import google.auth.exceptions
import google.auth.transport.requests
import google.oauth2.credentials
import httpx
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from calsync.emulators.google import (
    DROPPED,
    FORBIDDEN_WITH_SYNC_TOKEN,
    GoogleApiError,
    GoogleEmulator,
    build_parser,
    serve_forever,
)

CAL = "alice@example.com"
OTHER_CAL = "room-1@example.com"
CLIENT_ID = "calsync-test.apps.googleusercontent.com"
CLIENT_SECRET = "not-a-real-secret"
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

AUTH_ERROR = {
    "error": {
        "errors": [
            {
                "domain": "global",
                "reason": "authError",
                "message": "Invalid Credentials",
                "locationType": "header",
                "location": "Authorization",
            }
        ],
        "code": 401,
        "message": "Invalid Credentials",
    }
}
FULL_SYNC_REQUIRED = {
    "error": {
        "errors": [
            {
                "domain": "calendar",
                "reason": "fullSyncRequired",
                "message": "Sync token is no longer valid, a full sync is required.",
                "locationType": "parameter",
                "location": "syncToken",
            }
        ],
        "code": 410,
        "message": "Sync token is no longer valid, a full sync is required.",
    }
}


class FakeClock:
    """A settable clock for the emulator, starting at ``T0``."""

    def __init__(self, start: datetime = T0) -> None:
        self.value = start.timestamp()

    def __call__(self) -> float:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += seconds


@dataclass
class Push:
    """One request the receiver got: raw header names kept to check their spelling."""

    headers: dict[str, str]
    raw_names: list[str]
    body: bytes


@dataclass
class Receiver:
    """A webhook endpoint answering ``statuses`` in turn (then 200)."""

    url: str = ""
    pushes: list[Push] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.pushes.append(
            Push(
                {k: v for k, v in request.headers.items()},
                [name.decode() for name, _ in request.raw_headers],
                await request.read(),
            )
        )
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def emu(clock: FakeClock) -> AsyncIterator[GoogleEmulator]:
    async with GoogleEmulator(seed=7, clock=clock, push_retry_delays=(0.01, 0.01)) as emulator:
        emulator.add_calendar(CAL, time_zone="Europe/Zurich")
        emulator.add_calendar(OTHER_CAL)
        emulator.add_client(CLIENT_ID, CLIENT_SECRET)
        yield emulator


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        yield client


async def mint_access_token(
    http: httpx.AsyncClient, emu: GoogleEmulator, calendar_ids: list[str] | None = None
) -> str:
    refresh_token = emu.issue_refresh_token(CLIENT_ID, calendar_ids)
    resp = await http.post(
        emu.token_url,
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        },
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["access_token"])


@pytest.fixture
async def api(emu: GoogleEmulator, http: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    token = await mint_access_token(http, emu)
    async with httpx.AsyncClient(
        base_url=emu.api_url,
        headers={"Authorization": f"Bearer {token}"},
        trust_env=False,
        timeout=10,
    ) as client:
        yield client


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield rec
    await runner.cleanup()


def events_path(calendar_id: str = CAL) -> str:
    return f"/calendars/{quote(calendar_id)}/events"


def timed(summary: str, start: datetime, minutes: int = 60, **extra: Any) -> dict[str, Any]:
    return {
        "summary": summary,
        "start": {"dateTime": start.isoformat()},
        "end": {"dateTime": (start + timedelta(minutes=minutes)).isoformat()},
        **extra,
    }


async def walk(
    api: httpx.AsyncClient, params: Mapping[str, str], calendar_id: str = CAL
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Page through one listing; returns (items, page bodies)."""
    items: list[dict[str, Any]] = []
    pages: list[dict[str, Any]] = []
    query = dict(params)
    while True:
        resp = await api.get(events_path(calendar_id), params=query)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        pages.append(body)
        items.extend(body["items"])
        if "nextPageToken" not in body:
            return items, pages
        query = {**params, "pageToken": body["nextPageToken"]}


async def sync_token_of(api: httpx.AsyncClient, params: Mapping[str, str] | None = None) -> str:
    _, pages = await walk(api, params or {})
    return str(pages[-1]["nextSyncToken"])


# --------------------------------------------------------------------------- events.list


async def test_paging_600_events_over_three_pages(
    emu: GoogleEmulator, api: httpx.AsyncClient
) -> None:
    for i in range(600):
        emu.insert_event(CAL, timed(f"e{i}", T0 + timedelta(hours=i)), notify=False)

    items, pages = await walk(api, {"maxResults": "250"})

    assert [len(p["items"]) for p in pages] == [250, 250, 100]
    assert len({item["id"] for item in items}) == 600
    for page in pages[:-1]:
        assert "nextPageToken" in page and "nextSyncToken" not in page
    assert "nextSyncToken" in pages[-1] and "nextPageToken" not in pages[-1]
    first = pages[0]
    assert first["kind"] == "calendar#events"
    assert first["timeZone"] == "Europe/Zurich"
    assert first["accessRole"] == "owner"
    assert first["defaultReminders"] == []
    assert {"etag", "summary", "updated"} <= first.keys()


async def test_default_page_size_and_event_shape(clock: FakeClock, http: httpx.AsyncClient) -> None:
    async with GoogleEmulator(page_size_default=3, clock=clock, seed=1) as emu:
        emu.add_calendar(CAL)
        emu.add_client(CLIENT_ID, CLIENT_SECRET)
        for i in range(5):
            emu.insert_event(CAL, timed(f"e{i}", T0, attendees=[{"email": "bob@example.com"}]))
        token = await mint_access_token(http, emu)
        resp = await http.get(
            emu.api_url + events_path(), headers={"Authorization": f"Bearer {token}"}
        )
    body = resp.json()
    assert len(body["items"]) == 3 and "nextPageToken" in body
    event = body["items"][0]
    assert event["kind"] == "calendar#event"
    assert event["status"] == "confirmed"
    assert event["eventType"] == "default"
    assert event["sequence"] == 0
    assert event["attendees"] == [{"email": "bob@example.com"}]
    assert event["updated"] == "2026-11-25T12:00:00.000Z"
    assert set(event["id"]) <= set("0123456789abcdefghijklmnopqrstuv")
    assert event["iCalUID"] == f"{event['id']}@google.com"
    assert "transparency" not in event


@pytest.mark.parametrize("name", FORBIDDEN_WITH_SYNC_TOKEN)
async def test_sync_token_with_forbidden_parameter_is_400(
    api: httpx.AsyncClient, name: str
) -> None:
    token = await sync_token_of(api)
    values = {
        "iCalUID": "x@google.com",
        "orderBy": "updated",
        "privateExtendedProperty": "a=b",
        "q": "standup",
        "sharedExtendedProperty": "a=b",
        "timeMin": "2026-01-01T00:00:00Z",
        "timeMax": "2027-01-01T00:00:00Z",
        "updatedMin": "2026-01-01T00:00:00Z",
    }

    resp = await api.get(events_path(), params={"syncToken": token, name: values[name]})

    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == 400
    assert error["errors"][0]["reason"] == "invalid"
    assert error["errors"][0]["domain"] == "global"
    assert error["errors"][0]["location"] == name
    assert error["message"] == error["errors"][0]["message"]


async def test_sync_token_with_show_deleted_false_is_configurable(
    clock: FakeClock, http: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    token = await sync_token_of(api)
    resp = await api.get(events_path(), params={"syncToken": token, "showDeleted": "false"})
    assert resp.status_code == 400

    async with GoogleEmulator(clock=clock, reject_show_deleted_false_with_sync_token=False) as lax:
        lax.add_calendar(CAL)
        lax.add_client(CLIENT_ID, CLIENT_SECRET)
        auth = {"Authorization": f"Bearer {await mint_access_token(http, lax)}"}
        first = await http.get(lax.api_url + events_path(), headers=auth)
        resp = await http.get(
            lax.api_url + events_path(),
            headers=auth,
            params={"syncToken": first.json()["nextSyncToken"], "showDeleted": "false"},
        )
        assert resp.status_code == 200


async def test_incremental_sync_returns_exactly_the_changes(
    emu: GoogleEmulator, api: httpx.AsyncClient
) -> None:
    kept = emu.insert_event(CAL, timed("kept", T0))
    patched = emu.insert_event(CAL, timed("to patch", T0))
    deleted = emu.insert_event(CAL, timed("to delete", T0))
    token = await sync_token_of(api)

    inserted = emu.insert_event(CAL, timed("new", T0))
    emu.patch_event(CAL, patched["id"], {"summary": "patched"})
    emu.delete_event(CAL, deleted["id"])
    items, pages = await walk(api, {"syncToken": token})

    by_id = {item["id"]: item for item in items}
    assert set(by_id) == {inserted["id"], patched["id"], deleted["id"]}
    assert kept["id"] not in by_id
    assert by_id[patched["id"]]["summary"] == "patched"
    assert by_id[deleted["id"]] == {
        "kind": "calendar#event",
        "etag": by_id[deleted["id"]]["etag"],
        "id": deleted["id"],
        "status": "cancelled",
    }
    again, _ = await walk(api, {"syncToken": pages[-1]["nextSyncToken"]})
    assert again == []


async def test_full_listing_hides_cancelled_unless_show_deleted(
    emu: GoogleEmulator, api: httpx.AsyncClient
) -> None:
    gone = emu.insert_event(CAL, timed("gone", T0))
    emu.delete_event(CAL, gone["id"])
    with pytest.raises(GoogleApiError) as info:
        emu.delete_event(CAL, gone["id"])
    assert (info.value.status, info.value.reason) == (410, "deleted")

    hidden, _ = await walk(api, {})
    shown, _ = await walk(api, {"showDeleted": "true"})

    assert hidden == []
    assert [(e["id"], e["status"], e["summary"]) for e in shown] == [
        (gone["id"], "cancelled", "gone")
    ]


async def test_changes_made_while_paging_reach_the_next_incremental_sync(
    emu: GoogleEmulator, api: httpx.AsyncClient
) -> None:
    for i in range(1, 11):
        emu.insert_event(CAL, timed(f"e{i}", T0, id=f"event{i:05d}"))
    first = await api.get(events_path(), params={"maxResults": "4"})
    seen = [item["id"] for item in first.json()["items"]]
    assert seen == [f"event{i:05d}" for i in range(1, 5)]

    emu.insert_event(CAL, timed("sorts before the cursor", T0, id="event00000"))
    emu.patch_event(CAL, "event00002", {"summary": "changed after it was paged"})
    emu.delete_event(CAL, "event00007")
    rest, pages = await walk(api, {"maxResults": "4", "pageToken": first.json()["nextPageToken"]})
    assert "event00000" not in {item["id"] for item in rest}

    changes, _ = await walk(api, {"syncToken": pages[-1]["nextSyncToken"]})
    by_id = {item["id"]: item for item in changes}
    assert set(by_id) == {"event00000", "event00002", "event00007"}
    assert by_id["event00002"]["summary"] == "changed after it was paged"
    assert by_id["event00007"]["status"] == "cancelled"


@settings(max_examples=30, deadline=None)
@given(
    initial=st.integers(0, 25),
    page_size=st.integers(1, 10),
    ops=st.lists(
        st.tuples(st.sampled_from(["insert", "patch", "delete"]), st.integers(0, 10_000)),
        max_size=12,
    ),
)
async def test_a_replica_converges_whatever_changes_while_paging(
    initial: int, page_size: int, ops: list[tuple[str, int]]
) -> None:
    """Full walk with changes between pages, then one incremental walk == server state."""
    async with (
        GoogleEmulator(seed=0) as emu,
        httpx.AsyncClient(trust_env=False, timeout=10) as http,
    ):
        emu.add_calendar(CAL)
        emu.add_client(CLIENT_ID, CLIENT_SECRET)
        auth = {"Authorization": f"Bearer {await mint_access_token(http, emu)}"}
        live: list[str] = [emu.insert_event(CAL, timed(f"v{i}", T0))["id"] for i in range(initial)]
        pending = list(ops)

        def mutate() -> None:
            if not pending:
                return
            op, n = pending.pop(0)
            if op == "insert" or not live:
                live.append(emu.insert_event(CAL, timed(f"new{n}", T0))["id"])
            elif op == "patch":
                emu.patch_event(CAL, live[n % len(live)], {"summary": f"p{n}"})
            else:
                emu.delete_event(CAL, live.pop(n % len(live)))

        replica: dict[str, str] = {}
        params: dict[str, str] = {"maxResults": str(page_size)}
        url = emu.api_url + events_path()
        while True:
            body = (await http.get(url, headers=auth, params=params)).json()
            replica.update({item["id"]: item["summary"] for item in body["items"]})
            mutate()
            if "nextSyncToken" in body:
                break
            params = {"maxResults": str(page_size), "pageToken": body["nextPageToken"]}
        while pending:
            mutate()
        params = {"maxResults": str(page_size), "syncToken": body["nextSyncToken"]}
        while True:
            body = (await http.get(url, headers=auth, params=params)).json()
            for item in body["items"]:
                if item["status"] == "cancelled":
                    replica.pop(item["id"], None)
                else:
                    replica[item["id"]] = item["summary"]
            if "nextSyncToken" in body:
                break
            params = {**params, "pageToken": body["nextPageToken"]}

        assert replica == {i: emu.get_event(CAL, i)["summary"] for i in live}


async def test_incremental_sync_is_paginated_and_keeps_the_token_window(
    emu: GoogleEmulator, api: httpx.AsyncClient
) -> None:
    window = {"timeMin": "2026-11-01T00:00:00Z", "timeMax": "2026-12-01T00:00:00Z"}
    moving = emu.insert_event(CAL, timed("moves out", T0))
    token = await sync_token_of(api, window)

    for i in range(5):
        emu.insert_event(CAL, timed(f"in {i}", T0 + timedelta(hours=i)))
    emu.insert_event(CAL, timed("outside", T0 + timedelta(days=60)))
    emu.patch_event(
        CAL,
        moving["id"],
        {
            "start": {"dateTime": "2027-03-01T10:00:00Z"},
            "end": {"dateTime": "2027-03-01T11:00:00Z"},
        },
    )
    items, pages = await walk(api, {"syncToken": token, "maxResults": "2"})

    assert len(pages) == 3
    summaries = sorted(item["summary"] for item in items)
    assert summaries == ["in 0", "in 1", "in 2", "in 3", "in 4", "moves out"]
    assert all("nextSyncToken" not in page for page in pages[:-1])


async def test_invalidated_sync_token_is_410_full_sync_required(
    emu: GoogleEmulator, api: httpx.AsyncClient
) -> None:
    token = await sync_token_of(api)
    for i in range(3):
        emu.insert_event(CAL, timed(f"e{i}", T0))
    first = await api.get(events_path(), params={"syncToken": token, "maxResults": "1"})
    emu.invalidate_sync_tokens(CAL)

    resp = await api.get(events_path(), params={"syncToken": token})
    assert resp.status_code == 410
    assert resp.json() == FULL_SYNC_REQUIRED
    # An incremental walk already under way is cut short too.
    resp = await api.get(
        events_path(),
        params={"syncToken": token, "maxResults": "1", "pageToken": first.json()["nextPageToken"]},
    )
    assert resp.status_code == 410

    fresh = await sync_token_of(api)
    assert (await api.get(events_path(), params={"syncToken": fresh})).status_code == 200


async def test_forged_tokens(api: httpx.AsyncClient) -> None:
    resp = await api.get(events_path(), params={"syncToken": "CPDAlvWDx70CEPDAlvWDx70CGAU="})
    assert resp.status_code == 410
    assert resp.json() == FULL_SYNC_REQUIRED

    resp = await api.get(events_path(), params={"pageToken": "bm90IGEgdG9rZW4="})
    assert resp.status_code == 400
    assert resp.json()["error"]["errors"][0]["reason"] == "invalid"


async def test_list_parameter_validation(api: httpx.AsyncClient) -> None:
    empty = await api.get(
        events_path(),
        params={"timeMin": "2026-12-01T00:00:00Z", "timeMax": "2026-11-01T00:00:00Z"},
    )
    assert empty.status_code == 400
    assert empty.json()["error"]["errors"][0] == {
        "domain": "calendar",
        "reason": "timeRangeEmpty",
        "message": "The specified time range is empty.",
        "locationType": "parameter",
        "location": "timeMax",
    }
    no_offset = await api.get(events_path(), params={"timeMin": "2026-12-01T00:00:00"})
    assert no_offset.status_code == 400
    order = await api.get(events_path(), params={"orderBy": "startTime"})
    assert order.status_code == 400
    assert (await api.get(events_path(), params={"maxResults": "0"})).status_code == 400


async def test_filters_and_ordering(emu: GoogleEmulator, api: httpx.AsyncClient) -> None:
    late = emu.insert_event(CAL, timed("Late standup", T0 + timedelta(hours=5)))
    early = emu.insert_event(
        CAL,
        timed(
            "Early review",
            T0,
            extendedProperties={"private": {"calsync": "yes"}},
            transparency="transparent",
        ),
    )

    q, _ = await walk(api, {"q": "standup"})
    prop, _ = await walk(api, {"privateExtendedProperty": "calsync=yes"})
    ordered, _ = await walk(api, {"singleEvents": "true", "orderBy": "startTime"})
    by_uid, _ = await walk(api, {"iCalUID": late["iCalUID"]})

    assert [e["id"] for e in q] == [late["id"]]
    assert [e["id"] for e in prop] == [early["id"]]
    assert prop[0]["transparency"] == "transparent"
    assert [e["id"] for e in ordered] == [early["id"], late["id"]]
    assert [e["id"] for e in by_uid] == [late["id"]]


# --------------------------------------------------------------------------- recurrence


def weekly_series(**extra: Any) -> dict[str, Any]:
    return {
        "summary": "Weekly sync",
        "start": {"dateTime": "2026-03-20T10:00:00", "timeZone": "Europe/Zurich"},
        "end": {"dateTime": "2026-03-20T10:30:00", "timeZone": "Europe/Zurich"},
        "recurrence": ["RRULE:FREQ=WEEKLY"],
        **extra,
    }


SERIES_WINDOW = {"timeMin": "2026-03-25T00:00:00Z", "timeMax": "2026-04-15T00:00:00Z"}


async def test_single_events_expands_a_weekly_rule_in_a_window(
    emu: GoogleEmulator, api: httpx.AsyncClient
) -> None:
    series = emu.insert_event(CAL, weekly_series())

    items, _ = await walk(api, {"singleEvents": "true", **SERIES_WINDOW})

    sid = series["id"]
    # 2026-03-29 is the DST switch in Zurich: 10:00 local is 09:00Z, then 08:00Z.
    assert [item["id"] for item in items] == [
        f"{sid}_20260327T090000Z",
        f"{sid}_20260403T080000Z",
        f"{sid}_20260410T080000Z",
    ]
    first = items[0]
    assert first["recurringEventId"] == sid
    assert first["originalStartTime"] == {
        "dateTime": "2026-03-27T10:00:00+01:00",
        "timeZone": "Europe/Zurich",
    }
    assert first["start"] == first["originalStartTime"]
    assert first["end"] == {"dateTime": "2026-03-27T10:30:00+01:00", "timeZone": "Europe/Zurich"}
    assert items[1]["start"]["dateTime"] == "2026-04-03T10:00:00+02:00"
    assert "recurrence" not in first
    assert first["iCalUID"] == series["iCalUID"]

    masters, _ = await walk(api, {"singleEvents": "false", **SERIES_WINDOW})
    assert [m["id"] for m in masters] == [sid]
    assert masters[0]["recurrence"] == ["RRULE:FREQ=WEEKLY"]


async def test_infinite_rule_without_window_terminates(
    emu: GoogleEmulator, api: httpx.AsyncClient
) -> None:
    emu.insert_event(CAL, weekly_series())

    items, _ = await walk(api, {"singleEvents": "true", "maxResults": "2500"})

    starts = [datetime.fromisoformat(item["start"]["dateTime"]) for item in items]
    assert 100 < len(items) < 200
    assert max(starts) <= T0 + timedelta(days=731)


async def test_series_change_marks_every_instance_changed(
    emu: GoogleEmulator, api: httpx.AsyncClient
) -> None:
    series = emu.insert_event(CAL, weekly_series())
    token = await sync_token_of(api, {"singleEvents": "true", **SERIES_WINDOW})

    emu.patch_event(CAL, series["id"], {"summary": "Renamed"})
    renamed, pages = await walk(api, {"singleEvents": "true", "syncToken": token})
    assert [item["summary"] for item in renamed] == ["Renamed"] * 3

    emu.delete_event(CAL, series["id"])
    gone, _ = await walk(api, {"singleEvents": "true", "syncToken": pages[-1]["nextSyncToken"]})
    assert len(gone) == 3
    assert all(item["status"] == "cancelled" for item in gone)
    assert all(item["recurringEventId"] == series["id"] for item in gone)
    assert all("originalStartTime" in item for item in gone)


async def test_patch_and_delete_single_instances(
    emu: GoogleEmulator, api: httpx.AsyncClient
) -> None:
    series = emu.insert_event(CAL, weekly_series())
    sid = series["id"]
    token = await sync_token_of(api, {"singleEvents": "true", **SERIES_WINDOW})

    moved = emu.patch_event(CAL, f"{sid}_20260403T080000Z", {"summary": "Moved one"})
    emu.delete_event(CAL, f"{sid}_20260410T080000Z")
    changes, _ = await walk(api, {"singleEvents": "true", "syncToken": token})

    assert moved["recurringEventId"] == sid
    by_id = {item["id"]: item for item in changes}
    assert set(by_id) == {f"{sid}_20260403T080000Z", f"{sid}_20260410T080000Z"}
    assert by_id[f"{sid}_20260403T080000Z"]["summary"] == "Moved one"
    tombstone = by_id[f"{sid}_20260410T080000Z"]
    assert tombstone["status"] == "cancelled"
    assert tombstone["recurringEventId"] == sid
    assert tombstone["originalStartTime"]["dateTime"] == "2026-04-10T10:00:00+02:00"

    full, _ = await walk(api, {"singleEvents": "true", **SERIES_WINDOW})
    assert [item["id"] for item in full] == [
        f"{sid}_20260327T090000Z",
        f"{sid}_20260403T080000Z",
    ]
    # singleEvents=false lists the master and its exceptions; cancelled ones too.
    masters, _ = await walk(api, SERIES_WINDOW)
    assert {item["id"] for item in masters} == {
        sid,
        f"{sid}_20260403T080000Z",
        f"{sid}_20260410T080000Z",
    }
    with pytest.raises(GoogleApiError) as info:
        emu.patch_event(CAL, f"{sid}_20260411T080000Z", {"summary": "no such instance"})
    assert info.value.status == 404


# --------------------------------------------------------------------------- all-day events


async def test_all_day_events_use_dates_and_exclusive_ends(
    emu: GoogleEmulator, api: httpx.AsyncClient
) -> None:
    offsite = emu.insert_event(
        CAL,
        {"summary": "Offsite", "start": {"date": "2026-12-01"}, "end": {"date": "2026-12-02"}},
    )
    assert offsite["start"] == {"date": "2026-12-01"}

    # Calendar zone is Europe/Zurich: the day is 2026-11-30T23:00Z .. 2026-12-01T23:00Z.
    async def ids(time_min: str, time_max: str) -> list[str]:
        items, _ = await walk(api, {"timeMin": time_min, "timeMax": time_max})
        return [item["id"] for item in items]

    assert await ids("2026-12-01T22:00:00Z", "2026-12-05T00:00:00Z") == [offsite["id"]]
    assert await ids("2026-12-01T23:00:00Z", "2026-12-05T00:00:00Z") == []
    assert await ids("2026-11-20T00:00:00Z", "2026-11-30T23:00:00Z") == []

    yearly = emu.insert_event(
        CAL,
        {
            "summary": "Anniversary",
            "start": {"date": "2026-06-15"},
            "end": {"date": "2026-06-16"},
            "recurrence": ["RRULE:FREQ=YEARLY;COUNT=3"],
        },
    )
    items, _ = await walk(
        api,
        {"singleEvents": "true", "timeMin": "2027-01-01T00:00:00Z", "q": "Anniversary"},
    )
    assert [item["id"] for item in items] == [
        f"{yearly['id']}_20270615",
        f"{yearly['id']}_20280615",
    ]
    assert items[0]["originalStartTime"] == {"date": "2027-06-15"}


async def test_mixed_date_and_datetime_is_rejected(
    emu: GoogleEmulator, api: httpx.AsyncClient
) -> None:
    mixed = {
        "summary": "mixed",
        "start": {"date": "2026-12-01"},
        "end": {"dateTime": "2026-12-01T10:00:00Z"},
    }
    resp = await api.post(events_path(), json=mixed)

    assert resp.status_code == 400
    assert resp.json() == {
        "error": {
            "errors": [
                {
                    "domain": "global",
                    "reason": "invalid",
                    "message": "Start and end times must either both be date or both be dateTime.",
                }
            ],
            "code": 400,
            "message": "Start and end times must either both be date or both be dateTime.",
        }
    }
    with pytest.raises(GoogleApiError):
        emu.insert_event(CAL, mixed)


async def test_events_insert_get_patch_delete_over_http(api: httpx.AsyncClient) -> None:
    created = await api.post(events_path(), json=timed("via api", T0, id="abcdef12345"))
    assert created.status_code == 200
    assert created.json()["id"] == "abcdef12345"
    duplicate = await api.post(events_path(), json=timed("again", T0, id="abcdef12345"))
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["errors"][0]["reason"] == "duplicate"

    patched = await api.patch(
        events_path() + "/abcdef12345",
        json={
            "start": {"dateTime": "2026-11-25T15:00:00Z"},
            "end": {"dateTime": "2026-11-25T16:00:00Z"},
        },
    )
    assert patched.json()["sequence"] == 1
    deleted = await api.delete(events_path() + "/abcdef12345")
    assert deleted.status_code == 204
    fetched = await api.get(events_path() + "/abcdef12345")
    assert fetched.json()["status"] == "cancelled"
    again = await api.delete(events_path() + "/abcdef12345")
    assert again.status_code == 410
    assert again.json()["error"]["errors"][0] == {
        "domain": "global",
        "reason": "deleted",
        "message": "Resource has been deleted",
    }
    missing = await api.get(events_path() + "/zzzzzzz")
    assert missing.status_code == 404


# --------------------------------------------------------------------------- auth


async def test_api_calls_need_a_bearer_token_for_that_calendar(
    emu: GoogleEmulator, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    url = emu.api_url + events_path()
    assert (await http.get(url)).json() == AUTH_ERROR
    bogus = await http.get(url, headers={"Authorization": "Bearer ya29.nope"})
    assert bogus.status_code == 401
    assert bogus.json() == AUTH_ERROR
    assert bogus.headers["WWW-Authenticate"].startswith("Bearer")

    only_other = await mint_access_token(http, emu, [OTHER_CAL])
    denied = await http.get(url, headers={"Authorization": f"Bearer {only_other}"})
    assert denied.status_code == 401

    token = await mint_access_token(http, emu, [CAL])
    auth = {"Authorization": f"Bearer {token}"}
    assert (await http.get(url, headers=auth)).status_code == 200
    unknown = await http.get(emu.api_url + events_path("nobody@example.com"), headers=auth)
    assert unknown.status_code == 404
    assert unknown.json() == {
        "error": {
            "errors": [{"domain": "global", "reason": "notFound", "message": "Not Found"}],
            "code": 404,
            "message": "Not Found",
        }
    }
    primary = await http.get(emu.api_url + events_path("primary"), headers=auth)
    assert primary.status_code == 200

    clock.advance(3600)
    assert (await http.get(url, headers=auth)).status_code == 401


async def test_token_endpoint_speaks_google_oauth(
    emu: GoogleEmulator, http: httpx.AsyncClient
) -> None:
    refresh_token = emu.issue_refresh_token(CLIENT_ID)
    form = {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    ok = await http.post(emu.token_url, data=form)
    assert ok.status_code == 200
    body = ok.json()
    assert set(body) == {"access_token", "expires_in", "scope", "token_type"}
    assert body["expires_in"] == 3599 and body["token_type"] == "Bearer"

    wrong_secret = await http.post(emu.token_url, data={**form, "client_secret": "guess"})
    assert wrong_secret.status_code == 401
    assert wrong_secret.json() == {"error": "invalid_client", "error_description": "Unauthorized"}

    emu.revoke_refresh_token(refresh_token)
    revoked = await http.post(emu.token_url, data=form)
    assert revoked.status_code == 400
    assert revoked.json() == {
        "error": "invalid_grant",
        "error_description": "Token has been expired or revoked.",
    }
    old_access = await http.get(
        emu.api_url + events_path(), headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert old_access.status_code == 401


async def test_token_endpoint_faults_need_a_rule_naming_its_path(
    emu: GoogleEmulator, http: httpx.AsyncClient
) -> None:
    form = {
        "grant_type": "refresh_token",
        "refresh_token": emu.issue_refresh_token(CLIENT_ID),
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    unscoped = emu.faults.add("backend_error_500")  # API calls only
    assert (await http.post(emu.token_url, data=form)).status_code == 200
    emu.faults.rules.remove(unscoped)
    emu.faults.add("unavailable_503", count=1, path="^/token$")
    failed = await http.post(emu.token_url, data=form)
    assert failed.status_code == 503
    assert failed.json()["error"] == "backendError"  # OAuth's shape, not the API envelope
    assert [r.fault for r in emu.requests if r.path == "/token"][-1] == "unavailable_503"
    assert (await http.post(emu.token_url, data=form)).status_code == 200


async def test_google_auth_refreshes_against_the_emulator(emu: GoogleEmulator) -> None:
    refresh_token = emu.issue_refresh_token(CLIENT_ID)

    def refresh() -> google.oauth2.credentials.Credentials:
        creds = google.oauth2.credentials.Credentials(  # type: ignore[no-untyped-call]
            None,
            refresh_token=refresh_token,
            token_uri=emu.token_url,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
        )
        creds.refresh(google.auth.transport.requests.Request())  # type: ignore[no-untyped-call]
        return creds

    creds = await asyncio.to_thread(refresh)
    assert creds.token is not None and creds.token.startswith("ya29.")
    assert creds.refresh_token == refresh_token
    assert creds.expiry is not None

    emu.revoke_refresh_token(refresh_token)
    with pytest.raises(google.auth.exceptions.RefreshError) as info:
        await asyncio.to_thread(refresh)
    assert info.value.args[1] == {
        "error": "invalid_grant",
        "error_description": "Token has been expired or revoked.",
    }
    assert info.value.retryable is False


# --------------------------------------------------------------------------- push channels


async def watch(
    api: httpx.AsyncClient, address: str, channel_id: str = "chan-1", **extra: Any
) -> httpx.Response:
    return await api.post(
        events_path() + "/watch",
        json={"id": channel_id, "type": "web_hook", "address": address, **extra},
    )


async def test_watch_delivers_sync_then_exists_with_exact_headers(
    emu: GoogleEmulator, api: httpx.AsyncClient, receiver: Receiver, clock: FakeClock
) -> None:
    resp = await watch(api, receiver.url, token="target=calsync")
    assert resp.status_code == 200
    channel = resp.json()
    assert channel["kind"] == "api#channel"
    assert channel["id"] == "chan-1"
    assert channel["token"] == "target=calsync"
    assert isinstance(channel["expiration"], str)
    assert int(channel["expiration"]) == int((clock() + 604_800) * 1000)
    assert channel["resourceUri"] == f"{emu.api_url}/calendars/{CAL}/events"

    for i in range(3):
        emu.insert_event(CAL, timed(f"e{i}", T0))
    emu.insert_event(OTHER_CAL, timed("elsewhere", T0))
    await emu.flush_pushes()

    assert len(receiver.pushes) == 4
    states = [p.headers["X-Goog-Resource-State"] for p in receiver.pushes]
    numbers = [int(p.headers["X-Goog-Message-Number"]) for p in receiver.pushes]
    assert states == ["sync", "exists", "exists", "exists"]
    assert numbers[0] == 1
    assert all(b - a > 1 for a, b in itertools.pairwise(numbers))
    expiration = email.utils.formatdate(int(channel["expiration"]) / 1000, usegmt=True)
    for push in receiver.pushes:
        assert push.body == b""
        assert {
            "X-Goog-Channel-ID",
            "X-Goog-Message-Number",
            "X-Goog-Resource-ID",
            "X-Goog-Resource-State",
            "X-Goog-Resource-URI",
            "X-Goog-Channel-Expiration",
            "X-Goog-Channel-Token",
            "User-Agent",
            "Content-Type",
        } <= set(push.raw_names)
        assert push.headers["X-Goog-Channel-ID"] == "chan-1"
        assert push.headers["X-Goog-Resource-ID"] == channel["resourceId"]
        assert push.headers["X-Goog-Resource-URI"] == channel["resourceUri"]
        assert push.headers["X-Goog-Channel-Expiration"] == expiration
        assert push.headers["X-Goog-Channel-Token"] == "target=calsync"
        assert push.headers["User-Agent"] == "APIs-Google"
        assert push.headers["Content-Type"] == "application/json; utf-8"
        assert push.headers["Content-Length"] == "0"
    assert [(d.state, d.status) for d in emu.delivery_log] == [
        ("sync", 200),
        ("exists", 200),
        ("exists", 200),
        ("exists", 200),
    ]


async def test_watch_validation_duplicates_and_ttl(
    clock: FakeClock, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    async with GoogleEmulator(clock=clock, max_channel_ttl=3600) as emu:
        emu.add_calendar(CAL)
        emu.add_client(CLIENT_ID, CLIENT_SECRET)
        token = await mint_access_token(http, emu)
        async with httpx.AsyncClient(
            base_url=emu.api_url, headers={"Authorization": f"Bearer {token}"}, trust_env=False
        ) as api:
            assert (await watch(api, receiver.url, "x" * 65)).status_code == 400
            assert (await watch(api, receiver.url, token="t" * 257)).status_code == 400
            no_address = await api.post(
                events_path() + "/watch", json={"id": "a", "type": "web_hook"}
            )
            assert no_address.status_code == 400
            bad_type = await api.post(
                events_path() + "/watch",
                json={"id": "a", "type": "email", "address": receiver.url},
            )
            assert bad_type.status_code == 400

            ok = await watch(api, receiver.url, "x" * 64, params={"ttl": "604800"})
            assert ok.status_code == 200
            assert int(ok.json()["expiration"]) == int((clock() + 3600) * 1000)
            assert "token" not in ok.json()
            duplicate = await watch(api, receiver.url, "x" * 64)
            assert duplicate.status_code == 409
            assert duplicate.json()["error"]["errors"][0]["reason"] == "duplicate"
            webhook = await watch(api, receiver.url, "other", type="webhook")
            assert webhook.status_code == 200


async def test_channels_stop(
    emu: GoogleEmulator, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    channel = (await watch(api, receiver.url)).json()
    await emu.flush_pushes()

    wrong = await api.post("/channels/stop", json={"id": "chan-1", "resourceId": "nope"})
    assert wrong.status_code == 404
    stopped = await api.post(
        "/channels/stop", json={"id": "chan-1", "resourceId": channel["resourceId"]}
    )
    assert stopped.status_code == 204
    assert stopped.content == b""
    assert "chan-1" not in emu.channels

    emu.insert_event(CAL, timed("after stop", T0))
    await emu.flush_pushes()
    assert [p.headers["X-Goog-Resource-State"] for p in receiver.pushes] == ["sync"]
    again = await api.post(
        "/channels/stop", json={"id": "chan-1", "resourceId": channel["resourceId"]}
    )
    assert again.status_code == 404


async def test_expired_channels_stop_delivering(
    emu: GoogleEmulator, api: httpx.AsyncClient, receiver: Receiver, clock: FakeClock
) -> None:
    await watch(api, receiver.url, params={"ttl": "60"})
    await emu.flush_pushes()
    clock.advance(61)

    emu.insert_event(CAL, timed("too late", T0))
    await emu.flush_pushes()

    assert len(receiver.pushes) == 1
    assert emu.channels == {}


async def test_pushes_retry_only_on_5xx_gateway_statuses(
    emu: GoogleEmulator, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.statuses = [503, 200, 404]
    await watch(api, receiver.url)
    await emu.flush_pushes()
    emu.insert_event(CAL, timed("e", T0))
    await emu.flush_pushes()

    assert [(d.message_number, d.status, d.attempt) for d in emu.delivery_log] == [
        (1, 503, 1),
        (1, 200, 2),
        (emu.delivery_log[2].message_number, 404, 1),
    ]
    assert len(receiver.pushes) == 3


async def test_push_to_an_unreachable_address_is_recorded(
    emu: GoogleEmulator, api: httpx.AsyncClient
) -> None:
    await watch(api, "http://127.0.0.1:9/nothing-listens-here")
    await emu.flush_pushes()

    [record] = emu.delivery_log
    assert record.status is None and record.error is not None


# --------------------------------------------------------------------------- faults


async def test_fault_429_with_retry_after_for_the_next_call(
    emu: GoogleEmulator, api: httpx.AsyncClient
) -> None:
    emu.faults.add("rate_limit_429", count=1, retry_after=1.5)

    limited = await api.get(events_path())
    fine = await api.get(events_path())

    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "1.5"
    assert limited.json() == {
        "error": {
            "errors": [
                {
                    "domain": "usageLimits",
                    "reason": "rateLimitExceeded",
                    "message": "Rate Limit Exceeded",
                }
            ],
            "code": 429,
            "message": "Rate Limit Exceeded",
        }
    }
    assert fine.status_code == 200
    api_calls = [r for r in emu.requests if r.path.startswith("/calendar/v3")]
    assert [(r.status, r.fault) for r in api_calls] == [(429, "rate_limit_429"), (200, None)]


@pytest.mark.parametrize(
    ("kind", "status", "domain", "reason", "message"),
    [
        ("rate_limit_403", 403, "usageLimits", "rateLimitExceeded", "Rate Limit Exceeded"),
        (
            "user_rate_limit_403",
            403,
            "usageLimits",
            "userRateLimitExceeded",
            "User Rate Limit Exceeded",
        ),
        (
            "quota_exceeded_403",
            403,
            "usageLimits",
            "quotaExceeded",
            "Calendar usage limits exceeded.",
        ),
        ("backend_error_500", 500, "global", "backendError", "Backend Error"),
        ("unavailable_503", 503, "global", "backendError", "The service is currently unavailable."),
    ],
)
async def test_fault_bodies(
    emu: GoogleEmulator,
    api: httpx.AsyncClient,
    kind: Any,
    status: int,
    domain: str,
    reason: str,
    message: str,
) -> None:
    emu.faults.add(kind, count=1)

    resp = await api.get(events_path())

    assert resp.status_code == status
    assert resp.json() == {
        "error": {
            "errors": [{"domain": domain, "reason": reason, "message": message}],
            "code": status,
            "message": message,
        }
    }
    assert "Retry-After" not in resp.headers


async def test_fault_retry_after_http_date_and_path_restriction(
    emu: GoogleEmulator, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    when = "Wed, 25 Nov 2026 12:00:05 GMT"
    emu.faults.add("user_rate_limit_403", path=r"/events/watch$", retry_after=when)

    listed = await api.get(events_path())
    watched = await watch(api, receiver.url)

    assert listed.status_code == 200
    assert watched.status_code == 403
    assert watched.headers["Retry-After"] == when


async def test_fault_latency_and_probability(clock: FakeClock, http: httpx.AsyncClient) -> None:
    async with GoogleEmulator(clock=clock, seed=3) as emu:
        emu.add_calendar(CAL)
        emu.add_client(CLIENT_ID, CLIENT_SECRET)
        token = await mint_access_token(http, emu)
        auth = {"Authorization": f"Bearer {token}"}
        emu.faults.add("latency", seconds=0.2, count=1)
        started = time.monotonic()
        slow = await http.get(emu.api_url + events_path(), headers=auth)
        assert slow.status_code == 200
        assert time.monotonic() - started >= 0.2

        emu.faults.add("backend_error_500", probability=0.5)
        statuses = [
            (await http.get(emu.api_url + events_path(), headers=auth)).status_code
            for _ in range(100)
        ]
        assert 25 < statuses.count(500) < 75
        assert set(statuses) == {200, 500}


async def test_dropped_pushes_are_logged_not_delivered(
    emu: GoogleEmulator, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    emu.faults.drop_push_probability = 1.0
    await watch(api, receiver.url)
    emu.insert_event(CAL, timed("e", T0))
    await emu.flush_pushes()

    assert receiver.pushes == []
    assert [(d.state, d.error) for d in emu.delivery_log] == [
        ("sync", "dropped"),
        ("exists", "dropped"),
    ]


async def test_dropped_pushes_are_countable(
    emu: GoogleEmulator, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    emu.faults.seed(11)
    emu.faults.drop_push_probability = 0.5
    await watch(api, receiver.url)
    for i in range(40):
        emu.insert_event(CAL, timed(f"e{i}", T0))
    await emu.flush_pushes()

    dropped = [d for d in emu.delivery_log if d.dropped]
    delivered = [d for d in emu.delivery_log if d.status is not None]
    assert all(d.status is None and d.error == DROPPED == "dropped" for d in dropped)
    assert 5 < len(dropped) < 35
    assert len(dropped) + len(delivered) == 41
    assert len(receiver.pushes) == len(delivered)


# --------------------------------------------------------------------------- rate-limit records


async def test_retry_after_is_recorded_in_seconds(
    emu: GoogleEmulator, api: httpx.AsyncClient, clock: FakeClock
) -> None:
    emu.faults.add("rate_limit_429", count=1, retry_after=1.5)
    emu.faults.add("rate_limit_429", count=1, retry_after="Wed, 25 Nov 2026 12:00:30 GMT")
    emu.faults.add("unavailable_503", count=1, retry_after="7")
    emu.faults.add("rate_limit_429", count=1, retry_after="Wed, 25 Nov 2026 11:00:00 GMT")
    emu.faults.add("rate_limit_429", count=1, retry_after="soon")
    emu.faults.add("rate_limit_429", count=1)

    clock.advance(10)  # the HTTP-date is read against the emulator clock: T0 + 10 s
    statuses = [(await api.get(events_path())).status_code for _ in range(7)]

    assert statuses == [429, 429, 503, 429, 429, 429, 200]
    api_calls = emu.requests_for(calendar_id=CAL)
    assert [(r.status, r.retry_after) for r in api_calls] == [
        (429, 1.5),
        (429, 20.0),
        (503, 7.0),
        (429, 0.0),  # a date in the past asks for no wait
        (429, None),  # sent verbatim, but neither a number nor a date
        (429, None),  # no Retry-After at all
        (200, None),
    ]
    token_calls = [r for r in emu.requests if r.path == "/token"]
    assert [(r.retry_after, r.account, r.calendar_id) for r in token_calls] == [(None, None, None)]


async def test_requests_are_attributed_to_the_grant_behind_the_token(
    emu: GoogleEmulator, http: httpx.AsyncClient
) -> None:
    first = emu.issue_refresh_token(CLIENT_ID)
    second = emu.issue_refresh_token(CLIENT_ID, [OTHER_CAL])
    accounts = emu.account_of(first), emu.account_of(second)
    assert accounts[0] != accounts[1]
    assert emu.account_of(first) == accounts[0]  # stable
    with pytest.raises(KeyError):
        emu.account_of("1//not-issued")

    async def access(refresh_token: str) -> dict[str, str]:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        }
        token = (await http.post(emu.token_url, data=form)).json()["access_token"]
        return {"Authorization": f"Bearer {token}"}

    one, two, two_again = await access(first), await access(second), await access(second)
    emu.faults.add("rate_limit_429", count=1, path="room-1")
    for headers, path in [
        (one, events_path(CAL)),
        (two, events_path(OTHER_CAL)),  # 429: faulted calls are attributed too
        (one, events_path(OTHER_CAL)),
        (two_again, events_path("primary")),  # the grant's first calendar
        (two, events_path(CAL)),  # 401: not in that grant, still its call
        ({}, events_path(CAL)),
        ({"Authorization": "Bearer ya29.forged"}, events_path(CAL)),
    ]:
        await http.get(emu.api_url + path, headers=headers)
    emu.expire_access_tokens()
    assert (await http.get(emu.api_url + events_path(CAL), headers=one)).status_code == 401

    def seen(account: str | None = None, calendar_id: str | None = None) -> list[Any]:
        found = emu.requests_for(account=account, calendar_id=calendar_id)
        return [(r.calendar_id, r.status) for r in found]

    assert seen(accounts[0]) == [(CAL, 200), (OTHER_CAL, 200), (CAL, 401)]
    assert seen(accounts[1]) == [(OTHER_CAL, 429), (OTHER_CAL, 200), (CAL, 401)]
    assert seen(accounts[1], OTHER_CAL) == [(OTHER_CAL, 429), (OTHER_CAL, 200)]
    assert seen(calendar_id=CAL) == [(CAL, 200), (CAL, 401), (CAL, 401), (CAL, 401), (CAL, 401)]
    anonymous = [r for r in emu.requests if r.account is None]
    assert [(r.path, r.calendar_id) for r in anonymous] == [("/token", None)] * 3 + [
        (f"/calendar/v3/calendars/{CAL}/events", CAL)
    ] * 2
    assert len(emu.requests_for()) == len(emu.requests)


# --------------------------------------------------------------------------- corrupt events


async def test_corrupt_event_is_listed_full_and_incrementally_without_breaking_others(
    emu: GoogleEmulator, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    early = emu.insert_event(CAL, timed("early", T0, id="first0001"))
    late = emu.insert_event(CAL, timed("late", T0 + timedelta(days=3), id="late00001"))
    victim = emu.insert_event(CAL, timed("victim", T0 + timedelta(days=1), id="victim001"))
    token = await sync_token_of(api)
    await watch(api, receiver.url)
    await emu.flush_pushes()

    raw = {"summary": "broken", "start": {"dateTime": "garbage"}, "end": {"date": 5}}
    emu.corrupt_event(CAL, victim["id"], raw)
    await emu.flush_pushes()

    stored = {"id": "victim001", **raw}
    assert [p.headers["X-Goog-Resource-State"] for p in receiver.pushes] == ["sync", "exists"]
    assert emu.get_event(CAL, "victim001") == stored
    full, _ = await walk(api, {"maxResults": "2"})
    assert sorted(full, key=lambda e: e["id"]) == [
        emu.get_event(CAL, "first0001"),
        emu.get_event(CAL, "late00001"),
        stored,
    ]
    changes, pages = await walk(api, {"syncToken": token})
    assert changes == [stored]
    # No timing to window it by: it is in every window, and sorts last by start time.
    far = {"timeMin": "2030-01-01T00:00:00Z", "timeMax": "2030-02-01T00:00:00Z"}
    assert [e["id"] for e in (await walk(api, far))[0]] == ["victim001"]
    ordered, _ = await walk(api, {"singleEvents": "true", "orderBy": "startTime"})
    assert [e["id"] for e in ordered] == [early["id"], late["id"], "victim001"]
    assert [e["id"] for e in (await walk(api, {"q": "broken"}))[0]] == ["victim001"]

    # A patch that leaves the broken fields answers 400; one that fixes them repairs it.
    with pytest.raises(GoogleApiError) as bad:
        emu.patch_event(CAL, "victim001", {"summary": "still broken"})
    assert bad.value.status == 400
    fixed = emu.patch_event(CAL, "victim001", timed("repaired", T0 + timedelta(days=2)))
    assert fixed["kind"] == "calendar#event" and fixed["status"] == "confirmed"
    assert fixed["iCalUID"] == "victim001@google.com" and fixed["sequence"] == 1
    changes, pages = await walk(api, {"syncToken": pages[-1]["nextSyncToken"]})
    assert changes == [fixed]
    ordered, _ = await walk(api, {"singleEvents": "true", "orderBy": "startTime"})
    assert [e["id"] for e in ordered] == [early["id"], "victim001", late["id"]]

    emu.corrupt_event(CAL, "victim001", {"status": "cancelled", "start": "?"}, notify=False)
    gone, _ = await walk(api, {"syncToken": pages[-1]["nextSyncToken"]})
    assert gone == [
        {"kind": "calendar#event", "etag": '"0"', "id": "victim001", "status": "cancelled"}
    ]
    assert "victim001" not in {e["id"] for e in (await walk(api, {}))[0]}


async def test_corrupt_time_zone_and_series_and_delete(
    emu: GoogleEmulator, api: httpx.AsyncClient
) -> None:
    series = emu.insert_event(CAL, weekly_series())
    single = emu.insert_event(CAL, timed("fine", T0, id="fine00001"))
    bad_zone = {
        "summary": "on Mars",
        "start": {"dateTime": "2026-11-25T12:00:00", "timeZone": "Mars/Olympus_Mons"},
        "end": {"dateTime": "2026-11-25T13:00:00", "timeZone": "Mars/Olympus_Mons"},
        "recurrence": ["RRULE:FREQ=WEEKLY"],
    }
    token = await sync_token_of(api, {"singleEvents": "true", **SERIES_WINDOW})
    emu.corrupt_event(CAL, series["id"], bad_zone, notify=False)
    emu.corrupt_event(CAL, "brandnew1", {"summary": "never valid"}, notify=False)

    items, _ = await walk(api, {"singleEvents": "true", **SERIES_WINDOW})
    assert {e["id"] for e in items} == {series["id"], "brandnew1"}  # no instances
    items, _ = await walk(api, {"singleEvents": "true"})
    assert {e["id"] for e in items} == {series["id"], "brandnew1", single["id"]}
    changes, pages = await walk(api, {"singleEvents": "true", "syncToken": token})
    assert {e["id"] for e in changes} == {series["id"], "brandnew1"}
    with pytest.raises(GoogleApiError) as missing:
        emu.get_event(CAL, f"{series['id']}_20260327T090000Z")
    assert missing.value.status == 404

    emu.delete_event(CAL, series["id"])
    emu.delete_event(CAL, "brandnew1")
    changes, _ = await walk(api, {"singleEvents": "true", "syncToken": pages[-1]["nextSyncToken"]})
    assert {(e["id"], e["status"]) for e in changes} == {
        (series["id"], "cancelled"),
        ("brandnew1", "cancelled"),
    }
    assert emu.get_event(CAL, "brandnew1")["summary"] == "never valid"
    with pytest.raises(GoogleApiError) as unknown:
        emu.corrupt_event("nobody@example.com", "x", {})
    assert unknown.value.status == 404


# --------------------------------------------------------------------------- bulk and listing


async def test_insert_events_in_bulk(
    emu: GoogleEmulator, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    await watch(api, receiver.url)
    batch = [timed(f"e{i}", T0 + timedelta(minutes=i)) for i in range(300)]

    silent = emu.insert_events(CAL, batch)
    await emu.flush_pushes()
    assert len(receiver.pushes) == 1  # just the sync message
    pushed = emu.insert_events(OTHER_CAL, batch[:3], notify=True)
    more = emu.insert_events(CAL, iter(batch[:2]), notify=True)
    await emu.flush_pushes()
    assert [p.headers["X-Goog-Resource-State"] for p in receiver.pushes] == ["sync", "exists"]

    assert [e["summary"] for e in silent] == [f"e{i}" for i in range(300)]
    assert len({e["id"] for e in silent + more}) == 302 and len(pushed) == 3
    assert silent[0] == emu.get_event(CAL, silent[0]["id"])
    silent[0]["summary"] = "not the stored copy"
    assert emu.get_event(CAL, silent[0]["id"])["summary"] == "e0"
    items, pages = await walk(api, {"maxResults": "250"})
    assert len(items) == 302 and len(pages) == 2

    with pytest.raises(GoogleApiError) as bad:
        emu.insert_events(CAL, [timed("ok", T0, id="okok00001"), {"summary": "no times"}])
    assert bad.value.status == 400
    assert emu.get_event(CAL, "okok00001")["summary"] == "ok"  # not atomic


async def test_listing_pages_see_changes_and_the_clock(
    emu: GoogleEmulator, api: httpx.AsyncClient, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    for i in range(10):
        emu.insert_event(CAL, timed(f"e{i}", T0, id=f"event{i:05d}"), notify=False)
    first = (await api.get(events_path(), params={"maxResults": "4"})).json()
    again = (await api.get(events_path(), params={"maxResults": "4"})).json()
    assert again["items"] == first["items"]

    emu.patch_event(CAL, "event00005", {"summary": "changed"}, notify=False)
    emu.delete_event(CAL, "event00006", notify=False)
    rest, _ = await walk(api, {"maxResults": "4", "pageToken": first["nextPageToken"]})
    assert [e["id"] for e in rest] == [
        "event00004",
        "event00005",
        "event00007",
        "event00008",
        "event00009",
    ]
    assert rest[1]["summary"] == "changed"

    emu.insert_event(CAL, weekly_series(), notify=False)
    params = {"singleEvents": "true", "maxResults": "2500"}
    before, _ = await walk(api, params)
    clock.advance(7 * 86_400)  # an open-ended series reaches one week further
    api.headers["Authorization"] = f"Bearer {await mint_access_token(http, emu)}"
    after, _ = await walk(api, params)
    assert len(after) == len(before) + 1


async def test_list_live_events_is_what_a_full_single_events_sync_sees(
    emu: GoogleEmulator, api: httpx.AsyncClient
) -> None:
    kept = emu.insert_event(CAL, timed("kept", T0, id="kept00001"))
    emu.insert_event(CAL, timed("gone", T0, id="gone00001"))
    emu.delete_event(CAL, "gone00001")
    emu.insert_event(CAL, weekly_series(recurrence=["RRULE:FREQ=WEEKLY;COUNT=3"]))

    live = emu.list_live_events(CAL)
    listed, _ = await walk(api, {"singleEvents": "true"})

    assert live == listed
    assert len(live) == 4 and kept in live
    live[0]["summary"] = "a copy"
    assert emu.list_live_events(CAL) == listed


# --------------------------------------------------------------------------- control routes


async def test_control_routes_drive_a_separate_process(
    clock: FakeClock, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    async with GoogleEmulator(clock=clock) as emu:
        c = emu.base_url + "/_emulator"
        assert (await http.get(c + "/health")).json()["api_url"] == emu.api_url
        created = await http.post(
            c + "/calendars", json={"calendar_id": CAL, "time_zone": "Europe/Zurich"}
        )
        assert created.status_code == 201
        again = await http.post(c + "/calendars", json={"calendar_id": CAL})
        assert again.status_code == 409
        await http.post(c + "/clients", json={"client_id": CLIENT_ID, "client_secret": "s"})
        issued = await http.post(c + "/refresh_tokens", json={"client_id": CLIENT_ID})
        refresh_token = issued.json()["refresh_token"]

        inserted = await http.post(c + f"/calendars/{CAL}/events", json=timed("demo", T0))
        assert inserted.status_code == 201
        event_id = inserted.json()["id"]
        patched = await http.patch(
            c + f"/calendars/{CAL}/events/{event_id}", json={"summary": "demo 2"}
        )
        assert patched.json()["summary"] == "demo 2"
        deleted = await http.delete(c + f"/calendars/{CAL}/events/{event_id}?notify=false")
        assert deleted.status_code == 204
        assert (await http.post(c + f"/calendars/{CAL}/invalidate_sync_tokens")).status_code == 204

        faults = await http.post(
            c + "/faults",
            json={
                "rules": [{"kind": "quota_exceeded_403", "count": 1}],
                "drop_push_probability": 0.0,
                "seed": 1,
            },
        )
        assert faults.json()["rules"][0]["kind"] == "quota_exceeded_403"
        bad_rule = await http.post(c + "/faults", json={"rules": [{"kind": "meteor"}]})
        assert bad_rule.status_code == 400

        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": CLIENT_ID,
            "client_secret": "s",
        }
        access = (await http.post(emu.token_url, data=form)).json()["access_token"]
        auth = {"Authorization": f"Bearer {access}"}
        quota = await http.get(emu.api_url + events_path(), headers=auth)
        assert quota.status_code == 403
        watched = await http.post(
            emu.api_url + events_path() + "/watch",
            headers=auth,
            json={"id": "demo", "type": "web_hook", "address": receiver.url},
        )
        assert watched.status_code == 200
        assert (await http.post(c + "/flush_pushes")).status_code == 204
        assert [d["state"] for d in (await http.get(c + "/deliveries")).json()] == ["sync"]
        assert [ch["id"] for ch in (await http.get(c + "/channels")).json()] == ["demo"]
        recorded = (await http.get(c + "/requests")).json()
        assert [r["status"] for r in recorded] == [200, 403, 200]

        advanced = await http.post(c + "/clock/advance", json={"seconds": 3600})
        assert advanced.json()["now"] == clock() + 3600
        assert (await http.get(emu.api_url + events_path(), headers=auth)).status_code == 401
        revoked = await http.post(
            c + "/refresh_tokens/revoke", json={"refresh_token": refresh_token}
        )
        assert revoked.status_code == 204
        assert (await http.post(emu.token_url, data=form)).status_code == 400
        assert (await http.delete(c + "/faults")).status_code == 204
        assert (await http.get(c + "/faults")).json() == {
            "rules": [],
            "drop_push_probability": 0.0,
        }


async def test_control_routes_for_bulk_corrupt_and_attribution(
    clock: FakeClock, http: httpx.AsyncClient
) -> None:
    async with GoogleEmulator(clock=clock) as emu:
        c = emu.base_url + "/_emulator"
        await http.post(c + "/calendars", json={"calendar_id": CAL})
        await http.post(c + "/clients", json={"client_id": CLIENT_ID, "client_secret": "s"})
        issued = (await http.post(c + "/refresh_tokens", json={"client_id": CLIENT_ID})).json()
        assert issued["account"] == emu.account_of(issued["refresh_token"])

        bulk = await http.post(
            c + f"/calendars/{CAL}/events/bulk",
            json={"events": [timed(f"e{i}", T0 + timedelta(hours=i)) for i in range(5)]},
        )
        assert bulk.status_code == 201
        ids = bulk.json()["ids"]
        assert len(set(ids)) == 5
        assert (await http.post(c + f"/calendars/{CAL}/events/bulk", json={})).status_code == 400

        corrupted = await http.post(
            c + f"/calendars/{CAL}/events/{ids[0]}/corrupt?notify=false",
            json={"start": {"dateTime": "garbage"}},
        )
        assert corrupted.status_code == 200
        assert corrupted.json() == {"id": ids[0], "start": {"dateTime": "garbage"}}

        form = {
            "grant_type": "refresh_token",
            "refresh_token": issued["refresh_token"],
            "client_id": CLIENT_ID,
            "client_secret": "s",
        }
        access = (await http.post(emu.token_url, data=form)).json()["access_token"]
        listed = await http.get(
            emu.api_url + events_path(), headers={"Authorization": f"Bearer {access}"}
        )
        assert sorted(e["id"] for e in listed.json()["items"]) == sorted(ids)
        await http.get(emu.api_url + events_path())  # anonymous: 401

        mine = await http.get(c + "/requests", params={"account": issued["account"]})
        assert [(r["status"], r["calendar_id"]) for r in mine.json()] == [(200, CAL)]
        on_cal = await http.get(c + "/requests", params={"calendar_id": CAL})
        assert [(r["status"], r["account"]) for r in on_cal.json()] == [
            (200, issued["account"]),
            (401, None),
        ]
        assert len((await http.get(c + "/requests")).json()) == 3


async def test_serve_forever_and_cli_parser(http: httpx.AsyncClient) -> None:
    emu = GoogleEmulator()
    stop = asyncio.Event()
    server = asyncio.create_task(
        serve_forever(
            "127.0.0.1",
            0,
            emulator=emu,
            calendars=[(CAL, "Europe/Zurich")],
            clients=[(CLIENT_ID, CLIENT_SECRET)],
            stop=stop,
        )
    )
    for _ in range(200):
        try:
            emu.base_url  # noqa: B018  (raises until the server listens)
            break
        except RuntimeError:
            await asyncio.sleep(0.01)
    health = await http.get(emu.base_url + "/_emulator/health")
    assert health.json()["ok"] is True
    stop.set()
    await asyncio.wait_for(server, 5)
    await emu.aclose()  # idempotent

    args = build_parser().parse_args(
        [
            "--port",
            "0",
            "--calendar",
            "a@example.com:Europe/Zurich",
            "--calendar",
            "b@example.com",
            "--client",
            "id.apps.googleusercontent.com:secret",
        ]
    )
    assert args.calendar == [("a@example.com", "Europe/Zurich"), ("b@example.com", "UTC")]
    assert args.client == [("id.apps.googleusercontent.com", "secret")]


def test_events_sharing_default_fields_change_one_at_a_time() -> None:
    """Events share their default ``creator``, ``organizer`` and ``reminders`` (memory
    at scale): a change to one event, or to a copy handed out, never shows in another."""
    emulator = GoogleEmulator()
    emulator.add_calendar(CAL, time_zone="UTC")
    start = {"dateTime": "2026-12-10T10:00:00Z"}
    end = {"dateTime": "2026-12-10T11:00:00Z"}
    first, second = emulator.insert_events(CAL, [{"start": start, "end": end}] * 2)
    defaults = {k: second[k] for k in ("creator", "organizer", "reminders")}
    assert defaults["reminders"] == {"useDefault": True}

    emulator.patch_event(CAL, first["id"], {"reminders": {"useDefault": False, "overrides": []}})
    handed_out = emulator.get_event(CAL, second["id"])
    handed_out["creator"]["email"] = "mallory@example.com"
    handed_out["reminders"]["useDefault"] = False

    assert emulator.get_event(CAL, first["id"])["reminders"] == {
        "useDefault": False,
        "overrides": [],
    }
    after = emulator.get_event(CAL, second["id"])
    assert {k: after[k] for k in defaults} == defaults
    third = emulator.insert_event(CAL, {"start": start, "end": end})
    assert {k: third[k] for k in defaults} == defaults
