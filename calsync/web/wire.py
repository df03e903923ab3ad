"""How the availability and holds API reads requests and writes answers.

Times travel as ISO 8601 with an offset (``Z`` on the way out), intervals as epoch
seconds inside calsync. Every parser raises :class:`~calsync.gateway.http.RequestRejected`
(a ``400`` naming the field) for what it cannot take, and bounds what a caller
controls: window length, list sizes, string lengths.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from datetime import time as wall_time
from typing import Any

import orjson
from aiohttp import web

from calsync.availability.errors import InvalidAvailabilityRequest
from calsync.availability.holds import Hold
from calsync.availability.intervals import DEFAULT_BLOCKING, Flag
from calsync.availability.slots import Span, WorkingHours
from calsync.errors import MalformedProviderData
from calsync.gateway.http import RESOURCE_ID, RequestRejected
from calsync.normalize.windows_zones import zone_for

#: The widest window of one availability request.
MAX_WINDOW = timedelta(days=62)
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
FLAG_NAMES: Mapping[str, Flag] = {
    "busy": Flag.BUSY,
    "tentative": Flag.TENTATIVE,
    "out_of_office": Flag.OUT_OF_OFFICE,
    "free": Flag.FREE,
    "cancelled": Flag.CANCELLED,
    "hold": Flag.HOLD,
    "all_day": Flag.ALL_DAY,
}


def answer(
    data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """``data`` as a JSON answer, encoded with orjson: the standard library's encoder took
    a tenth of the worker's time for a free-slot query (docs/benchmarks.md, section 6).
    Keys must be strings; a float that is not finite becomes ``null``."""
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def iso(seconds: float) -> str:
    """``seconds`` since the epoch as ISO 8601 UTC with ``Z`` (fractions kept if any)."""
    if seconds == int(seconds):  # the common case, three times faster than datetime
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def flag_names(flags: int) -> list[str]:
    return [name for name, bit in FLAG_NAMES.items() if flags & bit]


def instant(value: object, name: str) -> datetime:
    if not isinstance(value, str) or len(value) > 40:
        raise RequestRejected(400, f"{name} must be an ISO 8601 time with an offset", field=name)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise RequestRejected(
            400, f"{name} is not an ISO 8601 time: {value[:40]!r}", field=name
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise RequestRejected(400, f"{name} needs a UTC offset (or Z): {value!r}", field=name)
    return moment.astimezone(UTC)


def window(start: datetime, end: datetime) -> tuple[int, int]:
    if end <= start:
        raise RequestRejected(400, "end must be after start", field="end")
    if end - start > MAX_WINDOW:
        raise RequestRejected(400, f"the window may span at most {MAX_WINDOW.days} days")
    return int(start.timestamp()), int(end.timestamp())


def resource_id(value: object, name: str = "resource_id") -> str:
    if not isinstance(value, str) or not RESOURCE_ID.fullmatch(value):
        raise RequestRejected(400, f"{name} is not a valid resource id", field=name)
    return value


def number(body: Mapping[str, Any], name: str, default: float, *, low: float, high: float) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestRejected(400, f"{name} must be a number from {low:g} to {high:g}", field=name)
    return float(value)


def blocking_mask(value: object) -> int:
    if value is None:
        return DEFAULT_BLOCKING
    if not isinstance(value, list) or len(value) > len(FLAG_NAMES):
        raise RequestRejected(400, "blocking must be a list of busy states", field="blocking")
    mask = 0
    for name in value:
        if name not in FLAG_NAMES:
            known = ", ".join(FLAG_NAMES)
            raise RequestRejected(
                400, f"unknown busy state {str(name)[:30]!r} (known: {known})", field="blocking"
            )
        mask |= FLAG_NAMES[name]
    return mask


def zone(value: object, name: str) -> Any:
    if not isinstance(value, str) or len(value) > 80:
        raise RequestRejected(400, f"{name} must be an IANA or Windows zone name", field=name)
    try:
        return zone_for(value)
    except MalformedProviderData as exc:
        raise RequestRejected(400, f"{name}: {exc}", field=name) from None


def _spans(value: object, name: str) -> list[Span]:
    if not isinstance(value, list) or len(value) > 12:
        raise RequestRejected(400, f"{name} must be a list of [from, to] times", field=name)
    spans: list[Span] = []
    for item in value:
        if not (
            isinstance(item, list) and len(item) == 2 and all(isinstance(t, str) for t in item)
        ):
            raise RequestRejected(400, f'{name}: each span is ["HH:MM", "HH:MM"]', field=name)
        try:
            start = wall_time.fromisoformat(item[0])
            end = (
                wall_time(0)
                if item[1] in ("24:00", "24:00:00")
                else wall_time.fromisoformat(item[1])
            )
        except ValueError:
            raise RequestRejected(
                400, f"{name}: not a time of day: {item!r}"[:120], field=name
            ) from None
        spans.append((start, end))
    return spans


def working_hours(value: object) -> WorkingHours | None:
    """The working hours a request gives for one resource (None: not given).

    A query usually gives the same hours for many resources, and the same again in
    the next query: parsed hours are remembered by their canonical JSON (they are
    immutable)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RequestRejected(400, "working_hours must be an object", field="working_hours")
    try:
        canonical = json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):  # keys of mixed types cannot be sorted
        return _working_hours(value)
    return _remembered_working_hours(canonical)


@functools.lru_cache(maxsize=1024)
def _remembered_working_hours(canonical: str) -> WorkingHours:
    return _working_hours(json.loads(canonical))


def _working_hours(value: dict[str, Any]) -> WorkingHours:
    where = zone(value.get("zone", "UTC"), "working_hours.zone")
    weekly_raw = value.get("weekly", {})
    exceptions_raw = value.get("exceptions", {})
    if not isinstance(weekly_raw, dict) or not isinstance(exceptions_raw, dict):
        raise RequestRejected(400, "weekly and exceptions are objects", field="working_hours")
    if len(exceptions_raw) > 400:
        raise RequestRejected(400, "at most 400 exception dates", field="working_hours")
    weekly: dict[int, list[Span]] = {}
    for day, spans in weekly_raw.items():
        if day not in _WEEKDAYS:
            raise RequestRejected(400, f"weekly days are {', '.join(_WEEKDAYS)}", field="weekly")
        weekly[_WEEKDAYS.index(day)] = _spans(spans, f"weekly.{day}")
    exceptions: dict[date, list[Span]] = {}
    for day, spans in exceptions_raw.items():
        try:
            exceptions[date.fromisoformat(str(day))] = _spans(spans, f"exceptions.{day}")
        except ValueError:
            raise RequestRejected(
                400, f"not a date: {str(day)[:20]!r}", field="exceptions"
            ) from None
    try:
        return WorkingHours(where, weekly, exceptions)
    except InvalidAvailabilityRequest as exc:
        raise RequestRejected(400, str(exc), field="working_hours") from None


def hold_json(hold: Hold) -> dict[str, Any]:
    """A live hold as the API shows it."""
    return {
        "hold_id": hold.hold_id,
        "state": hold.state.value,
        "start": iso(hold.start),
        "end": iso(hold.end),
        "resources": list(hold.participants),
        "expires_at": iso(hold.expires_at) if hold.expires_at else None,
    }
