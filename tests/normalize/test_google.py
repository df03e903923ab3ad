"""Google event normalization: all-day, time zones, status mapping, privacy."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calsync.errors import MalformedProviderData
from calsync.model import Deletion, Occurrence, StatusIntent, Transparency
from calsync.normalize.busy import BusyPolicy
from calsync.normalize.google import normalize_google_event

UTC_ZONE = ZoneInfo("UTC")
ZONES = sorted(
    z for z in available_timezones() if "/" in z and not z.startswith(("Etc/", "SystemV"))
)


def event(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": "abc123",
        "status": "confirmed",
        "summary": "Board meeting about layoffs",
        "description": "secret",
        "location": "Room 1",
        "organizer": {"email": "ceo@example.com"},
        "attendees": [{"email": "a@example.com", "responseStatus": "accepted"}],
        "start": {"dateTime": "2026-12-01T10:00:00+01:00"},
        "end": {"dateTime": "2026-12-01T11:00:00+01:00"},
    }
    base.update(fields)
    return base


def test_timed_event_becomes_utc_and_carries_no_personal_data() -> None:
    result = normalize_google_event(event(), UTC_ZONE)
    assert isinstance(result, Occurrence)
    assert result.start_utc == datetime(2026, 12, 1, 9, tzinfo=UTC)
    assert result.end_utc == datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert not result.is_all_day
    assert result.status_intent is StatusIntent.BUSY
    assert result.transparency is Transparency.OPAQUE
    text = repr(result)
    for secret in ("Board", "secret", "Room", "ceo@", "a@example"):
        assert secret not in text


def test_all_day_event_spans_the_calendars_local_day() -> None:
    raw = event(start={"date": "2026-12-01"}, end={"date": "2026-12-03"})
    result = normalize_google_event(raw, ZoneInfo("America/Los_Angeles"))
    assert isinstance(result, Occurrence) and result.is_all_day
    assert result.start_utc == datetime(2026, 12, 1, 8, tzinfo=UTC)
    assert result.end_utc == datetime(2026, 12, 3, 8, tzinfo=UTC)


def test_all_day_event_across_a_dst_change_is_23_hours() -> None:
    raw = event(start={"date": "2026-03-29"}, end={"date": "2026-03-30"})
    result = normalize_google_event(raw, ZoneInfo("Europe/Berlin"))
    assert isinstance(result, Occurrence)
    assert result.end_utc - result.start_utc == timedelta(hours=23)


def test_floating_datetime_uses_the_events_time_zone() -> None:
    raw = event(
        start={"dateTime": "2026-07-01T09:00:00", "timeZone": "Asia/Tokyo"},
        end={"dateTime": "2026-07-01T10:00:00", "timeZone": "Asia/Tokyo"},
    )
    result = normalize_google_event(raw, UTC_ZONE)
    assert isinstance(result, Occurrence)
    assert result.start_utc == datetime(2026, 7, 1, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("fields", "intent", "transparency"),
    [
        ({}, StatusIntent.BUSY, Transparency.OPAQUE),
        ({"status": "tentative"}, StatusIntent.TENTATIVE, Transparency.OPAQUE),
        ({"transparency": "transparent"}, StatusIntent.FREE, Transparency.TRANSPARENT),
        ({"eventType": "outOfOffice"}, StatusIntent.OUT_OF_OFFICE, Transparency.OPAQUE),
        (
            {"attendees": [{"self": True, "responseStatus": "declined"}]},
            StatusIntent.FREE,
            Transparency.OPAQUE,
        ),
        (
            {"attendees": [{"self": True, "responseStatus": "tentative"}]},
            StatusIntent.TENTATIVE,
            Transparency.OPAQUE,
        ),
        (
            {"attendees": [{"self": True, "responseStatus": "needsAction"}]},
            StatusIntent.BUSY,
            Transparency.OPAQUE,
        ),
        # another attendee's answer is not the owner's
        (
            {"attendees": [{"email": "b@example.com", "responseStatus": "declined"}]},
            StatusIntent.BUSY,
            Transparency.OPAQUE,
        ),
        # eventType rows of calsync.normalize.busy.KIND_WORDS
        ({"eventType": "focusTime"}, StatusIntent.BUSY, Transparency.OPAQUE),
        ({"eventType": "workingLocation"}, StatusIntent.FREE, Transparency.TRANSPARENT),
        ({"eventType": "birthday"}, StatusIntent.FREE, Transparency.TRANSPARENT),
        (
            {"eventType": "outOfOffice", "transparency": "transparent"},
            StatusIntent.OUT_OF_OFFICE,
            Transparency.OPAQUE,
        ),
    ],
)
def test_status_mapping(
    fields: dict[str, object], intent: StatusIntent, transparency: Transparency
) -> None:
    result = normalize_google_event(event(**fields), UTC_ZONE)
    assert isinstance(result, Occurrence)
    assert (result.status_intent, result.transparency) == (intent, transparency)


DECLINED = {"attendees": [{"self": True, "responseStatus": "declined"}]}
ALL_DAY = {"start": {"date": "2026-12-01"}, "end": {"date": "2026-12-02"}}
UNANSWERED = {"attendees": [{"self": True, "responseStatus": "needsAction"}]}


@pytest.mark.parametrize(
    ("fields", "policy", "intent"),
    [
        (DECLINED, BusyPolicy(), StatusIntent.FREE),
        (DECLINED, BusyPolicy(declined_is_free=False), StatusIntent.BUSY),
        (ALL_DAY, BusyPolicy(), StatusIntent.BUSY),
        (ALL_DAY, BusyPolicy(all_day_is_busy=False), StatusIntent.FREE),
        ({"status": "tentative"}, BusyPolicy(tentative_is_busy=True), StatusIntent.BUSY),
        (UNANSWERED, BusyPolicy(unanswered_is_busy=False), StatusIntent.TENTATIVE),
        # out of office stays whatever the switches say
        (
            {**ALL_DAY, "eventType": "outOfOffice"},
            BusyPolicy(all_day_is_busy=False),
            StatusIntent.OUT_OF_OFFICE,
        ),
    ],
)
def test_policy_switches(
    fields: dict[str, object], policy: BusyPolicy, intent: StatusIntent
) -> None:
    result = normalize_google_event(event(**fields), UTC_ZONE, policy)
    assert isinstance(result, Occurrence)
    assert (result.status_intent, result.transparency) == (intent, Transparency.OPAQUE)


def test_cancelled_is_a_deletion() -> None:
    assert normalize_google_event({"id": "x", "status": "cancelled"}, UTC_ZONE) == Deletion("x")


def test_instance_keeps_its_series_id() -> None:
    raw = event(id="ser_20261201T090000Z", recurringEventId="ser")
    result = normalize_google_event(raw, UTC_ZONE)
    assert isinstance(result, Occurrence) and result.series_id == "ser"


@pytest.mark.parametrize(
    "raw",
    [
        {"status": "confirmed"},
        event(start={"date": "2026-12-01"}, end={"dateTime": "2026-12-01T10:00:00Z"}),
        event(start={"dateTime": "not a time"}),
        event(end={"dateTime": "2026-12-01T08:00:00+01:00"}),
        event(start={"dateTime": "2026-12-01T10:00:00", "timeZone": "Mars/Olympus"}),
        event(start=None),
    ],
)
def test_malformed_items_raise(raw: dict[str, object]) -> None:
    with pytest.raises(MalformedProviderData):
        normalize_google_event(raw, UTC_ZONE)


@given(
    zone=st.sampled_from(ZONES),
    day=st.dates(min_value=date(1990, 1, 1), max_value=date(2060, 12, 31)),
    days=st.integers(1, 14),
)
def test_all_day_bounds_are_local_midnights(zone: str, day: date, days: int) -> None:
    tz = ZoneInfo(zone)
    end_day = day + timedelta(days=days)
    raw = event(start={"date": day.isoformat()}, end={"date": end_day.isoformat()})
    result = normalize_google_event(raw, tz)
    assert isinstance(result, Occurrence) and result.is_all_day
    assert result.start_utc.tzinfo is UTC
    local_start = result.start_utc.astimezone(tz)
    local_end = result.end_utc.astimezone(tz)
    # local midnight, unless the zone skipped midnight that day (then the first instant after)
    assert local_start.date() == day and local_start.hour <= 1
    assert local_end.date() == end_day and local_end.hour <= 1
    assert timedelta(hours=24 * days - 2) <= result.end_utc - result.start_utc
    assert result.end_utc - result.start_utc <= timedelta(hours=24 * days + 2)


@given(
    zone=st.sampled_from(ZONES),
    moment=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2060, 1, 1)),
    minutes=st.integers(0, 24 * 60),
)
def test_offset_datetimes_keep_their_instant(zone: str, moment: datetime, minutes: int) -> None:
    aware = moment.replace(tzinfo=ZoneInfo(zone), microsecond=0)
    end = aware + timedelta(minutes=minutes)
    raw = event(start={"dateTime": aware.isoformat()}, end={"dateTime": end.isoformat()})
    result = normalize_google_event(raw, UTC_ZONE)
    assert isinstance(result, Occurrence)
    assert result.start_utc == aware and result.end_utc == end
