"""The Microsoft Graph emulator, driven over real HTTP as the provider adapter will be.

Each test starts an in-process emulator (Graph over HTTP, the identity platform
over TLS from a throwaway CA) and talks to it with ``httpx.AsyncClient`` for
Graph and MSAL (in a thread) for tokens; webhooks go to a small aiohttp
receiver. Expected bodies and headers are the ones in the Microsoft Graph v1.0
reference, the Graph change notifications docs and the Microsoft identity platform
token docs.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import msal
import pytest
import requests
from aiohttp import web

from calsync.emulators import faults as shared_faults
from calsync.emulators import google as google_emulator
from calsync.emulators.microsoft import (
    DROPPED,
    GraphApiError,
    MicrosoftEmulator,
    build_parser,
    serve_forever,
)

ALICE = "alice@contoso.com"
BOB = "bob@contoso.com"
CLIENT_ID = "6731de76-14a6-49ae-97bc-6eba6914391e"
CLIENT_SECRET = "not-a-real-secret"
SCOPES = ["https://graph.microsoft.com/Calendars.Read"]
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
WINDOW = {"startDateTime": "2026-11-01T00:00:00Z", "endDateTime": "2027-01-01T00:00:00Z"}


class FakeClock:
    """A settable clock for the emulator, starting at ``T0``."""

    def __init__(self, start: datetime = T0) -> None:
        self.value = start.timestamp()

    def __call__(self) -> float:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += seconds


@dataclass
class Hook:
    """A webhook endpoint: answers validation requests per ``mode`` and records the rest."""

    url: str = ""
    mode: str = "echo"  # "echo" | "encoded" | "status"
    validations: list[tuple[dict[str, list[str]], str, bytes]] = field(default_factory=list)
    notifications: list[dict[str, Any]] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        token = request.query.get("validationToken")
        if token is not None:
            self.validations.append(
                (
                    parse_qs(urlsplit(str(request.url)).query),
                    request.headers.get("Content-Type", ""),
                    await request.read(),
                )
            )
            if self.mode == "status":
                return web.Response(status=500)
            text = quote(token) if self.mode == "encoded" else token
            return web.Response(text=text, content_type="text/plain")
        self.notifications.append(await request.json())
        self.content_types.append(request.headers.get("Content-Type", ""))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 202)

    @property
    def items(self) -> list[dict[str, Any]]:
        return [item for body in self.notifications for item in body["value"]]


@dataclass
class Hooks:
    notify: Hook
    lifecycle: Hook


async def test_like_entra_a_rotated_refresh_token_keeps_working_until_the_grant_is_revoked(
    clock: FakeClock,
) -> None:
    async with MicrosoftEmulator(seed=7, clock=clock, old_refresh_tokens="valid") as emu:
        emu.add_mailbox(ALICE)
        emu.add_client(CLIENT_ID, CLIENT_SECRET)
        first_rt = emu.issue_refresh_token(CLIENT_ID, [ALICE])
        app = await asyncio.to_thread(msal_app, emu)
        ok = await asyncio.to_thread(app.acquire_token_by_refresh_token, first_rt, SCOPES)
        second_rt = ok["refresh_token"]
        assert second_rt != first_rt  # still rotated: a new token on every use
        # the one used is not revoked: a client that died before storing the new one
        # still holds a working grant
        again = await asyncio.to_thread(app.acquire_token_by_refresh_token, first_rt, SCOPES)
        assert "error" not in again, again
        assert again["refresh_token"] not in (first_rt, second_rt)
        assert emu.account_of(again["refresh_token"]) == emu.account_of(first_rt)
        emu.revoke_refresh_token(second_rt)  # revoking the grant ends every token of it
        for token in (first_rt, second_rt, again["refresh_token"]):
            refused = await asyncio.to_thread(app.acquire_token_by_refresh_token, token, SCOPES)
            assert refused["error_codes"] == [50173], refused


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def emu(clock: FakeClock) -> AsyncIterator[MicrosoftEmulator]:
    async with MicrosoftEmulator(
        seed=7, clock=clock, push_retry_delays=(0.01, 0.01), page_size_default=100
    ) as emulator:
        emulator.add_mailbox(ALICE, time_zone="Pacific Standard Time")
        emulator.add_mailbox(BOB)
        emulator.add_client(CLIENT_ID, CLIENT_SECRET)
        yield emulator


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        yield client


async def refresh(
    emu: MicrosoftEmulator, refresh_token: str, secret: str = CLIENT_SECRET
) -> httpx.Response:
    """One raw refresh_token grant against the TLS token endpoint."""
    context = ssl.create_default_context(cafile=emu.ca_bundle_path)
    async with httpx.AsyncClient(verify=context, trust_env=False, timeout=10) as client:
        return await client.post(
            emu.token_url,
            data={
                "client_id": CLIENT_ID,
                "client_secret": secret,
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "scope": " ".join([*SCOPES, "offline_access"]),
            },
        )


async def mint_access_token(emu: MicrosoftEmulator, user_ids: list[str] | None = None) -> str:
    resp = await refresh(emu, emu.issue_refresh_token(CLIENT_ID, user_ids))
    assert resp.status_code == 200, resp.text
    return str(resp.json()["access_token"])


@pytest.fixture
async def api(emu: MicrosoftEmulator) -> AsyncIterator[httpx.AsyncClient]:
    token = await mint_access_token(emu)
    async with httpx.AsyncClient(
        base_url=emu.api_url,
        headers={"Authorization": f"Bearer {token}"},
        trust_env=False,
        timeout=10,
    ) as client:
        yield client


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    notify, lifecycle = Hook(), Hook()
    app = web.Application()
    app.router.add_post("/graph/notify", notify.handle)
    app.router.add_post("/graph/lifecycle", lifecycle.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    notify.url = f"{base}/graph/notify"
    lifecycle.url = f"{base}/graph/lifecycle"
    yield Hooks(notify, lifecycle)
    await runner.cleanup()


def delta_path(user: str = ALICE) -> str:
    return f"/users/{user}/calendarView/delta"


def timed(
    subject: str, start: str, minutes: int = 60, zone: str = "UTC", **extra: Any
) -> dict[str, Any]:
    begin = datetime.fromisoformat(start)
    return {
        "subject": subject,
        "start": {"dateTime": begin.isoformat(), "timeZone": zone},
        "end": {"dateTime": (begin + timedelta(minutes=minutes)).isoformat(), "timeZone": zone},
        **extra,
    }


@dataclass
class Round:
    items: list[dict[str, Any]]
    pages: list[httpx.Response]
    delta_link: str


async def walk(
    api: httpx.AsyncClient,
    first: str | None = None,
    *,
    user: str = ALICE,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
) -> Round:
    """Page through one delta round, following the links verbatim."""
    pages: list[httpx.Response] = []
    if first is None:
        resp = await api.get(delta_path(user), params=params or WINDOW, headers=headers)
    else:
        resp = await api.get(first, headers=headers)
    while True:
        assert resp.status_code == 200, resp.text
        pages.append(resp)
        body = resp.json()
        if "@odata.nextLink" in body:
            assert "@odata.deltaLink" not in body
            resp = await api.get(body["@odata.nextLink"], headers=headers)
            continue
        items = [item for page in pages for item in page.json()["value"]]
        return Round(items, pages, body["@odata.deltaLink"])


def ids(items: list[dict[str, Any]]) -> set[str]:
    return {item["id"] for item in items}


def removed(event_id: str) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.event",
        "id": event_id,
        "@removed": {"reason": "deleted"},
    }


def graph_error(resp: httpx.Response) -> tuple[str, str]:
    error = resp.json()["error"]
    assert set(error["innerError"]) == {"date", "request-id", "client-request-id"}
    assert error["innerError"]["request-id"] == resp.headers["request-id"]
    return error["code"], error["message"]


def msal_app(
    emu: MicrosoftEmulator, secret: str = CLIENT_SECRET
) -> msal.ConfidentialClientApplication:
    session = requests.Session()
    session.verify = emu.ca_bundle_path
    # Without this, REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in the environment win over
    # session.verify (requests merges environment settings per request).
    session.trust_env = False
    return msal.ConfidentialClientApplication(
        CLIENT_ID,
        client_credential=secret,
        authority=emu.authority,
        http_client=session,
        instance_discovery=False,
    )


# --------------------------------------------------------------------------- calendarView delta


async def test_delta_pages_with_maxpagesize_then_delta_link(
    emu: MicrosoftEmulator, api: httpx.AsyncClient
) -> None:
    created = emu.create_events(
        ALICE, [timed(f"e{i}", f"2026-12-{1 + i % 28:02d}T09:00:00") for i in range(25)]
    )

    rnd = await walk(api, headers={"Prefer": "odata.maxpagesize=10"})

    assert [len(page.json()["value"]) for page in rnd.pages] == [10, 10, 5]
    for page in rnd.pages:
        assert page.headers["Preference-Applied"] == "odata.maxpagesize=10"
        assert page.headers["Content-Type"].startswith("application/json")
        assert page.json()["@odata.context"] == f"{emu.api_url}/$metadata#Collection(event)"
    for page in rnd.pages[:-1]:
        link = page.json()["@odata.nextLink"]
        assert link.startswith(f"{emu.api_url}/users/{ALICE}/calendarView/delta?$skiptoken=")
    assert rnd.delta_link.startswith(f"{emu.api_url}/users/{ALICE}/calendarView/delta?$deltatoken=")
    assert "startDateTime" not in rnd.delta_link  # the window lives in the opaque token
    assert ids(rnd.items) == {event["id"] for event in created}
    assert len(rnd.items) == 25

    again = await walk(api, rnd.delta_link)
    assert again.items == []
    assert "Preference-Applied" not in again.pages[0].headers


async def test_event_shape_follows_the_event_resource(
    emu: MicrosoftEmulator, api: httpx.AsyncClient
) -> None:
    created = emu.create_event(
        ALICE,
        timed(
            "Plan shopping list",
            "2026-12-09T12:30:00",
            90,
            zone="Pacific Standard Time",
            showAs="tentative",
            attendees=[{"emailAddress": {"address": BOB, "name": "Bob"}, "type": "required"}],
        ),
    )
    rnd = await walk(api)
    (item,) = rnd.items

    assert item["@odata.type"] == "#microsoft.graph.event"
    assert item["@odata.etag"] == f'W/"{item["changeKey"]}"'
    assert item["id"] == created["id"]
    assert item["start"] == {"dateTime": "2026-12-09T20:30:00.0000000", "timeZone": "UTC"}
    assert item["end"] == {"dateTime": "2026-12-09T22:00:00.0000000", "timeZone": "UTC"}
    assert item["originalStartTimeZone"] == "Pacific Standard Time"
    assert item["originalEndTimeZone"] == "Pacific Standard Time"
    assert item["isAllDay"] is False
    assert item["isCancelled"] is False
    assert item["showAs"] == "tentative"
    assert item["type"] == "singleInstance"
    assert item["seriesMasterId"] is None
    assert item["subject"] == "Plan shopping list"
    assert item["organizer"] == {"emailAddress": {"name": "alice", "address": ALICE}}
    assert item["attendees"][0]["emailAddress"]["address"] == BOB
    assert item["iCalUId"].startswith("040000008200E00074C5B7101A82E008")
    assert item["lastModifiedDateTime"] == "2026-11-25T12:00:00.0000000Z"
    assert {"body", "location", "createdDateTime"} <= set(item)
    # The stored event (POST answer) keeps the caller's zone.
    assert created["start"] == {
        "dateTime": "2026-12-09T12:30:00.0000000",
        "timeZone": "Pacific Standard Time",
    }


async def test_incremental_round_returns_changes_and_removals(
    emu: MicrosoftEmulator, api: httpx.AsyncClient, clock: FakeClock
) -> None:
    keep, change, drop = emu.create_events(
        ALICE,
        [timed(name, "2026-12-02T10:00:00") for name in ("keep", "change", "drop")],
    )
    first = await walk(api)
    assert len(first.items) == 3

    clock.advance(60)
    new = emu.create_event(ALICE, timed("new", "2026-12-03T10:00:00"))
    updated = emu.update_event(ALICE, change["id"], {"subject": "changed", "showAs": "free"})
    emu.delete_event(ALICE, drop["id"])
    second = await walk(api, first.delta_link)

    by_id = {item["id"]: item for item in second.items}
    assert set(by_id) == {new["id"], change["id"], drop["id"]}
    assert by_id[drop["id"]] == removed(drop["id"])
    assert by_id[change["id"]]["subject"] == "changed"
    assert by_id[change["id"]]["showAs"] == "free"
    assert by_id[change["id"]]["changeKey"] == updated["changeKey"] != change["changeKey"]
    assert by_id[change["id"]]["lastModifiedDateTime"] == "2026-11-25T12:01:00.0000000Z"
    assert by_id[new["id"]]["subject"] == "new"
    assert keep["id"] not in by_id

    third = await walk(api, second.delta_link)
    assert third.items == []


async def test_moves_out_of_the_window_and_changes_outside_it_are_removed(
    emu: MicrosoftEmulator, api: httpx.AsyncClient
) -> None:
    inside = emu.create_event(ALICE, timed("inside", "2026-12-05T09:00:00"))
    first = await walk(api)
    assert ids(first.items) == {inside["id"]}

    emu.update_event(
        ALICE,
        inside["id"],
        {
            "start": {"dateTime": "2027-03-01T09:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2027-03-01T10:00:00", "timeZone": "UTC"},
        },
    )
    outside = emu.create_event(ALICE, timed("outside", "2027-05-01T09:00:00"))
    second = await walk(api, first.delta_link)

    assert sorted(second.items, key=lambda i: i["id"]) == sorted(
        [removed(inside["id"]), removed(outside["id"])], key=lambda i: i["id"]
    )


async def test_changes_made_while_paging_reach_the_next_round(
    emu: MicrosoftEmulator, api: httpx.AsyncClient
) -> None:
    emu.create_events(ALICE, [timed(f"e{i}", "2026-12-01T09:00:00") for i in range(6)])
    headers = {"Prefer": "odata.maxpagesize=2"}
    resp = await api.get(delta_path(), params=WINDOW, headers=headers)
    late = emu.create_event(ALICE, timed("late", "2026-12-01T11:00:00"))
    link = resp.json()["@odata.nextLink"]
    rest = await walk(api, link, headers=headers)

    follow = await walk(api, rest.delta_link, headers=headers)
    assert late["id"] in ids(follow.items)


async def test_expired_delta_token_answers_410_with_location(
    emu: MicrosoftEmulator, api: httpx.AsyncClient
) -> None:
    emu.create_events(ALICE, [timed(f"e{i}", "2026-12-01T09:00:00") for i in range(3)])
    first = await walk(api)
    half = await api.get(delta_path(), params=WINDOW, headers={"Prefer": "odata.maxpagesize=1"})
    emu.expire_delta_tokens(ALICE, style="410")

    for stale in (first.delta_link, half.json()["@odata.nextLink"]):
        resp = await api.get(stale)
        assert resp.status_code == 410
        assert graph_error(resp) == (
            "resyncRequired",
            "The delta token is no longer valid, and the app must reset the sync state.",
        )
        location = resp.headers["Location"]
        assert location.endswith("&$deltatoken=")
        assert parse_qs(urlsplit(location).query, keep_blank_values=True)["$deltatoken"] == [""]

    restart = await walk(api, location)
    assert len(restart.items) == 3
    assert (await walk(api, restart.delta_link)).items == []


async def test_expired_delta_token_answers_sync_state_not_found(
    emu: MicrosoftEmulator, api: httpx.AsyncClient
) -> None:
    first = await walk(api)
    emu.expire_delta_tokens(ALICE, style="syncStateNotFound")

    resp = await api.get(first.delta_link)

    assert resp.status_code == 410
    assert "Location" not in resp.headers
    assert graph_error(resp) == (
        "SyncStateNotFound",
        "The sync state generation is not found. The delta token is expired and data must be "
        "synchronized again.",
    )
    with pytest.raises(ValueError):
        emu.expire_delta_tokens(ALICE, style="gone")


async def test_forged_and_foreign_tokens_are_sync_state_not_found(
    emu: MicrosoftEmulator, api: httpx.AsyncClient
) -> None:
    alice = await walk(api)
    token = alice.delta_link.partition("$deltatoken=")[2]
    for url in (
        f"{delta_path()}?$deltatoken=R0usmcMDNGg0J1E",
        f"{delta_path(BOB)}?$deltatoken={token}",
        f"{delta_path()}?$skiptoken=garbage",
    ):
        resp = await api.get(url)
        assert resp.status_code == 410, url
        assert graph_error(resp)[0] == "SyncStateNotFound"


async def test_delta_request_validation(emu: MicrosoftEmulator, api: httpx.AsyncClient) -> None:
    missing = await api.get(delta_path())
    assert missing.status_code == 400
    assert graph_error(missing) == (
        "ErrorInvalidParameter",
        "This request requires a time window specified by the query string parameters "
        "StartDateTime and EndDateTime.",
    )
    selected = await api.get(delta_path(), params={**WINDOW, "$select": "subject"})
    assert selected.status_code == 400
    reversed_window = await api.get(
        delta_path(),
        params={"startDateTime": WINDOW["endDateTime"], "endDateTime": WINDOW["startDateTime"]},
    )
    assert reversed_window.status_code == 400
    lower_case = await api.get(
        delta_path(), params={k.lower(): v for k, v in WINDOW.items()}
    )  # Graph query options are case-insensitive
    assert lower_case.status_code == 200
    unknown = await api.get(delta_path("nobody@contoso.com"), params=WINDOW)
    assert unknown.status_code == 404
    assert graph_error(unknown)[0] == "itemNotFound"


async def test_graph_calls_need_a_bearer_token_for_that_mailbox(
    emu: MicrosoftEmulator, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    url = emu.api_url + delta_path()
    anonymous = await http.get(url, params=WINDOW, headers={"client-request-id": "abc-123"})
    assert anonymous.status_code == 401
    body = anonymous.json()["error"]
    assert body["code"] == "InvalidAuthenticationToken"
    assert body["message"] == "Access token is empty."
    assert body["innerError"]["client-request-id"] == "abc-123"
    assert anonymous.headers["client-request-id"] == "abc-123"
    assert anonymous.headers["WWW-Authenticate"].startswith('Bearer realm=""')

    bob_only = await mint_access_token(emu, [BOB])
    other = await http.get(url, params=WINDOW, headers={"Authorization": f"Bearer {bob_only}"})
    assert other.status_code == 403
    assert graph_error(other)[0] == "accessDenied"
    me = await http.get(
        emu.api_url + "/me/calendarView/delta",
        params=WINDOW,
        headers={"Authorization": f"Bearer {bob_only}"},
    )
    assert me.status_code == 200

    clock.advance(3600)
    expired = await http.get(
        emu.api_url + delta_path(BOB),
        params=WINDOW,
        headers={"Authorization": f"Bearer {bob_only}"},
    )
    assert expired.status_code == 401
    assert graph_error(expired) == (
        "InvalidAuthenticationToken",
        "Lifetime validation failed, the token is expired.",
    )


# --------------------------------------------------------------------------- time zones & series


async def test_windows_and_iana_zones_render_correctly(
    emu: MicrosoftEmulator, api: httpx.AsyncClient
) -> None:
    winter = emu.create_event(
        ALICE, timed("winter", "2026-12-01T09:00:00", zone="Pacific Standard Time")
    )
    summer = emu.create_event(
        ALICE, timed("summer", "2027-07-01T09:00:00", zone="Pacific Standard Time")
    )
    zurich = emu.create_event(ALICE, timed("zurich", "2026-12-02T09:00:00", zone="Europe/Zurich"))
    params = {"startDateTime": "2026-11-01T00:00:00Z", "endDateTime": "2027-12-31T00:00:00Z"}

    utc = {i["id"]: i for i in (await walk(api, params=params)).items}
    assert utc[winter["id"]]["start"] == {
        "dateTime": "2026-12-01T17:00:00.0000000",
        "timeZone": "UTC",
    }
    assert utc[summer["id"]]["start"] == {
        "dateTime": "2027-07-01T16:00:00.0000000",
        "timeZone": "UTC",
    }
    assert utc[zurich["id"]]["start"] == {
        "dateTime": "2026-12-02T08:00:00.0000000",
        "timeZone": "UTC",
    }

    for zone in ("Pacific Standard Time", "America/Los_Angeles"):
        rnd = await walk(api, params=params, headers={"Prefer": f'outlook.timezone="{zone}"'})
        assert rnd.pages[0].headers["Preference-Applied"] == f'outlook.timezone="{zone}"'
        local = {i["id"]: i for i in rnd.items}
        assert local[winter["id"]]["start"] == {
            "dateTime": "2026-12-01T09:00:00.0000000",
            "timeZone": zone,
        }
        assert local[summer["id"]]["end"] == {
            "dateTime": "2027-07-01T10:00:00.0000000",
            "timeZone": zone,
        }
        assert local[zurich["id"]]["start"]["dateTime"] == "2026-12-02T00:00:00.0000000"

    both = await api.get(
        delta_path(),
        params=params,
        headers={"Prefer": 'odata.maxpagesize=1, outlook.timezone="W. Europe Standard Time"'},
    )
    assert both.headers["Preference-Applied"] == (
        'outlook.timezone="W. Europe Standard Time", odata.maxpagesize=1'
    )

    with pytest.raises(GraphApiError) as bad_zone:
        emu.create_event(ALICE, timed("mars", "2026-12-01T09:00:00", zone="Mars/Olympus_Mons"))
    assert (bad_zone.value.status, bad_zone.value.code) == (400, "TimeZoneNotSupportedException")


async def test_all_day_events_are_floating_midnights(
    emu: MicrosoftEmulator, api: httpx.AsyncClient
) -> None:
    event = emu.create_event(
        ALICE,
        {
            "subject": "offsite",
            "isAllDay": True,
            "showAs": "oof",
            "start": {"dateTime": "2026-12-10T00:00:00", "timeZone": "Pacific Standard Time"},
            "end": {"dateTime": "2026-12-12T00:00:00", "timeZone": "Pacific Standard Time"},
        },
    )
    for headers, label in (
        ({}, "UTC"),
        ({"Prefer": 'outlook.timezone="Tokyo Standard Time"'}, "Tokyo Standard Time"),
    ):
        (item,) = (await walk(api, headers=headers)).items
        assert item["id"] == event["id"]
        assert item["isAllDay"] is True
        assert item["start"] == {"dateTime": "2026-12-10T00:00:00.0000000", "timeZone": label}
        assert item["end"] == {"dateTime": "2026-12-12T00:00:00.0000000", "timeZone": label}

    with pytest.raises(GraphApiError) as not_midnight:
        emu.create_event(ALICE, timed("bad", "2026-12-10T09:00:00", isAllDay=True))
    assert not_midnight.value.status == 400


async def test_daily_and_weekly_series_expand_into_occurrences(
    emu: MicrosoftEmulator, api: httpx.AsyncClient
) -> None:
    daily = emu.create_event(
        ALICE,
        timed(
            "standup",
            "2026-12-01T09:00:00",
            15,
            zone="Pacific Standard Time",
            recurrence={
                "pattern": {"type": "daily", "interval": 1},
                "range": {"type": "numbered", "startDate": "2026-12-01", "numberOfOccurrences": 5},
            },
        ),
    )
    weekly = emu.create_event(
        ALICE,
        timed(
            "1:1",
            "2026-12-07T14:00:00",
            30,
            zone="W. Europe Standard Time",
            recurrence={
                "pattern": {
                    "type": "weekly",
                    "interval": 1,
                    "daysOfWeek": ["monday", "wednesday"],
                    "firstDayOfWeek": "sunday",
                },
                "range": {"type": "endDate", "startDate": "2026-12-07", "endDate": "2026-12-16"},
            },
        ),
    )
    assert daily["type"] == weekly["type"] == "seriesMaster"

    items = (await walk(api)).items
    standups = sorted(
        (i for i in items if i.get("seriesMasterId") == daily["id"]),
        key=lambda i: i["originalStart"],
    )
    assert [i["originalStart"] for i in standups] == [
        f"2026-12-0{d}T17:00:00Z" for d in range(1, 6)
    ]
    assert all(i["type"] == "occurrence" for i in standups)
    assert [i["start"]["dateTime"] for i in standups][:2] == [
        "2026-12-01T17:00:00.0000000",
        "2026-12-02T17:00:00.0000000",
    ]
    assert standups[0]["end"]["dateTime"] == "2026-12-01T17:15:00.0000000"
    assert len({i["iCalUId"] for i in standups}) == 5  # different per occurrence (Graph event docs)
    assert len({i["id"] for i in standups}) == 5
    assert all(i["recurrence"] is None for i in standups)
    one_on_ones = sorted(
        i["start"]["dateTime"] for i in items if i.get("seriesMasterId") == weekly["id"]
    )
    assert one_on_ones == [
        "2026-12-07T13:00:00.0000000",
        "2026-12-09T13:00:00.0000000",
        "2026-12-14T13:00:00.0000000",
        "2026-12-16T13:00:00.0000000",
    ]
    assert daily["id"] not in ids(items)  # calendarView delta lists instances, not masters

    narrow = await walk(
        api,
        params={"startDateTime": "2026-12-02T00:00:00Z", "endDateTime": "2026-12-04T00:00:00Z"},
    )
    assert sorted(i["originalStart"] for i in narrow.items) == [
        "2026-12-02T17:00:00Z",
        "2026-12-03T17:00:00Z",
    ]


async def test_occurrence_exceptions_and_cancellations_reach_delta(
    emu: MicrosoftEmulator, api: httpx.AsyncClient
) -> None:
    series = emu.create_event(
        ALICE,
        timed(
            "standup",
            "2026-12-01T09:00:00",
            recurrence={
                "pattern": {"type": "daily", "interval": 1},
                "range": {"type": "numbered", "startDate": "2026-12-01", "numberOfOccurrences": 3},
            },
        ),
    )
    first = await walk(api)
    occurrences = sorted(first.items, key=lambda i: i["originalStart"])
    assert len(occurrences) == 3

    moved = emu.update_event(
        ALICE,
        occurrences[1]["id"],
        {
            "subject": "standup (late)",
            "start": {"dateTime": "2026-12-02T15:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2026-12-02T15:30:00", "timeZone": "UTC"},
        },
    )
    emu.delete_event(ALICE, occurrences[2]["id"])
    second = await walk(api, first.delta_link)

    by_id = {i["id"]: i for i in second.items}
    assert set(by_id) == {occurrences[1]["id"], occurrences[2]["id"]}
    exception = by_id[occurrences[1]["id"]]
    assert exception["type"] == "exception"
    assert exception["seriesMasterId"] == series["id"]
    assert exception["subject"] == "standup (late)"
    assert exception["originalStart"] == "2026-12-02T09:00:00Z"
    assert exception["start"]["dateTime"] == "2026-12-02T15:00:00.0000000"
    assert moved["id"] == exception["id"]
    assert by_id[occurrences[2]["id"]] == removed(occurrences[2]["id"])

    emu.delete_event(ALICE, series["id"])
    third = await walk(api, second.delta_link)
    assert {occurrences[0]["id"], occurrences[1]["id"]} <= ids(third.items)
    assert all("@removed" in item for item in third.items)
    assert emu.list_live_events(ALICE) == []


async def test_corrupt_event_is_listed_as_stored_without_breaking_others(
    emu: MicrosoftEmulator, api: httpx.AsyncClient
) -> None:
    good = emu.create_event(ALICE, timed("good", "2026-12-01T09:00:00"))
    raw = {"subject": "broken", "start": {"dateTime": "garbage", "timeZone": "Mars/Olympus"}}
    emu.corrupt_event(ALICE, "AAMkA-broken=", raw)

    items = {i["id"]: i for i in (await walk(api)).items}

    assert items["AAMkA-broken="] == {"id": "AAMkA-broken=", **raw}
    assert items[good["id"]]["subject"] == "good"
    repaired = emu.update_event(
        ALICE,
        "AAMkA-broken=",
        {
            "start": {"dateTime": "2026-12-03T09:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2026-12-03T10:00:00", "timeZone": "UTC"},
        },
    )
    assert repaired["type"] == "singleInstance"


async def test_bulk_create_stores_every_event_and_list_live_events_matches_delta(
    emu: MicrosoftEmulator, api: httpx.AsyncClient
) -> None:
    # How fast a bulk create is matters to the benchmarks that fill calendars with it;
    # it is their figure, not a test's (a timed assertion failed on a loaded machine).
    base = datetime(2026, 12, 1, 8, 0)
    events = [
        timed(f"e{i}", (base + timedelta(minutes=37 * i)).isoformat(), 30) for i in range(2000)
    ]
    created = emu.create_events(BOB, events)
    assert len({e["id"] for e in created}) == 2000

    window = {"startDateTime": "2026-11-01T00:00:00Z", "endDateTime": "2027-03-01T00:00:00Z"}
    rnd = await walk(api, user=BOB, params=window, headers={"Prefer": "odata.maxpagesize=500"})
    assert len(rnd.pages) == 4
    live = emu.list_live_events(BOB)
    assert [i["id"] for i in live] == [i["id"] for i in rnd.items]
    assert live[0] == rnd.items[0]


# --------------------------------------------------------------------------- subscriptions


def subscription_body(
    hooks: Hooks, *, minutes: float = 60, lifecycle: bool = True, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "changeType": "created,updated,deleted",
        "notificationUrl": hooks.notify.url,
        "resource": f"/users/{ALICE}/events",
        "expirationDateTime": (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z"),
        "clientState": "secret-up-to-128-chars",
    }
    if lifecycle:
        body["lifecycleNotificationUrl"] = hooks.lifecycle.url
    body.update(extra)
    return body


async def subscribe(api: httpx.AsyncClient, hooks: Hooks, **kwargs: Any) -> dict[str, Any]:
    resp = await api.post("/subscriptions", json=subscription_body(hooks, **kwargs))
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def test_subscription_create_runs_the_validation_handshake(
    emu: MicrosoftEmulator, api: httpx.AsyncClient, hooks: Hooks
) -> None:
    hooks.notify.url += "?tenant=contoso"  # query strings are kept
    resp = await api.post("/subscriptions", json=subscription_body(hooks, minutes=120))

    assert resp.status_code == 201, resp.text
    sub = resp.json()
    assert sub["@odata.context"] == f"{emu.api_url}/$metadata#subscriptions/$entity"
    assert sub["resource"] == f"/users/{ALICE}/events"
    assert sub["changeType"] == "created,updated,deleted"
    assert sub["clientState"] == "secret-up-to-128-chars"
    assert sub["notificationUrl"] == hooks.notify.url
    assert sub["lifecycleNotificationUrl"] == hooks.lifecycle.url
    assert sub["expirationDateTime"] == "2026-11-25T14:00:00.0000000Z"
    assert sub["applicationId"] == CLIENT_ID
    assert sub["includeResourceData"] is False
    assert set(emu.subscriptions) == {sub["id"]}
    assert emu.subscriptions[sub["id"]].user_id == ALICE

    for hook, extra in ((hooks.notify, {"tenant": ["contoso"]}), (hooks.lifecycle, {})):
        ((query, content_type, body),) = hook.validations
        token = query.pop("validationToken")[0]
        assert query == extra
        assert token.startswith("Validation: Testing client application reachability")
        assert content_type == "text/plain; charset=utf-8"
        assert body == b""
    kinds = [(d.kind, d.status) for d in emu.delivery_log]
    assert kinds == [("validation", 200), ("validation", 200)]


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        (
            "encoded",
            "Subscription validation request failed. Response must exactly match "
            "validationToken query parameter.",
        ),
        (
            "status",
            "Subscription validation request failed. Notification endpoint must respond with "
            "200 OK to validation request.",
        ),
    ],
)
async def test_failed_validation_is_400_and_creates_nothing(
    emu: MicrosoftEmulator, api: httpx.AsyncClient, hooks: Hooks, mode: str, message: str
) -> None:
    hooks.lifecycle.mode = mode

    resp = await api.post("/subscriptions", json=subscription_body(hooks))

    assert resp.status_code == 400
    assert graph_error(resp) == ("ValidationError", message)
    assert emu.subscriptions == {}
    assert len(hooks.notify.validations) == len(hooks.lifecycle.validations) == 1


async def test_subscription_expiry_limits_and_duplicates(
    emu: MicrosoftEmulator, api: httpx.AsyncClient, hooks: Hooks
) -> None:
    too_long = await api.post("/subscriptions", json=subscription_body(hooks, minutes=10081))
    assert too_long.status_code == 400
    assert graph_error(too_long) == (
        "InvalidRequest",
        "Subscription expiration can only be 10080 minutes in the future.",
    )
    assert hooks.notify.validations == []

    short = await subscribe(api, hooks, minutes=5)
    assert short["expirationDateTime"] == "2026-11-25T12:45:00.0000000Z"  # raised to 45 min

    duplicate = await api.post("/subscriptions", json=subscription_body(hooks, minutes=60))
    assert duplicate.status_code == 409
    assert graph_error(duplicate) == (
        "Conflict",
        f"Subscription Id {short['id']} already exists for the requested combination",
    )

    state = await api.post(
        "/subscriptions",
        json=subscription_body(hooks, changeType="created", clientState="x" * 129),
    )
    assert state.status_code == 400
    week = await subscribe(api, hooks, minutes=10080, changeType="updated", lifecycle=False)
    assert week["expirationDateTime"] == "2026-12-02T12:00:00.0000000Z"


async def test_patch_renews_and_delete_removes(
    emu: MicrosoftEmulator, api: httpx.AsyncClient, hooks: Hooks
) -> None:
    sub = await subscribe(api, hooks)
    later = (T0 + timedelta(days=3)).isoformat()

    renewed = await api.patch(f"/subscriptions/{sub['id']}", json={"expirationDateTime": later})
    assert renewed.status_code == 200
    assert renewed.json()["expirationDateTime"] == "2026-11-28T12:00:00.0000000Z"
    too_far = await api.patch(
        f"/subscriptions/{sub['id']}",
        json={"expirationDateTime": (T0 + timedelta(days=8)).isoformat()},
    )
    assert too_far.status_code == 400
    listed = await api.get("/subscriptions")
    assert [s["id"] for s in listed.json()["value"]] == [sub["id"]]

    deleted = await api.delete(f"/subscriptions/{sub['id']}")
    assert deleted.status_code == 204
    for method in ("PATCH", "DELETE", "GET"):
        gone = await api.request(
            method, f"/subscriptions/{sub['id']}", json={"expirationDateTime": later}
        )
        assert gone.status_code == 404
        assert graph_error(gone)[0] == "itemNotFound"


async def test_change_notifications_have_the_documented_shape(
    emu: MicrosoftEmulator, api: httpx.AsyncClient, hooks: Hooks
) -> None:
    sub = await subscribe(api, hooks)
    event = emu.create_event(ALICE, timed("new", "2026-12-01T09:00:00"))
    await emu.flush_pushes()
    updated = emu.update_event(ALICE, event["id"], {"subject": "renamed"})
    await emu.flush_pushes()
    emu.delete_event(ALICE, event["id"])
    emu.create_event(BOB, timed("not watched", "2026-12-01T09:00:00"))
    await emu.flush_pushes()

    items = hooks.notify.items
    assert [i["changeType"] for i in items] == ["created", "updated", "deleted"]
    object_id = emu.mailbox_object_id(ALICE)
    resource = f"Users/{object_id}/Events/{event['id']}"
    first = items[0]
    assert set(first) == {
        "id",
        "subscriptionId",
        "subscriptionExpirationDateTime",
        "clientState",
        "changeType",
        "resource",
        "tenantId",
        "resourceData",
    }
    assert first["subscriptionId"] == sub["id"]
    assert first["subscriptionExpirationDateTime"] == sub["expirationDateTime"]
    assert first["clientState"] == "secret-up-to-128-chars"
    assert first["resource"] == resource
    assert first["tenantId"] == emu.tenant_id
    assert first["resourceData"] == {
        "@odata.type": "#Microsoft.Graph.Event",
        "@odata.id": resource,
        "@odata.etag": event["@odata.etag"],
        "id": event["id"],
    }
    assert items[1]["resourceData"]["@odata.etag"] == updated["@odata.etag"]
    assert all(ct.startswith("application/json") for ct in hooks.notify.content_types)
    assert hooks.lifecycle.notifications == []
    assert [d.event for d in emu.delivery_log if d.kind == "notification"] == [
        "created",
        "updated",
        "deleted",
    ]


async def test_queued_notifications_are_batched(
    emu: MicrosoftEmulator, api: httpx.AsyncClient, hooks: Hooks
) -> None:
    await subscribe(api, hooks)
    for i in range(5):
        emu.create_event(ALICE, timed(f"e{i}", "2026-12-01T09:00:00"))
    await emu.flush_pushes()

    assert len(hooks.notify.items) == 5
    assert len(hooks.notify.notifications) < 5
    assert {d.batch for d in emu.delivery_log if d.kind == "notification"} != {1}


async def test_lifecycle_notifications(
    emu: MicrosoftEmulator, api: httpx.AsyncClient, hooks: Hooks
) -> None:
    sub = await subscribe(api, hooks)
    emu.send_lifecycle(sub["id"], "reauthorizationRequired")
    emu.send_lifecycle(sub["id"], "missed")
    await emu.flush_pushes()
    reauthorize = await api.post(f"/subscriptions/{sub['id']}/reauthorize")
    assert reauthorize.status_code == 200

    emu.send_lifecycle(sub["id"], "subscriptionRemoved")
    await emu.flush_pushes()

    events = [item["lifecycleEvent"] for item in hooks.lifecycle.items]
    assert events == ["reauthorizationRequired", "missed", "subscriptionRemoved"]
    assert hooks.lifecycle.items[0] == {
        "subscriptionId": sub["id"],
        "subscriptionExpirationDateTime": sub["expirationDateTime"],
        "tenantId": emu.tenant_id,
        "clientState": "secret-up-to-128-chars",
        "lifecycleEvent": "reauthorizationRequired",
    }
    assert emu.subscriptions == {}
    gone = await api.patch(
        f"/subscriptions/{sub['id']}", json={"expirationDateTime": T0.isoformat()}
    )
    assert gone.status_code == 404
    emu.create_event(ALICE, timed("after", "2026-12-01T09:00:00"))
    await emu.flush_pushes()
    assert hooks.notify.notifications == []
    with pytest.raises(KeyError):
        emu.send_lifecycle(sub["id"], "missed")
    with pytest.raises(ValueError):
        emu.send_lifecycle("whatever", "renewed")


async def test_reauthorization_is_sent_before_expiry_when_configured(
    clock: FakeClock, hooks: Hooks
) -> None:
    async with MicrosoftEmulator(seed=1, clock=clock, reauthorize_within=3600) as emu:
        emu.add_mailbox(ALICE)
        emu.add_client(CLIENT_ID, CLIENT_SECRET)
        token = await mint_access_token(emu)
        async with httpx.AsyncClient(
            base_url=emu.api_url, headers={"Authorization": f"Bearer {token}"}, trust_env=False
        ) as api:
            sub = await subscribe(api, hooks, minutes=180)
            emu.advance_clock(3600)
            await emu.flush_pushes()
            assert hooks.lifecycle.items == []
            emu.advance_clock(3700)
            emu.advance_clock(60)
            await emu.flush_pushes()
            assert [i["lifecycleEvent"] for i in hooks.lifecycle.items] == [
                "reauthorizationRequired"
            ]
            assert hooks.lifecycle.items[0]["subscriptionId"] == sub["id"]


async def test_expired_subscription_stops_delivery(
    emu: MicrosoftEmulator, api: httpx.AsyncClient, hooks: Hooks
) -> None:
    sub = await subscribe(api, hooks, minutes=60)
    emu.advance_clock(3601)

    emu.create_event(ALICE, timed("late", "2026-12-01T09:00:00"))
    await emu.flush_pushes()

    assert hooks.notify.notifications == []
    assert sub["id"] not in emu.subscriptions
    api.headers["Authorization"] = f"Bearer {await mint_access_token(emu)}"  # the old one expired
    renew = await api.patch(
        f"/subscriptions/{sub['id']}", json={"expirationDateTime": "2026-11-30T00:00:00Z"}
    )
    assert renew.status_code == 404


async def test_notification_retried_on_non_2xx_and_dropped_on_purpose(
    emu: MicrosoftEmulator, api: httpx.AsyncClient, hooks: Hooks
) -> None:
    await subscribe(api, hooks)
    hooks.notify.statuses = [500, 429]
    emu.create_event(ALICE, timed("retried", "2026-12-01T09:00:00"))
    await emu.flush_pushes()

    attempts = [(d.status, d.attempt) for d in emu.delivery_log if d.kind == "notification"]
    assert attempts == [(500, 1), (429, 2), (202, 3)]
    assert len(hooks.notify.items) == 3

    emu.faults.drop_push_probability = 1.0
    emu.create_event(ALICE, timed("dropped", "2026-12-01T10:00:00"))
    await emu.flush_pushes()
    assert len(hooks.notify.items) == 3
    assert emu.delivery_log[-1].dropped
    assert emu.delivery_log[-1].error == DROPPED


# --------------------------------------------------------------------------- throttling


async def test_throttle_429_with_fractional_retry_after(
    emu: MicrosoftEmulator, api: httpx.AsyncClient
) -> None:
    emu.faults.add("throttle_429", count=1, retry_after=2.128)

    limited = await api.get(delta_path(), params=WINDOW)
    fine = await api.get(delta_path(), params=WINDOW)

    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "2.128"
    error = limited.json()["error"]
    assert error["code"] == "TooManyRequests"
    assert error["message"] == "Please retry again later."
    assert list(error["innerError"]) == ["code", "date", "message", "request-id", "status"]
    assert error["innerError"]["code"] == error["innerError"]["status"] == "429"
    assert error["innerError"]["message"] == "Please retry after"
    assert fine.status_code == 200
    graph_calls = [r for r in emu.requests if r.path.startswith("/v1.0")]
    assert [(r.status, r.fault, r.retry_after) for r in graph_calls] == [
        (429, "throttle_429", 2.128),
        (200, None, None),
    ]
    assert all(r.calendar_id == ALICE for r in graph_calls)


async def test_unavailable_503_and_unknown_fault_kinds(
    emu: MicrosoftEmulator, api: httpx.AsyncClient
) -> None:
    emu.faults.add("unavailable_503", count=1, retry_after=7, path="/subscriptions")

    resp = await api.get("/subscriptions")

    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == "7"
    assert graph_error(resp)[0] == "serviceNotAvailable"
    with pytest.raises(ValueError, match="unknown fault kind"):
        emu.faults.add("rate_limit_403")  # type: ignore[arg-type]  # a Google kind


async def test_fifth_concurrent_call_on_a_mailbox_is_application_throttled(
    emu: MicrosoftEmulator, api: httpx.AsyncClient
) -> None:
    emu.faults.add("latency", seconds=1.0, count=5)

    responses = await asyncio.gather(*(api.get(delta_path(), params=WINDOW) for _ in range(5)))

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 200, 200, 429]
    (throttled,) = [r for r in responses if r.status_code == 429]
    assert graph_error(throttled) == (
        "ApplicationThrottled",
        "Application is over its MailboxConcurrency limit.",
    )
    assert [r.fault for r in emu.requests].count("mailbox_concurrency") == 1
    other = await api.get(delta_path(BOB), params=WINDOW)
    assert other.status_code == 200


# --------------------------------------------------------------------------- identity platform


async def test_msal_refreshes_rotates_and_reports_revoked_grants(emu: MicrosoftEmulator) -> None:
    first_rt = emu.issue_refresh_token(CLIENT_ID, [ALICE])
    account = emu.account_of(first_rt)
    app = await asyncio.to_thread(msal_app, emu)

    ok = await asyncio.to_thread(app.acquire_token_by_refresh_token, first_rt, SCOPES)
    assert "error" not in ok, ok
    assert ok["token_type"] == "Bearer"
    assert ok["access_token"]
    second_rt = ok["refresh_token"]
    assert second_rt != first_rt
    assert emu.account_of(second_rt) == account
    assert ok["id_token_claims"]["preferred_username"] == ALICE
    accounts = await asyncio.to_thread(app.get_accounts)
    assert accounts[0]["username"] == ALICE

    reused = await asyncio.to_thread(app.acquire_token_by_refresh_token, first_rt, SCOPES)
    assert reused["error"] == "invalid_grant"
    assert reused["error_codes"] == [70008]
    assert reused["error_description"].startswith("AADSTS70008:")

    async with httpx.AsyncClient(trust_env=False) as http:
        graph = await http.get(
            emu.api_url + delta_path(),
            params=WINDOW,
            headers={"Authorization": f"Bearer {ok['access_token']}"},
        )
    assert graph.status_code == 200
    assert emu.requests_for(account=account)[-1].status == 200

    emu.revoke_refresh_token(second_rt)
    revoked = await asyncio.to_thread(app.acquire_token_by_refresh_token, second_rt, SCOPES)
    assert "access_token" not in revoked
    assert revoked["error"] == "invalid_grant"
    assert revoked["error_description"].startswith("AADSTS50173:")
    assert revoked["error_codes"] == [50173]
    assert revoked["suberror"] == "bad_token"
    assert revoked["error_uri"].endswith("/error?code=50173")
    assert {"trace_id", "correlation_id", "timestamp"} <= set(revoked)
    assert f"Trace ID: {revoked['trace_id']}" in revoked["error_description"]
    assert f"Correlation ID: {revoked['correlation_id']}" in revoked["error_description"]


async def test_msal_with_a_wrong_secret_gets_invalid_client(emu: MicrosoftEmulator) -> None:
    refresh_token = emu.issue_refresh_token(CLIENT_ID, [ALICE])
    app = await asyncio.to_thread(msal_app, emu, "wrong-secret")

    result = await asyncio.to_thread(app.acquire_token_by_refresh_token, refresh_token, SCOPES)

    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [7000215]
    assert result["error_description"].startswith("AADSTS7000215: Invalid client secret provided.")
    assert emu.current_refresh_token(refresh_token) == refresh_token  # nothing rotated


async def test_token_endpoint_speaks_the_identity_platform(emu: MicrosoftEmulator) -> None:
    refresh_token = emu.issue_refresh_token(CLIENT_ID, [ALICE])

    wrong = await refresh(emu, refresh_token, secret="nope")
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client"
    assert wrong.headers["Cache-Control"] == "no-store, no-cache"

    ok = await refresh(emu, refresh_token)
    assert ok.status_code == 200
    body = ok.json()
    assert set(body) == {
        "token_type",
        "scope",
        "expires_in",
        "ext_expires_in",
        "access_token",
        "refresh_token",
    }
    assert body["scope"] == SCOPES[0]
    assert body["expires_in"] == 3599

    emu.revoke_refresh_token(body["refresh_token"], code=700082)
    expired = await refresh(emu, body["refresh_token"])
    assert expired.status_code == 400
    error = expired.json()
    assert list(error) == [
        "error",
        "error_description",
        "error_codes",
        "timestamp",
        "trace_id",
        "correlation_id",
        "error_uri",
        "suberror",
    ]
    assert error["error_description"].startswith("AADSTS700082: The refresh token has expired")
    assert error["error_description"].endswith(f"Timestamp: {error['timestamp']}")
    assert error["timestamp"] == "2026-11-25 12:00:00Z"

    unknown = await refresh(emu, "0.AXoA-not-a-token")
    assert unknown.json()["error_codes"] == [9002313]

    context = ssl.create_default_context(cafile=emu.ca_bundle_path)
    async with httpx.AsyncClient(verify=context, trust_env=False) as client:
        config = await client.get(emu.authority + "/v2.0/.well-known/openid-configuration")
        bad_tenant = await client.get(
            emu.authority_origin + "/no-such-tenant/v2.0/.well-known/openid-configuration"
        )
    assert config.json()["token_endpoint"] == emu.token_url
    assert config.json()["authorization_endpoint"] == emu.authority + "/oauth2/v2.0/authorize"
    assert config.json()["issuer"] == emu.authority_origin + "/{tenantid}/v2.0"
    assert bad_tenant.status_code == 400
    assert bad_tenant.json()["error_codes"] == [90002]
    token_calls = [r for r in emu.requests if r.path.endswith("/oauth2/v2.0/token")]
    assert [r.status for r in token_calls] == [401, 200, 400, 400]
    assert all(r.account is None for r in token_calls)


# --------------------------------------------------------------------------- control routes & CLI


async def test_control_routes_drive_a_separate_process(
    emu: MicrosoftEmulator, http: httpx.AsyncClient, hooks: Hooks
) -> None:
    c = emu.base_url + "/_emulator"
    health = (await http.get(c + "/health")).json()
    assert health["ok"] is True
    assert health["authority"] == emu.authority
    ca = await http.get(c + "/ca.pem")
    assert ca.content.startswith(b"-----BEGIN CERTIFICATE-----")

    assert (
        await http.post(c + "/mailboxes", json={"user_id": "carol@contoso.com"})
    ).status_code == 201
    assert (
        await http.post(c + "/clients", json={"client_id": "other", "client_secret": "s"})
    ).status_code == 201
    issued = (await http.post(c + "/refresh_tokens", json={"client_id": CLIENT_ID})).json()
    assert issued["account"] == emu.account_of(issued["refresh_token"])

    created = await http.post(
        c + "/mailboxes/carol@contoso.com/events", json=timed("x", "2026-12-01T09:00:00")
    )
    assert created.status_code == 201
    event_id = created.json()["id"]
    bulk = await http.post(
        c + "/mailboxes/carol@contoso.com/events/bulk",
        json={"events": [timed("y", "2026-12-02T09:00:00"), timed("z", "2026-12-03T09:00:00")]},
    )
    assert len(bulk.json()["ids"]) == 2
    patched = await http.patch(
        c + f"/mailboxes/carol@contoso.com/events/{quote(event_id, safe='')}",
        json={"subject": "renamed"},
    )
    assert patched.json()["subject"] == "renamed"
    listed = (await http.get(c + "/mailboxes/carol@contoso.com/events")).json()
    assert len(listed) == 3
    deleted = await http.delete(
        c + f"/mailboxes/carol@contoso.com/events/{quote(event_id, safe='')}"
    )
    assert deleted.status_code == 204
    expire = await http.post(
        c + "/mailboxes/carol@contoso.com/expire_delta_tokens", json={"style": "syncStateNotFound"}
    )
    assert expire.status_code == 204

    faults = await http.post(
        c + "/faults", json={"rules": [{"kind": "throttle_429", "count": 1, "retry_after": 1.5}]}
    )
    assert faults.json()["rules"][0]["kind"] == "throttle_429"
    bad_rule = await http.post(c + "/faults", json={"rules": [{"kind": "quota_exceeded_403"}]})
    assert bad_rule.status_code == 400
    token = await mint_access_token(emu)
    throttled = await http.get(
        emu.api_url + delta_path("carol@contoso.com"),
        params=WINDOW,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert throttled.status_code == 429
    recorded = (await http.get(c + "/requests", params={"calendar_id": "carol@contoso.com"})).json()
    assert [(r["status"], r["retry_after"]) for r in recorded] == [(429, 1.5)]
    assert (await http.delete(c + "/faults")).status_code == 204

    async with httpx.AsyncClient(
        base_url=emu.api_url, headers={"Authorization": f"Bearer {token}"}, trust_env=False
    ) as api:
        sub = await subscribe(api, hooks)
    subs = (await http.get(c + "/subscriptions")).json()
    assert [(s["id"], s["user_id"]) for s in subs] == [(sub["id"], ALICE)]
    lifecycle = await http.post(
        c + f"/subscriptions/{sub['id']}/lifecycle", json={"event": "missed"}
    )
    assert lifecycle.status_code == 204
    assert (await http.post(c + "/flush_pushes")).status_code == 204
    deliveries = (await http.get(c + "/deliveries")).json()
    assert deliveries[-1]["kind"] == "lifecycle" and deliveries[-1]["status"] == 202
    revoke = await http.post(
        c + "/refresh_tokens/revoke", json={"refresh_token": issued["refresh_token"], "code": 65001}
    )
    assert revoke.status_code == 204
    consent = await refresh(emu, issued["refresh_token"])
    assert consent.json()["suberror"] == "consent_required"
    now = (await http.post(c + "/clock/advance", json={"seconds": 90})).json()["now"]
    assert now == T0.timestamp() + 90
    assert (await http.post(c + "/access_tokens/expire")).status_code == 204
    assert (await http.delete(c + "/requests")).status_code == 204
    assert emu.requests == []


async def test_fault_classes_are_shared_with_the_google_emulator() -> None:
    assert google_emulator.FaultInjector is shared_faults.FaultInjector
    assert google_emulator.FaultRule is shared_faults.FaultRule
    assert google_emulator.RecordedRequest is shared_faults.RecordedRequest
    assert google_emulator.DROPPED == DROPPED == "dropped"
    async with google_emulator.GoogleEmulator() as google:
        with pytest.raises(ValueError, match="unknown fault kind"):
            google.faults.add("throttle_429")  # type: ignore[arg-type]  # a Graph kind


async def test_serve_forever_and_cli_parser(http: httpx.AsyncClient) -> None:
    emu = MicrosoftEmulator()
    stop = asyncio.Event()
    server = asyncio.create_task(
        serve_forever(
            "127.0.0.1",
            0,
            authority_port=0,
            emulator=emu,
            mailboxes=[(ALICE, "Pacific Standard Time")],
            clients=[(CLIENT_ID, CLIENT_SECRET)],
            stop=stop,
        )
    )
    for _ in range(500):
        try:
            emu.base_url  # noqa: B018  (raises until the server listens)
            emu.authority_origin  # noqa: B018
            break
        except RuntimeError:
            await asyncio.sleep(0.01)
    health = await http.get(emu.base_url + "/_emulator/health")
    assert health.json()["ok"] is True
    bundle = emu.ca_bundle_path
    stop.set()
    await asyncio.wait_for(server, 5)
    await emu.aclose()  # idempotent
    assert not Path(bundle).exists()

    args = build_parser().parse_args(
        [
            "--port",
            "0",
            "--authority-port",
            "0",
            "--mailbox",
            "a@contoso.com:W. Europe Standard Time",
            "--mailbox",
            "b@contoso.com",
            "--client",
            "app-id:secret",
        ]
    )
    assert args.mailbox == [("a@contoso.com", "W. Europe Standard Time"), ("b@contoso.com", "UTC")]
    assert args.client == [("app-id", "secret")]


def test_events_sharing_default_fields_change_one_at_a_time() -> None:
    """Events share their default nested fields (``location``, ``attendees``,
    ``organizer``, ...; memory at scale): a change to one event, or to a copy handed
    out, never shows in another."""
    emulator = MicrosoftEmulator()
    emulator.add_mailbox(ALICE, time_zone="UTC")
    body = {
        "subject": "s",
        "start": {"dateTime": "2026-12-10T10:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2026-12-10T11:00:00", "timeZone": "UTC"},
    }
    first, second = emulator.create_events(ALICE, [body, body])
    keys = ("body", "categories", "responseStatus", "location", "locations", "attendees")
    defaults = {k: second[k] for k in (*keys, "organizer")}
    assert defaults["attendees"] == [] and defaults["location"]["displayName"] == ""

    emulator.update_event(
        ALICE,
        first["id"],
        {
            "location": {"displayName": "Room 4"},
            "attendees": [{"emailAddress": {"address": BOB, "name": "Bob"}, "type": "required"}],
        },
    )
    handed_out = emulator.get_event(ALICE, second["id"])
    handed_out["organizer"]["emailAddress"]["address"] = "mallory@contoso.com"
    handed_out["categories"].append("tampered")
    handed_out["location"]["address"]["city"] = "Nowhere"

    changed = emulator.get_event(ALICE, first["id"])
    assert changed["location"]["displayName"] == "Room 4"
    assert [a["emailAddress"]["address"] for a in changed["attendees"]] == [BOB]
    after = emulator.get_event(ALICE, second["id"])
    assert {k: after[k] for k in defaults} == defaults
    third = emulator.create_event(ALICE, body)
    assert {k: third[k] for k in defaults} == defaults
