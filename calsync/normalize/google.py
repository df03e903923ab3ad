"""Google Calendar v3 events → changes: the privacy boundary of the Google adapter.

:func:`normalize_google_event` reads times, status, transparency, ``eventType`` and
the user's own response (the busy state is decided by :mod:`calsync.normalize.busy`),
and returns an :class:`~calsync.model.Occurrence` that carries none of title,
description, location, attendees or organizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from typing import Any, NotRequired, TypedDict
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from calsync.errors import MalformedProviderData
from calsync.model import Change, Deletion, Occurrence, Transparency
from calsync.normalize.busy import BusyPolicy, status_intent

__all__ = ["GoogleAttendee", "GoogleEvent", "GoogleEventDateTime", "normalize_google_event"]


class GoogleEventDateTime(TypedDict, total=False):
    date: str
    dateTime: str
    timeZone: str


class GoogleAttendee(TypedDict, total=False):
    self: bool
    responseStatus: str


class GoogleEvent(TypedDict):
    """The fields of a Google event resource that calsync reads; all others are ignored."""

    id: str
    status: NotRequired[str]
    start: NotRequired[GoogleEventDateTime]
    end: NotRequired[GoogleEventDateTime]
    transparency: NotRequired[str]
    eventType: NotRequired[str]
    recurringEventId: NotRequired[str]
    attendees: NotRequired[list[GoogleAttendee]]


def _zone(name: str | None, fallback: ZoneInfo) -> ZoneInfo:
    if not name:
        return fallback
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise MalformedProviderData(f"unknown time zone {name!r}") from exc


def _parse_bound(
    value: object, event_zone: ZoneInfo, calendar_zone: ZoneInfo, which: str
) -> tuple[datetime, bool]:
    """A start or end as an aware UTC datetime, and whether it was an all-day date."""
    if not isinstance(value, Mapping):
        raise MalformedProviderData(f"{which} is missing")
    if "date" in value and "dateTime" not in value:
        try:
            day = date.fromisoformat(str(value["date"]))
        except ValueError as exc:
            raise MalformedProviderData(f"{which}.date is not a date") from exc
        # An all-day event covers the calendar's local day, not the UTC day.
        return datetime.combine(day, time(0), tzinfo=calendar_zone).astimezone(UTC), True
    raw = value.get("dateTime")
    if not isinstance(raw, str):
        raise MalformedProviderData(f"{which} has neither date nor dateTime")
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise MalformedProviderData(f"{which}.dateTime is not RFC 3339") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_zone(value.get("timeZone"), event_zone))
    return moment.astimezone(UTC), False


def _own_response(raw: Mapping[str, Any]) -> str | None:
    """The ``responseStatus`` of the attendee marked ``self``, if there is one."""
    attendees = raw.get("attendees")
    if not isinstance(attendees, list):
        return None
    for attendee in attendees:
        if isinstance(attendee, Mapping) and attendee.get("self"):
            response = attendee.get("responseStatus")
            return response if isinstance(response, str) else None
    return None


def _word(value: object) -> str | None:
    return value if isinstance(value, str) else None


def normalize_google_event(
    raw: Mapping[str, Any], calendar_zone: ZoneInfo, policy: BusyPolicy | None = None
) -> Change:
    """Reduce a Google event resource to a :class:`Occurrence` or :class:`Deletion`.

    ``calendar_zone`` is the calendar's zone (from the list response): all-day
    events (``date``) span local midnight to local midnight there, and floating
    ``dateTime`` values without ``timeZone`` are read in it. A cancelled event is a
    deletion. The busy state is :func:`calsync.normalize.busy.status_intent` of ``transparency``,
    ``status``, the ``self`` attendee's ``responseStatus``, ``eventType`` and the
    all-day flag under ``policy`` (the default :class:`BusyPolicy` when ``None``).
    Raises :class:`MalformedProviderData` for anything it cannot represent.
    """
    event_id = raw.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise MalformedProviderData("event without an id")
    if raw.get("status") == "cancelled":
        return Deletion(event_id)
    start_raw, end_raw = raw.get("start"), raw.get("end")
    event_zone = calendar_zone
    if isinstance(start_raw, Mapping):
        event_zone = _zone(start_raw.get("timeZone"), calendar_zone)
    try:
        start, start_all_day = _parse_bound(start_raw, event_zone, calendar_zone, "start")
        end, end_all_day = _parse_bound(end_raw, event_zone, calendar_zone, "end")
    except MalformedProviderData as exc:
        exc.item_id = event_id
        raise
    if start_all_day != end_all_day:
        raise MalformedProviderData("start and end mix date and dateTime", item_id=event_id)
    if end < start:
        raise MalformedProviderData("event ends before it starts", item_id=event_id)
    transparency = (
        Transparency.TRANSPARENT
        if raw.get("transparency") == "transparent"
        else Transparency.OPAQUE
    )
    intent, transparency = status_intent(
        BusyPolicy() if policy is None else policy,
        transparency=transparency,
        status=_word(raw.get("status")),
        own_response=_own_response(raw),
        kind=_word(raw.get("eventType")),
        all_day=start_all_day,
    )
    series_id = raw.get("recurringEventId")
    return Occurrence(
        native_event_id=event_id,
        start_utc=start,
        end_utc=end,
        is_all_day=start_all_day,
        transparency=transparency,
        status_intent=intent,
        series_id=series_id if isinstance(series_id, str) else None,
    )
