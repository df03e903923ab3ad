"""Microsoft Graph: normalization, calendarView delta walks, errors, subscriptions, MSAL tokens.

No network: Graph is an ``httpx.MockTransport`` over plain routing functions, MSAL is a
fake with the same method (or the real MSAL over a fake ``http_client``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import msal
import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from calsync.errors import (
    AuthorizationRevoked,
    CursorExpired,
    MalformedProviderData,
    ProviderRejected,
    RateLimited,
    ResponseTooLarge,
    TransientProviderError,
)
from calsync.model import Deletion, Occurrence, ProviderOrigin, StatusIntent, Transparency, Window
from calsync.normalize.busy import BusyPolicy
from calsync.normalize.microsoft import normalize_graph_event
from calsync.normalize.windows_zones import WINDOWS_ZONES
from calsync.providers.base import ChangePage, Provider, Subscription, hash_item_id
from calsync.providers.microsoft import (
    APP_BUCKET,
    MAILBOX_BUCKET,
    MAX_SUBSCRIPTION_SECONDS,
    MicrosoftProvider,
    MicrosoftTokenSource,
)
from calsync.ratelimit import RateLimiter

API = "https://graph.test/v1.0"
USER = "ada@example.com"
DELTA_PATH = "/v1.0/users/ada@example.com/calendarView/delta"
UTC_ZONE = ZoneInfo("UTC")
WINDOW = Window(datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
PII = ("Layoffs", "secret agenda", "Room 1", "ceo@example.com", "bob@example.com", "Ada L")

Scenario = Callable[[httpx.Request], httpx.Response]


# --------------------------------------------------------------------------- factories


def graph_event(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "@odata.etag": 'W/"EZ9r3czxY0m2jz8c45czkwAAFXcvIQ=="',
        "id": "AAMkAD1=",
        "subject": "Layoffs",
        "bodyPreview": "secret agenda",
        "body": {"contentType": "html", "content": "secret agenda"},
        "location": {"displayName": "Room 1"},
        "organizer": {"emailAddress": {"name": "Ada L", "address": "ceo@example.com"}},
        "attendees": [{"emailAddress": {"address": "bob@example.com"}, "type": "required"}],
        "start": {"dateTime": "2026-12-01T09:00:00.0000000", "timeZone": "UTC"},
        "end": {"dateTime": "2026-12-01T10:00:00.0000000", "timeZone": "UTC"},
        "isAllDay": False,
        "isCancelled": False,
        "showAs": "busy",
        "type": "singleInstance",
        "responseStatus": {"response": "organizer", "time": "0001-01-01T00:00:00Z"},
    }
    base.update(fields)
    return base


def removed(event_id: str) -> dict[str, object]:
    return {
        "@odata.type": "#microsoft.graph.event",
        "id": event_id,
        "@removed": {"reason": "deleted"},
    }


def page(
    items: list[object], *, next_link: str | None = None, delta_link: str | None = None
) -> httpx.Response:
    body: dict[str, object] = {"@odata.context": f"{API}/$metadata#Collection(event)"}
    body["value"] = items
    if next_link:
        body["@odata.nextLink"] = next_link
    if delta_link:
        body["@odata.deltaLink"] = delta_link
    return httpx.Response(200, json=body)


def graph_error(status: int, code: str, headers: Mapping[str, str] | None = None) -> httpx.Response:
    body = {"error": {"code": code, "message": "…", "innerError": {"request-id": "r"}}}
    return httpx.Response(status, json=body, headers=headers)


class FakeMsal:
    """Stands in for ``msal.ConfidentialClientApplication``: scripted results, recorded RTs."""

    def __init__(self, *results: Mapping[str, Any] | BaseException) -> None:
        self.results = list(results)
        self.redeemed: list[str] = []
        self.scopes: list[list[str]] = []

    def acquire_token_by_refresh_token(
        self, refresh_token: str, scopes: list[str]
    ) -> Mapping[str, Any] | None:
        self.redeemed.append(refresh_token)
        self.scopes.append(scopes)
        result = self.results.pop(0) if len(self.results) > 1 else self.results[0]
        if isinstance(result, BaseException):
            raise result
        return result


def granted(
    n: int = 1, *, refresh_token: str | None = None, expires_in: int = 3599
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "token_type": "Bearer",
        "access_token": f"at-{n}",
        "expires_in": expires_in,
        "token_source": "identity_provider",
    }
    if refresh_token is not None:
        result["refresh_token"] = refresh_token
    return result


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def token_source(fake: FakeMsal | None = None, clock: Clock | None = None) -> MicrosoftTokenSource:
    app = fake or FakeMsal(granted())
    return MicrosoftTokenSource(
        refresh_token="rt-0",
        authority="https://login.test/tenant",
        client_id="client",
        client_secret="secret",
        app_factory=lambda: app,
        clock=clock or Clock(),
    )


def make_provider(
    scenario: Scenario,
    *,
    tokens: MicrosoftTokenSource | None = None,
    **overrides: Any,
) -> MicrosoftProvider:
    values: dict[str, Any] = {
        "client": httpx.AsyncClient(transport=httpx.MockTransport(scenario)),
        "api_url": API,
        "user_id": USER,
        "tokens": tokens or token_source(),
        "page_size": 2,
        "time_zone": "UTC",  # a registered zone: no mailboxSettings request (tests below)
    }
    values.update(overrides)
    return MicrosoftProvider(**values)


async def walk(provider: MicrosoftProvider, cursor: str | None = None) -> list[ChangePage]:
    return [p async for p in provider.fetch_changes(cursor, WINDOW)]


# --------------------------------------------------------------------------- normalization


def test_timed_event_becomes_utc_and_carries_no_personal_data() -> None:
    result = normalize_graph_event(graph_event(), UTC_ZONE)
    assert result == Occurrence(
        native_event_id="AAMkAD1=",
        start_utc=datetime(2026, 12, 1, 9, tzinfo=UTC),
        end_utc=datetime(2026, 12, 1, 10, tzinfo=UTC),
        is_all_day=False,
        transparency=Transparency.OPAQUE,
        status_intent=StatusIntent.BUSY,
    )
    text = repr(result)
    for secret in PII:
        assert secret not in text


def test_seven_fractional_digits_keep_microseconds() -> None:
    raw = graph_event(
        start={"dateTime": "2026-12-01T09:00:00.1234567", "timeZone": "UTC"},
        end={"dateTime": "2026-12-01T09:30:00.9999999", "timeZone": "UTC"},
    )
    result = normalize_graph_event(raw, UTC_ZONE)
    assert isinstance(result, Occurrence)
    assert result.start_utc == datetime(2026, 12, 1, 9, 0, 0, 123456, tzinfo=UTC)
    assert result.end_utc == datetime(2026, 12, 1, 9, 30, 0, 999999, tzinfo=UTC)


def test_wall_time_is_read_in_its_windows_zone() -> None:
    raw = graph_event(
        start={"dateTime": "2026-12-01T10:00:00.0000000", "timeZone": "W. Europe Standard Time"},
        end={"dateTime": "2026-12-01T11:00:00.0000000", "timeZone": "W. Europe Standard Time"},
    )
    result = normalize_graph_event(raw, UTC_ZONE)
    assert isinstance(result, Occurrence)
    assert result.start_utc == datetime(2026, 12, 1, 9, tzinfo=UTC)
    assert result.end_utc == datetime(2026, 12, 1, 10, tzinfo=UTC)


def test_an_explicit_offset_decides_the_instant() -> None:
    raw = graph_event(
        start={"dateTime": "2026-12-01T09:00:00Z", "timeZone": "Tokyo Standard Time"},
        end={"dateTime": "2026-12-01T11:00:00+01:00", "timeZone": "Tokyo Standard Time"},
    )
    result = normalize_graph_event(raw, UTC_ZONE)
    assert isinstance(result, Occurrence)
    assert result.start_utc == datetime(2026, 12, 1, 9, tzinfo=UTC)
    assert result.end_utc == datetime(2026, 12, 1, 10, tzinfo=UTC)


def test_dst_gap_uses_the_offset_before_the_transition() -> None:
    zone = "Pacific Standard Time"
    raw = graph_event(
        start={"dateTime": "2026-03-08T02:30:00.0000000", "timeZone": zone},  # does not exist
        end={"dateTime": "2026-03-08T04:00:00.0000000", "timeZone": zone},
    )
    result = normalize_graph_event(raw, UTC_ZONE)
    assert isinstance(result, Occurrence)
    assert result.start_utc == datetime(2026, 3, 8, 10, 30, tzinfo=UTC)  # = 03:30 PDT
    assert result.end_utc == datetime(2026, 3, 8, 11, tzinfo=UTC)


def test_dst_overlap_is_the_earlier_instant() -> None:
    zone = "Pacific Standard Time"
    raw = graph_event(
        start={"dateTime": "2026-11-01T01:30:00.0000000", "timeZone": zone},  # happens twice
        end={"dateTime": "2026-11-01T03:00:00.0000000", "timeZone": zone},
    )
    result = normalize_graph_event(raw, UTC_ZONE)
    assert isinstance(result, Occurrence)
    assert result.start_utc == datetime(2026, 11, 1, 8, 30, tzinfo=UTC)  # 01:30 PDT
    assert result.end_utc == datetime(2026, 11, 1, 11, tzinfo=UTC)


def all_day(start: str, end: str, zone: str = "UTC", **fields: object) -> dict[str, object]:
    return graph_event(
        isAllDay=True,
        start={"dateTime": f"{start}T00:00:00.0000000", "timeZone": zone},
        end={"dateTime": f"{end}T00:00:00.0000000", "timeZone": zone},
        **fields,
    )


def test_all_day_spans_the_mailboxs_local_days() -> None:
    result = normalize_graph_event(
        all_day("2026-12-01", "2026-12-03"), ZoneInfo("America/Los_Angeles")
    )
    assert isinstance(result, Occurrence) and result.is_all_day
    assert result.start_utc == datetime(2026, 12, 1, 8, tzinfo=UTC)
    assert result.end_utc == datetime(2026, 12, 3, 8, tzinfo=UTC)


def test_all_day_in_a_windows_zone_is_anchored_in_the_mailbox_zone() -> None:
    raw = all_day("2026-12-01", "2026-12-02", zone="Tokyo Standard Time")
    result = normalize_graph_event(raw, ZoneInfo("Europe/Berlin"))
    assert isinstance(result, Occurrence) and result.is_all_day
    assert result.start_utc == datetime(2026, 11, 30, 23, tzinfo=UTC)
    assert result.end_utc == datetime(2026, 12, 1, 23, tzinfo=UTC)


def test_all_day_across_a_dst_change_is_23_hours() -> None:
    raw = all_day("2026-03-29", "2026-03-30", zone="W. Europe Standard Time")
    result = normalize_graph_event(raw, ZoneInfo("Europe/Berlin"))
    assert isinstance(result, Occurrence)
    assert result.end_utc - result.start_utc == timedelta(hours=23)


def test_all_day_bound_converted_away_from_midnight_lands_on_the_mailbox_day() -> None:
    raw = graph_event(
        isAllDay=True,
        start={"dateTime": "2026-11-30T23:00:00.0000000", "timeZone": "UTC"},
        end={"dateTime": "2026-12-01T23:00:00.0000000", "timeZone": "UTC"},
    )
    result = normalize_graph_event(raw, ZoneInfo("Europe/Berlin"))
    assert isinstance(result, Occurrence)
    assert result.start_utc == datetime(2026, 11, 30, 23, tzinfo=UTC)  # Berlin 12-01 00:00
    assert result.end_utc == datetime(2026, 12, 1, 23, tzinfo=UTC)


@pytest.mark.parametrize(
    ("fields", "intent", "transparency"),
    [
        ({}, StatusIntent.BUSY, Transparency.OPAQUE),
        ({"showAs": "free"}, StatusIntent.FREE, Transparency.TRANSPARENT),
        ({"showAs": "tentative"}, StatusIntent.TENTATIVE, Transparency.OPAQUE),
        ({"showAs": "oof"}, StatusIntent.OUT_OF_OFFICE, Transparency.OPAQUE),
        ({"showAs": "workingElsewhere"}, StatusIntent.FREE, Transparency.TRANSPARENT),
        ({"showAs": "unknown"}, StatusIntent.BUSY, Transparency.OPAQUE),
        ({"showAs": "somethingNew"}, StatusIntent.BUSY, Transparency.OPAQUE),
        ({"showAs": None}, StatusIntent.BUSY, Transparency.OPAQUE),
        (
            {"responseStatus": {"response": "declined"}},
            StatusIntent.FREE,
            Transparency.OPAQUE,
        ),
        (
            {"showAs": "free", "responseStatus": {"response": "declined"}},
            StatusIntent.FREE,
            Transparency.TRANSPARENT,
        ),
        (
            {"responseStatus": {"response": "tentativelyAccepted"}},
            StatusIntent.TENTATIVE,
            Transparency.OPAQUE,
        ),
        (
            {"showAs": "oof", "responseStatus": {"response": "declined"}},
            StatusIntent.OUT_OF_OFFICE,
            Transparency.OPAQUE,
        ),
    ],
)
def test_show_as_and_response_mapping(
    fields: dict[str, object], intent: StatusIntent, transparency: Transparency
) -> None:
    raw = graph_event()
    raw.pop("showAs")
    raw.update(fields)
    result = normalize_graph_event(raw, UTC_ZONE)
    assert isinstance(result, Occurrence)
    assert (result.status_intent, result.transparency) == (intent, transparency)


GRAPH_ALL_DAY = {
    "isAllDay": True,
    "start": {"dateTime": "2026-12-01T00:00:00.0000000", "timeZone": "UTC"},
    "end": {"dateTime": "2026-12-02T00:00:00.0000000", "timeZone": "UTC"},
}


@pytest.mark.parametrize(
    ("fields", "policy", "intent"),
    [
        ({"responseStatus": {"response": "declined"}}, BusyPolicy(), StatusIntent.FREE),
        (
            {"responseStatus": {"response": "declined"}},
            BusyPolicy(declined_is_free=False),
            StatusIntent.BUSY,
        ),
        (GRAPH_ALL_DAY, BusyPolicy(), StatusIntent.BUSY),
        (GRAPH_ALL_DAY, BusyPolicy(all_day_is_busy=False), StatusIntent.FREE),
        (
            {"responseStatus": {"response": "tentativelyAccepted"}},
            BusyPolicy(),
            StatusIntent.TENTATIVE,
        ),
        (
            {"responseStatus": {"response": "tentativelyAccepted"}},
            BusyPolicy(tentative_is_busy=True),
            StatusIntent.BUSY,
        ),
        ({"showAs": "tentative"}, BusyPolicy(tentative_is_busy=True), StatusIntent.BUSY),
        (
            {"responseStatus": {"response": "notResponded"}},
            BusyPolicy(unanswered_is_busy=False),
            StatusIntent.TENTATIVE,
        ),
        (
            {**GRAPH_ALL_DAY, "showAs": "oof"},
            BusyPolicy(all_day_is_busy=False),
            StatusIntent.OUT_OF_OFFICE,
        ),
    ],
)
def test_policy_switches(
    fields: dict[str, object], policy: BusyPolicy, intent: StatusIntent
) -> None:
    result = normalize_graph_event(graph_event(**fields), UTC_ZONE, policy)
    assert isinstance(result, Occurrence)
    assert (result.status_intent, result.transparency) == (intent, Transparency.OPAQUE)


async def test_the_providers_policy_decides_busy_state() -> None:
    def scenario(request: httpx.Request) -> httpx.Response:
        items: list[object] = [graph_event(responseStatus={"response": "declined"})]
        return page(items, delta_link=f"{API}/d")

    (default,) = await walk(make_provider(scenario))
    (strict,) = await walk(make_provider(scenario, policy=BusyPolicy(declined_is_free=False)))
    assert [c.status_intent for c in default.changes if isinstance(c, Occurrence)] == [
        StatusIntent.FREE
    ]
    assert [c.status_intent for c in strict.changes if isinstance(c, Occurrence)] == [
        StatusIntent.BUSY
    ]


def test_cancelled_and_removed_are_deletions() -> None:
    assert normalize_graph_event(graph_event(isCancelled=True), UTC_ZONE) == Deletion("AAMkAD1=")
    assert normalize_graph_event(removed("gone="), UTC_ZONE) == Deletion("gone=")


def test_occurrence_keeps_its_series_master_id() -> None:
    raw = graph_event(id="occ1=", type="occurrence", seriesMasterId="master=")
    result = normalize_graph_event(raw, UTC_ZONE)
    assert isinstance(result, Occurrence) and result.series_id == "master="


@pytest.mark.parametrize(
    "raw",
    [
        {"showAs": "busy"},
        graph_event(id=""),
        graph_event(type="seriesMaster"),
        graph_event(start=None),
        graph_event(start={"dateTime": "yesterday", "timeZone": "UTC"}),
        graph_event(start={"dateTime": "2026-13-01T09:00:00.0000000", "timeZone": "UTC"}),
        graph_event(start={"dateTime": "2026-12-01T09:00:00", "timeZone": "Mars Standard Time"}),
        graph_event(
            start={"dateTime": "2026-12-01T09:00:00", "timeZone": "tzone://Microsoft/Custom"}
        ),
        graph_event(start={"dateTime": "2026-12-01T09:00:00", "timeZone": 7}),
        graph_event(end={"dateTime": "2026-12-01T08:00:00.0000000", "timeZone": "UTC"}),
    ],
)
def test_malformed_items_raise(raw: dict[str, object]) -> None:
    with pytest.raises(MalformedProviderData):
        normalize_graph_event(raw, UTC_ZONE)


def test_malformed_item_names_its_id() -> None:
    with pytest.raises(MalformedProviderData) as caught:
        normalize_graph_event(graph_event(id="bad=", start=None), UTC_ZONE)
    assert caught.value.item_id == "bad="


ZONE_NAMES = [*sorted(WINDOWS_ZONES), "Europe/Berlin", "America/Sao_Paulo", "Asia/Kathmandu"]


@given(
    zone_name=st.sampled_from(ZONE_NAMES),
    instant=st.datetimes(
        min_value=datetime(1990, 1, 1), max_value=datetime(2060, 1, 1), timezones=st.just(UTC)
    ),
    minutes=st.integers(0, 24 * 60),
)
def test_wall_times_round_trip_to_the_same_utc_instant(
    zone_name: str, instant: datetime, minutes: int
) -> None:
    zone = ZoneInfo(WINDOWS_ZONES.get(zone_name, zone_name))
    local = instant.astimezone(zone)
    wall = f"{local.replace(tzinfo=None).isoformat(timespec='microseconds')}0"  # 7 digits
    end_local = (instant + timedelta(minutes=minutes)).astimezone(zone)
    end_wall = end_local.replace(tzinfo=None).isoformat(timespec="microseconds")
    raw = graph_event(
        start={"dateTime": wall, "timeZone": zone_name},
        end={"dateTime": f"{end_wall}0", "timeZone": zone_name},
    )
    try:
        result = normalize_graph_event(raw, UTC_ZONE)
    except MalformedProviderData:
        # an end on the second pass through an overlap reads an hour early: it may
        # then precede the start; nothing else may fail
        assert end_local.fold == 1
        return
    assert isinstance(result, Occurrence)
    assert result.start_utc.tzinfo is UTC
    if local.fold == 0:
        assert result.start_utc == instant
    else:  # the second pass through a repeated wall time reads as the first (fold=0)
        assert result.start_utc == local.replace(fold=0).astimezone(UTC) < instant
    assert result.start_utc.astimezone(zone).replace(tzinfo=None) == local.replace(tzinfo=None)


@given(
    day=st.dates(min_value=date(1990, 1, 1), max_value=date(2060, 12, 31)),
    days=st.integers(1, 14),
    zone_name=st.sampled_from(ZONE_NAMES),
    mailbox=st.sampled_from(["America/Santiago", "Asia/Beirut", "Europe/Berlin", "UTC"]),
)
def test_all_day_bounds_are_mailbox_midnights(
    day: date, days: int, zone_name: str, mailbox: str
) -> None:
    tz = ZoneInfo(mailbox)
    end_day = day + timedelta(days=days)
    result = normalize_graph_event(
        all_day(day.isoformat(), end_day.isoformat(), zone=zone_name), tz
    )
    assert isinstance(result, Occurrence) and result.is_all_day
    local_start, local_end = result.start_utc.astimezone(tz), result.end_utc.astimezone(tz)
    # local midnight, unless the zone skipped midnight that day (then the first instant after)
    assert local_start.date() == day and local_start.hour <= 1
    assert local_end.date() == end_day and local_end.hour <= 1


# --------------------------------------------------------------------------- delta walks


def test_the_provider_satisfies_the_protocol() -> None:
    provider: Provider = make_provider(lambda request: page([], delta_link=f"{API}/d"))
    assert provider.origin is ProviderOrigin.MICROSOFT and provider.renewable


async def test_full_walk_follows_next_links_to_the_delta_link() -> None:
    next_link = f"{API}/users/ada@example.com/calendarView/delta?$skiptoken=R0us%2Bmc=="
    delta_link = f"{API}/users/ada@example.com/calendarView/delta?$deltatoken=R0usmcMDNGg0J1E"
    seen: list[httpx.Request] = []

    def scenario(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if "$skiptoken" in str(request.url):
            return page([graph_event(id="b=")], delta_link=delta_link)
        return page([graph_event(id="a="), removed("c=")], next_link=next_link)

    pages = await walk(make_provider(scenario))
    assert [p.full for p in pages] == [True, True]
    assert [p.cursor for p in pages] == [None, delta_link]
    assert [c.native_event_id for p in pages for c in p.changes] == ["a=", "c=", "b="]
    assert isinstance(pages[0].changes[1], Deletion)

    first, second = seen
    assert first.method == "GET" and first.url.path == DELTA_PATH
    assert dict(first.url.params) == {
        "startDateTime": "2026-12-01T00:00:00Z",
        "endDateTime": "2027-01-01T00:00:00Z",
    }
    assert str(second.url) == next_link  # verbatim, nothing added
    for request in seen:
        assert "odata.maxpagesize=2" in request.headers.get_list("prefer")
        assert 'outlook.timezone="UTC"' in request.headers.get_list("prefer")
        assert request.headers["authorization"] == "Bearer at-1"


async def test_incremental_walk_uses_the_delta_link_verbatim() -> None:
    cursor = f"{API}/users/ada@example.com/calendarView/delta?$deltatoken=old%3D%3D"
    new_cursor = f"{API}/users/ada@example.com/calendarView/delta?$deltatoken=new"
    seen: list[str] = []

    def scenario(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return page(
            [removed("gone="), graph_event(id="moved=", showAs="free")], delta_link=new_cursor
        )

    (only,) = await walk(make_provider(scenario), cursor)
    assert seen == [cursor]
    assert not only.full and only.cursor == new_cursor
    assert only.changes[0] == Deletion("gone=")
    moved = only.changes[1]
    assert isinstance(moved, Occurrence) and moved.status_intent is StatusIntent.FREE


async def test_replays_count_once_at_their_last_appearance() -> None:
    def scenario(request: httpx.Request) -> httpx.Response:
        items: list[object] = [
            graph_event(id="a=", showAs="busy"),
            graph_event(id="b="),
            graph_event(id="a=", showAs="free"),
            removed("b="),
            removed("c="),
            removed("c="),
        ]
        return page(items, delta_link=f"{API}/d")

    (only,) = await walk(make_provider(scenario))
    assert [type(c).__name__ + ":" + c.native_event_id for c in only.changes] == [
        "Occurrence:a=",
        "Deletion:b=",
        "Deletion:c=",
    ]
    first = only.changes[0]
    assert isinstance(first, Occurrence) and first.status_intent is StatusIntent.FREE


async def test_series_masters_are_dropped_and_occurrences_kept() -> None:
    def scenario(request: httpx.Request) -> httpx.Response:
        items: list[object] = [
            graph_event(id="master=", type="seriesMaster"),
            graph_event(id="occ1=", type="occurrence", seriesMasterId="master="),
            graph_event(id="exc1=", type="exception", seriesMasterId="master="),
        ]
        return page(items, delta_link=f"{API}/d")

    (only,) = await walk(make_provider(scenario))
    assert [c.native_event_id for c in only.changes] == ["occ1=", "exc1="]
    assert not only.quarantined
    assert all(isinstance(c, Occurrence) and c.series_id == "master=" for c in only.changes)


async def test_malformed_items_are_quarantined_without_their_content() -> None:
    def scenario(request: httpx.Request) -> httpx.Response:
        items: list[object] = [
            graph_event(id="bad=", start={"dateTime": "Layoffs", "timeZone": "UTC"}),
            "not an object",
            graph_event(id="good="),
        ]
        return page(items, delta_link=f"{API}/d")

    (only,) = await walk(make_provider(scenario))
    assert [c.native_event_id for c in only.changes] == ["good="]
    assert [q.item_hash for q in only.quarantined] == [
        hash_item_id("bad="),
        hash_item_id("not an object"),
    ]
    for item in only.quarantined:
        for secret in PII:
            assert secret not in item.reason


async def test_pages_report_the_mailbox_zone() -> None:
    provider = make_provider(
        lambda request: page([all_day("2026-12-01", "2026-12-02")], delta_link=f"{API}/d"),
        time_zone="Pacific Standard Time",
    )
    (only,) = await walk(provider)
    assert only.time_zone == "America/Los_Angeles"
    occurrence = only.changes[0]
    assert isinstance(occurrence, Occurrence)
    assert occurrence.start_utc == datetime(2026, 12, 1, 8, tzinfo=UTC)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(410, headers={"Location": f"{API}/me/calendarView/delta?$deltatoken="}),
        httpx.Response(410),
        graph_error(410, "SyncStateNotFound"),
        graph_error(400, "syncStateNotFound"),
        graph_error(404, "resyncRequired"),
        graph_error(400, "SyncStateInvalid"),
    ],
)
async def test_expired_delta_tokens_raise_cursor_expired(response: httpx.Response) -> None:
    provider = make_provider(lambda request: response)
    with pytest.raises(CursorExpired):
        await walk(provider, f"{API}/users/ada@example.com/calendarView/delta?$deltatoken=x")


async def test_a_cursor_for_another_origin_is_expired_and_not_followed() -> None:
    def scenario(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request may carry the token elsewhere")

    with pytest.raises(CursorExpired):
        await walk(make_provider(scenario), "https://evil.test/v1.0/delta?$deltatoken=x")


async def test_a_next_link_to_another_origin_is_refused() -> None:
    def scenario(request: httpx.Request) -> httpx.Response:
        assert request.url.host == "graph.test"
        return page([], next_link="https://evil.test/steal")

    with pytest.raises(ProviderRejected):
        await walk(make_provider(scenario))


async def test_429_with_fractional_retry_after_is_rate_limited() -> None:
    limiter = RateLimiter({"microsoft": (MAILBOX_BUCKET, APP_BUCKET)})
    throttled = graph_error(429, "TooManyRequests", {"Retry-After": "2.128"})
    provider = make_provider(lambda request: throttled, limiter=limiter, account="acct")
    with pytest.raises(RateLimited) as caught:
        await walk(provider)
    assert caught.value.retry_after == pytest.approx(2.128)
    assert caught.value.status == 429
    bucket = limiter.snapshot()["microsoft/acct"]
    assert bucket["held_for"] > 2 and bucket["in_flight"] == 0


@pytest.mark.parametrize(
    ("response", "error", "retry_after"),
    [
        (graph_error(503, "serviceNotAvailable"), TransientProviderError, None),
        (graph_error(503, "serviceNotAvailable", {"Retry-After": "7"}), RateLimited, 7.0),
        (httpx.Response(504, headers={"Retry-After": "1.5"}), RateLimited, 1.5),
        (httpx.Response(504), TransientProviderError, None),
        (graph_error(500, "generalException"), TransientProviderError, None),
        (graph_error(429, "ApplicationThrottled"), RateLimited, None),
        (graph_error(403, "activityLimitReached"), RateLimited, None),
        (graph_error(403, "ErrorAccessDenied"), ProviderRejected, None),
        (graph_error(400, "ErrorInvalidParameter"), ProviderRejected, None),
    ],
)
async def test_error_translation(
    response: httpx.Response, error: type[Exception], retry_after: float | None
) -> None:
    with pytest.raises(error) as caught:
        await walk(make_provider(lambda request: response))
    assert type(caught.value) is error
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after == retry_after


async def test_503_without_retry_after_still_slows_the_limiter() -> None:
    limiter = RateLimiter({"microsoft": (MAILBOX_BUCKET, APP_BUCKET)})
    provider = make_provider(lambda request: httpx.Response(503), limiter=limiter, account="acct")
    with pytest.raises(TransientProviderError):
        await walk(provider)
    assert limiter.snapshot()["microsoft/acct"]["multiplier"] < 1


async def test_401_refreshes_once_then_the_grant_is_revoked() -> None:
    fake = FakeMsal(granted(1), granted(2))
    bearers: list[str] = []

    def scenario(request: httpx.Request) -> httpx.Response:
        bearers.append(request.headers["authorization"])
        return graph_error(401, "InvalidAuthenticationToken")

    with pytest.raises(AuthorizationRevoked):
        await walk(make_provider(scenario, tokens=token_source(fake)))
    assert bearers == ["Bearer at-1", "Bearer at-2"]
    assert len(fake.redeemed) == 2


async def test_401_then_success_after_one_refresh() -> None:
    fake = FakeMsal(granted(1), granted(2))

    def scenario(request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"] == "Bearer at-1":
            return graph_error(401, "InvalidAuthenticationToken")
        return page([graph_event()], delta_link=f"{API}/d")

    (only,) = await walk(make_provider(scenario, tokens=token_source(fake)))
    assert only.cursor == f"{API}/d"


async def test_network_failures_are_transient() -> None:
    def scenario(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(TransientProviderError):
        await walk(make_provider(scenario))


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>"),
        httpx.Response(200, json={"value": {"not": "a list"}}),
        page([graph_event()]),  # a last page without a deltaLink
    ],
)
async def test_malformed_pages_are_transient(response: httpx.Response) -> None:
    with pytest.raises(TransientProviderError):
        await walk(make_provider(lambda request: response))


async def test_a_long_local_rate_limit_wait_is_raised_not_slept() -> None:
    limiter = RateLimiter({"microsoft": (MAILBOX_BUCKET, APP_BUCKET)})
    limiter.throttled("microsoft", "acct", 30.0)
    provider = make_provider(
        lambda request: page([], delta_link=f"{API}/d"), limiter=limiter, account="acct"
    )
    with pytest.raises(RateLimited) as caught:
        await walk(provider)
    assert caught.value.retry_after is not None and caught.value.retry_after > 29


# --------------------------------------------------------------------------- subscriptions

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC).timestamp()


def subscription_response(status: int, body: Mapping[str, object]) -> httpx.Response:
    payload = {
        "@odata.context": f"{API}/$metadata#subscriptions/$entity",
        "id": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
        "resource": "/users/ada@example.com/events",
        "applicationId": "24d3b144-21ae-4080-943f-7067b395b913",
        "changeType": "created,updated,deleted",
        "clientState": body.get("clientState", "kept"),
        "notificationUrl": body.get("notificationUrl", "https://hooks.test/n"),
        "expirationDateTime": f"{str(body['expirationDateTime'])[:-1]}.0000000Z",
        "creatorId": "8ee44408-0679-472c-bc2a-692812af3437",
    }
    return httpx.Response(status, json=payload)


async def test_subscribe_posts_the_documented_body() -> None:
    seen: list[tuple[str, str, dict[str, Any]]] = []

    def scenario(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.method, str(request.url), body))
        return subscription_response(201, body)

    provider = make_provider(scenario, clock=lambda: NOW)
    sub = await provider.subscribe(
        "ignored",
        "https://hooks.test/webhooks/microsoft?resource=r1",
        "client-state-secret",
        3600,
        lifecycle_address="https://hooks.test/webhooks/microsoft/lifecycle?resource=r1",
    )
    ((method, url, body),) = seen
    assert (method, url) == ("POST", f"{API}/subscriptions")
    assert body == {
        "changeType": "created,updated,deleted",
        "notificationUrl": "https://hooks.test/webhooks/microsoft?resource=r1",
        "lifecycleNotificationUrl": "https://hooks.test/webhooks/microsoft/lifecycle?resource=r1",
        "resource": "/users/ada@example.com/events",
        "expirationDateTime": "2026-12-01T11:00:00Z",
        "clientState": "client-state-secret",
    }
    assert sub == Subscription(
        channel_id="7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
        provider_resource_id="/users/ada@example.com/events",
        expires_at_ms=int((NOW + 3600) * 1000),
    )


async def test_subscribe_omits_the_lifecycle_url_when_not_given_and_caps_the_ttl() -> None:
    bodies: list[dict[str, Any]] = []

    def scenario(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return subscription_response(201, bodies[-1])

    provider = make_provider(scenario, clock=lambda: NOW)
    sub = await provider.subscribe("x", "https://hooks.test/n", "t", 30 * 86400)
    assert "lifecycleNotificationUrl" not in bodies[0]
    assert sub.expires_at_ms == int((NOW + MAX_SUBSCRIPTION_SECONDS) * 1000)


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (graph_error(409, "ExtensionError"), ProviderRejected),
        (graph_error(400, "ValidationError"), ProviderRejected),
        (graph_error(429, "TooManyRequests", {"Retry-After": "3"}), RateLimited),
        (httpx.Response(201, json={"id": "x"}), TransientProviderError),
    ],
)
async def test_subscribe_errors(response: httpx.Response, error: type[Exception]) -> None:
    provider = make_provider(lambda request: response)
    with pytest.raises(error):
        await provider.subscribe("x", "https://hooks.test/n", "t", 3600)


async def test_renew_patches_the_expiry() -> None:
    seen: list[tuple[str, str, dict[str, Any]]] = []

    def scenario(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.method, str(request.url), body))
        return subscription_response(200, body)

    provider = make_provider(scenario, clock=lambda: NOW)
    old = Subscription("7f105c7d-2dc5-4530-97cd-4e7ae6534c07", "/users/ada@example.com/events", 1)
    new = await provider.renew(old, 7200)
    assert seen == [
        (
            "PATCH",
            f"{API}/subscriptions/7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
            {"expirationDateTime": "2026-12-01T12:00:00Z"},
        )
    ]
    assert new == Subscription(old.channel_id, old.provider_resource_id, int((NOW + 7200) * 1000))


async def test_renewing_a_vanished_subscription_is_rejected_with_404() -> None:
    provider = make_provider(lambda request: graph_error(404, "ResourceNotFound"))
    with pytest.raises(ProviderRejected) as caught:
        await provider.renew(Subscription("gone", "/users/x/events", 1), 3600)
    assert caught.value.status == 404
    assert not caught.value.retriable


@pytest.mark.parametrize("status", [204, 404])
async def test_unsubscribe_deletes_and_tolerates_a_missing_subscription(status: int) -> None:
    seen: list[tuple[str, str]] = []

    def scenario(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, str(request.url)))
        return httpx.Response(status)

    await make_provider(scenario).unsubscribe(Subscription("sub-1", "/users/x/events", 1))
    assert seen == [("DELETE", f"{API}/subscriptions/sub-1")]


async def test_unsubscribe_raises_other_failures() -> None:
    provider = make_provider(lambda request: graph_error(500, "generalException"))
    with pytest.raises(TransientProviderError):
        await provider.unsubscribe(Subscription("sub-1", "/users/x/events", 1))


# --------------------------------------------------------------------------- tokens


async def test_rotated_refresh_token_is_offered_once_and_used_next() -> None:
    clock = Clock()
    fake = FakeMsal(granted(1, refresh_token="rt-1"), granted(2, refresh_token="rt-1"))
    tokens = token_source(fake, clock)
    provider = make_provider(lambda request: page([], delta_link=f"{API}/d"), tokens=tokens)
    assert provider.rotated_credentials() is None
    await walk(provider)
    assert provider.rotated_credentials() == {"refresh_token": "rt-1"}
    assert provider.rotated_credentials() is None
    clock.now += 4000  # past expiry: the next refresh redeems the rotated token
    await walk(provider)
    assert fake.redeemed == ["rt-0", "rt-1"]
    assert provider.rotated_credentials() is None  # the same token again is no rotation
    assert tokens.refresh_token == "rt-1"


async def test_access_token_is_cached_until_shortly_before_expiry() -> None:
    clock = Clock()
    fake = FakeMsal(granted(1), granted(2), granted(3))
    tokens = token_source(fake, clock)
    assert await tokens.access_token() == "at-1"
    clock.now += 3599 - 301
    assert await tokens.access_token() == "at-1"
    clock.now += 2
    assert await tokens.access_token() == "at-2"
    assert await tokens.access_token(force_refresh=True) == "at-3"
    assert fake.scopes[0] == ["https://graph.microsoft.com/Calendars.Read"]


async def test_one_refresh_at_a_time() -> None:
    class SlowMsal(FakeMsal):
        def acquire_token_by_refresh_token(
            self, refresh_token: str, scopes: list[str]
        ) -> Mapping[str, Any] | None:
            import time

            time.sleep(0.05)
            return super().acquire_token_by_refresh_token(refresh_token, scopes)

    fake = SlowMsal(granted(1))
    tokens = token_source(fake)
    results = await asyncio.gather(*(tokens.access_token() for _ in range(5)))
    assert results == ["at-1"] * 5
    assert len(fake.redeemed) == 1


def aad_error(error: str, code: int | None, **extra: object) -> dict[str, object]:
    description = f"AADSTS{code}: Something. Trace ID: t\r\nCorrelation ID: c" if code else "x"
    result: dict[str, object] = {
        "error": error,
        "error_description": description,
        "timestamp": "2026-12-01 10:00:00Z",
        "trace_id": "t",
        "correlation_id": "c",
    }
    if code is not None:
        result["error_codes"] = [code]
    result.update(extra)
    return result


@pytest.mark.parametrize(
    ("result", "error", "needle"),
    [
        (aad_error("invalid_grant", 700082, suberror="bad_token"), AuthorizationRevoked, "700082"),
        (aad_error("invalid_grant", 70008), AuthorizationRevoked, "AADSTS70008"),
        (aad_error("invalid_grant", 50173), AuthorizationRevoked, "AADSTS50173"),
        (aad_error("invalid_grant", 700084), AuthorizationRevoked, "AADSTS700084"),
        (aad_error("invalid_grant", 70043), AuthorizationRevoked, "AADSTS70043"),
        (
            aad_error("invalid_grant", 65001, suberror="consent_required"),
            AuthorizationRevoked,
            "AADSTS65001",
        ),
        (aad_error("interaction_required", 50076), AuthorizationRevoked, "AADSTS50076"),
        (aad_error("consent_required", 65001), AuthorizationRevoked, "AADSTS65001"),
        (aad_error("invalid_grant", 50057), AuthorizationRevoked, "AADSTS50057"),
        (aad_error("invalid_client", 7000215), ProviderRejected, "AADSTS7000215"),
        (aad_error("invalid_client", 7000222), ProviderRejected, "operator"),
        (aad_error("temporarily_unavailable", None), TransientProviderError, "unavailable"),
        (aad_error("invalid_request", 90024), TransientProviderError, "AADSTS90024"),
        (aad_error("server_error", 500011), TransientProviderError, "server_error"),
        (aad_error("unauthorized_client", 700016), ProviderRejected, "AADSTS700016"),
    ],
)
async def test_msal_error_dicts_are_translated(
    result: dict[str, object], error: type[Exception], needle: str
) -> None:
    tokens = token_source(FakeMsal(result))
    with pytest.raises(error) as caught:
        await tokens.access_token()
    assert type(caught.value) is error
    message = str(caught.value)
    assert needle in message
    assert "Trace ID" not in message and "Correlation" not in message


async def test_aadsts_code_is_read_from_the_description_when_codes_are_missing() -> None:
    result = {"error": "invalid_grant", "error_description": "AADSTS70008: expired."}
    with pytest.raises(AuthorizationRevoked, match="AADSTS70008"):
        await token_source(FakeMsal(result)).access_token()


async def test_invalid_client_is_not_retriable_and_not_the_users_fault() -> None:
    tokens = token_source(FakeMsal(aad_error("invalid_client", 7000215)))
    with pytest.raises(ProviderRejected) as caught:
        await tokens.access_token()
    assert not caught.value.retriable
    assert not isinstance(caught.value, AuthorizationRevoked)


def http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status}", response=response)


@pytest.mark.parametrize(
    "failure",
    [
        requests.ConnectionError("refused"),
        requests.Timeout("slow"),
        http_error(503),
        json.JSONDecodeError("Expecting value", "<html>", 0),
    ],
)
async def test_msal_exceptions_are_transient(failure: BaseException) -> None:
    with pytest.raises(TransientProviderError):
        await token_source(FakeMsal(failure)).access_token()


@pytest.mark.parametrize(
    "result",
    [{"token_type": "Bearer"}, {"access_token": ""}],
)
async def test_a_success_without_an_access_token_is_transient(result: dict[str, object]) -> None:
    with pytest.raises(TransientProviderError):
        await token_source(FakeMsal(result)).access_token()


async def test_app_setup_failures_are_translated_and_retried_next_time() -> None:
    attempts: list[int] = []
    app = FakeMsal(granted())

    def factory() -> FakeMsal:
        attempts.append(1)
        if len(attempts) == 1:
            raise requests.ConnectionError("tenant discovery failed")
        if len(attempts) == 2:
            raise ValueError("Unable to get authority configuration for https://login.test/x")
        return app

    tokens = MicrosoftTokenSource(
        refresh_token="rt",
        authority="https://login.test/x",
        client_id="c",
        client_secret="s",
        app_factory=factory,
    )
    with pytest.raises(TransientProviderError):
        await tokens.access_token()
    with pytest.raises(ProviderRejected):
        await tokens.access_token()
    assert await tokens.access_token() == "at-1"
    assert len(attempts) == 3


class FakeEntra:
    """A fake ``http_client`` for the real MSAL: OpenID discovery and a scripted token endpoint."""

    def __init__(self, *token_responses: tuple[int, dict[str, object]]) -> None:
        self.token_responses = list(token_responses)
        self.posts: list[Mapping[str, Any]] = []

    @staticmethod
    def _response(status: int, body: object) -> requests.Response:
        response = requests.Response()
        response.status_code = status
        response._content = json.dumps(body).encode()
        response.headers["Content-Type"] = "application/json"
        return response

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self._response(
            200,
            {
                "authorization_endpoint": "https://login.test/tenant/oauth2/v2.0/authorize",
                "token_endpoint": "https://login.test/tenant/oauth2/v2.0/token",
                "issuer": "https://login.test/tenant/v2.0",
            },
        )

    def post(self, url: str, data: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        self.posts.append(data or {})
        return self._response(*self.token_responses.pop(0))

    def close(self) -> None:
        pass


async def test_real_msal_results_rotation_and_error_dicts() -> None:
    entra = FakeEntra(
        (200, {"token_type": "Bearer", "access_token": "real-at", "expires_in": 3599,
               "refresh_token": "rt-new", "scope": "https://graph.microsoft.com/Calendars.Read"}),
        (400, aad_error("invalid_grant", 700082, suberror="bad_token")),
    )  # fmt: skip

    def factory() -> Any:
        return msal.ConfidentialClientApplication(
            "client",
            client_credential="secret",
            authority="https://login.test/tenant",
            http_client=entra,
            instance_discovery=False,
            token_cache=msal.SerializableTokenCache(),
        )

    tokens = MicrosoftTokenSource(
        refresh_token="rt-old",
        authority="https://login.test/tenant",
        client_id="client",
        client_secret="secret",
        app_factory=factory,
    )
    assert await tokens.access_token() == "real-at"
    assert tokens.rotated_refresh_token() == "rt-new"
    with pytest.raises(AuthorizationRevoked, match="AADSTS700082"):
        await tokens.access_token(force_refresh=True)
    assert [post["refresh_token"] for post in entra.posts] == ["rt-old", "rt-new"]
    assert entra.posts[0]["grant_type"] == "refresh_token"
    await tokens.aclose()


async def test_default_app_uses_the_ca_bundle_and_translates_an_unreachable_authority(
    tmp_path: Any,
) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    tokens = MicrosoftTokenSource(
        refresh_token="rt",
        authority="https://127.0.0.1:1/tenant",  # nothing listens on port 1
        client_id="c",
        client_secret="s",
        ca_bundle=str(bundle),
        timeout=2.0,
    )
    with pytest.raises(TransientProviderError, match="unreachable"):
        await tokens.access_token()
    session = tokens._session
    assert session is not None and session.verify == str(bundle)
    await tokens.aclose()
    await tokens.aclose()  # idempotent
    assert tokens._session is None


def test_the_msal_session_has_a_default_timeout() -> None:
    import io

    from calsync.providers.http import BoundedSession

    sent: list[Mapping[str, Any]] = []

    class Recorder(requests.adapters.BaseAdapter):
        def send(self, *args: Any, **kwargs: Any) -> requests.Response:
            sent.append(kwargs)
            response = requests.Response()
            response.status_code = 200
            response.request = args[0]
            response.raw = io.BytesIO(b"")
            return response

        def close(self) -> None:
            pass

    session = BoundedSession(timeout=7.5)
    session.mount("https://", Recorder())
    session.get("https://login.test/x")
    session.get("https://login.test/y", timeout=1.0)
    assert [kwargs["timeout"] for kwargs in sent] == [7.5, 1.0]


# --------------------------------------------------------------------------- mailbox zone

ZONE_PATH = "/v1.0/users/ada@example.com/mailboxSettings/timeZone"


def mailbox(zone: httpx.Response, seen: list[str] | None = None) -> Scenario:
    """The mailbox's zone answer, and one all-day event on 2026-12-01 in the delta."""

    def scenario(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request.url.path)
        if request.url.path == ZONE_PATH:
            return zone
        return page([all_day("2026-12-01", "2026-12-02")], delta_link=f"{API}/d")

    return scenario


def zone_value(name: str) -> httpx.Response:
    context = f"{API}/$metadata#users('ada%40example.com')/mailboxSettings/timeZone"
    return httpx.Response(200, json={"@odata.context": context, "value": name})


async def test_without_a_registered_zone_all_day_events_anchor_in_the_mailboxs_zone() -> None:
    seen: list[str] = []
    provider = make_provider(mailbox(zone_value("Pacific Standard Time"), seen), time_zone=None)
    (only,) = await walk(provider)
    assert seen[0] == ZONE_PATH
    assert only.time_zone == "America/Los_Angeles"
    occurrence = only.changes[0]
    assert isinstance(occurrence, Occurrence)
    assert occurrence.start_utc == datetime(2026, 12, 1, 8, tzinfo=UTC)


async def test_the_mailbox_zone_is_asked_once_and_again_on_full_listings() -> None:
    seen: list[str] = []
    provider = make_provider(mailbox(zone_value("Europe/Zurich"), seen), time_zone=None)
    await walk(provider)
    await walk(provider, f"{API}/d")
    assert seen.count(ZONE_PATH) == 1
    await walk(provider)
    assert seen.count(ZONE_PATH) == 2


async def test_a_registered_zone_wins_and_asks_nothing() -> None:
    seen: list[str] = []
    provider = make_provider(mailbox(zone_value("Europe/Zurich"), seen), time_zone="Asia/Tokyo")
    (only,) = await walk(provider)
    assert ZONE_PATH not in seen and only.time_zone == "Asia/Tokyo"


@pytest.mark.parametrize(
    "answer",
    [
        graph_error(403, "ErrorAccessDenied"),  # MailboxSettings.Read not consented
        graph_error(404, "ErrorItemNotFound"),
        zone_value("tzone://Microsoft/Custom"),
        httpx.Response(200, text="<html>"),
    ],
)
async def test_an_unreadable_mailbox_zone_falls_back_to_utc(answer: httpx.Response) -> None:
    (only,) = await walk(make_provider(mailbox(answer), time_zone=None))
    assert only.time_zone == "UTC"
    occurrence = only.changes[0]
    assert isinstance(occurrence, Occurrence)
    assert occurrence.start_utc == datetime(2026, 12, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (graph_error(429, "TooManyRequests", {"Retry-After": "3"}), RateLimited),
        (httpx.Response(502), TransientProviderError),
    ],
)
async def test_a_transient_mailbox_zone_failure_fails_the_sync(
    answer: httpx.Response, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await walk(make_provider(mailbox(answer), time_zone=None))


# --------------------------------------------------------------------------- sizes


async def test_a_delta_page_over_the_limit_is_response_too_large() -> None:
    big = [graph_event(id=f"e{i}=") for i in range(50)]
    provider = make_provider(lambda request: page(big, delta_link=f"{API}/d"))
    provider_small = make_provider(
        lambda request: page(big, delta_link=f"{API}/d"), max_response_bytes=4096
    )
    assert len(await walk(provider)) == 1
    with pytest.raises(ResponseTooLarge) as caught:
        await walk(provider_small)
    assert not caught.value.retriable
