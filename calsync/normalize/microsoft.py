"""Microsoft Graph events → changes: the privacy boundary of the Graph adapter.

:func:`normalize_graph_event` reads the id, times, ``isAllDay``, ``isCancelled``,
``showAs``, the user's own response, the item ``type`` and ``seriesMasterId``, and
returns an :class:`~calsync.model.Occurrence` that carries none of subject, body,
location, attendees or organizer.

Decisions, each a reading of Graph's public documentation (``event``,
``dateTimeTimeZone``, calendarView delta):

* **Wall times.** ``dateTime`` is a wall time without offset (up to 7 fractional
  digits; digits past microseconds are dropped) read in its ``timeZone`` (Windows or
  IANA name, see :mod:`calsync.normalize.windows_zones`; UTC when absent). A wall
  time is read with ``fold=0``: in a DST overlap it is the *earlier* instant, in a
  DST gap it takes the offset in force *before* the transition (02:30 on a
  spring-forward day is 03:30 after it). :class:`MicrosoftProvider` asks Graph for
  UTC (``Prefer: outlook.timezone="UTC"``), so on that path no wall time is ambiguous.
* **All-day events** are dates, not instants. Graph sends them as midnight to
  midnight in *some* zone: the one the response was asked in (UTC here) or the one
  the event was created in; neither is the day the mailbox's owner is away. So the
  start and end *dates* are taken from the wall times as sent and anchored at local
  midnight of ``mailbox_zone``, whatever ``timeZone`` says (Google all-day events
  are anchored in the calendar's zone the same way). The result then does not depend
  on the ``Prefer`` zone. Should an all-day bound not be midnight, Graph converted it
  from another zone; the date is then the day that instant falls on in
  ``mailbox_zone``.
* **showAs** and the user's own ``responseStatus.response`` (with ``isAllDay``) go
  to :func:`calsync.normalize.busy.status_intent`, the one busy policy. With the default
  :class:`~calsync.normalize.busy.BusyPolicy`: ``free`` → FREE (transparent); ``tentative`` →
  TENTATIVE; ``busy`` → BUSY; ``oof`` → OUT_OF_OFFICE; ``workingElsewhere`` → FREE
  (transparent): the person is working and can be booked, only not at the office,
  so the slot is not busy; ``unknown``, missing or new values → BUSY (when unsure,
  do not offer the slot). The response refines it: ``declined`` → FREE,
  ``tentativelyAccepted`` turns BUSY into TENTATIVE; ``oof`` always stays. A
  resource's policy can flip the declined, unanswered, all-day and tentative rules.
* **Series masters** are not occurrences (calendarView delta expands series into
  occurrences and exceptions); :func:`normalize_graph_event` refuses one and
  :meth:`calsync.providers.microsoft.MicrosoftProvider.fetch_changes` drops any before normalizing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from datetime import time as wall_clock
from typing import Any, NotRequired, TypedDict
from zoneinfo import ZoneInfo

from calsync.errors import MalformedProviderData
from calsync.model import Change, Deletion, Occurrence, StatusIntent, Transparency
from calsync.normalize.busy import BusyPolicy, status_intent
from calsync.normalize.windows_zones import zone_for

__all__ = ["DateTimeTimeZone", "GraphEvent", "normalize_graph_event", "parse_wall"]

_WALL_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
    r"(Z|[+-]\d{2}:\d{2})?"
)


class DateTimeTimeZone(TypedDict):
    """Graph ``dateTimeTimeZone``: a wall time without offset, and the zone to read it in."""

    dateTime: str
    timeZone: NotRequired[str]


class ResponseStatus(TypedDict, total=False):
    response: str  # none, organizer, tentativelyAccepted, accepted, declined, notResponded
    time: str


class GraphEvent(TypedDict):
    """The fields of a Graph ``event`` that calsync reads; all others are ignored."""

    id: str
    start: NotRequired[DateTimeTimeZone]
    end: NotRequired[DateTimeTimeZone]
    isAllDay: NotRequired[bool]
    isCancelled: NotRequired[bool]
    showAs: NotRequired[str]
    responseStatus: NotRequired[ResponseStatus]
    type: NotRequired[str]  # singleInstance, occurrence, exception, seriesMaster
    seriesMasterId: NotRequired[str | None]


class GraphRemoved(TypedDict):
    reason: str  # deleted, changed


GraphRemovedEvent = TypedDict("GraphRemovedEvent", {"id": str, "@removed": GraphRemoved})
GraphDeltaPage = TypedDict(
    "GraphDeltaPage",
    {
        "value": list[GraphEvent | GraphRemovedEvent],
        "@odata.nextLink": NotRequired[str],
        "@odata.deltaLink": NotRequired[str],
    },
)


def parse_wall(raw: object, which: str) -> datetime:
    """A ``dateTime`` as a datetime: naive (a wall time), or aware if it carried an offset."""
    match = _WALL_TIME.fullmatch(raw) if isinstance(raw, str) else None
    if match is None:
        raise MalformedProviderData(f"{which}.dateTime is not an ISO 8601 date-time")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        moment = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second or 0),
            int((fraction or "").ljust(6, "0")[:6]),  # 100 ns ticks: keep microseconds
        )
    except ValueError as exc:
        raise MalformedProviderData(f"{which}.dateTime is out of range") from exc
    if offset == "Z":
        return moment.replace(tzinfo=UTC)
    if offset:
        sign = -1 if offset[0] == "-" else 1
        delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
        return moment.replace(tzinfo=timezone(sign * delta))
    return moment


def _bound(value: object, which: str) -> tuple[datetime, ZoneInfo]:
    """A start or end: its wall time (aware when Graph sent an offset) and its zone."""
    if not isinstance(value, Mapping):
        raise MalformedProviderData(f"{which} is missing")
    zone_name = value.get("timeZone")
    if zone_name is not None and not isinstance(zone_name, str):
        raise MalformedProviderData(f"{which}.timeZone is not a string")
    zone = zone_for(zone_name) if zone_name else ZoneInfo("UTC")
    return parse_wall(value.get("dateTime"), which), zone


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of a wall time in ``zone`` (``fold=0``: see the module docstring)."""
    if wall.tzinfo is None:
        wall = wall.replace(tzinfo=zone, fold=0)
    return wall.astimezone(UTC)


def _all_day_date(wall: datetime, zone: ZoneInfo, mailbox_zone: ZoneInfo) -> date:
    if wall.tzinfo is None and wall.time() == wall_clock(0):
        return wall.date()
    return _instant(wall, zone).astimezone(mailbox_zone).date()


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    # fold=0: where midnight is skipped, the instant the day actually begins.
    return datetime.combine(day, wall_clock(0), tzinfo=zone).astimezone(UTC)


def _show_as(
    raw: Mapping[str, Any], all_day: bool, policy: BusyPolicy
) -> tuple[StatusIntent, Transparency]:
    """``showAs`` (both status and transparency in Graph) and the owner's response, decided
    by :func:`calsync.normalize.busy.status_intent`."""
    show_as = raw.get("showAs")
    response_status = raw.get("responseStatus")
    response = response_status.get("response") if isinstance(response_status, Mapping) else None
    return status_intent(
        policy,
        transparency=Transparency.OPAQUE,
        status=show_as if isinstance(show_as, str) else None,
        own_response=response if isinstance(response, str) else None,
        all_day=all_day,
    )


def normalize_graph_event(
    raw: Mapping[str, Any], mailbox_zone: ZoneInfo, policy: BusyPolicy | None = None
) -> Change:
    """Reduce a Graph event (or ``@removed`` entry) to an :class:`Occurrence` or :class:`Deletion`.

    ``@removed`` and ``isCancelled`` are deletions. ``mailbox_zone`` is the
    mailbox's zone: all-day events span local midnights there. The rules for wall
    times, all-day events and ``showAs`` are in the module docstring; ``policy``
    (the default :class:`BusyPolicy` when ``None``) sets the busy switches. Raises
    :class:`MalformedProviderData` (with ``item_id`` when there is one) for anything
    it cannot represent, including a series master, which is not an occurrence.
    """
    event_id = raw.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise MalformedProviderData("event without an id")
    if "@removed" in raw or raw.get("isCancelled") is True:
        return Deletion(event_id)
    if raw.get("type") == "seriesMaster":
        raise MalformedProviderData("a series master is not an occurrence", item_id=event_id)
    try:
        start_wall, start_zone = _bound(raw.get("start"), "start")
        end_wall, end_zone = _bound(raw.get("end"), "end")
    except MalformedProviderData as exc:
        exc.item_id = event_id
        raise
    all_day = raw.get("isAllDay") is True
    if all_day:
        start = _local_midnight(_all_day_date(start_wall, start_zone, mailbox_zone), mailbox_zone)
        end = _local_midnight(_all_day_date(end_wall, end_zone, mailbox_zone), mailbox_zone)
    else:
        start, end = _instant(start_wall, start_zone), _instant(end_wall, end_zone)
    if end < start:
        raise MalformedProviderData("event ends before it starts", item_id=event_id)
    intent, transparency = _show_as(raw, all_day, BusyPolicy() if policy is None else policy)
    series_id = raw.get("seriesMasterId")
    return Occurrence(
        native_event_id=event_id,
        start_utc=start,
        end_utc=end,
        is_all_day=all_day,
        transparency=transparency,
        status_intent=intent,
        series_id=series_id if isinstance(series_id, str) and series_id else None,
    )
