"""A local Google Calendar API v3 and Google OAuth token endpoint, on aiohttp.

The emulator follows the Google Calendar API v3 reference (events, channels, sync
tokens, errors) and Google's OAuth 2.0 docs for refreshing an access token "to the
header and status code": the production Google provider adapter is pointed at it
with ``CALSYNC_GOOGLE_API_URL`` (``api_url``) and ``CALSYNC_GOOGLE_TOKEN_URL``
(``token_url``) and cannot tell the difference for the calls it makes.

Served over HTTP (paths relative to ``base_url``)::

    POST   /token                                        OAuth refresh_token, authorization_code
    GET    /o/oauth2/v2/auth                             consent page (POST: the Allow/Deny form)
    GET    /calendar/v3/users/me/calendarList            the consenting user's calendars
    GET    /calendar/v3/calendars/{cal}/events           events.list (paging, sync tokens)
    POST   /calendar/v3/calendars/{cal}/events           events.insert
    GET    /calendar/v3/calendars/{cal}/events/{id}      events.get (instance ids too)
    PATCH  /calendar/v3/calendars/{cal}/events/{id}      events.patch
    DELETE /calendar/v3/calendars/{cal}/events/{id}      events.delete
    POST   /calendar/v3/calendars/{cal}/events/watch     events.watch (push channels)
    POST   /calendar/v3/channels/stop                    channels.stop
    ...    /_emulator/...                                test/demo control, see ``CONTROL_ROUTES``

Contracts worth knowing before writing a test against it:

- Every ``/calendar/v3`` call needs ``Authorization: Bearer <access token>``; an
  access token is minted by ``POST /token`` for a refresh token from
  :meth:`GoogleEmulator.issue_refresh_token`, lives 3599 s on the emulator
  clock and dies with its refresh token. A missing, unknown, expired or revoked
  token, or one whose grant does not cover the calendar, answers 401
  ``authError``. An unknown calendar answers 404 ``notFound``.
- Every error body is the Calendar API v3 error envelope
  ``{"error": {"errors": [{domain, reason, message, ...}], "code", "message"}}``;
  the token endpoint answers OAuth-style ``{"error", "error_description"}``.
- Page and sync tokens are opaque, HMAC-sealed and bound to one emulator
  instance. A sync token encodes the calendar, its change-sequence number when
  the walk that minted it *started*, the invalidation epoch and the original
  ``timeMin``/``timeMax``/``singleEvents``; so changes made while a client pages
  are delivered by its next incremental sync, never lost (maybe twice).
- A sync token that was invalidated, forged, or minted by another emulator
  answers 410 ``fullSyncRequired``; a bad ``pageToken`` answers 400 ``invalid``.
- Pushes are delivered by one background task per channel, never inside the
  request that caused the change; :meth:`GoogleEmulator.flush_pushes` waits for
  the ones queued so far.
- Python control methods raise :class:`GoogleApiError` (the same error the HTTP
  layer renders) for unknown calendars/events, duplicates and invalid input.
- Every ``/calendar/v3`` and ``/token`` call lands in ``requests`` as a
  :class:`RecordedRequest`, with the ``Retry-After`` it was answered (in
  seconds), the OAuth grant (``account``, see :meth:`GoogleEmulator.account_of`)
  and the calendar it was about; :meth:`GoogleEmulator.requests_for` filters.
  Pushes lost to ``faults.drop_push_probability`` are in ``delivery_log`` with
  ``status=None, error="dropped"`` (:attr:`DeliveryRecord.dropped`).
- A fault rule whose ``path`` matches ``/token`` (``faults.add("unavailable_503",
  path="^/token$")``) fails token requests too, in OAuth's error shape; a rule
  without a path never touches the token endpoint.
- :meth:`GoogleEmulator.corrupt_event` stores an unvalidated resource (a
  provider bug); listings never parse its timing and keep serving everything
  else.
- Bulk data: :meth:`GoogleEmulator.insert_events` (tens of microseconds an
  event). events.list collects a walk once and pages it by bisection until the
  calendar changes (or, for open-ended series, the clock moves).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import bisect
import copy
import dataclasses
import email.utils
import functools
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import (
    Any,
    Final,
    Literal,
    NamedTuple,
    NotRequired,
    TypedDict,
    cast,
    get_args,
)
from urllib.parse import quote, urlencode, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web
from dateutil.rrule import rrulestr  # type: ignore[import-untyped]

from calsync.emulators import base as _base
from calsync.emulators import oauth as _oauth
from calsync.emulators.base import jcopy as _jcopy
from calsync.emulators.faults import (
    DROPPED,
    DroppedMark,
    FaultInjector,
    FaultRule,
    RecordedRequest,
)

__all__ = [
    "API_PREFIX",
    "CONTROL_ROUTES",
    "DROPPED",
    "Channel",
    "ChannelResource",
    "DeliveryRecord",
    "ErrorDetail",
    "ErrorEnvelope",
    "EventResource",
    "FaultInjector",
    "FaultKind",
    "FaultRule",
    "GoogleApiError",
    "GoogleEmulator",
    "RecordedRequest",
    "main",
    "serve_forever",
]

logger = logging.getLogger(__name__)

API_PREFIX: Final = "/calendar/v3"
TOKEN_PATH: Final = "/token"  # noqa: S105  (a URL path, not a secret)
AUTH_PATH: Final = "/o/oauth2/v2/auth"
GOOGLE_TOKEN_AUDIENCE: Final = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL
JWT_BEARER: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
READONLY_SCOPE: Final = "https://www.googleapis.com/auth/calendar.readonly"
DEFAULT_PORT: Final = 8710  # the port `calsync emulator google` defaults to

DEFAULT_CHANNEL_TTL: Final = 604_800.0
MAX_RESULTS_LIMIT: Final = 2500
ACCESS_TOKEN_LIFETIME: Final = 3599
DEFAULT_SCOPE: Final = "https://www.googleapis.com/auth/calendar"
PUSH_SUCCESS: Final = frozenset({102, 200, 201, 202, 204})
PUSH_RETRY: Final = frozenset({500, 502, 503, 504})
FORBIDDEN_WITH_SYNC_TOKEN: Final = (
    "iCalUID",
    "orderBy",
    "privateExtendedProperty",
    "q",
    "sharedExtendedProperty",
    "timeMin",
    "timeMax",
    "updatedMin",
)

_BASE32HEX: Final = "0123456789abcdefghijklmnopqrstuv"
_BASE32HEX_PAIRS: Final = tuple(a + b for a in _BASE32HEX for b in _BASE32HEX)
_PAIR_SHIFTS: Final = tuple(range(0, 130, 10))
_EVENT_ID_RE: Final = re.compile(r"^[a-v0-9]{5,1024}$")
_EXPANSION_HORIZON: Final = timedelta(days=730)
_MAX_RRULE_ITERATIONS: Final = 20_000
_LISTING_CACHE_SIZE: Final = 256
_UNKNOWN_START_KEY: Final = "~"  # sorts after every ISO timestamp
_EVENT_STATUSES: Final = ("confirmed", "tentative", "cancelled")
_TRANSPARENCIES: Final = ("opaque", "transparent")
_CHANNEL_TYPES: Final = ("web_hook", "webhook")
_TIMING_KEYS: Final = ("start", "end", "recurrence")
_READ_ONLY_KEYS: Final = (
    "kind",
    "etag",
    "id",
    "created",
    "updated",
    "htmlLink",
    "iCalUID",
    "recurringEventId",
    "originalStartTime",
)
_CANONICAL_ORDER: Final = (
    "kind",
    "etag",
    "id",
    "status",
    "htmlLink",
    "created",
    "updated",
    "summary",
    "description",
    "location",
    "creator",
    "organizer",
    "start",
    "end",
    "recurrence",
    "recurringEventId",
    "originalStartTime",
    "transparency",
    "iCalUID",
    "sequence",
)

EventResource = dict[str, Any]
"""An event as the API renders it: the caller's fields plus the server-set ones.

Kept as a plain dict on purpose: the emulator stores and returns whatever the
caller inserted (attendees, extendedProperties, conferenceData, ...)."""


# --------------------------------------------------------------------------- wire types


class ErrorDetail(TypedDict):
    """One entry of ``error.errors`` in the Calendar API v3 error envelope."""

    domain: str
    reason: str
    message: str
    locationType: NotRequired[str]
    location: NotRequired[str]


class ErrorObject(TypedDict):
    """The ``error`` member of the Calendar API v3 error envelope."""

    errors: list[ErrorDetail]
    code: int
    message: str


class ErrorEnvelope(TypedDict):
    """The Calendar API v3 error body: ``{"error": {"errors": [...], "code", "message"}}``."""

    error: ErrorObject


class ChannelResource(TypedDict):
    """The ``api#channel`` answer of events.watch; ``expiration`` is epoch ms as a string."""

    kind: str
    id: str
    resourceId: str
    resourceUri: str
    token: NotRequired[str]
    expiration: str


class TokenResponse(TypedDict):
    """A successful grant; ``refresh_token`` only from an offline authorization code
    (a refresh answers none, like Google)."""

    access_token: str
    expires_in: int
    scope: str
    token_type: str
    refresh_token: NotRequired[str]


# --------------------------------------------------------------------------- errors


class GoogleApiError(Exception):
    """An error the emulator answers with the Calendar API v3 error envelope.

    Raised by the Python control methods too, so a test sees the same ``status``
    and ``reason`` that an HTTP client would.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        domain: str = "global",
        location: str | None = None,
        location_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.domain = domain
        self.location = location
        self.location_type = location_type
        self.headers: dict[str, str] = dict(headers or {})

    def envelope(self) -> ErrorEnvelope:
        """The exact JSON body for this error."""
        detail: ErrorDetail = {
            "domain": self.domain,
            "reason": self.reason,
            "message": self.message,
        }
        if self.location_type is not None:
            detail["locationType"] = self.location_type
        if self.location is not None:
            detail["location"] = self.location
        return {"error": {"errors": [detail], "code": self.status, "message": self.message}}


def _invalid(message: str, location: str | None = None) -> GoogleApiError:
    return GoogleApiError(
        400,
        "invalid",
        message,
        location=location,
        location_type="parameter" if location else None,
    )


def _required(message: str, location: str | None = None) -> GoogleApiError:
    return GoogleApiError(
        400,
        "required",
        message,
        location=location,
        location_type="parameter" if location else None,
    )


def _parse_error() -> GoogleApiError:
    return GoogleApiError(400, "parseError", "Parse Error")


def _auth_error() -> GoogleApiError:
    return GoogleApiError(
        401,
        "authError",
        "Invalid Credentials",
        location="Authorization",
        location_type="header",
        headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
    )


def _not_found() -> GoogleApiError:
    return GoogleApiError(404, "notFound", "Not Found")


def _duplicate() -> GoogleApiError:
    return GoogleApiError(409, "duplicate", "The requested identifier already exists.")


def _full_sync_required() -> GoogleApiError:
    return GoogleApiError(
        410,
        "fullSyncRequired",
        "Sync token is no longer valid, a full sync is required.",
        domain="calendar",
        location="syncToken",
        location_type="parameter",
    )


def _deleted() -> GoogleApiError:
    return GoogleApiError(410, "deleted", "Resource has been deleted")


def _time_range_empty() -> GoogleApiError:
    return GoogleApiError(
        400,
        "timeRangeEmpty",
        "The specified time range is empty.",
        domain="calendar",
        location="timeMax",
        location_type="parameter",
    )


def _error_response(exc: GoogleApiError) -> web.Response:
    return web.json_response(exc.envelope(), status=exc.status, headers=exc.headers)


# --------------------------------------------------------------------------- faults

FaultKind = Literal[
    "rate_limit_429",
    "rate_limit_403",
    "user_rate_limit_403",
    "quota_exceeded_403",
    "backend_error_500",
    "unavailable_503",
    "full_sync_required_410",
    "condition_not_met_412",
    "duplicate_409",
    "latency",
]
"""What a :class:`FaultRule` does to a matching API call."""

_FAULT_KINDS: Final = cast("tuple[FaultKind, ...]", get_args(FaultKind))


def _fault_error(kind: FaultKind) -> GoogleApiError:
    if kind == "rate_limit_429":
        return GoogleApiError(429, "rateLimitExceeded", "Rate Limit Exceeded", domain="usageLimits")
    if kind == "rate_limit_403":
        return GoogleApiError(403, "rateLimitExceeded", "Rate Limit Exceeded", domain="usageLimits")
    if kind == "user_rate_limit_403":
        return GoogleApiError(
            403, "userRateLimitExceeded", "User Rate Limit Exceeded", domain="usageLimits"
        )
    if kind == "quota_exceeded_403":
        return GoogleApiError(
            403, "quotaExceeded", "Calendar usage limits exceeded.", domain="usageLimits"
        )
    if kind == "backend_error_500":
        return GoogleApiError(500, "backendError", "Backend Error")
    if kind == "unavailable_503":
        # The sheet gives no 503 body; Google's front ends answer with this one.
        return GoogleApiError(503, "backendError", "The service is currently unavailable.")
    if kind == "full_sync_required_410":
        return _full_sync_required()
    if kind == "condition_not_met_412":
        return GoogleApiError(
            412,
            "conditionNotMet",
            "Precondition Failed",
            location="If-Match",
            location_type="header",
        )
    if kind == "duplicate_409":
        return _duplicate()
    raise ValueError(f"fault kind {kind!r} produces no error")


def _fault_response(rule: FaultRule[FaultKind], request: web.Request) -> web.Response:
    error = _fault_error(rule.kind)
    if request.path == TOKEN_PATH:
        # the token endpoint answers in OAuth's shape, not the Calendar API's envelope
        return _oauth_error(error.status, error.reason, error.message)
    return _error_response(error)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class DeliveryRecord(DroppedMark):
    """One push attempt: ``status`` is the receiver's HTTP status, or ``None``
    when ``error`` says why nothing was answered (exception text, ``"dropped"``,
    ``"channel expired"``, ``"channel stopped"``).

    A push lost on purpose (``FaultInjector.drop_push_probability``) is logged
    once, with ``status=None`` and ``error=DROPPED`` (``"dropped"``); see
    :attr:`dropped`."""

    channel_id: str
    message_number: int
    state: str
    status: int | None
    error: str | None = None
    attempt: int = 1
    time: float = 0.0


@dataclass(slots=True)
class Channel:
    """A live push channel (events.watch); ``expiration_ms`` is epoch milliseconds."""

    id: str
    resource_id: str
    resource_uri: str
    calendar_id: str
    address: str
    token: str | None
    expiration_ms: int
    client_id: str
    params: dict[str, str] = field(default_factory=dict)
    message_number: int = 1
    stopped: bool = False

    def resource(self) -> ChannelResource:
        """The ``api#channel`` JSON answered by events.watch."""
        out: ChannelResource = {
            "kind": "api#channel",
            "id": self.id,
            "resourceId": self.resource_id,
            "resourceUri": self.resource_uri,
            "expiration": str(self.expiration_ms),
        }
        if self.token is not None:
            out["token"] = self.token
        return out


# --------------------------------------------------------------------------- internal state


class _Timing(NamedTuple):
    """What decides when an event happens (a tuple: cheap to build and compare)."""

    start: dict[str, Any]
    end: dict[str, Any]
    recurrence: tuple[str, ...]


@dataclass(slots=True)
class _Override:
    """A changed or cancelled instance of a series; ``delta`` overlays the generated one."""

    delta: dict[str, Any]
    change_seq: int
    updated: str
    etag: str


@dataclass(slots=True)
class _Record(_base.StoredEvent[_Timing]):
    """A stored event. ``corrupt`` marks a resource set by ``corrupt_event``: it
    was never validated, so its timing is not trusted (nor kept in ``history``).
    A deleted event stays as a tombstone: ``status: cancelled``."""

    overrides: dict[str, _Override] = field(default_factory=dict)
    corrupt: bool = False

    @property
    def cancelled(self) -> bool:
        return bool(self.resource.get("status") == "cancelled")

    @property
    def recurring(self) -> bool:
        return bool(self.resource.get("recurrence"))


@dataclass(slots=True, kw_only=True)
class _Calendar(_base.EventStore[_Record]):
    id: str
    time_zone: str
    tz: ZoneInfo
    summary: str
    resource_id: str
    updated: str = ""
    default_reminders: list[dict[str, Any]] = field(default_factory=list)
    #: ``creator`` and ``organizer`` of the events it creates (one object, shared)
    owner: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _RefreshGrant:
    token: str
    client_id: str
    calendar_ids: list[str] | None
    scope: str
    account: str
    revoked: bool = False
    #: the user who consented (authorization-code grants); None for issued grants
    user: str | None = None


@dataclass(frozen=True, slots=True)
class _Point:
    all_day: bool
    day: date | None
    instant: datetime
    tz: ZoneInfo | None


@dataclass(frozen=True, slots=True)
class _Slot:
    suffix: str | None
    original: dict[str, Any]
    start: dict[str, Any]
    end: dict[str, Any]
    start_utc: datetime
    end_utc: datetime


@dataclass(frozen=True, slots=True)
class _Query:
    calendar_id: str
    since: int | None
    walk_seq: int
    epoch: int
    time_min: str | None = None
    time_max: str | None = None
    single_events: bool = False
    show_deleted: bool = False
    order_by: str | None = None
    q: str | None = None
    ical_uid: str | None = None
    updated_min: str | None = None
    private_props: tuple[str, ...] = ()
    shared_props: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> _Query:
        values = dict(raw)
        for name in ("private_props", "shared_props", "event_types"):
            values[name] = tuple(values.get(name) or ())
        return cls(**values)


@dataclass(frozen=True, slots=True)
class _Listing:
    """One cached events.list walk: every item in page-key order.

    Valid while the calendar's change sequence is ``seq`` and, when ``now`` is
    set (open-ended recurring expansion depends on the clock), the clock reads
    ``now``. Items are the stored resources themselves (never mutated in place
    without bumping ``seq``), serialized straight into a response."""

    seq: int
    now: float | None
    keys: list[tuple[str, ...]]
    items: list[EventResource]


@dataclass(slots=True)
class _PushJob:
    channel: Channel
    state: str
    number: int


# --------------------------------------------------------------------------- time helpers


def _rfc3339_ms(ts: float) -> str:
    dt = datetime.fromtimestamp(ts, UTC)
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T"
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}.{dt.microsecond // 1000:03d}Z"
    )


def _parse_rfc3339(value: str, name: str) -> datetime:
    """An RFC 3339 timestamp with a mandatory offset, as query parameters need."""
    try:
        dt = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError:
        raise _invalid(f"Invalid value for: {name}", name) from None
    if dt.tzinfo is None:
        raise _invalid(f"Invalid value for: {name}", name)
    return dt


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(name) from None


def _parse_point(value: Any, which: str, cal_tz: ZoneInfo) -> _Point:
    """Parse an ``EventDateTime``; raises the 400s Google answers for bad ones."""
    if not isinstance(value, Mapping):
        raise _required(f"Missing {which} time.")
    has_date = value.get("date") is not None
    has_dt = value.get("dateTime") is not None
    if has_date == has_dt:
        raise _invalid(f"Invalid {which} time.")
    tz: ZoneInfo | None = None
    tz_name = value.get("timeZone")
    if tz_name is not None:
        if not isinstance(tz_name, str):
            raise _invalid(f"Invalid time zone definition for {which} time.")
        try:
            tz = _zone(tz_name)
        except ValueError:
            raise _invalid(f"Invalid time zone definition for {which} time.") from None
    if has_date:
        raw = value["date"]
        try:
            day = date.fromisoformat(raw) if isinstance(raw, str) and len(raw) == 10 else None
        except ValueError:
            day = None
        if day is None:
            raise _invalid(f"Invalid {which} time.")
        return _Point(True, day, datetime.combine(day, dtime(), cal_tz), tz)
    raw = value["dateTime"]
    try:
        dt = datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        dt = None
    if dt is None:
        raise _invalid(f"Invalid {which} time.")
    if dt.tzinfo is None:
        if tz is None:
            raise _invalid(f"Missing time zone definition for {which} time.")
        dt = dt.replace(tzinfo=tz)
    return _Point(False, None, dt, tz)


def _copy_mapping(value: Any) -> dict[str, Any]:
    if not value:
        return {}
    return _jcopy(value if type(value) is dict else dict(value))


def _timing_of(event: Mapping[str, Any]) -> _Timing:
    recurrence = event.get("recurrence")
    return _Timing(
        _copy_mapping(event.get("start")),
        _copy_mapping(event.get("end")),
        tuple([str(line) for line in recurrence]) if recurrence else (),
    )


_UNTIL_RE: Final = re.compile(r"UNTIL=(\d{8})(?:T(\d{6}))?(Z?)", re.IGNORECASE)


def _normalize_until(rules: str, tz: ZoneInfo | None) -> str:
    """Make UNTIL comparable with DTSTART, as dateutil insists.

    All-day series (``tz`` None, naive DTSTART) get a floating end-of-day UNTIL;
    timed series (aware DTSTART) get a UTC UNTIL, reading a floating one in ``tz``.
    """

    def fix(match: re.Match[str]) -> str:
        day = datetime.strptime(match.group(1), "%Y%m%d")
        clock = match.group(2)
        if tz is None:
            return f"UNTIL={day:%Y%m%d}T235959"
        if match.group(3):
            return match.group(0)
        local = (
            datetime.strptime(match.group(1) + clock, "%Y%m%d%H%M%S")
            if clock
            else day.replace(hour=23, minute=59, second=59)
        )
        return f"UNTIL={local.replace(tzinfo=tz).astimezone(UTC):%Y%m%dT%H%M%SZ}"

    return _UNTIL_RE.sub(fix, rules)


def _event_dt(dt: datetime, tz_name: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"dateTime": dt.replace(microsecond=0).isoformat()}
    if tz_name is not None:
        out["timeZone"] = tz_name
    return out


def _expand(
    timing: _Timing,
    cal_tz: ZoneInfo,
    lower: datetime | None,
    upper: datetime | None,
    now: datetime,
) -> list[_Slot]:
    """Occurrences of ``timing`` that overlap (lower, upper): end > lower, start < upper.

    A single event yields itself (suffix None). A series is expanded with
    dateutil in its start ``timeZone``; with no upper bound it stops two years
    after the later of its start, now and ``lower``, so infinite rules end.
    """
    start = _parse_point(timing.start, "start", cal_tz)
    end = _parse_point(timing.end, "end", cal_tz)
    if not timing.recurrence:
        if (lower is None or end.instant > lower) and (upper is None or start.instant < upper):
            return [
                _Slot(
                    None,
                    dict(timing.start),
                    dict(timing.start),
                    dict(timing.end),
                    start.instant.astimezone(UTC),
                    end.instant.astimezone(UTC),
                )
            ]
        return []
    horizon = upper
    if horizon is None:
        base = max(start.instant, now, lower) if lower is not None else max(start.instant, now)
        horizon = base + _EXPANSION_HORIZON
    rules = "\n".join(timing.recurrence)
    slots: list[_Slot] = []
    if start.all_day:
        assert start.day is not None and end.day is not None
        days = end.day - start.day
        rset = rrulestr(
            _normalize_until(rules, None),
            dtstart=datetime.combine(start.day, dtime()),
            forceset=True,
            unfold=True,
        )
    else:
        tz = start.tz
        if tz is None:
            raise _invalid("Missing time zone definition for start time.")
        first = start.instant.astimezone(tz)
        duration = end.instant.astimezone(tz).replace(tzinfo=None) - first.replace(tzinfo=None)
        rset = rrulestr(_normalize_until(rules, tz), dtstart=first, forceset=True, unfold=True)
    for n, occ in enumerate(rset):
        if n >= _MAX_RRULE_ITERATIONS:
            break
        if start.all_day:
            day = occ.date()
            s = datetime.combine(day, dtime(), cal_tz)
            e = datetime.combine(day + days, dtime(), cal_tz)
            suffix = f"{day:%Y%m%d}"
            s_repr: dict[str, Any] = {"date": day.isoformat()}
            e_repr: dict[str, Any] = {"date": (day + days).isoformat()}
        else:
            local = occ.astimezone(tz) if occ.tzinfo is not None else occ.replace(tzinfo=tz)
            s = local
            e = (local.replace(tzinfo=None) + duration).replace(tzinfo=tz)
            suffix = f"{s.astimezone(UTC):%Y%m%dT%H%M%SZ}"
            tz_name = timing.start.get("timeZone")
            s_repr = _event_dt(s, tz_name)
            e_repr = _event_dt(e, timing.end.get("timeZone", tz_name))
        if s >= horizon:
            break
        if lower is not None and e <= lower:
            continue
        slots.append(
            _Slot(suffix, dict(s_repr), s_repr, e_repr, s.astimezone(UTC), e.astimezone(UTC))
        )
    return slots


def _overlaps(
    start: datetime, end: datetime, lower: datetime | None, upper: datetime | None
) -> bool:
    return (lower is None or end > lower) and (upper is None or start < upper)


def _tombstone(resource: Mapping[str, Any]) -> EventResource:
    out: EventResource = {
        "kind": "calendar#event",
        "etag": resource.get("etag", '"0"'),
        "id": resource.get("id"),
        "status": "cancelled",
    }
    for key in ("recurringEventId", "originalStartTime"):
        if key in resource:
            out[key] = _jcopy(resource[key])
    return out


#: an event's ``reminders`` when it sets none (shared by those events: never changed in place)
_DEFAULT_REMINDERS: Final[dict[str, Any]] = {"useDefault": True}


def _canonical(event: Mapping[str, Any]) -> EventResource:
    return _base.canonical(event, _CANONICAL_ORDER)


def _bool_param(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if raw.lower() == "true":
        return True
    if raw.lower() == "false":
        return False
    raise _invalid(f"Invalid value for: {name}", name)


async def _json_object(request: web.Request) -> dict[str, Any]:
    return await _base.read_json_object(request, _parse_error)


# --------------------------------------------------------------------------- the emulator

CONTROL_ROUTES: Final[tuple[tuple[str, str, str], ...]] = (
    ("GET", "/_emulator/health", "liveness: {ok, base_url, api_url, token_url}"),
    ("POST", "/_emulator/calendars", "{calendar_id, time_zone?, summary?} -> 201"),
    (
        "POST",
        "/_emulator/refresh_tokens",
        "{client_id, calendar_ids?} -> 201 {refresh_token, account}",
    ),
    ("POST", "/_emulator/refresh_tokens/revoke", "{refresh_token} -> 204"),
    ("POST", "/_emulator/calendars/{cal}/events", "insert; ?notify=false -> 201 event"),
    (
        "POST",
        "/_emulator/calendars/{cal}/events/bulk",
        "{events: [...]}; ?notify=true for one push -> 201 {ids}",
    ),
    (
        "POST",
        "/_emulator/calendars/{cal}/events/{id}/corrupt",
        "raw resource, stored unvalidated; ?notify=false -> 200 stored resource",
    ),
    ("PATCH", "/_emulator/calendars/{cal}/events/{id}", "patch; ?notify=false -> 200 event"),
    ("DELETE", "/_emulator/calendars/{cal}/events/{id}", "delete; ?notify=false -> 204"),
    ("POST", "/_emulator/calendars/{cal}/invalidate_sync_tokens", "-> 204"),
    ("GET", "/_emulator/channels", "-> [channel]"),
    *_base.SHARED_CONTROL_ROUTES,
)
"""Every control route: (method, path, contract). Not part of Google's API."""


_NO_STORE: Final = {"Cache-Control": "no-cache, no-store, max-age=0, must-revalidate"}


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response(
        {"error": error, "error_description": description}, status=status, headers=_NO_STORE
    )


def _auth_page(status: int, title: str, detail: str) -> web.Response:
    return web.Response(
        text=_oauth.error_page(title, detail), status=status, content_type="text/html"
    )


@dataclass(frozen=True, slots=True)
class _ServiceAccount:
    email: str
    client_id: str
    public_key: Any  # an RSA public key (cryptography)
    delegated_scopes: frozenset[str]


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


_LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "[::1]"})


def _redirect_allowed(redirect_uri: str, registered: set[str]) -> bool:
    """Byte-identical to a registered URI; or, for a desktop client's loopback URI
    (``http://127.0.0.1``/``localhost`` registered without a port), the same host on any
    port (RFC 8252 §7.3)."""
    if redirect_uri in registered:
        return True
    parts = urlsplit(redirect_uri)
    host = parts.netloc.rsplit(":", 1)[0] if parts.port else parts.netloc
    return (
        parts.scheme == "http"
        and host in _LOOPBACK_HOSTS
        and parts.path in ("", "/")
        and not parts.query
        and f"http://{host}" in registered
    )


def _with_query(url: str, params: Mapping[str, str]) -> str:
    return url + ("&" if "?" in url else "?") + urlencode(params)


class GoogleEmulator(_base.BaseEmulator[_RefreshGrant, GoogleApiError, _PushJob]):
    """Google Calendar API v3 + OAuth token endpoint, served on 127.0.0.1.

    Use as ``async with GoogleEmulator() as emu:`` (starts on a free port) or
    ``await emu.start(host, port)`` / ``await emu.aclose()``. Control methods
    (``add_calendar``, ``insert_event``, ...) are plain synchronous calls meant
    for the loop that runs the server; each is also reachable over HTTP under
    ``/_emulator`` (see ``CONTROL_ROUTES``) for a separate process.

    ``clock`` (seconds since the epoch) drives ``updated`` stamps, token and
    channel expiry; :meth:`advance_clock` shifts it. ``seed`` makes ids, message
    number gaps and faults reproducible. ``max_channel_ttl`` clamps channel
    lifetimes (seconds). ``reject_show_deleted_false_with_sync_token`` picks the
    unverified behaviour of ``syncToken`` + ``showDeleted=false`` (400 when true,
    else ignored). ``push_retry_delays`` are the waits before each retry of a
    push answered 500/502/503/504.
    """

    API_PREFIX = API_PREFIX
    GRANT_SCOPE_FIELD = "calendar_ids"
    error_type = GoogleApiError

    def __init__(
        self,
        *,
        page_size_default: int = 250,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
        max_channel_ttl: float = DEFAULT_CHANNEL_TTL,
        reject_show_deleted_false_with_sync_token: bool = True,
        push_retry_delays: Sequence[float] = (0.05, 0.2, 0.5),
        push_timeout: float = 10.0,
    ) -> None:
        if not 1 <= page_size_default <= MAX_RESULTS_LIMIT:
            raise ValueError("page_size_default must be within [1, 2500]")
        super().__init__(
            faults=FaultInjector(_FAULT_KINDS, _fault_response, seed),
            clock=clock,
            seed=seed,
            push_retry_delays=push_retry_delays,
            push_timeout=push_timeout,
        )
        self.page_size_default = page_size_default
        self.max_channel_ttl = max_channel_ttl
        self.reject_show_deleted_false_with_sync_token = reject_show_deleted_false_with_sync_token
        self.channels: dict[str, Channel] = {}
        self.delivery_log: list[DeliveryRecord] = []
        self._calendars: dict[str, _Calendar] = {}
        self._listings: _base.ListingCache[_Query, _Listing] = _base.ListingCache(
            _LISTING_CACHE_SIZE
        )
        self._stamp: tuple[float, str] = (math.nan, "")
        self._owners: dict[str, str] = {}
        self._codes: dict[str, _oauth.AuthCode] = {}
        self._service_accounts: dict[str, _ServiceAccount] = {}
        #: (service account, impersonated user) of every token minted by assertion
        self.impersonations: list[tuple[str, str]] = []
        #: refuse ``code_challenge_method=plain`` (and a missing method, which means plain)
        self.reject_plain_pkce = False

    # ----------------------------------------------------------------- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0 = a free port) and return ``base_url``.

        Raises RuntimeError when already started or closed.
        """
        self._check_startable()
        bound = await self._serve(self._api_app(), host, port)
        self._base_url = f"http://{self._shown_host(host)}:{bound}"
        self._open_session()
        return self._base_url

    @property
    def api_url(self) -> str:
        """``base_url + "/calendar/v3"`` (what ``CALSYNC_GOOGLE_API_URL`` is set to)."""
        return self.base_url + API_PREFIX

    @property
    def token_url(self) -> str:
        """``base_url + "/token"`` (what ``CALSYNC_GOOGLE_TOKEN_URL`` is set to)."""
        return self.base_url + TOKEN_PATH

    @property
    def auth_url(self) -> str:
        """``base_url + "/o/oauth2/v2/auth"`` (what ``CALSYNC_GOOGLE_AUTH_URL`` is set to)."""
        return self.base_url + AUTH_PATH

    # ----------------------------------------------------------------- control: identity

    def add_calendar(
        self,
        calendar_id: str,
        *,
        time_zone: str = "UTC",
        summary: str | None = None,
        owner: str | None = None,
    ) -> None:
        """Create an empty calendar. 409 duplicate if it exists; 400 on a bad zone.

        ``owner`` is the user whose calendar list shows it (default: the calendar id,
        which is then that user's primary calendar)."""
        if calendar_id in self._calendars:
            raise _duplicate()
        try:
            tz = _zone(time_zone)
        except ValueError:
            raise _invalid("Invalid time zone definition.", "timeZone") from None
        resource_id = (
            base64.urlsafe_b64encode(
                hmac.new(self._secret, calendar_id.encode(), hashlib.sha256).digest()[:18]
            )
            .decode()
            .rstrip("=")
        )
        self._calendars[calendar_id] = _Calendar(
            id=calendar_id,
            time_zone=time_zone,
            tz=tz,
            summary=summary if summary is not None else calendar_id,
            resource_id=resource_id,
            updated=_rfc3339_ms(self.now()),
        )
        self._owners[calendar_id] = owner or calendar_id

    def issue_refresh_token(self, client_id: str, calendar_ids: list[str] | None = None) -> str:
        """A new refresh token for ``client_id``, covering ``calendar_ids`` (None = all).

        Raises KeyError for an unknown client.
        """
        self._check_client(client_id)
        token = "1//emu-" + secrets.token_urlsafe(30)
        ids = None if calendar_ids is None else list(calendar_ids)
        account = self._account_for(token)
        self._refresh[token] = _RefreshGrant(token, client_id, ids, DEFAULT_SCOPE, account)
        return token

    def revoke_refresh_token(self, refresh_token: str) -> None:
        """Revoke the grant: refreshes answer invalid_grant, its access tokens 401."""
        grant = self._refresh.get(refresh_token)
        if grant is not None:
            grant.revoked = True

    def calendars_of(self, user: str) -> list[str]:
        """The ids of the calendars ``user`` owns (their calendar list), primary first."""
        owned = [cid for cid, owner in self._owners.items() if owner == user]
        return sorted(owned, key=lambda cid: (cid != user, cid))

    def create_service_account(
        self, email: str, *, delegated_scopes: Sequence[str] = (READONLY_SCOPE,)
    ) -> dict[str, str]:
        """A service account with a new RSA key, allowed domain-wide delegation for
        ``delegated_scopes`` (the admin console's list); returns its JSON key (the
        ``info`` google-auth reads)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        client_id = str(10**20 + self._rng.getrandbits(60))
        key_id = secrets.token_hex(20)
        self._service_accounts[email] = _ServiceAccount(
            email, client_id, key.public_key(), frozenset(delegated_scopes)
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return {
            "type": "service_account",
            "project_id": "emulator",
            "private_key_id": key_id,
            "private_key": pem,
            "client_email": email,
            "client_id": client_id,
            "token_uri": self.token_url,
        }

    def grants_of(self, user: str) -> list[str]:
        """The refresh tokens ``user`` granted through the consent page, oldest first."""
        return [t for t, g in self._refresh.items() if g.user == user]

    # ----------------------------------------------------------------- control: events

    def _calendar(self, calendar_id: str) -> _Calendar:
        cal = self._calendars.get(calendar_id)
        if cal is None:
            raise _not_found()
        return cal

    def _new_id(self) -> str:
        # 26 base32hex characters from 130 seeded random bits, two characters at a time.
        bits = self._rng.getrandbits(130)
        return "".join([_BASE32HEX_PAIRS[(bits >> shift) & 1023] for shift in _PAIR_SHIFTS])

    def _etag(self, seq: int, now: float | None = None) -> str:
        return f'"{int((self.now() if now is None else now) * 1000)}{seq:06d}"'

    def _stamp_at(self, now: float) -> str:
        """``_rfc3339_ms(now)``, memoized for the last instant (bulk inserts share it)."""
        last, text = self._stamp
        if last != now:
            text = _rfc3339_ms(now)
            self._stamp = (now, text)
        return text

    def _bump(self, cal: _Calendar, now: float | None = None) -> int:
        seq = cal.bump()
        cal.updated = self._stamp_at(self.now() if now is None else now)
        return seq

    def _validate_event(self, event: Mapping[str, Any], cal: _Calendar) -> None:
        """Raise the 400 Google answers for ``event``, if any."""
        if "start" not in event or event.get("start") is None:
            raise _required("Missing start time.")
        if "end" not in event or event.get("end") is None:
            raise _required("Missing end time.")
        start = _parse_point(event["start"], "start", cal.tz)
        end = _parse_point(event["end"], "end", cal.tz)
        if start.all_day != end.all_day:
            raise _invalid("Start and end times must either both be date or both be dateTime.")
        if end.instant < start.instant or (start.all_day and end.instant == start.instant):
            raise _time_range_empty()
        status = event.get("status", "confirmed")
        if status not in _EVENT_STATUSES:
            raise _invalid("Invalid value for: status", "status")
        transparency = event.get("transparency")
        if transparency is not None and transparency not in _TRANSPARENCIES:
            raise _invalid("Invalid value for: transparency", "transparency")
        recurrence = event.get("recurrence")
        if recurrence:
            if not isinstance(recurrence, list) or not all(
                isinstance(line, str)
                and line.split(":", 1)[0].split(";", 1)[0].upper()
                in ("RRULE", "EXRULE", "RDATE", "EXDATE")
                for line in recurrence
            ):
                raise _invalid("Invalid recurrence rule.")
            if not start.all_day and start.tz is None:
                raise _invalid("Missing time zone definition for start time.")
            try:
                _expand(
                    _timing_of(event),
                    cal.tz,
                    None,
                    start.instant + timedelta(days=1),
                    start.instant,
                )
            except GoogleApiError:
                raise
            except Exception:
                raise _invalid("Invalid recurrence rule.") from None

    def insert_event(
        self, calendar_id: str, event: Mapping[str, Any], *, notify: bool = True
    ) -> EventResource:
        """Store a new event and return its resource (as events.insert answers).

        Assigns ``id`` (base32hex) unless given, ``etag``, ``created``/``updated``,
        ``sequence`` 0, ``iCalUID``, ``eventType`` "default", organizer/creator =
        the calendar. Raises 404 (calendar), 409 (id taken), 400 (bad times, id,
        status, recurrence). ``notify=False`` skips push messages (the change is
        still visible to incremental sync).
        """
        cal = self._calendar(calendar_id)
        rec = self._insert(cal, event, self.now())
        if notify:
            self._notify(cal)
        return _jcopy(rec.resource)

    def insert_events(
        self, calendar_id: str, events: Iterable[Mapping[str, Any]], *, notify: bool = False
    ) -> list[EventResource]:
        """:meth:`insert_event` for many events at once; returns their resources in order.

        One change-sequence step per event, all stamped with the same instant.
        ``notify=True`` queues a single push for the whole batch (Google sends one
        message per change batch). Not atomic: when an event is rejected the
        error is raised and the events before it stay inserted (and pushed, with
        ``notify``).
        """
        cal = self._calendar(calendar_id)
        now = self.now()
        out: list[EventResource] = []
        try:
            for event in events:
                out.append(_jcopy(self._insert(cal, event, now).resource))
        finally:
            if notify and out:
                self._notify(cal)
        return out

    def _insert(self, cal: _Calendar, event: Mapping[str, Any], now: float) -> _Record:
        if not isinstance(event, Mapping):
            raise _parse_error()
        ev = _copy_mapping(event)
        event_id = ev.get("id")
        if event_id is None:
            event_id = self._new_id()
            while event_id in cal.events:
                event_id = self._new_id()
        elif not isinstance(event_id, str) or not _EVENT_ID_RE.match(event_id):
            raise _invalid("Invalid resource id value.", "id")
        if event_id in cal.events:
            raise _duplicate()
        self._validate_event(ev, cal)
        seq = self._bump(cal, now)
        stamp = self._stamp_at(now)
        for key in ("recurringEventId", "originalStartTime"):
            ev.pop(key, None)
        ev.update(
            kind="calendar#event",
            etag=self._etag(seq, now),
            id=event_id,
            status=ev.get("status", "confirmed"),
            created=stamp,
            updated=stamp,
        )
        self._server_defaults(ev, cal, event_id)
        if not ev.get("recurrence"):
            ev.pop("recurrence", None)
        ev = _canonical(ev)
        rec = _Record(ev, seq, [(seq, _timing_of(ev))])
        cal.events[event_id] = rec
        return rec

    @staticmethod
    def _server_defaults(ev: EventResource, cal: _Calendar, event_id: str) -> None:
        eid = base64.b64encode(f"{event_id} {cal.id}".encode()).decode().rstrip("=")
        ev.setdefault("htmlLink", f"https://www.google.com/calendar/event?eid={eid}")
        # Shared, not copied: a stored resource is a value (every change replaces it
        # or its top-level keys; reads hand out copies), so its events can share the
        # defaults, which at 10,000 calendars saves about a fifth of the memory.
        if not cal.owner:
            cal.owner = {"email": cal.id, "self": True}
        ev.setdefault("creator", cal.owner)
        ev.setdefault("organizer", cal.owner)
        ev.setdefault("iCalUID", f"{event_id}@google.com")
        ev.setdefault("sequence", 0)
        ev.setdefault("reminders", _DEFAULT_REMINDERS)
        ev.setdefault("eventType", "default")

    def corrupt_event(
        self,
        calendar_id: str,
        event_id: str,
        raw: Mapping[str, Any],
        *,
        notify: bool = True,
    ) -> None:
        """Store ``{"id": event_id, **raw}`` as the event's resource, unvalidated.

        Simulates a provider bug (``{"start": {"dateTime": "garbage"}}``, an
        unknown ``timeZone``, a missing ``end``, ...). Nothing is added: no
        ``kind``, ``etag`` nor ``updated`` unless ``raw`` has them. ``raw`` must
        be JSON-serializable (TypeError/ValueError otherwise); it is copied.
        Creates the event when ``event_id`` is unknown. 404 for an unknown
        calendar.

        The change is a normal change: it bumps the change sequence (so the item
        comes back from incremental sync, as a tombstone if ``raw`` says
        ``"status": "cancelled"``) and pushes unless ``notify=False``. Listings
        never try to read its timing: it is in every ``timeMin``/``timeMax``
        window, sorts last under ``orderBy=startTime``, is returned as stored
        even with ``singleEvents=true`` (no instances, its instance exceptions
        are not listed while it is corrupt; its instance ids answer 404), and a
        content filter (``q``, extended properties, ...) that cannot be
        evaluated on it lets it through.

        ``get_event`` returns it as stored. ``delete_event`` works (cancels it;
        the tombstone keeps ``raw``'s fields). ``patch_event`` merges the changes
        over ``raw``, re-adds the server-set fields and validates the result as
        usual: a patch that supplies valid values for the broken fields repairs
        the event; one that leaves them broken answers 400 and changes nothing.
        """
        cal = self._calendar(calendar_id)
        stored = _base.raw_resource(event_id, raw)
        rec = cal.upsert(event_id, stored, self._bump(cal), lambda r: _Record(r, 0, []))
        rec.corrupt = True
        if notify:
            self._notify(cal)

    def patch_event(
        self,
        calendar_id: str,
        event_id: str,
        changes: Mapping[str, Any],
        *,
        notify: bool = True,
    ) -> EventResource:
        """Apply ``changes`` (top-level replace; a ``None`` value removes the field).

        ``event_id`` may name an instance (``<seriesId>_<suffix>``): the change is
        kept as an exception of that instance. ``status: "confirmed"`` restores a
        deleted event. Bumps ``sequence`` when start, end or recurrence change.
        Read-only fields (id, etag, iCalUID, ...) are ignored; changing
        ``eventType`` answers 400. Raises 404 for unknown calendars/events.
        On an event broken by :meth:`corrupt_event` the merged result gets the
        server-set fields back and must validate (that repairs it), else 400.
        """
        cal = self._calendar(calendar_id)
        if not isinstance(changes, Mapping):
            raise _parse_error()
        rec = cal.events.get(event_id)
        if rec is None:
            master, slot = self._find_instance(cal, event_id)
            return self._change_instance(cal, master, slot, changes, notify=notify)
        now = self.now()
        new = _jcopy(rec.resource)
        if "eventType" in changes and changes["eventType"] != new.get("eventType", "default"):
            raise _invalid("Event type cannot be changed.", "eventType")
        _base.merge_changes(new, changes, _READ_ONLY_KEYS)
        if rec.corrupt:
            for key in ("recurringEventId", "originalStartTime"):
                new.pop(key, None)
            new["kind"] = "calendar#event"
            new["id"] = event_id
            new.setdefault("status", "confirmed")
            if not isinstance(new.get("created"), str):
                new["created"] = self._stamp_at(now)
            if type(new.get("sequence")) is not int:
                new["sequence"] = 0
            self._server_defaults(new, cal, event_id)
        self._validate_event(new, cal)
        old_timing = rec.history[-1][1] if rec.history else None
        timing = _timing_of(new)
        if timing != old_timing and "sequence" not in changes:
            new["sequence"] = int(new.get("sequence", 0)) + 1
        seq = self._bump(cal, now)
        new["updated"] = self._stamp_at(now)
        new["etag"] = self._etag(seq, now)
        if not new.get("recurrence"):
            new.pop("recurrence", None)
        rec.resource = _canonical(new)
        rec.change_seq = seq
        rec.corrupt = False
        if timing != old_timing:
            rec.history.append((seq, timing))
        if notify:
            self._notify(cal)
        return _jcopy(rec.resource)

    def delete_event(self, calendar_id: str, event_id: str, *, notify: bool = True) -> None:
        """Cancel the event (or one instance of a series).

        The event becomes a ``{"id", "status": "cancelled"}`` tombstone for
        incremental sync (an instance tombstone also carries ``recurringEventId``
        and ``originalStartTime``). Raises 404 unknown, 410 ``deleted`` if already
        cancelled.
        """
        cal = self._calendar(calendar_id)
        rec = cal.events.get(event_id)
        if rec is None:
            master, slot = self._find_instance(cal, event_id)
            self._change_instance(cal, master, slot, {"status": "cancelled"}, notify=notify)
            return
        if rec.cancelled:
            raise _deleted()
        now = self.now()
        seq = self._bump(cal, now)
        rec.resource["status"] = "cancelled"
        rec.resource["updated"] = self._stamp_at(now)
        rec.resource["etag"] = self._etag(seq, now)
        rec.change_seq = seq
        if notify:
            self._notify(cal)

    def get_event(self, calendar_id: str, event_id: str) -> EventResource:
        """The event or instance as events.get answers it (cancelled ones too)."""
        cal = self._calendar(calendar_id)
        rec = cal.events.get(event_id)
        if rec is not None:
            return _jcopy(rec.resource)
        master, slot = self._find_instance(cal, event_id)
        return self._instance(master, slot)

    def list_live_events(self, calendar_id: str) -> list[EventResource]:
        """The calendar's live events as a full ``singleEvents=true`` listing shows them.

        Not cancelled; series as instances (open-ended ones up to two years
        ahead); items stored by :meth:`corrupt_event` as stored; in page order
        (by id); copies. 404 for an unknown calendar.
        """
        cal = self._calendar(calendar_id)
        query = _Query(
            calendar_id=cal.id, since=None, walk_seq=cal.seq, epoch=cal.epoch, single_events=True
        )
        return [_jcopy(item) for item in self._listing(cal, query).items]

    def invalidate_sync_tokens(self, calendar_id: str) -> None:
        """Every sync token of the calendar minted so far now answers 410."""
        self._calendar(calendar_id).epoch += 1

    def _find_instance(self, cal: _Calendar, instance_id: str) -> tuple[_Record, _Slot]:
        series_id, sep, suffix = instance_id.rpartition("_")
        master = cal.events.get(series_id) if sep else None
        if master is None or master.corrupt or not master.recurring:
            raise _not_found()
        try:
            if len(suffix) == 8:
                target = datetime.combine(
                    datetime.strptime(suffix, "%Y%m%d").date(), dtime(), cal.tz
                )
            else:
                target = datetime.strptime(suffix, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise _not_found() from None
        timing = master.history[-1][1]
        lower = target - timedelta(seconds=1)
        for slot in _expand(timing, cal.tz, lower, target + timedelta(seconds=1), self._now_dt()):
            if slot.suffix == suffix:
                return master, slot
        raise _not_found()

    def _change_instance(
        self,
        cal: _Calendar,
        master: _Record,
        slot: _Slot,
        changes: Mapping[str, Any],
        *,
        notify: bool,
    ) -> EventResource:
        if master.cancelled:
            raise _deleted()
        instance_id = f"{master.resource['id']}_{slot.suffix}"
        override = master.overrides.get(instance_id)
        delta = _jcopy(override.delta) if override is not None else {}
        if changes.get("status") == "cancelled" and delta.get("status") == "cancelled":
            raise _deleted()
        _base.merge_changes(delta, changes, (*_READ_ONLY_KEYS, "recurrence"))
        effective = self._instance(master, slot, _Override(delta, 0, "", ""))
        self._validate_event(effective, cal)
        seq = self._bump(cal)
        master.overrides[instance_id] = _Override(
            delta, seq, _rfc3339_ms(self.now()), self._etag(seq)
        )
        if notify:
            self._notify(cal)
        return self._instance(master, slot)

    def _instance(
        self, master: _Record, slot: _Slot, override: _Override | None = None
    ) -> EventResource:
        m = master.resource
        series_id = m["id"]
        instance_id = f"{series_id}_{slot.suffix}"
        if override is None:
            override = master.overrides.get(instance_id)
        inst: EventResource = {
            k: _jcopy(v) for k, v in m.items() if k not in ("recurrence", "start", "end")
        }
        inst["id"] = instance_id
        inst["start"] = _jcopy(slot.start)
        inst["end"] = _jcopy(slot.end)
        inst["recurringEventId"] = series_id
        inst["originalStartTime"] = _jcopy(slot.original)
        if override is not None:
            inst.update(_jcopy(override.delta))
            if override.updated and override.updated > inst.get("updated", ""):
                inst["updated"] = override.updated
                inst["etag"] = override.etag
        return _canonical(inst)

    # ----------------------------------------------------------------- pushes

    def _notify(self, cal: _Calendar) -> None:
        """Queue an ``exists`` message on every live channel of ``cal``."""
        now_ms = int(self.now() * 1000)
        for channel in list(self.channels.values()):
            if channel.calendar_id != cal.id:
                continue
            if channel.expiration_ms <= now_ms:
                self._retire(channel)
                continue
            channel.message_number += 1 + self._rng.randint(1, 5)
            self._enqueue(_PushJob(channel, "exists", channel.message_number))

    def _retire(self, channel: Channel) -> None:
        channel.stopped = True
        if self.channels.get(channel.id) is channel:
            del self.channels[channel.id]
        queue = self._push_queues.get(id(channel))
        if queue is not None:
            queue.put_nowait(None)

    def _enqueue(self, job: _PushJob) -> None:
        queue = self._push_queues.get(id(job.channel))
        if queue is None:
            return
        queue.put_nowait(job)

    def _log_delivery(
        self, job: _PushJob, status: int | None, error: str | None, attempt: int = 1
    ) -> None:
        self.delivery_log.append(
            DeliveryRecord(
                job.channel.id, job.number, job.state, status, error, attempt, self.now()
            )
        )

    async def _deliver(self, jobs: list[_PushJob]) -> None:
        (job,) = jobs
        channel = job.channel
        if channel.stopped:
            self._log_delivery(job, None, "channel stopped")
            return
        if channel.expiration_ms <= int(self.now() * 1000):
            self._log_delivery(job, None, "channel expired")
            self._retire(channel)
            return
        if self.faults.should_drop_push():
            self._log_delivery(job, None, "dropped")
            return
        headers = {
            "X-Goog-Channel-ID": channel.id,
            "X-Goog-Message-Number": str(job.number),
            "X-Goog-Resource-ID": channel.resource_id,
            "X-Goog-Resource-State": job.state,
            "X-Goog-Resource-URI": channel.resource_uri,
            "X-Goog-Channel-Expiration": email.utils.formatdate(
                channel.expiration_ms / 1000, usegmt=True
            ),
            "User-Agent": "APIs-Google",
            "Content-Type": "application/json; utf-8",
        }
        if channel.token is not None:
            headers["X-Goog-Channel-Token"] = channel.token
        if self._session is None:
            self._log_delivery(job, None, "emulator closed")
            return
        await self._post_with_retries(
            channel.address,
            b"",
            headers,
            log=lambda status, error, attempt: self._log_delivery(job, status, error, attempt),
            retry=lambda status: status in PUSH_RETRY,
        )

    # ----------------------------------------------------------------- HTTP plumbing

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        api = API_PREFIX
        r = router
        r.add_post(TOKEN_PATH, self._h_token)
        r.add_get(AUTH_PATH, self._h_authorize)
        r.add_post(AUTH_PATH, self._h_consent)
        r.add_get(api + "/users/me/calendarList", self._h_calendar_list)
        r.add_get(api + "/calendars/{calendar_id}/events", self._h_list)
        r.add_post(api + "/calendars/{calendar_id}/events", self._h_insert)
        r.add_post(api + "/calendars/{calendar_id}/events/watch", self._h_watch)
        r.add_get(api + "/calendars/{calendar_id}/events/{event_id}", self._h_get)
        r.add_patch(api + "/calendars/{calendar_id}/events/{event_id}", self._h_patch)
        r.add_delete(api + "/calendars/{calendar_id}/events/{event_id}", self._h_delete)
        r.add_post(api + "/channels/stop", self._h_stop)
        c = _base.CONTROL_PREFIX
        r.add_post(c + "/calendars", self._c_add_calendar)
        r.add_post(c + "/refresh_tokens/revoke", self._c_revoke_refresh)
        r.add_post(c + "/calendars/{calendar_id}/events", self._c_insert)
        r.add_post(c + "/calendars/{calendar_id}/events/bulk", self._c_insert_bulk)
        r.add_post(c + "/calendars/{calendar_id}/events/{event_id}/corrupt", self._c_corrupt)
        r.add_patch(c + "/calendars/{calendar_id}/events/{event_id}", self._c_patch)
        r.add_delete(c + "/calendars/{calendar_id}/events/{event_id}", self._c_delete)
        r.add_post(c + "/calendars/{calendar_id}/invalidate_sync_tokens", self._c_invalidate)
        r.add_get(c + "/channels", self._c_channels)

    def _recorded(self, request: web.Request, is_api: bool) -> bool:
        return is_api or request.path == TOKEN_PATH

    def _explicit_faults(self, request: web.Request) -> bool:
        # a rule whose ``path`` matches /token fails token requests (not a rule without one)
        return request.path == TOKEN_PATH

    def _unrouted(
        self, request: web.Request, exc: web.HTTPException, is_api: bool
    ) -> web.StreamResponse:
        if isinstance(exc, web.HTTPMethodNotAllowed) or request.path == TOKEN_PATH:
            raise exc
        return _error_response(_not_found())

    def _error_response(self, exc: GoogleApiError, request: web.Request) -> web.Response:
        return _error_response(exc)

    def _attribution(self, request: web.Request, is_api: bool) -> tuple[str | None, str | None]:
        if not is_api:
            return None, None
        grant = self._grant_of(request)
        calendar_id = request.match_info.get("calendar_id")
        if (
            calendar_id == "primary"
            and "primary" not in self._calendars
            and grant is not None
            and grant.calendar_ids
        ):
            calendar_id = grant.calendar_ids[0]
        return None if grant is None else grant.account, calendar_id

    def _live_grant(self, request: web.Request) -> _RefreshGrant:
        token = self._bearer(request)
        access = self._access.get(token) if token else None
        if access is None or access.expires_at <= self.now() or access.grant.revoked:
            raise _auth_error()
        return access.grant

    def _authorize(self, request: web.Request, calendar_id: str) -> tuple[_Calendar, _RefreshGrant]:
        grant = self._live_grant(request)
        if calendar_id == "primary" and "primary" not in self._calendars and grant.calendar_ids:
            calendar_id = grant.calendar_ids[0]
        cal = self._calendar(calendar_id)
        if grant.calendar_ids is not None and cal.id not in grant.calendar_ids:
            raise _auth_error()
        return cal, grant

    # ----------------------------------------------------------------- /token

    async def _h_token(self, request: web.Request) -> web.Response:
        form = await _base.TokenForm.read(request)
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        if client_id is None and form.basic is not None:
            client_id, client_secret = form.basic[0], form.basic[1] or None
        grant_type = form.get("grant_type") or ""
        if grant_type == JWT_BEARER:
            return self._jwt_bearer(request, form)
        if grant_type not in ("refresh_token", "authorization_code"):
            return _oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        known_secret = self._clients.get(client_id or "")
        if known_secret is None or client_secret is None or client_secret != known_secret:
            return _oauth_error(401, "invalid_client", "Unauthorized")
        assert client_id is not None
        if grant_type == "authorization_code":
            return self._redeem_code(form, client_id)
        refresh_token = form.get("refresh_token")
        if refresh_token is None:
            return _oauth_error(400, "invalid_request", "Missing required parameter: refresh_token")
        grant = self._refresh.get(refresh_token)
        if grant is None or grant.revoked:
            return _oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
        if grant.client_id != client_id:
            return _oauth_error(401, "unauthorized_client", "Unauthorized")
        return self._token_response(grant, form.get("scope") or grant.scope, None)

    def _jwt_bearer(self, request: web.Request, form: _base.TokenForm) -> web.Response:
        """RFC 7523 with a service account's RS256 assertion: signature by the key of
        ``iss``, ``aud`` this token URL, a lifetime of at most an hour, scopes inside the
        delegation list (else ``unauthorized_client``), ``sub`` a known user."""
        assertion = form.get("assertion") or ""
        parts = assertion.split(".")
        invalid = _oauth_error(400, "invalid_grant", "Invalid JWT Signature.")
        if len(parts) != 3:
            return invalid
        try:
            header = json.loads(_b64decode(parts[0]))
            claims = json.loads(_b64decode(parts[1]))
            signature = _b64decode(parts[2])
        except ValueError:
            return invalid
        if not isinstance(header, dict) or not isinstance(claims, dict):
            return invalid
        account = self._service_accounts.get(str(claims.get("iss")))
        if header.get("alg") != "RS256" or account is None:
            return _oauth_error(401, "invalid_client", "The OAuth client was not found.")
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        try:
            account.public_key.verify(
                signature, f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            return invalid
        now = self.now()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or not isinstance(exp, int):
            return _oauth_error(400, "invalid_grant", "Invalid JWT: missing iat or exp.")
        if exp - iat > 3600 or exp <= now or iat > now + 300:
            return _oauth_error(
                400,
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe. Check your iat and exp values in the JWT claim.",
            )
        audience = f"{request.scheme}://{request.host}{TOKEN_PATH}"
        # google-auth always names Google's token endpoint, as Google expects
        if claims.get("aud") not in (GOOGLE_TOKEN_AUDIENCE, audience, self.token_url):
            return _oauth_error(400, "invalid_grant", "Invalid JWT: aud is not the token URL.")
        scopes = str(claims.get("scope") or "").split()
        if not scopes or not set(scopes) <= account.delegated_scopes:
            return _oauth_error(
                401,
                "unauthorized_client",
                "Client is unauthorized to retrieve access tokens using this method, or "
                "client not authorized for any of the scopes requested.",
            )
        subject = claims.get("sub")
        user = subject if isinstance(subject, str) and subject else account.email
        calendars = self.calendars_of(user)
        if not calendars:
            return _oauth_error(400, "invalid_grant", "Invalid email or User ID")
        grant = _RefreshGrant(
            "",
            account.client_id,
            calendars,
            " ".join(scopes),
            self._account_for(f"{account.email}\x1f{user}"),
            user=user,
        )
        self.impersonations.append((account.email, user))
        return self._token_response(grant, " ".join(scopes), None)

    def _token_response(
        self, grant: _RefreshGrant, scope: str, refresh_token: str | None
    ) -> web.Response:
        access_token = "ya29.emu-" + secrets.token_urlsafe(32)
        self._mint(access_token, grant, ACCESS_TOKEN_LIFETIME)
        body: TokenResponse = {
            "access_token": access_token,
            "expires_in": ACCESS_TOKEN_LIFETIME,
            "scope": scope,
            "token_type": "Bearer",
        }
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
        return web.json_response(body, headers=_NO_STORE)

    def _redeem_code(self, form: _base.TokenForm, client_id: str) -> web.Response:
        """``grant_type=authorization_code``: single-use, unexpired, same client, same
        redirect URI, PKCE verifier matching; else ``invalid_grant`` (400)."""
        raw_code = form.get("code")
        if raw_code is None:
            return _oauth_error(400, "invalid_request", "Missing required parameter: code")
        code = self._codes.pop(raw_code, None)  # single use, whatever happens next
        if code is None or code.expires_at <= self.now():
            return _oauth_error(400, "invalid_grant", "Malformed auth code.")
        if code.client_id != client_id:
            return _oauth_error(400, "invalid_grant", "Unauthorized")
        if form.get("redirect_uri") != code.redirect_uri:
            return _oauth_error(400, "redirect_uri_mismatch", "Bad Request")
        verifier = form.get("code_verifier")
        if not _oauth.pkce_matches(verifier, code.code_challenge, code.code_challenge_method):
            if verifier is None:
                return _oauth_error(400, "invalid_grant", "Missing code verifier.")
            return _oauth_error(400, "invalid_grant", "Invalid code verifier.")
        token = "1//emu-" + secrets.token_urlsafe(30)
        grant = _RefreshGrant(
            token,
            client_id,
            self.calendars_of(code.user),
            code.scope,
            self._account_for(token),
            user=code.user,
        )
        if code.offline:
            self._refresh[token] = grant
        return self._token_response(grant, code.scope, token if code.offline else None)

    # ----------------------------------------------------------------- /o/oauth2/v2/auth

    def _auth_params(self, params: Mapping[str, str]) -> dict[str, str] | web.Response:
        """The checked authorize parameters, or the error page / error redirect."""
        client_id = params.get("client_id", "")
        redirect_uri = params.get("redirect_uri", "")
        if client_id not in self._clients:
            return _auth_page(401, "Error 401: invalid_client", "The OAuth client was not found.")
        if not _redirect_allowed(redirect_uri, self._redirect_uris.get(client_id, set())):
            return _auth_page(
                400,
                "Error 400: redirect_uri_mismatch",
                "You can't sign in to this app because it doesn't comply with Google's "
                "OAuth 2.0 policy.",
            )
        state = params.get("state")

        def refuse(error: str) -> web.Response:
            query = {"error": error, **({"state": state} if state is not None else {})}
            raise web.HTTPFound(_with_query(redirect_uri, query))

        if params.get("response_type") != "code":
            refuse("unsupported_response_type")
        scope = params.get("scope", "")
        if not scope:
            refuse("invalid_scope")
        method = params.get("code_challenge_method") or "plain"
        challenge = params.get("code_challenge")
        if method not in ("plain", "S256") or (
            challenge is not None and not 43 <= len(challenge) <= 128
        ):
            return _auth_page(400, "Error 400: invalid_request", "Invalid code_challenge_method.")
        if challenge is not None and method == "plain" and self.reject_plain_pkce:
            return _auth_page(400, "Error 400: invalid_request", "code_challenge_method=plain.")
        return {
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": state or "",
            "has_state": "1" if state is not None else "",
            "code_challenge": challenge or "",
            "code_challenge_method": method,
            "offline": "1" if params.get("access_type") == "offline" else "",
        }

    async def _h_authorize(self, request: web.Request) -> web.Response:
        checked = self._auth_params(request.query)
        if isinstance(checked, web.Response):
            return checked
        user = request.query.get("login_hint") or next(iter(self._owners.values()), "")
        page = _oauth.consent_page(
            action=AUTH_PATH,
            hidden={"request": self._seal({"t": "authz", **checked})},
            client_id=checked["client_id"],
            scope=checked["scope"],
            user=user,
        )
        return web.Response(text=page, content_type="text/html")

    async def _h_consent(self, request: web.Request) -> web.Response:
        form = await request.post()
        sealed = form.get("request")
        params = self._unseal(sealed, "authz") if isinstance(sealed, str) else None
        if params is None:
            return _auth_page(400, "Error 400: invalid_request", "The request was tampered with.")
        redirect_uri = str(params["redirect_uri"])
        echo = {"state": str(params["state"])} if params.get("has_state") else {}
        if form.get("decision") != "allow":
            raise web.HTTPFound(_with_query(redirect_uri, {"error": "access_denied", **echo}))
        user = str(form.get("user") or "")
        if not self.calendars_of(user):
            return _auth_page(400, "Couldn't find your Google Account", f"No account {user!r}.")
        code = "4/emu-" + secrets.token_urlsafe(32)
        self._codes[code] = _oauth.AuthCode(
            client_id=str(params["client_id"]),
            redirect_uri=redirect_uri,
            scope=str(params["scope"]),
            user=user,
            code_challenge=str(params["code_challenge"]) or None,
            code_challenge_method=str(params["code_challenge_method"]),
            offline=bool(params["offline"]),
            expires_at=self.now() + _oauth.CODE_LIFETIME,
        )
        query = {"code": code, **echo, "scope": str(params["scope"])}
        raise web.HTTPFound(_with_query(redirect_uri, query))

    # ----------------------------------------------------------------- calendarList

    async def _h_calendar_list(self, request: web.Request) -> web.Response:
        """calendarList.list of the grant's user (one page; the emulator's lists are short)."""
        grant = self._live_grant(request)
        ids = grant.calendar_ids if grant.calendar_ids is not None else list(self._calendars)
        items = []
        for calendar_id in ids:
            cal = self._calendars.get(calendar_id)
            if cal is None:
                continue
            item: dict[str, Any] = {
                "kind": "calendar#calendarListEntry",
                "id": cal.id,
                "summary": cal.summary,
                "timeZone": cal.time_zone,
                "accessRole": "owner",
            }
            if grant.user is not None and cal.id == grant.user:
                item["primary"] = True
            items.append(item)
        return web.json_response({"kind": "calendar#calendarList", "items": items})

    # ----------------------------------------------------------------- events.list

    async def _h_list(self, request: web.Request) -> web.Response:
        cal, _ = self._authorize(request, request.match_info["calendar_id"])
        params = request.query
        raw_max = params.get("maxResults")
        if raw_max is None:
            max_results = self.page_size_default
        else:
            try:
                max_results = int(raw_max)
            except ValueError:
                raise _invalid("Invalid value for: maxResults", "maxResults") from None
            if max_results < 1:
                raise _invalid("Invalid value for: maxResults", "maxResults")
            max_results = min(max_results, MAX_RESULTS_LIMIT)
        sync_token = params.get("syncToken")
        page_token = params.get("pageToken")
        show_deleted = _bool_param(request, "showDeleted")
        single_events = _bool_param(request, "singleEvents")
        if sync_token is not None:
            for name in FORBIDDEN_WITH_SYNC_TOKEN:
                if name in params:
                    raise _invalid(
                        f"The parameter {name} cannot be used together with syncToken.", name
                    )
            if show_deleted is False and self.reject_show_deleted_false_with_sync_token:
                raise _invalid(
                    "The parameter showDeleted=false cannot be used together with syncToken.",
                    "showDeleted",
                )
        cursor: tuple[str, ...] | None = None
        if page_token is not None:
            payload = self._unseal(page_token, "page")
            if payload is None or payload.get("q", {}).get("calendar_id") != cal.id:
                raise _invalid("Invalid page token value.", "pageToken")
            query = _Query.from_json(payload["q"])
            cursor = tuple(payload["k"])
            if query.since is not None and query.epoch != cal.epoch:
                raise _full_sync_required()
        elif sync_token is not None:
            payload = self._unseal(sync_token, "sync")
            if payload is None or payload.get("c") != cal.id or payload.get("e") != cal.epoch:
                raise _full_sync_required()
            query = _Query(
                calendar_id=cal.id,
                since=int(payload["s"]),
                walk_seq=cal.seq,
                epoch=cal.epoch,
                time_min=payload.get("tmin"),
                time_max=payload.get("tmax"),
                single_events=bool(payload.get("se")),
                show_deleted=bool(show_deleted),
                event_types=tuple(params.getall("eventTypes", [])),
            )
        else:
            query = self._full_query(request, cal, single_events, show_deleted)
        listing = self._listing(cal, query)
        first = 0 if cursor is None else bisect.bisect_right(listing.keys, cursor)
        end = first + max_results
        page = listing.items[first:end]
        body: dict[str, Any] = {
            "kind": "calendar#events",
            "etag": f'"p{cal.seq:x}{cal.epoch:x}"',
            "summary": cal.summary,
            "description": "",
            "updated": cal.updated,
            "timeZone": cal.time_zone,
            "accessRole": "owner",
            "defaultReminders": copy.deepcopy(cal.default_reminders),
        }
        tz_param = params.get("timeZone")
        if tz_param is not None:
            try:
                _zone(tz_param)
            except ValueError:
                raise _invalid("Invalid value for: timeZone", "timeZone") from None
            body["timeZone"] = tz_param
        if len(listing.items) > end:
            body["nextPageToken"] = self._seal(
                {"t": "page", "q": query.to_json(), "k": list(listing.keys[end - 1])}
            )
        else:
            body["nextSyncToken"] = self._seal(
                {
                    "t": "sync",
                    "c": cal.id,
                    "s": query.walk_seq,
                    "e": query.epoch,
                    "tmin": query.time_min,
                    "tmax": query.time_max,
                    "se": query.single_events,
                }
            )
        # The stored resources themselves: json_response serializes right here.
        body["items"] = page
        return web.json_response(body)

    def _listing(self, cal: _Calendar, query: _Query) -> _Listing:
        """The sorted items of ``query``, from the cache while the calendar is unchanged.

        A walk collects the calendar once and then serves each page by bisecting
        the page key; any change (the calendar's change sequence moves) makes the
        next page collect again, exactly as if nothing were cached.
        """
        key = dataclasses.replace(query, walk_seq=0, epoch=0)
        now = self.now()
        cached = self._listings.get(key)
        if cached is not None and cached.seq == cal.seq and cached.now in (None, now):
            return cached
        items = self._collect(cal, query)
        # Open-ended expansion of a series depends on the clock (horizon = now + 2 years).
        clock_bound = query.time_max is None and any(
            rec.recurring and not rec.corrupt for rec in cal.events.values()
        )
        listing = _Listing(
            cal.seq,
            now if clock_bound else None,
            [k for k, _ in items],
            [resource for _, resource in items],
        )
        return self._listings.put(key, listing)

    def _full_query(
        self,
        request: web.Request,
        cal: _Calendar,
        single_events: bool | None,
        show_deleted: bool | None,
    ) -> _Query:
        params = request.query
        time_min = params.get("timeMin")
        time_max = params.get("timeMax")
        tmin = _parse_rfc3339(time_min, "timeMin") if time_min is not None else None
        tmax = _parse_rfc3339(time_max, "timeMax") if time_max is not None else None
        if tmin is not None and tmax is not None and tmin >= tmax:
            raise _time_range_empty()
        order_by = params.get("orderBy")
        if order_by is not None:
            if order_by not in ("startTime", "updated"):
                raise _invalid("Invalid value for: orderBy", "orderBy")
            if order_by == "startTime" and not single_events:
                raise _invalid(
                    "The requested ordering is not available for the particular query.",
                    "orderBy",
                )
        updated_min = params.get("updatedMin")
        if updated_min is not None:
            _parse_rfc3339(updated_min, "updatedMin")
        for name in ("privateExtendedProperty", "sharedExtendedProperty"):
            for constraint in params.getall(name, []):
                if "=" not in constraint:
                    raise _invalid(f"Invalid value for: {name}", name)
        return _Query(
            calendar_id=cal.id,
            since=None,
            walk_seq=cal.seq,
            epoch=cal.epoch,
            time_min=time_min,
            time_max=time_max,
            single_events=bool(single_events),
            show_deleted=bool(show_deleted),
            order_by=order_by,
            q=params.get("q"),
            ical_uid=params.get("iCalUID"),
            updated_min=updated_min,
            private_props=tuple(params.getall("privateExtendedProperty", [])),
            shared_props=tuple(params.getall("sharedExtendedProperty", [])),
            event_types=tuple(params.getall("eventTypes", [])),
        )

    def _collect(
        self, cal: _Calendar, query: _Query
    ) -> list[tuple[tuple[str, ...], EventResource]]:
        """Every item of the walk, sorted by its page key (stable, keyset-paged)."""
        lower = _parse_rfc3339(query.time_min, "timeMin") if query.time_min else None
        upper = _parse_rfc3339(query.time_max, "timeMax") if query.time_max else None
        now = self._now_dt()
        since = query.since
        by_start = query.order_by == "startTime"
        out: list[tuple[tuple[str, ...], EventResource]] = []

        def emit(
            full: EventResource,
            start_utc: datetime | None,
            cancelled: bool,
            ident: str | None = None,
        ) -> None:
            # Items are the stored resources (or fresh ones): never mutated here.
            try:
                matched = self._matches(full, query)
            except (AttributeError, LookupError, TypeError, ValueError):
                matched = True  # a corrupt item the filter cannot read is let through
            if not matched:
                return
            shown = full if (query.show_deleted or not cancelled) else _tombstone(full)
            item_id = full["id"] if ident is None else ident
            if by_start:
                start_key = _UNKNOWN_START_KEY if start_utc is None else start_utc.isoformat()
                key: tuple[str, ...] = (start_key, item_id)
            elif query.order_by == "updated":
                key = (str(full.get("updated", "")), item_id)
            else:
                key = (item_id,)
            out.append((key, shown))

        def wanted(cancelled: bool, changed: bool) -> bool:
            if since is not None:
                return changed
            if cancelled:
                return query.show_deleted or query.updated_min is not None
            return True

        for event_id, rec in cal.events.items():
            cancelled = rec.cancelled
            changed = since is not None and rec.change_seq > since
            if since is not None and not changed and not rec.overrides:
                continue
            if rec.corrupt:
                # Its timing cannot be read: in every window, last by start, no instances.
                if wanted(cancelled, changed):
                    emit(rec.resource, None, cancelled, event_id)
                continue
            if query.single_events and rec.recurring:
                self._collect_instances(cal, rec, query, lower, upper, now, emit)
                continue
            if wanted(cancelled, changed):
                in_window = (lower is None and upper is None) or any(
                    _expand(timing, cal.tz, lower, upper, now)
                    for timing in rec.relevant_timings(since)
                )
                if in_window:
                    start_utc = (
                        _parse_point(rec.resource.get("start"), "start", cal.tz).instant.astimezone(
                            UTC
                        )
                        if by_start
                        else None
                    )
                    emit(rec.resource, start_utc, cancelled, event_id)
            if rec.recurring and not cancelled and not query.single_events:
                for instance_id, override in rec.overrides.items():
                    if since is not None and override.change_seq <= since:
                        continue
                    try:
                        _, slot = self._find_instance(cal, instance_id)
                    except GoogleApiError:
                        continue
                    inst = self._instance(rec, slot, override)
                    if not self._instance_overlaps(cal, inst, slot, lower, upper):
                        continue
                    # Cancelled instances of a live series are listed even without
                    # showDeleted when singleEvents is false (events.list reference).
                    emit(inst, slot.start_utc, inst.get("status") == "cancelled")
        out.sort(key=lambda item: item[0])
        return out

    def _instance_overlaps(
        self,
        cal: _Calendar,
        inst: Mapping[str, Any],
        slot: _Slot,
        lower: datetime | None,
        upper: datetime | None,
    ) -> bool:
        if _overlaps(slot.start_utc, slot.end_utc, lower, upper):
            return True
        try:
            s = _parse_point(inst.get("start"), "start", cal.tz).instant
            e = _parse_point(inst.get("end"), "end", cal.tz).instant
        except GoogleApiError:
            return False
        return _overlaps(s, e, lower, upper)

    def _collect_instances(
        self,
        cal: _Calendar,
        rec: _Record,
        query: _Query,
        lower: datetime | None,
        upper: datetime | None,
        now: datetime,
        emit: Callable[[EventResource, datetime, bool], None],
    ) -> None:
        since = query.since
        series_changed = since is not None and rec.change_seq > since
        current_ids: set[str] = set()
        if not rec.cancelled:
            for slot in _expand(rec.history[-1][1], cal.tz, lower, upper, now):
                inst = self._instance(rec, slot)
                current_ids.add(inst["id"])
                override = rec.overrides.get(inst["id"])
                inst_cancelled = inst.get("status") == "cancelled"
                if since is not None:
                    if not series_changed and (override is None or override.change_seq <= since):
                        continue
                elif inst_cancelled and not query.show_deleted and query.updated_min is None:
                    continue
                emit(inst, slot.start_utc, inst_cancelled)
        if not series_changed:
            return
        series_id = rec.resource["id"]
        for timing in rec.relevant_timings(since):
            for slot in _expand(timing, cal.tz, lower, upper, now):
                instance_id = series_id if slot.suffix is None else f"{series_id}_{slot.suffix}"
                if instance_id in current_ids:
                    continue
                current_ids.add(instance_id)
                gone: EventResource = {
                    "kind": "calendar#event",
                    "etag": rec.resource.get("etag", '"0"'),
                    "id": instance_id,
                    "status": "cancelled",
                    "updated": rec.resource.get("updated", ""),
                    "eventType": rec.resource.get("eventType", "default"),
                }
                if slot.suffix is not None:
                    gone["recurringEventId"] = series_id
                    gone["originalStartTime"] = _jcopy(slot.original)
                emit(gone, slot.start_utc, True)

    def _matches(self, full: Mapping[str, Any], query: _Query) -> bool:
        if query.event_types and full.get("eventType", "default") not in query.event_types:
            return False
        if query.ical_uid is not None and full.get("iCalUID") != query.ical_uid:
            return False
        if query.updated_min is not None:
            updated = full.get("updated")
            if isinstance(updated, str) and updated < _updated_floor(query.updated_min):
                return False
        for props, scope in ((query.private_props, "private"), (query.shared_props, "shared")):
            stored = (full.get("extendedProperties") or {}).get(scope) or {}
            for constraint in props:
                name, _, value = constraint.partition("=")
                if stored.get(name) != value:
                    return False
        if query.q:
            haystack = " ".join(str(part) for part in _search_fields(full)).lower()
            if not all(term in haystack for term in query.q.lower().split()):
                return False
        return True

    # ----------------------------------------------------------------- events.get/insert/...

    async def _h_get(self, request: web.Request) -> web.Response:
        cal, _ = self._authorize(request, request.match_info["calendar_id"])
        return web.json_response(self.get_event(cal.id, request.match_info["event_id"]))

    async def _h_insert(self, request: web.Request) -> web.Response:
        cal, _ = self._authorize(request, request.match_info["calendar_id"])
        return web.json_response(self.insert_event(cal.id, await _json_object(request)))

    async def _h_patch(self, request: web.Request) -> web.Response:
        cal, _ = self._authorize(request, request.match_info["calendar_id"])
        body = await _json_object(request)
        return web.json_response(self.patch_event(cal.id, request.match_info["event_id"], body))

    async def _h_delete(self, request: web.Request) -> web.Response:
        cal, _ = self._authorize(request, request.match_info["calendar_id"])
        self.delete_event(cal.id, request.match_info["event_id"])
        return web.Response(status=204)

    # ----------------------------------------------------------------- channels

    async def _h_watch(self, request: web.Request) -> web.Response:
        cal, grant = self._authorize(request, request.match_info["calendar_id"])
        body = await _json_object(request)
        channel_id = body.get("id")
        if not isinstance(channel_id, str) or not channel_id:
            raise _required("Required", "id")
        if len(channel_id) > 64:
            raise _invalid("Channel id must be at most 64 characters.", "id")
        kind = body.get("type")
        if not isinstance(kind, str) or not kind:
            raise _required("Required", "type")
        if kind.lower() not in _CHANNEL_TYPES:
            raise _invalid(f"Invalid value for: type: {kind}", "type")
        address = body.get("address")
        if not isinstance(address, str) or not address:
            raise _required("Required", "address")
        if not address.startswith(("https://", "http://")):
            raise _invalid(f"Invalid value for: address: {address}", "address")
        token = body.get("token")
        if token is not None and (not isinstance(token, str) or len(token) > 256):
            raise _invalid("Channel token must be at most 256 characters.", "token")
        now_ms = int(self.now() * 1000)
        existing = self.channels.get(channel_id)
        if existing is not None:
            if existing.expiration_ms > now_ms:
                raise _duplicate()
            self._retire(existing)
        raw_params = body.get("params") or {}
        if not isinstance(raw_params, dict):
            raise _invalid("Invalid value for: params", "params")
        ttl = DEFAULT_CHANNEL_TTL
        if "ttl" in raw_params:
            try:
                ttl = float(raw_params["ttl"])
            except (TypeError, ValueError):
                raise _invalid("Invalid value for: params.ttl", "params.ttl") from None
            if ttl <= 0:
                raise _invalid("Invalid value for: params.ttl", "params.ttl")
        expiration_ms = now_ms + int(min(ttl, self.max_channel_ttl) * 1000)
        if body.get("expiration") is not None:
            try:
                requested = int(body["expiration"])
            except (TypeError, ValueError):
                raise _invalid("Invalid value for: expiration", "expiration") from None
            if requested <= now_ms:
                raise _invalid("Invalid value for: expiration", "expiration")
            expiration_ms = min(expiration_ms, requested)
        channel = Channel(
            id=channel_id,
            resource_id=cal.resource_id,
            resource_uri=f"{self.api_url}/calendars/{quote(cal.id, safe='@')}/events",
            calendar_id=cal.id,
            address=address,
            token=token,
            expiration_ms=expiration_ms,
            client_id=grant.client_id,
            params={str(k): str(v) for k, v in raw_params.items()},
        )
        self.channels[channel_id] = channel
        self._open_queue(id(channel), self._deliver)
        self._enqueue(_PushJob(channel, "sync", 1))
        return web.json_response(channel.resource())

    async def _h_stop(self, request: web.Request) -> web.Response:
        grant = self._live_grant(request)
        body = await _json_object(request)
        channel_id, resource_id = body.get("id"), body.get("resourceId")
        if not isinstance(channel_id, str) or not channel_id:
            raise _required("Required", "id")
        if not isinstance(resource_id, str) or not resource_id:
            raise _required("Required", "resourceId")
        channel = self.channels.get(channel_id)
        if (
            channel is None
            or channel.resource_id != resource_id
            or channel.client_id != grant.client_id
        ):
            raise GoogleApiError(404, "notFound", f"Channel '{channel_id}' not found for project")
        self._retire(channel)
        return web.Response(status=204)

    # ----------------------------------------------------------------- control routes

    def _health(self) -> dict[str, Any]:
        return {"token_url": self.token_url}

    def _bad_json(self) -> GoogleApiError:
        return _parse_error()

    def _control_error(self, message: str, name: str) -> GoogleApiError:
        return _invalid(message, name)

    def _missing_field(self, name: str) -> GoogleApiError:
        return _required(f"Missing required field: {name}", name)

    def _unknown(self, message: str) -> GoogleApiError:
        return _not_found()

    def _deliveries(self) -> Sequence[DeliveryRecord]:
        return self.delivery_log

    async def _c_add_calendar(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        calendar_id = self._str_field(body, "calendar_id")
        self.add_calendar(
            calendar_id,
            time_zone=str(body.get("time_zone") or "UTC"),
            summary=body.get("summary"),
        )
        return web.json_response({"calendar_id": calendar_id}, status=201)

    async def _c_revoke_refresh(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        self.revoke_refresh_token(self._str_field(body, "refresh_token"))
        return web.Response(status=204)

    async def _c_insert(self, request: web.Request) -> web.Response:
        event = self.insert_event(
            request.match_info["calendar_id"],
            await _json_object(request),
            notify=self._notify_param(request),
        )
        return web.json_response(event, status=201)

    async def _c_insert_bulk(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        events = body.get("events")
        if not isinstance(events, list):
            raise _required("Missing required field: events", "events")
        inserted = self.insert_events(
            request.match_info["calendar_id"],
            events,
            notify=request.query.get("notify", "false").lower() == "true",
        )
        return web.json_response({"ids": [event["id"] for event in inserted]}, status=201)

    async def _c_corrupt(self, request: web.Request) -> web.Response:
        calendar_id, event_id = request.match_info["calendar_id"], request.match_info["event_id"]
        self.corrupt_event(
            calendar_id,
            event_id,
            await _json_object(request),
            notify=self._notify_param(request),
        )
        return web.json_response(self.get_event(calendar_id, event_id))

    async def _c_patch(self, request: web.Request) -> web.Response:
        event = self.patch_event(
            request.match_info["calendar_id"],
            request.match_info["event_id"],
            await _json_object(request),
            notify=self._notify_param(request),
        )
        return web.json_response(event)

    async def _c_delete(self, request: web.Request) -> web.Response:
        self.delete_event(
            request.match_info["calendar_id"],
            request.match_info["event_id"],
            notify=self._notify_param(request),
        )
        return web.Response(status=204)

    async def _c_invalidate(self, request: web.Request) -> web.Response:
        self.invalidate_sync_tokens(request.match_info["calendar_id"])
        return web.Response(status=204)

    async def _c_channels(self, request: web.Request) -> web.Response:
        return web.json_response([dataclasses.asdict(c) for c in self.channels.values()])


@functools.lru_cache(maxsize=64)
def _updated_floor(updated_min: str) -> str:
    return _rfc3339_ms(_parse_rfc3339(updated_min, "updatedMin").timestamp())


def _search_fields(event: Mapping[str, Any]) -> Iterable[Any]:
    yield event.get("summary", "")
    yield event.get("description", "")
    yield event.get("location", "")
    for person in [event.get("organizer") or {}, *(event.get("attendees") or [])]:
        if isinstance(person, Mapping):
            yield person.get("email", "")
            yield person.get("displayName", "")


# --------------------------------------------------------------------------- CLI


async def serve_forever(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    emulator: GoogleEmulator | None = None,
    calendars: Sequence[tuple[str, str]] = (),
    clients: Sequence[tuple[str, str]] = (),
    stop: asyncio.Event | None = None,
) -> None:
    """Serve an emulator until ``stop`` is set or SIGINT/SIGTERM arrives; then close it.

    ``calendars`` are (id, time zone) pairs and ``clients`` (id, secret) pairs
    registered before serving. Prints the base URL and the two
    ``CALSYNC_GOOGLE_*_URL`` settings on stdout once listening.
    """
    emu = emulator if emulator is not None else GoogleEmulator()
    for calendar_id, tz in calendars:
        emu.add_calendar(calendar_id, time_zone=tz)
    await _base.serve_emulator(
        emu,
        clients=clients,
        stop=stop,
        start=lambda: emu.start(host, port),
        banner=lambda: [
            f"Google Calendar emulator listening on {emu.base_url}",
            f"CALSYNC_GOOGLE_API_URL={emu.api_url}",
            f"CALSYNC_GOOGLE_TOKEN_URL={emu.token_url}",
        ],
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``calsync emulator google`` argument parser."""
    parser = _base.emulator_parser(
        "calsync emulator google",
        "Serve a local Google Calendar API v3 + OAuth emulator.",
        default_port=DEFAULT_PORT,
        calendars=("--calendar", "ID[:TZ]", "register a calendar (repeatable)"),
        client_help="register an OAuth client (repeatable)",
    )
    parser.add_argument("--max-channel-ttl", type=float, default=DEFAULT_CHANNEL_TTL)
    parser.add_argument("--page-size-default", type=int, default=250)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``calsync emulator google [options]``; returns the exit status."""
    args = build_parser().parse_args(argv)
    emu = GoogleEmulator(
        page_size_default=args.page_size_default,
        seed=args.seed,
        max_channel_ttl=args.max_channel_ttl,
    )
    return _base.run_until_interrupted(
        serve_forever(
            args.host, args.port, emulator=emu, calendars=args.calendar, clients=args.client
        )
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
