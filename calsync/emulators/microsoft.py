"""A local Microsoft Graph v1.0 (Outlook calendar) and Microsoft identity platform, on aiohttp.

The emulator follows the Microsoft Graph v1.0 reference (event delta, subscription,
error responses), the Microsoft Graph change notifications docs and the Microsoft
identity platform's OAuth 2.0 token endpoint docs "to the header and status code":
the production Microsoft provider adapter is pointed at it with
``CALSYNC_GRAPH_API_URL`` (``api_url``), ``CALSYNC_MICROSOFT_AUTHORITY``
(``authority``) and ``CALSYNC_MICROSOFT_CA_BUNDLE`` (``ca_bundle_path``) and cannot
tell the difference for the calls it makes.

Two sites. Graph, over plain HTTP (paths relative to ``base_url``)::

    GET    /v1.0/users/{id}/calendarView/delta       delta (window, $skiptoken, $deltatoken)
    GET    /v1.0/me/calendarView/delta               the same for the grant's own mailbox
    GET    /v1.0/users/{id}/mailboxSettings/timeZone the mailbox's zone, as given to add_mailbox
    GET    /v1.0/me/mailboxSettings/timeZone         the same for the grant's own mailbox
    POST   /v1.0/subscriptions                       create (validation handshake first)
    GET    /v1.0/subscriptions                       the calling app's live subscriptions
    GET    /v1.0/subscriptions/{id}                  one subscription
    PATCH  /v1.0/subscriptions/{id}                  renew (expirationDateTime)
    DELETE /v1.0/subscriptions/{id}                  delete
    POST   /v1.0/subscriptions/{id}/reauthorize      reauthorize (no new expiry)
    ...    /_emulator/...                            test/demo control, see ``CONTROL_ROUTES``

The identity platform, over TLS with a certificate from a throwaway trustme CA
(MSAL insists on an ``https`` authority; the CA is in ``ca_bundle_path``),
paths relative to ``authority`` (``https://127.0.0.1:PORT/<tenant>``)::

    GET    /v2.0/.well-known/openid-configuration    OIDC discovery (MSAL reads it first)
    POST   /oauth2/v2.0/token                        refresh_token (rotating RTs),
                                                     authorization_code (PKCE, nonce),
                                                     client_credentials (secret or client
                                                     assertion), device_code
    GET    /oauth2/v2.0/authorize                    sign-in and consent page (POST: the form)
    GET    /v2.0/adminconsent                        admin consent page (tenant-specific)
    POST   /oauth2/v2.0/devicecode                   device authorization (RFC 8628)
    GET    https://127.0.0.1:PORT/devicelogin        where a device code is entered
    GET    /discovery/v2.0/keys                      JWKS (empty: tokens are not signed)
    GET    https://127.0.0.1:PORT/common/discovery/instance   instance discovery

Contracts worth knowing before writing a test against it:

- MSAL works against it as
  ``msal.ConfidentialClientApplication(client_id, client_credential=secret,
  authority=emu.authority, http_client=session, instance_discovery=False)``
  where ``session`` is a ``requests.Session`` with ``verify=emu.ca_bundle_path``.
- Every ``/v1.0`` call needs ``Authorization: Bearer <access token>`` minted by
  the token endpoint for a refresh token from
  :meth:`MicrosoftEmulator.issue_refresh_token`; an access token lives 3599 s
  on the emulator clock. Missing, unknown or expired tokens answer 401
  ``InvalidAuthenticationToken``; a mailbox the grant does not cover answers
  403 ``accessDenied``; an unknown mailbox 404 ``itemNotFound``. Revoking a
  refresh token does not kill the access tokens already minted from it (Entra
  access tokens are self-contained JWTs); :meth:`expire_access_tokens` does.
- Every Graph error body is the Graph error-response envelope ``{"error": {"code", "message",
  "innerError": {"date", "request-id", "client-request-id"}}}``; every Graph
  response carries ``request-id`` and ``client-request-id`` headers (the
  latter echoes the caller's). The token endpoint answers the identity platform error body
  (``error``, ``error_description`` starting ``AADSTSnnnn:``, ``error_codes``,
  ``timestamp``, ``trace_id``, ``correlation_id``, ``error_uri``, and
  ``suberror`` for ``invalid_grant``).
- Refresh tokens rotate: every successful refresh answers a new
  ``refresh_token``. By default the one used stops working (``invalid_grant``
  AADSTS70008), stricter than Entra, so that a client that forgets to store the
  new one fails at once. Entra "doesn't revoke old refresh tokens when used to
  fetch new access tokens" (learn.microsoft.com/entra/identity-platform/
  refresh-tokens): ``old_refresh_tokens="valid"`` does the same, and a revoked
  grant still refuses every token it issued. With single-use tokens, a client
  killed between the token endpoint's answer and storing the new token has lost
  the grant; with Entra it has not. :meth:`MicrosoftEmulator.account_of` is
  stable across rotation (it names the grant, not the token string).
- Delta state tokens (``$skiptoken``, ``$deltatoken``) are opaque, HMAC-sealed
  and bound to one emulator instance and mailbox. A ``$deltatoken`` encodes the
  window and the mailbox's change-sequence number when the round that minted it
  *started*, so changes made while a client pages reach its next round. A
  forged or foreign token answers 410 ``SyncStateNotFound``; tokens made
  before :meth:`MicrosoftEmulator.expire_delta_tokens` answer 410 + ``Location``
  (style ``"410"``) or 410 ``SyncStateNotFound`` (style ``"syncStateNotFound"``).
- Change notifications and lifecycle notifications are delivered by one
  background task per receiving URL, never inside the request that caused the
  change; several queued ones go out batched in one POST (as Graph does).
  :meth:`MicrosoftEmulator.flush_pushes` waits for the ones queued so far.
- Python control methods raise :class:`GraphApiError` (the error the HTTP layer
  renders) for unknown mailboxes/events and invalid input.
- Every ``/v1.0`` and identity call lands in ``requests`` as a
  :class:`~calsync.emulators.faults.RecordedRequest`; ``calendar_id`` is the
  mailbox's user id. Pushes lost to ``faults.drop_push_probability`` are in
  ``delivery_log`` with ``status=None, error="dropped"``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import bisect
import functools
import hashlib
import hmac
import html
import json
import logging
import re
import secrets
import shutil
import ssl
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple, TypedDict, cast, get_args
from urllib.parse import quote, unquote, urlencode, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiohttp
import yarl
from aiohttp import web
from dateutil import rrule as _rr  # type: ignore[import-untyped]
from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

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
    "DeliveryRecord",
    "FaultInjector",
    "FaultKind",
    "FaultRule",
    "GraphApiError",
    "MicrosoftEmulator",
    "RecordedRequest",
    "Subscription",
    "build_parser",
    "main",
    "serve_forever",
]

logger = logging.getLogger(__name__)

API_PREFIX: Final = "/v1.0"
DEFAULT_PORT: Final = 8720  # the Graph port `calsync emulator microsoft` defaults to
DEFAULT_AUTHORITY_PORT: Final = 8721  # ... and its identity-platform (TLS) port
GRAPH_RESOURCE: Final = "https://graph.microsoft.com"
ACCESS_TOKEN_LIFETIME: Final = 3599
MIN_SUBSCRIPTION_SECONDS: Final = 45 * 60
MAX_CLIENT_STATE: Final = 128
MAX_PAGE_SIZE: Final = 1000
EXPIRY_STYLES: Final = ("410", "syncStateNotFound")
LIFECYCLE_EVENTS: Final = ("reauthorizationRequired", "subscriptionRemoved", "missed")
CHANGE_TYPES: Final = ("created", "updated", "deleted")
SHOW_AS: Final = ("free", "tentative", "busy", "oof", "workingElsewhere", "unknown")
GRAPH_APP_ID: Final = "00000003-0000-0000-c000-000000000000"
_OIDC_SCOPES: Final = frozenset({"openid", "profile", "offline_access", "email"})
_DEFAULT_SCOPES: Final = (
    f"{GRAPH_RESOURCE}/Calendars.Read",
    f"{GRAPH_RESOURCE}/User.Read",
)
_MULTI_TENANT: Final = ("common", "organizations", "consumers")
DEVICE_CODE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"
DEVICE_CODE_LIFETIME: Final = 900.0
CLIENT_ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_LISTING_CACHE_SIZE: Final = 64
_MAX_BATCH: Final = 20
_MAX_OCCURRENCES: Final = 20_000
_EXPANSION_HORIZON: Final = timedelta(days=730)
_ODATA_JSON: Final = (
    "application/json;odata.metadata=minimal;odata.streaming=true;"
    "IEEE754Compatible=false;charset=utf-8"
)
_ICAL_PREFIX: Final = "040000008200E00074C5B7101A82E008"
_READ_ONLY_KEYS: Final = frozenset(
    {
        "@odata.type",
        "@odata.etag",
        "@odata.context",
        "id",
        "createdDateTime",
        "lastModifiedDateTime",
        "changeKey",
        "iCalUId",
        "type",
        "seriesMasterId",
        "originalStart",
        "originalStartTimeZone",
        "originalEndTimeZone",
    }
)
_CANONICAL_ORDER: Final = (
    "@odata.type",
    "@odata.etag",
    "id",
    "createdDateTime",
    "lastModifiedDateTime",
    "changeKey",
    "categories",
    "transactionId",
    "originalStartTimeZone",
    "originalEndTimeZone",
    "iCalUId",
    "reminderMinutesBeforeStart",
    "isReminderOn",
    "hasAttachments",
    "subject",
    "bodyPreview",
    "importance",
    "sensitivity",
    "isAllDay",
    "isCancelled",
    "isOrganizer",
    "responseRequested",
    "seriesMasterId",
    "showAs",
    "type",
    "webLink",
    "onlineMeetingUrl",
    "isOnlineMeeting",
    "onlineMeetingProvider",
    "allowNewTimeProposals",
    "isDraft",
    "hideAttendees",
    "originalStart",
    "responseStatus",
    "body",
    "start",
    "end",
    "location",
    "locations",
    "recurrence",
    "attendees",
    "organizer",
    "onlineMeeting",
)

EventResource = dict[str, Any]
"""An event as Graph renders it: the caller's fields plus the server-set ones."""

ExpiryStyle = Literal["410", "syncStateNotFound"]
LifecycleEvent = Literal["reauthorizationRequired", "subscriptionRemoved", "missed"]


# --------------------------------------------------------------------------- wire types


class InnerError(TypedDict, total=False):
    """``error.innerError`` of the Graph error envelope (the throttle shape adds
    code/message/status)."""

    code: str
    date: str
    message: str
    status: str


class GraphErrorObject(TypedDict):
    code: str
    message: str
    innerError: dict[str, str]


class GraphErrorEnvelope(TypedDict):
    """The Graph error body: ``{"error": {"code", "message", "innerError"}}``."""

    error: GraphErrorObject


class TokenResponse(TypedDict, total=False):
    """A successful refresh_token grant of the identity platform token endpoint;
    ``id_token``/``client_info`` when asked."""

    token_type: str
    scope: str
    expires_in: int
    ext_expires_in: int
    access_token: str
    refresh_token: str
    id_token: str
    client_info: str


class TokenError(TypedDict, total=False):
    """The identity platform token-endpoint error body."""

    error: str
    error_description: str
    error_codes: list[int]
    timestamp: str
    trace_id: str
    correlation_id: str
    error_uri: str
    suberror: str


SubscriptionResource = TypedDict(
    "SubscriptionResource",
    {
        "@odata.context": str,
        "id": str,
        "resource": str,
        "applicationId": str,
        "changeType": str,
        "clientState": "str | None",
        "notificationUrl": str,
        "notificationQueryOptions": None,
        "lifecycleNotificationUrl": "str | None",
        "expirationDateTime": str,
        "creatorId": str,
        "includeResourceData": bool,
        "latestSupportedTlsVersion": str,
        "encryptionCertificate": None,
        "encryptionCertificateId": None,
        "notificationUrlAppId": None,
    },
)
"""The subscription resource as POST/GET/PATCH ``/subscriptions`` answer it."""


# --------------------------------------------------------------------------- errors


class GraphApiError(Exception):
    """An error the emulator answers with the Graph error envelope.

    Raised by the Python control methods too, so a test sees the same
    ``status`` and ``code`` that an HTTP client would. ``inner`` picks the
    ``innerError`` shape: ``"standard"`` (date, request-id, client-request-id)
    or ``"throttle"`` (the Graph throttling docs' 429 sample: code, date, message, request-id,
    status).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        inner: Literal["standard", "throttle"] = "standard",
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})
        self.inner = inner

    def envelope(self, *, date: str, request_id: str, client_request_id: str) -> GraphErrorEnvelope:
        """The exact JSON body for this error."""
        inner: dict[str, str]
        if self.inner == "throttle":
            inner = {
                "code": str(self.status),
                "date": date,
                "message": "Please retry after",
                "request-id": request_id,
                "status": str(self.status),
            }
        else:
            inner = {"date": date, "request-id": request_id, "client-request-id": client_request_id}
        return {"error": {"code": self.code, "message": self.message, "innerError": inner}}


def _bad_request(message: str, code: str = "BadRequest") -> GraphApiError:
    return GraphApiError(400, code, message)


def _invalid_request(message: str) -> GraphApiError:
    return GraphApiError(400, "InvalidRequest", message)


def _not_found(message: str = "The specified object was not found in the store.") -> GraphApiError:
    return GraphApiError(404, "itemNotFound", message)


def _access_denied() -> GraphApiError:
    return GraphApiError(403, "accessDenied", "Access is denied. Check credentials and try again.")


def _sync_state_not_found() -> GraphApiError:
    return GraphApiError(
        410,
        "SyncStateNotFound",
        "The sync state generation is not found. The delta token is expired and data must be "
        "synchronized again.",
    )


def _resync_required(location: str) -> GraphApiError:
    return GraphApiError(
        410,
        "resyncRequired",
        "The delta token is no longer valid, and the app must reset the sync state.",
        headers={"Location": location},
    )


def _time_zone_not_supported(name: str) -> GraphApiError:
    return GraphApiError(
        400,
        "TimeZoneNotSupportedException",
        "A valid TimeZone value must be specified. The following TimeZone value is not "
        f"supported: '{name}'.",
    )


# --------------------------------------------------------------------------- faults

FaultKind = Literal[
    "throttle_429",
    "application_throttled_429",
    "unavailable_503",
    "internal_error_500",
    "sync_state_not_found_410",
    "latency",
]
"""What a :class:`FaultRule` does to a matching ``/v1.0`` call (never to the
identity endpoints nor the control routes)."""

_FAULT_KINDS: Final = cast("tuple[FaultKind, ...]", get_args(FaultKind))


def _application_throttled() -> GraphApiError:
    return GraphApiError(
        429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit."
    )


def _fault_error(kind: FaultKind) -> GraphApiError:
    if kind == "throttle_429":
        return GraphApiError(429, "TooManyRequests", "Please retry again later.", inner="throttle")
    if kind == "application_throttled_429":
        return _application_throttled()
    if kind == "unavailable_503":
        return GraphApiError(
            503,
            "serviceNotAvailable",
            "The service is temporarily unavailable for maintenance or is overloaded. You may "
            "repeat the request after a delay, which may be specified in a Retry-After header.",
        )
    if kind == "internal_error_500":
        return GraphApiError(500, "generalException", "An unspecified error has occurred.")
    if kind == "sync_state_not_found_410":
        return _sync_state_not_found()
    raise ValueError(f"fault kind {kind!r} produces no error")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class DeliveryRecord(DroppedMark):
    """One outbound POST attempt for one notification.

    ``kind`` is ``"notification"`` (change notification), ``"lifecycle"`` or
    ``"validation"`` (the subscription-create handshake); ``event`` is the
    ``changeType``, the ``lifecycleEvent`` or ``"validation"``; ``resource_id``
    the event id of a change notification. ``status`` is the receiver's HTTP
    status, or None when ``error`` says why nothing was answered (exception
    text, ``"dropped"``, ``"subscription expired"``, ``"subscription
    deleted"``, ``"no lifecycleNotificationUrl"``). ``batch`` is how many
    notifications the POST carried.
    """

    subscription_id: str
    kind: str
    event: str
    resource_id: str | None
    url: str
    status: int | None
    error: str | None = None
    attempt: int = 1
    time: float = 0.0
    batch: int = 1


@dataclass(slots=True)
class Subscription:
    """A live Graph subscription; ``expires_at`` is epoch seconds (emulator clock).

    ``resource`` is what the client sent; ``user_id`` the mailbox it resolved to;
    ``application_id`` the OAuth client that created it.
    """

    id: str
    resource: str
    change_type: str
    notification_url: str
    lifecycle_notification_url: str | None
    client_state: str | None
    expires_at: float
    application_id: str
    creator_id: str
    user_id: str
    latest_supported_tls_version: str = "v1_2"
    reauthorization_sent: bool = False

    @property
    def change_types(self) -> frozenset[str]:
        """The ``changeType`` values as a set."""
        return frozenset(part.strip() for part in self.change_type.split(","))

    @property
    def expiration_date_time(self) -> str:
        """``expirationDateTime`` as Graph writes it (7 fractional digits, ``Z``)."""
        return _iso7z(self.expires_at)

    def resource_json(self, api_url: str) -> SubscriptionResource:
        """The subscription resource answered by the ``/subscriptions`` calls."""
        return {
            "@odata.context": f"{api_url}/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.application_id,
            "changeType": self.change_type,
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "notificationQueryOptions": None,
            "lifecycleNotificationUrl": self.lifecycle_notification_url,
            "expirationDateTime": self.expiration_date_time,
            "creatorId": self.creator_id,
            "includeResourceData": False,
            "latestSupportedTlsVersion": self.latest_supported_tls_version,
            "encryptionCertificate": None,
            "encryptionCertificateId": None,
            "notificationUrlAppId": None,
        }


# --------------------------------------------------------------------------- time helpers


def _iso7(dt: datetime) -> str:
    """Naive wall time as Graph writes ``dateTimeTimeZone.dateTime`` (7 fractional digits)."""
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T"
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}.{dt.microsecond:06d}0"
    )


def _iso7z(ts: float) -> str:
    return _iso7(datetime.fromtimestamp(ts, UTC)) + "Z"


def _utc_z(dt: datetime) -> str:
    """``originalStart``: a UTC DateTimeOffset, whole seconds."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_UTC_ZONE: Final = ZoneInfo("UTC")
_WINDOWS_LOWER: Final = {k.lower(): v for k, v in WINDOWS_TO_OLSON.items()}
_ZONE_ALIASES: Final = {
    "utc": "UTC",
    "tzone://microsoft/utc": "UTC",
    "coordinated universal time": "UTC",
    "gmt": "UTC",
}


def _zone(name: str) -> ZoneInfo:
    """A zone for a Windows (``Pacific Standard Time``) or IANA (``Europe/Zurich``) name.

    Raises ValueError for anything else.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(name)
    key = name.strip()
    alias = _ZONE_ALIASES.get(key.lower())
    olson = alias or _WINDOWS_LOWER.get(key.lower()) or key
    try:
        return ZoneInfo(olson)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(name) from None


def _parse_local(value: Any, tz: ZoneInfo) -> datetime | None:
    """The naive wall time in ``tz`` of a ``dateTimeTimeZone.dateTime`` (offsets converted)."""
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError:
        return None
    if dt.tzinfo is not None:
        dt = dt.astimezone(tz).replace(tzinfo=None)
    return dt


def _parse_instant(value: str, name: str) -> datetime:
    """A query-string or body timestamp (ISO 8601); no offset means UTC."""
    try:
        dt = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError:
        raise _bad_request(
            f"The value '{value}' of parameter '{name}' is not a valid DateTime.",
            "ErrorInvalidParameter",
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def _localize(local: datetime, tz: ZoneInfo) -> datetime:
    return local.replace(tzinfo=tz).astimezone(UTC)


def _overlaps(start: datetime, end: datetime, lower: datetime, upper: datetime) -> bool:
    """calendarView membership: starts before ``upper`` and ends after ``lower``
    (a zero-length event counts when it starts inside the window)."""
    if start >= upper:
        return False
    return end > lower or (end == start and start >= lower)


# --------------------------------------------------------------------------- recurrence

_DAYS: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_INDEX: Final = {"first": 1, "second": 2, "third": 3, "fourth": 4, "last": -1}
_PATTERNS: Final = (
    "daily",
    "weekly",
    "absoluteMonthly",
    "relativeMonthly",
    "absoluteYearly",
    "relativeYearly",
)
_RANGES: Final = ("endDate", "noEnd", "numbered")


@dataclass(frozen=True, slots=True)
class _Recurrence:
    pattern: str
    interval: int
    days: tuple[int, ...]
    first_day: int
    day_of_month: int
    month: int
    index: int
    range_type: str
    start_date: date
    end_date: date | None
    count: int | None

    def rule(self, first_start: datetime) -> Any:
        """A dateutil rrule over naive wall times: ``start_date`` at ``first_start``'s time on."""
        dtstart = datetime.combine(self.start_date, first_start.time())
        kwargs: dict[str, Any] = {"dtstart": dtstart, "interval": self.interval}
        weekdays = _rr.weekdays
        if self.pattern == "daily":
            freq = _rr.DAILY
        elif self.pattern == "weekly":
            freq = _rr.WEEKLY
            kwargs["byweekday"] = [weekdays[d] for d in self.days]
            kwargs["wkst"] = self.first_day
        elif self.pattern == "absoluteMonthly":
            freq = _rr.MONTHLY
            kwargs["bymonthday"] = self.day_of_month
        elif self.pattern == "relativeMonthly":
            freq = _rr.MONTHLY
            kwargs["byweekday"] = [weekdays[d](self.index) for d in self.days]
        elif self.pattern == "absoluteYearly":
            freq = _rr.YEARLY
            kwargs["bymonth"] = self.month
            kwargs["bymonthday"] = self.day_of_month
        else:
            freq = _rr.YEARLY
            kwargs["bymonth"] = self.month
            kwargs["byweekday"] = [weekdays[d](self.index) for d in self.days]
        if self.range_type == "endDate" and self.end_date is not None:
            kwargs["until"] = datetime.combine(self.end_date, datetime.max.time())
        elif self.range_type == "numbered" and self.count is not None:
            kwargs["count"] = self.count
        return _rr.rrule(freq, **kwargs)


def _parse_recurrence(raw: Any, default_start: date) -> _Recurrence:
    """Parse a ``patternedRecurrence``; raises the 400 Graph answers for bad ones."""

    def bad(message: str) -> GraphApiError:
        return _bad_request(message, "ErrorInvalidRequest")

    if not isinstance(raw, Mapping):
        raise bad("Invalid recurrence: patternedRecurrence expected.")
    pattern, rng = raw.get("pattern"), raw.get("range")
    if not isinstance(pattern, Mapping) or not isinstance(rng, Mapping):
        raise bad("Invalid recurrence: pattern and range are required.")
    kind = pattern.get("type")
    if kind not in _PATTERNS:
        raise bad(f"Invalid recurrence pattern type: {kind!r}.")
    interval = pattern.get("interval", 1)
    if type(interval) is not int or interval < 1:
        raise bad("Invalid recurrence pattern interval.")
    raw_days = pattern.get("daysOfWeek") or []
    if not isinstance(raw_days, list) or any(
        not isinstance(d, str) or d.lower() not in _DAYS for d in raw_days
    ):
        raise bad("Invalid recurrence pattern daysOfWeek.")
    days = tuple(sorted({_DAYS.index(d.lower()) for d in raw_days}))
    if kind in ("weekly", "relativeMonthly", "relativeYearly") and not days:
        raise bad(f"Recurrence pattern {kind} needs daysOfWeek.")
    first = pattern.get("firstDayOfWeek", "sunday")
    if not isinstance(first, str) or first.lower() not in _DAYS:
        raise bad("Invalid recurrence pattern firstDayOfWeek.")
    day_of_month = pattern.get("dayOfMonth", 0)
    month = pattern.get("month", 0)
    if kind in ("absoluteMonthly", "absoluteYearly") and not (
        type(day_of_month) is int and 1 <= day_of_month <= 31
    ):
        raise bad("Invalid recurrence pattern dayOfMonth.")
    if kind in ("absoluteYearly", "relativeYearly") and not (
        type(month) is int and 1 <= month <= 12
    ):
        raise bad("Invalid recurrence pattern month.")
    index = _INDEX.get(str(pattern.get("index", "first")).lower())
    if index is None:
        raise bad("Invalid recurrence pattern index.")
    range_type = rng.get("type")
    if range_type not in _RANGES:
        raise bad(f"Invalid recurrence range type: {range_type!r}.")

    def day(name: str) -> date | None:
        value = rng.get(name)
        if value in (None, "", "0001-01-01"):
            return None
        try:
            return date.fromisoformat(str(value))
        except ValueError:
            raise bad(f"Invalid recurrence range {name}.") from None

    start_date = day("startDate") or default_start
    end_date = day("endDate")
    if range_type == "endDate" and (end_date is None or end_date < start_date):
        raise bad("Recurrence range endDate must be on or after startDate.")
    count = rng.get("numberOfOccurrences")
    if range_type == "numbered":
        if type(count) is not int or count < 1:
            raise bad("Recurrence range numberOfOccurrences must be at least 1.")
    else:
        count = None
    return _Recurrence(
        pattern=str(kind),
        interval=interval,
        days=days,
        first_day=_DAYS.index(first.lower()),
        day_of_month=int(day_of_month or 0),
        month=int(month or 0),
        index=index,
        range_type=str(range_type),
        start_date=start_date,
        end_date=end_date,
        count=count,
    )


# --------------------------------------------------------------------------- internal state


class _Span(NamedTuple):
    """When one instance happens: UTC instants plus wall times for all-day rendering."""

    start_utc: datetime
    end_utc: datetime
    start_local: datetime
    end_local: datetime
    all_day: bool


@dataclass(frozen=True, slots=True)
class _Timing:
    """What decides when an event happens (compared to detect timing changes)."""

    start_local: datetime
    start_zone: str
    start_tz: ZoneInfo
    end_local: datetime
    end_zone: str
    end_tz: ZoneInfo
    all_day: bool
    recurrence: _Recurrence | None

    @property
    def span(self) -> _Span:
        return _Span(
            _localize(self.start_local, self.start_tz),
            _localize(self.end_local, self.end_tz),
            self.start_local,
            self.end_local,
            self.all_day,
        )

    def slot(self, original_local: datetime) -> _Span:
        """The generated occurrence starting at wall time ``original_local``."""
        if self.all_day:
            local_end = original_local + (self.end_local - self.start_local)
            return _Span(
                _localize(original_local, self.start_tz),
                _localize(local_end, self.start_tz),
                original_local,
                local_end,
                True,
            )
        base = self.span
        start = _localize(original_local, self.start_tz)
        return _Span(
            start, start + (base.end_utc - base.start_utc), original_local, original_local, False
        )

    def occurrences(self, lower: datetime, upper: datetime) -> list[tuple[datetime, _Span]]:
        """``(original local start, span)`` of every generated occurrence overlapping the window."""
        assert self.recurrence is not None
        rule = self.recurrence.rule(self.start_local)
        base = self.span
        slack = (base.end_utc - base.start_utc) + timedelta(days=2)
        low_local = (lower - slack).astimezone(self.start_tz).replace(tzinfo=None)
        high_local = (upper + timedelta(days=2)).astimezone(self.start_tz).replace(tzinfo=None)
        out: list[tuple[datetime, _Span]] = []
        for n, occ in enumerate(rule.xafter(low_local, inc=True)):
            if n >= _MAX_OCCURRENCES or occ > high_local:
                break
            span = self.slot(occ)
            if _overlaps(span.start_utc, span.end_utc, lower, upper):
                out.append((occ, span))
        return out

    def has_occurrence(self, original_local: datetime) -> bool:
        assert self.recurrence is not None
        rule = self.recurrence.rule(self.start_local)
        return bool(rule.after(original_local - timedelta(seconds=1)) == original_local)


@dataclass(slots=True)
class _Override:
    """A changed (exception) or cancelled occurrence of a series."""

    delta: dict[str, Any]
    timing: _Timing | None
    cancelled: bool
    change_seq: int
    change_key: str
    modified: str


@dataclass(slots=True)
class _Record(_base.StoredEvent[_Timing]):
    """A stored event. ``timing`` is None for one set by ``corrupt_event``: it was
    never validated, so it is listed as stored in every window. A deleted event
    stays as a tombstone (``deleted``)."""

    timing: _Timing | None
    overrides: dict[datetime, _Override] = field(default_factory=dict)
    deleted: bool = False

    @property
    def corrupt(self) -> bool:
        return self.timing is None


#: an event's nested fields when it sets none (shared by those events: never changed in place)
_DEFAULTS: Final[dict[str, Any]] = {
    "body": {"contentType": "html", "content": ""},
    "categories": [],
    "responseStatus": {"response": "organizer", "time": "0001-01-01T00:00:00Z"},
    "location": {
        "displayName": "",
        "locationType": "default",
        "uniqueIdType": "unknown",
        "address": {},
        "coordinates": {},
    },
    "locations": [],
    "attendees": [],
}


@dataclass(slots=True, kw_only=True)
class _Mailbox(_base.EventStore[_Record]):
    user_id: str
    object_id: str
    time_zone: str
    expired_styles: dict[int, str] = field(default_factory=dict)
    #: ``organizer`` of the events it creates (one object, shared)
    organizer: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _DeviceCode:
    client_id: str
    user_code: str
    scope: str
    expires_at: float
    user: str | None = None
    declined: bool = False


@dataclass(slots=True)
class _Grant:
    client_id: str
    user_ids: list[str] | None
    account: str
    home_object_id: str
    home_user: str
    current: str
    scopes: tuple[str, ...] = _DEFAULT_SCOPES
    revoked_code: int | None = None
    #: made by the consent page (authorization-code grant)
    consented: bool = False
    #: an application (client-credentials) token: no user, policy-scoped mailboxes
    app_only: bool = False


@dataclass(frozen=True, slots=True)
class _Query:
    mailbox: str
    since: int | None
    lower: str
    upper: str
    tz_label: str


@dataclass(frozen=True, slots=True)
class _Listing:
    seq: int
    keys: list[str]
    items: list[EventResource]


@dataclass(slots=True)
class _RequestState:
    """What the middleware and handlers share about one Graph call."""

    request_id: str
    client_request_id: str
    mailbox: str | None = None
    slot: tuple[str, str] | None = None  # the mailbox concurrency slot it holds


@dataclass(slots=True)
class _Push:
    subscription: Subscription
    kind: Literal["notification", "lifecycle"]
    event: str
    url: str
    resource_id: str | None = None
    etag: str | None = None
    object_id: str = ""


# --------------------------------------------------------------------------- helpers


def _canonical(event: Mapping[str, Any]) -> EventResource:
    return _base.canonical(event, _CANONICAL_ORDER)


def _removed(event_id: str) -> EventResource:
    return {
        "@odata.type": "#microsoft.graph.event",
        "id": event_id,
        "@removed": {"reason": "deleted"},
    }


_RESOURCE_RE: Final = re.compile(
    r"^/?(?:users/(?P<user>[^/]+)|(?P<me>me))/(?:events|calendar/events|calendars/[^/]+/events)$",
    re.IGNORECASE,
)
_PREFER_RE: Final = re.compile(
    r'\s*([A-Za-z][\w.\-]*)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^,;]*))?[^,]*,?'
)


def _preferences(request: web.Request) -> dict[str, str]:
    """``Prefer`` header(s) as {lower-case name: unquoted value}."""
    out: dict[str, str] = {}
    for header in request.headers.getall("Prefer", []):
        for match in _PREFER_RE.finditer(header):
            name, value = match.group(1), match.group(2) or ""
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            out.setdefault(name.lower(), value)
    return out


def _bad_json() -> GraphApiError:
    return _bad_request("Unable to read JSON request payload.")


async def _json_object(request: web.Request) -> dict[str, Any]:
    return await _base.read_json_object(request, _bad_json)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_AADSTS_MESSAGES: Final = {
    70000: "Provided grant is invalid or malformed.",
    70008: (
        "The provided authorization code or refresh token has expired due to inactivity. Send "
        "a new interactive authorization request for this user and resource."
    ),
    700082: (
        "The refresh token has expired due to inactivity. The token was issued on {issued} and "
        "was inactive for 90.00:00:00."
    ),
    700084: (
        "The refresh token was issued to a single page app (SPA), and therefore has a fixed, "
        "limited lifetime of 1.00:00:00, which can't be extended. It is now expired and a new "
        "sign in request must be sent by the SPA to the sign in page."
    ),
    50173: (
        "The provided grant has expired due to it being revoked, a fresh auth token is needed. "
        "The user might have changed or reset their password. The grant was issued on "
        "'{issued}' and the TokensValidFrom date (before which tokens are not valid) for this "
        "user is '{now}'."
    ),
    70043: (
        "The refresh token has expired or is invalid due to sign-in frequency checks by "
        "conditional access. The token was issued on {issued} and the maximum allowed lifetime "
        "for this request is 3600."
    ),
    50076: (
        "Due to a configuration change made by your administrator, or because you moved to a "
        "new location, you must use multi-factor authentication to access '{resource}'."
    ),
    50079: (
        "Due to a configuration change made by your administrator, or because you moved to a "
        "new location, you must enroll in multi-factor authentication to access '{resource}'."
    ),
    50078: "Presented multi-factor authentication has expired due to policies configured by "
    "your administrator, you must refresh your multi-factor authentication to access "
    "'{resource}'.",
    65001: (
        "The user or administrator has not consented to use the application with ID "
        "'{client_id}'. Send an interactive authorization request for this user and resource."
    ),
    50057: "The user account is disabled.",
    50055: "The password is expired.",
    9002313: "Invalid request. Request is malformed or invalid.",
}
_SUBERRORS: Final = {
    65001: "consent_required",
    50076: "basic_action",
    50079: "basic_action",
    50078: "basic_action",
    70043: "basic_action",
}


# --------------------------------------------------------------------------- the emulator

CONTROL_ROUTES: Final[tuple[tuple[str, str, str], ...]] = (
    (
        "GET",
        "/_emulator/health",
        "liveness: {ok, base_url, api_url, authority, ca_bundle_path, tenant_id, now}",
    ),
    ("GET", "/_emulator/ca.pem", "the trustme CA certificate (PEM) the authority is served with"),
    ("POST", "/_emulator/mailboxes", "{user_id, time_zone?} -> 201 {user_id, object_id}"),
    ("GET", "/_emulator/mailboxes/{user}/events", "-> list_live_events(user)"),
    (
        "POST",
        "/_emulator/refresh_tokens",
        "{client_id, user_ids?} -> 201 {refresh_token, account}",
    ),
    ("POST", "/_emulator/refresh_tokens/revoke", "{refresh_token, code?=50173} -> 204"),
    ("POST", "/_emulator/mailboxes/{user}/events", "create; ?notify=false -> 201 event"),
    ("POST", "/_emulator/mailboxes/{user}/events/bulk", "{events: [...]}, no notify -> 201 {ids}"),
    ("PATCH", "/_emulator/mailboxes/{user}/events/{id}", "update; ?notify=false -> 200 event"),
    ("DELETE", "/_emulator/mailboxes/{user}/events/{id}", "delete; ?notify=false -> 204"),
    (
        "POST",
        "/_emulator/mailboxes/{user}/events/{id}/corrupt",
        "raw resource, stored unvalidated; ?notify=false -> 204",
    ),
    (
        "POST",
        "/_emulator/mailboxes/{user}/expire_delta_tokens",
        '{style?: "410" | "syncStateNotFound"} -> 204',
    ),
    ("GET", "/_emulator/subscriptions", "-> [subscription resource + user_id]"),
    (
        "POST",
        "/_emulator/subscriptions/{id}/lifecycle",
        '{event: "reauthorizationRequired" | "subscriptionRemoved" | "missed"} -> 204',
    ),
    *_base.SHARED_CONTROL_ROUTES,
)
"""Every control route on ``base_url``: (method, path, contract). Not part of Graph."""


class MicrosoftEmulator(_base.BaseEmulator[_Grant, GraphApiError, _Push]):
    """Microsoft Graph v1.0 (calendar) + Microsoft identity platform, on 127.0.0.1.

    Use as ``async with MicrosoftEmulator() as emu:`` (starts both sites on free
    ports) or ``await emu.start(host)`` / ``await emu.aclose()``. Control methods
    (``add_mailbox``, ``create_event``, ...) are plain synchronous calls meant
    for the loop that runs the server; most are also reachable over HTTP under
    ``/_emulator`` (see ``CONTROL_ROUTES``) for a separate process.

    ``clock`` (epoch seconds) drives timestamps, token and subscription expiry;
    :meth:`advance_clock` shifts it. ``seed`` makes ids and faults
    reproducible (token strings stay unpredictable). ``max_subscription_minutes``
    is the longest subscription accepted (longer answers 400, as the subscription docs say);
    ``page_size_default`` the delta page size without ``Prefer:
    odata.maxpagesize``; ``tenant`` the authority's path segment.
    ``push_retry_delays`` are the waits before each retry of a notification
    answered non-2xx (Graph retries for 4 h; scaled down here);
    ``validation_timeout`` how long the create handshake waits (10 s, as the change
    notifications docs say);
    ``mailbox_concurrency`` the concurrent calls per app and mailbox before
    429 ``ApplicationThrottled`` (None: unlimited); ``reauthorize_within``
    (seconds, None = never) sends ``reauthorizationRequired`` once to a
    subscription's lifecycle URL when it gets that close to expiry;
    ``old_refresh_tokens`` whether a refresh token still works once it was rotated
    (``"revoked"``, the default, or ``"valid"`` as Entra does: see the module notes).
    """

    API_PREFIX = API_PREFIX
    GRANT_SCOPE_FIELD = "user_ids"
    SEAL_PADDING = False  # delta tokens travel in URLs
    error_type = GraphApiError

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
        max_subscription_minutes: int = 10080,
        page_size_default: int = 100,
        tenant: str = "common",
        push_retry_delays: Sequence[float] = (0.05, 0.2, 0.5),
        push_timeout: float = 10.0,
        validation_timeout: float = 10.0,
        mailbox_concurrency: int | None = 4,
        reauthorize_within: float | None = None,
        old_refresh_tokens: Literal["revoked", "valid"] = "revoked",
    ) -> None:
        if not 1 <= page_size_default <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size_default must be within [1, {MAX_PAGE_SIZE}]")
        if not tenant or "/" in tenant:
            raise ValueError("tenant must be one path segment")
        super().__init__(
            faults=FaultInjector(_FAULT_KINDS, self._fault_response, seed),
            clock=clock,
            seed=seed,
            push_retry_delays=push_retry_delays,
            push_timeout=push_timeout,
        )
        self.max_subscription_minutes = max_subscription_minutes
        self.page_size_default = page_size_default
        self.tenant = tenant
        self.validation_timeout = validation_timeout
        self.mailbox_concurrency = mailbox_concurrency
        self.reauthorize_within = reauthorize_within
        #: whether a rotated refresh token keeps working ("valid": Entra's behaviour)
        self.old_refresh_tokens = old_refresh_tokens
        self.delta_replay_probability: float = 0.0
        self.subscriptions: dict[str, Subscription] = {}
        self.delivery_log: list[DeliveryRecord] = []
        self.tenant_id = self._uuid()
        self._mailboxes: dict[str, _Mailbox] = {}
        self._inflight: dict[tuple[str, str], int] = {}
        self._calls: dict[int, _RequestState] = {}
        self._listings: _base.ListingCache[_Query, _Listing] = _base.ListingCache(
            _LISTING_CACHE_SIZE
        )
        self._auth_origin: str | None = None
        self._codes: dict[str, _oauth.AuthCode] = {}
        self._app_access: dict[str, list[str] | None] = {}
        self._devices: dict[str, _DeviceCode] = {}
        self._client_certificates: dict[str, dict[str, Any]] = {}
        #: app-only (client-credentials) tokens minted so far
        self.app_tokens_issued = 0
        self._ca_dir: str | None = None
        self._ca_pem: bytes = b""

    # ----------------------------------------------------------------- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0, authority_port: int = 0) -> None:
        """Serve Graph on ``host:port`` (HTTP) and the identity platform on
        ``host:authority_port`` (TLS); 0 picks a free port.

        Writes the CA certificate to a temporary ``ca_bundle_path`` (removed by
        :meth:`aclose`). Needs ``trustme`` (a dev dependency). Raises
        RuntimeError when already started or closed.
        """
        self._check_startable()
        try:
            import trustme
        except ImportError as exc:  # pragma: no cover - dev extra missing
            raise RuntimeError(
                "the Microsoft emulator needs `trustme` (pip install trustme)"
            ) from exc
        shown = self._shown_host(host)
        identities = ["127.0.0.1", "localhost"] + (
            [shown] if shown not in ("127.0.0.1", "localhost") else []
        )

        def make_ca() -> ssl.SSLContext:
            ca = trustme.CA()
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert(*identities).configure_cert(context)
            self._ca_pem = ca.cert_pem.bytes()
            self._ca_dir = tempfile.mkdtemp(prefix="calsync-msemu-")
            Path(self._ca_dir, "ca.pem").write_bytes(self._ca_pem)
            return context

        server_ctx = await asyncio.to_thread(make_ca)
        bound = await self._serve(self._api_app(), host, port)
        self._base_url = f"http://{shown}:{bound}"
        auth_app = web.Application(middlewares=[self._auth_middleware])
        self._add_auth_routes(auth_app)
        bound = await self._serve(auth_app, host, authority_port, server_ctx)
        self._auth_origin = f"https://{shown}:{bound}"
        self._open_session()

    def _after_close(self) -> None:
        if self._ca_dir is not None:
            shutil.rmtree(self._ca_dir, ignore_errors=True)

    @property
    def api_url(self) -> str:
        """``base_url + "/v1.0"`` (what ``CALSYNC_GRAPH_API_URL`` is set to)."""
        return self.base_url + API_PREFIX

    @property
    def authority_origin(self) -> str:
        """``https://HOST:PORT`` of the identity site."""
        if self._auth_origin is None:
            raise RuntimeError("MicrosoftEmulator is not started")
        return self._auth_origin

    @property
    def authority(self) -> str:
        """``https://HOST:PORT/<tenant>`` (what ``CALSYNC_MICROSOFT_AUTHORITY`` is set to)."""
        return f"{self.authority_origin}/{self.tenant}"

    @property
    def token_url(self) -> str:
        """``authority + "/oauth2/v2.0/token"``."""
        return self.authority + "/oauth2/v2.0/token"

    @property
    def ca_bundle_path(self) -> str:
        """A PEM file with the CA that signed the authority's certificate
        (``CALSYNC_MICROSOFT_CA_BUNDLE``); it exists until :meth:`aclose`."""
        if self._ca_dir is None:
            raise RuntimeError("MicrosoftEmulator is not started")
        return str(Path(self._ca_dir, "ca.pem"))

    # ----------------------------------------------------------------- clock & ids

    def advance_clock(self, seconds: float) -> None:
        """Move the emulator clock forward; expired subscriptions are dropped at once."""
        super().advance_clock(seconds)
        self._sweep()

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _event_id(self) -> str:
        # The shape of an Outlook REST id: "AAMkA" + URL-safe base64, ending in "=".
        raw = self._rng.getrandbits(8 * 68).to_bytes(68, "big")
        return "AAMkA" + base64.urlsafe_b64encode(raw).decode()[5:]

    def _change_key(self) -> str:
        return base64.b64encode(self._rng.getrandbits(8 * 22).to_bytes(22, "big")).decode()

    def _ical_uid(self) -> str:
        stamp = int(self.now() * 10_000_000) + 116_444_736_000_000_000
        tail = f"{self._rng.getrandbits(128):032X}"
        return f"{_ICAL_PREFIX}00000000{stamp:016X}000000000000000010000000{tail}"

    @staticmethod
    def _occurrence_id(master_id: str, original: datetime) -> str:
        # Reversible, so an occurrence id names its series and slot without a lookup.
        return "AAMkA" + _b64url(f"{master_id}\n{original:%Y%m%dT%H%M%S}".encode())

    @staticmethod
    def _parse_occurrence_id(event_id: str) -> tuple[str, datetime] | None:
        if not event_id.startswith("AAMkA"):
            return None
        try:
            master, _, when = _unb64url(event_id[5:]).decode().partition("\n")
            return master, datetime.strptime(when, "%Y%m%dT%H%M%S")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None

    # ----------------------------------------------------------------- control: identity

    def add_mailbox(self, user_id: str, *, time_zone: str = "UTC") -> None:
        """Create an empty mailbox (its default calendar). ``time_zone`` (Windows or
        IANA) is the zone of events created without a ``timeZone``. 409 if it exists,
        400 on an unknown zone."""
        if not user_id or "/" in user_id:
            raise _bad_request("Invalid user id.")
        if user_id.lower() in self._mailboxes:
            raise GraphApiError(409, "Conflict", f"Mailbox {user_id} already exists.")
        try:
            _zone(time_zone)
        except ValueError:
            raise _time_zone_not_supported(time_zone) from None
        mailbox = _Mailbox(user_id=user_id, object_id=self._uuid(), time_zone=time_zone)
        self._mailboxes[user_id.lower()] = mailbox
        self._mailboxes[mailbox.object_id] = mailbox

    def mailbox_object_id(self, user_id: str) -> str:
        """The mailbox's user object id (the GUID in notification ``resource`` paths)."""
        return self._mailbox(user_id).object_id

    def issue_refresh_token(self, client_id: str, user_ids: list[str] | None = None) -> str:
        """A new refresh token (a new grant) for ``client_id`` covering ``user_ids``
        (None = every mailbox). The first user id is the signed-in user (``/me``,
        ``id_token``, ``client_info``). KeyError for an unknown client."""
        self._check_client(client_id)
        token = self._new_refresh_token()
        ids = None if user_ids is None else list(user_ids)
        home_user = ids[0] if ids else f"admin@{self.tenant_id[:8]}.onmicrosoft.com"
        home_mailbox = self._mailboxes.get(home_user.lower())
        grant = _Grant(
            client_id=client_id,
            user_ids=ids,
            account=self._account_for(token),
            home_object_id=home_mailbox.object_id if home_mailbox else self._uuid(),
            home_user=home_user,
            current=token,
        )
        self._refresh[token] = grant
        return token

    def grants_of(self, user_id: str) -> list[str]:
        """The live refresh tokens of the grants ``user_id`` consented to, oldest first."""
        return [
            g.current
            for t, g in self._refresh.items()
            if g.home_user.lower() == user_id.lower() and t == g.current and g.consented
        ]

    @staticmethod
    def _new_refresh_token() -> str:
        return "0.AXoA-emu-" + secrets.token_urlsafe(48)

    def current_refresh_token(self, refresh_token: str) -> str:
        """The live refresh token of the grant ``refresh_token`` belongs to."""
        return self._grant(refresh_token).current

    def revoke_refresh_token(self, refresh_token: str, *, code: int = 50173) -> None:
        """Revoke the grant: its next refresh answers ``invalid_grant`` with
        ``AADSTS<code>`` (50173 grant revoked, 700082 inactivity, 65001 consent, ...).
        Access tokens already minted keep working until they expire (as in Entra)."""
        self._grant(refresh_token).revoked_code = code

    # ----------------------------------------------------------------- control: events

    def _mailbox(self, user: str) -> _Mailbox:
        mailbox = self._mailboxes.get(user.lower()) or self._mailboxes.get(user)
        if mailbox is None:
            raise _not_found(f"The mailbox {user} was not found.")
        return mailbox

    def _timing(self, event: Mapping[str, Any], mailbox: _Mailbox) -> _Timing:
        """Validate start/end/isAllDay/recurrence; raises the 400s Graph answers."""

        def point(which: str) -> tuple[datetime, str, ZoneInfo]:
            raw = event.get(which)
            if not isinstance(raw, Mapping) or raw.get("dateTime") is None:
                raise _bad_request(
                    f"Your request can't be completed. The {which} time is missing.",
                    "ErrorInvalidRequest",
                )
            zone_name = raw.get("timeZone") or mailbox.time_zone
            try:
                tz = _zone(zone_name)
            except ValueError:
                raise _time_zone_not_supported(str(zone_name)) from None
            local = _parse_local(raw.get("dateTime"), tz)
            if local is None:
                raise _bad_request(
                    f"Cannot convert the literal '{raw.get('dateTime')}' to the expected type "
                    "'Edm.DateTimeOffset'.",
                    "BadRequest",
                )
            return local, str(zone_name), tz

        start_local, start_zone, start_tz = point("start")
        end_local, end_zone, end_tz = point("end")
        all_day = event.get("isAllDay", False)
        if not isinstance(all_day, bool):
            raise _bad_request("Invalid value for isAllDay.")
        if all_day and (
            start_local.time() != datetime.min.time()
            or end_local.time() != datetime.min.time()
            or start_zone != end_zone
            or end_local <= start_local
        ):
            raise _bad_request(
                "Your request can't be completed. If the event is an all-day event, start and "
                "end must be specified as midnight in the same time zone, with end after start.",
                "ErrorPropertyValidationFailure",
            )
        if _localize(end_local, end_tz) < _localize(start_local, start_tz):
            raise _bad_request(
                "Your request can't be completed. The end time must be after the start time.",
                "ErrorInvalidRequest",
            )
        show_as = event.get("showAs", "busy")
        if show_as not in SHOW_AS:
            raise _bad_request(f"Invalid value '{show_as}' for showAs.")
        raw_recurrence = event.get("recurrence")
        recurrence = (
            _parse_recurrence(raw_recurrence, start_local.date())
            if raw_recurrence is not None
            else None
        )
        return _Timing(
            start_local, start_zone, start_tz, end_local, end_zone, end_tz, all_day, recurrence
        )

    def create_event(
        self, user_id: str, event: Mapping[str, Any], *, notify: bool = True
    ) -> EventResource:
        """Store a new event and return it as Graph answers ``POST /events``.

        ``start``/``end`` keep the caller's ``timeZone`` (Windows or IANA; the
        mailbox zone when missing) and get 7 fractional digits; server fields
        (``id``, ``changeKey``, ``@odata.etag``, ``iCalUId``, timestamps, ``type``
        ``singleInstance``/``seriesMaster``, organizer = the mailbox, ...) are
        set. Raises 404 (mailbox), 400 (times, zone, all-day, showAs,
        recurrence). ``notify=False`` sends no change notification (the change
        is still visible to delta).
        """
        mailbox = self._mailbox(user_id)
        rec = self._insert(mailbox, event, self._stamp())
        if notify:
            self._notify(mailbox, "created", rec.resource["id"], rec.resource["@odata.etag"])
        return _jcopy(rec.resource)

    def create_events(
        self, user_id: str, events: Iterable[Mapping[str, Any]]
    ) -> list[EventResource]:
        """:meth:`create_event` for many events at once, without notifications.

        One change-sequence step per event, all stamped with the same instant.
        Not atomic: when an event is rejected the error is raised and the ones
        before it stay.
        """
        mailbox = self._mailbox(user_id)
        stamp = self._stamp()
        return [_jcopy(self._insert(mailbox, event, stamp).resource) for event in events]

    def _stamp(self) -> str:
        return _iso7z(self.now())

    def _insert(self, mailbox: _Mailbox, event: Mapping[str, Any], stamp: str) -> _Record:
        if not isinstance(event, Mapping):
            raise _bad_request("Unable to read JSON request payload.")
        timing = self._timing(event, mailbox)
        ev: EventResource = {
            k: _jcopy(v) for k, v in event.items() if k not in _READ_ONLY_KEYS or k == "id"
        }
        event_id = ev.pop("id", None) or self._event_id()
        if not isinstance(event_id, str):
            raise _bad_request("Invalid id.")
        if event_id in mailbox.events:
            raise GraphApiError(
                409, "ErrorItemAlreadyExists", "An item with this id already exists."
            )
        seq = mailbox.bump()
        change_key = self._change_key()
        self._server_defaults(ev, mailbox, event_id)
        ev.update(
            {
                "@odata.etag": f'W/"{change_key}"',
                "id": event_id,
                "createdDateTime": stamp,
                "lastModifiedDateTime": stamp,
                "changeKey": change_key,
                "originalStartTimeZone": timing.start_zone,
                "originalEndTimeZone": timing.end_zone,
                "iCalUId": self._ical_uid(),
                "type": "seriesMaster" if timing.recurrence else "singleInstance",
                "seriesMasterId": None,
                "start": {"dateTime": _iso7(timing.start_local), "timeZone": timing.start_zone},
                "end": {"dateTime": _iso7(timing.end_local), "timeZone": timing.end_zone},
                "isAllDay": timing.all_day,
            }
        )
        if timing.recurrence is None:
            ev["recurrence"] = None
        rec = _Record(_canonical(ev), seq, [(seq, timing)], timing)
        mailbox.events[event_id] = rec
        return rec

    def _server_defaults(self, ev: EventResource, mailbox: _Mailbox, event_id: str) -> None:
        # The nested defaults are shared, not copied: a stored resource is a value
        # (every change replaces it or its top-level keys; reads hand out copies), so
        # its events can share them, which at 10,000 calendars saves about a third of
        # the memory.
        ev.setdefault("subject", "")
        body = ev.setdefault("body", _DEFAULTS["body"])
        content = body.get("content", "") if isinstance(body, Mapping) else ""
        ev.setdefault("bodyPreview", re.sub(r"<[^>]*>", "", str(content))[:255])
        ev.setdefault("categories", _DEFAULTS["categories"])
        ev.setdefault("transactionId", None)
        ev.setdefault("reminderMinutesBeforeStart", 15)
        ev.setdefault("isReminderOn", True)
        ev.setdefault("hasAttachments", False)
        ev.setdefault("importance", "normal")
        ev.setdefault("sensitivity", "normal")
        ev.setdefault("isCancelled", False)
        ev.setdefault("isOrganizer", True)
        ev.setdefault("responseRequested", True)
        ev.setdefault("showAs", "busy")
        ev.setdefault(
            "webLink",
            "https://outlook.office365.com/owa/?itemid="
            + quote(event_id, safe="")
            + "&exvsurl=1&path=/calendar/item",
        )
        ev.setdefault("onlineMeetingUrl", None)
        ev.setdefault("isOnlineMeeting", False)
        ev.setdefault("onlineMeetingProvider", "unknown")
        ev.setdefault("allowNewTimeProposals", True)
        ev.setdefault("isDraft", False)
        ev.setdefault("hideAttendees", False)
        for key in ("responseStatus", "location", "locations", "attendees"):
            ev.setdefault(key, _DEFAULTS[key])
        if not mailbox.organizer:
            name = mailbox.user_id.split("@")[0]
            mailbox.organizer = {"emailAddress": {"name": name, "address": mailbox.user_id}}
        ev.setdefault("organizer", mailbox.organizer)
        ev.setdefault("onlineMeeting", None)

    def update_event(
        self,
        user_id: str,
        event_id: str,
        changes: Mapping[str, Any],
        *,
        notify: bool = True,
    ) -> EventResource:
        """Apply ``changes`` (top-level replace; a ``None`` value clears the field)
        and return the event as stored (``PATCH /events`` answer).

        New ``changeKey``/``@odata.etag``/``lastModifiedDateTime``; read-only
        fields are ignored. ``event_id`` may name an occurrence: the change is kept
        as an ``exception`` of that occurrence (``recurrence`` cannot be set there).
        On an event broken by :meth:`corrupt_event` the merged result must
        validate (that repairs it). Raises 404 unknown/deleted, 400 invalid.
        """
        mailbox = self._mailbox(user_id)
        if not isinstance(changes, Mapping):
            raise _bad_request("Unable to read JSON request payload.")
        rec = mailbox.events.get(event_id)
        if rec is None or rec.deleted:
            return self._change_occurrence(mailbox, event_id, changes, cancel=False, notify=notify)
        new = _jcopy(rec.resource)
        _base.merge_changes(new, changes, _READ_ONLY_KEYS)
        if rec.corrupt:
            self._server_defaults(new, mailbox, event_id)
        timing = self._timing(new, mailbox)
        seq = mailbox.bump()
        change_key = self._change_key()
        stamp = self._stamp()
        new.update(
            {
                "@odata.etag": f'W/"{change_key}"',
                "id": event_id,
                "lastModifiedDateTime": stamp,
                "changeKey": change_key,
                "type": "seriesMaster" if timing.recurrence else "singleInstance",
                "start": {"dateTime": _iso7(timing.start_local), "timeZone": timing.start_zone},
                "end": {"dateTime": _iso7(timing.end_local), "timeZone": timing.end_zone},
                "isAllDay": timing.all_day,
            }
        )
        new.setdefault("createdDateTime", stamp)
        new.setdefault("originalStartTimeZone", timing.start_zone)
        new.setdefault("originalEndTimeZone", timing.end_zone)
        new.setdefault("iCalUId", self._ical_uid())
        new.setdefault("seriesMasterId", None)
        if timing.recurrence is None:
            new["recurrence"] = None
        rec.resource = _canonical(new)
        rec.change_seq = seq
        if rec.timing != timing:
            rec.history.append((seq, timing))
        rec.timing = timing
        if notify:
            self._notify(mailbox, "updated", event_id, rec.resource["@odata.etag"])
        return _jcopy(rec.resource)

    def delete_event(self, user_id: str, event_id: str, *, notify: bool = True) -> None:
        """Delete the event (or cancel one occurrence of a series).

        Delta then reports ``@removed`` (reason ``deleted``) for it, and for every
        occurrence of a deleted series a client may know. Raises 404 for unknown
        or already deleted events.
        """
        mailbox = self._mailbox(user_id)
        rec = mailbox.events.get(event_id)
        if rec is None or rec.deleted:
            self._change_occurrence(mailbox, event_id, {}, cancel=True, notify=notify)
            return
        rec.deleted = True
        rec.change_seq = mailbox.bump()
        if notify:
            self._notify(mailbox, "deleted", event_id, rec.resource.get("@odata.etag"))

    def corrupt_event(
        self,
        user_id: str,
        event_id: str,
        raw: Mapping[str, Any],
        *,
        notify: bool = True,
    ) -> None:
        """Store ``{"id": event_id, **raw}`` as the event, unvalidated (a provider bug:
        ``{"start": {"dateTime": "garbage", "timeZone": "Mars/Olympus"}}``, no
        ``end``, ...). Nothing is added. Creates the event when unknown; 404 for
        an unknown mailbox; ``raw`` must be JSON-serializable.

        A normal change otherwise: it bumps the change sequence (delta returns it
        in the next round) and notifies (``updated``) unless ``notify=False``.
        Delta never reads its timing: it is listed, as stored, in every window;
        :meth:`update_event` with valid values repairs it; :meth:`delete_event`
        works.
        """
        mailbox = self._mailbox(user_id)
        stored = _base.raw_resource(event_id, raw)
        rec = mailbox.upsert(event_id, stored, mailbox.bump(), lambda r: _Record(r, 0, [], None))
        rec.timing = None
        rec.deleted = False
        if notify:
            self._notify(mailbox, "updated", event_id, stored.get("@odata.etag"))

    def get_event(self, user_id: str, event_id: str) -> EventResource:
        """The stored event (start/end in their own zones), or an occurrence as delta
        renders it in UTC. 404 for unknown or deleted ones."""
        mailbox = self._mailbox(user_id)
        rec = mailbox.events.get(event_id)
        if rec is not None and not rec.deleted:
            return _jcopy(rec.resource)
        master, original = self._find_occurrence(mailbox, event_id)
        override = master.overrides.get(original)
        if override is not None and override.cancelled:
            raise _not_found()
        assert master.timing is not None
        return _jcopy(
            self._render_occurrence(master, master.timing, original, override, _UTC_ZONE, "UTC")
        )

    def list_live_events(
        self, user_id: str, *, start: datetime | None = None, end: datetime | None = None
    ) -> list[EventResource]:
        """The mailbox's live events as a full calendarView delta round over
        [``start``, ``end``) renders them (UTC), in page order (by id); copies.

        Without a window: every single event, and occurrences of series from their
        first one to two years after now. Events stored by :meth:`corrupt_event`
        are listed as stored. 404 for an unknown mailbox.
        """
        mailbox = self._mailbox(user_id)
        lower = start.astimezone(UTC) if start is not None else datetime(1, 1, 2, tzinfo=UTC)
        upper = end.astimezone(UTC) if end is not None else self._now_dt() + _EXPANSION_HORIZON
        if start is None:
            firsts = [
                rec.timing.span.start_utc
                for rec in mailbox.events.values()
                if rec.timing is not None and not rec.deleted
            ]
            lower = min([*firsts, upper]) - timedelta(days=1)
        if end is None:
            lasts = [
                rec.timing.span.end_utc
                for rec in mailbox.events.values()
                if rec.timing is not None and not rec.deleted and rec.timing.recurrence is None
            ]
            upper = max([*lasts, upper]) + timedelta(days=1)
        items = self._collect(mailbox, None, lower, upper, _UTC_ZONE, "UTC")
        return [_jcopy(item) for _, item in items]

    def expire_delta_tokens(self, user_id: str, *, style: str = "410") -> None:
        """Every ``$deltatoken`` and ``$skiptoken`` of the mailbox minted so far stops
        working: style ``"410"`` answers 410 ``resyncRequired`` with a ``Location``
        header (the same delta URL with the round's window and an empty
        ``$deltatoken``: a sync reset); ``"syncStateNotFound"`` answers 410
        ``SyncStateNotFound`` (the sheet's expired-token body). ValueError for
        another style."""
        if style not in EXPIRY_STYLES:
            raise ValueError(f"style must be one of {EXPIRY_STYLES}")
        mailbox = self._mailbox(user_id)
        mailbox.expired_styles[mailbox.epoch] = style
        mailbox.epoch += 1

    def _find_occurrence(self, mailbox: _Mailbox, event_id: str) -> tuple[_Record, datetime]:
        parsed = self._parse_occurrence_id(event_id)
        if parsed is None:
            raise _not_found()
        master_id, original = parsed
        master = mailbox.events.get(master_id)
        if (
            master is None
            or master.deleted
            or master.timing is None
            or master.timing.recurrence is None
            or not master.timing.has_occurrence(original)
        ):
            raise _not_found()
        return master, original

    def _change_occurrence(
        self,
        mailbox: _Mailbox,
        event_id: str,
        changes: Mapping[str, Any],
        *,
        cancel: bool,
        notify: bool,
    ) -> EventResource:
        master, original = self._find_occurrence(mailbox, event_id)
        assert master.timing is not None
        override = master.overrides.get(original)
        if override is not None and override.cancelled:
            raise _not_found()
        delta: dict[str, Any] = _jcopy(override.delta) if override is not None else {}
        for key, value in changes.items():
            if key in _READ_ONLY_KEYS or key == "recurrence":
                continue
            delta[key] = _jcopy(value)
        timing = override.timing if override is not None else None
        if "start" in changes or "end" in changes or "isAllDay" in changes:
            slot = master.timing.slot(original)
            base: dict[str, Any] = {
                "start": {
                    "dateTime": _iso7(
                        slot.start_utc.astimezone(master.timing.start_tz).replace(tzinfo=None)
                    ),
                    "timeZone": master.timing.start_zone,
                },
                "end": {
                    "dateTime": _iso7(
                        slot.end_utc.astimezone(master.timing.end_tz).replace(tzinfo=None)
                    ),
                    "timeZone": master.timing.end_zone,
                },
                "isAllDay": master.timing.all_day,
            }
            merged = dict(base)
            merged.update((k, delta[k]) for k in ("start", "end", "isAllDay") if k in delta)
            timing = self._timing(merged, mailbox)
        seq = mailbox.bump()
        change_key = self._change_key()
        master.overrides[original] = _Override(
            delta, timing, cancel, seq, change_key, self._stamp()
        )
        if notify:
            self._notify(mailbox, "deleted" if cancel else "updated", event_id, f'W/"{change_key}"')
        if cancel:
            return {}
        return self._render_occurrence(
            master, master.timing, original, master.overrides[original], _UTC_ZONE, "UTC"
        )

    # ----------------------------------------------------------------- rendering

    @staticmethod
    def _render_point(span: _Span, which: str, tz: ZoneInfo, label: str) -> dict[str, str]:
        if span.all_day:
            local = span.start_local if which == "start" else span.end_local
        else:
            instant = span.start_utc if which == "start" else span.end_utc
            local = instant.astimezone(tz).replace(tzinfo=None)
        return {"dateTime": _iso7(local), "timeZone": label}

    def _render_single(self, rec: _Record, tz: ZoneInfo, label: str) -> EventResource:
        assert rec.timing is not None
        out = dict(rec.resource)
        span = rec.timing.span
        out["start"] = self._render_point(span, "start", tz, label)
        out["end"] = self._render_point(span, "end", tz, label)
        out["@odata.type"] = "#microsoft.graph.event"
        return _canonical(out)

    def _render_occurrence(
        self,
        master: _Record,
        timing: _Timing,
        original: datetime,
        override: _Override | None,
        tz: ZoneInfo,
        label: str,
    ) -> EventResource:
        m = master.resource
        master_id = m["id"]
        out: EventResource = {k: v for k, v in m.items() if k != "recurrence"}
        out["@odata.type"] = "#microsoft.graph.event"
        out["id"] = self._occurrence_id(master_id, original)
        out["type"] = "occurrence"
        out["seriesMasterId"] = master_id
        out["recurrence"] = None
        slot = timing.slot(original)
        out["originalStart"] = _utc_z(slot.start_utc)
        ical = str(m.get("iCalUId", ""))
        if len(ical) >= 40:
            out["iCalUId"] = (
                ical[:32] + f"{original.year:04X}{original.month:02X}{original.day:02X}" + ical[40:]
            )
        span = slot
        if override is not None:
            out.update(override.delta)
            out["type"] = "exception"
            out["changeKey"] = override.change_key
            out["@odata.etag"] = f'W/"{override.change_key}"'
            out["lastModifiedDateTime"] = override.modified
            if override.timing is not None:
                span = override.timing.span
                out["isAllDay"] = override.timing.all_day
        out["start"] = self._render_point(span, "start", tz, label)
        out["end"] = self._render_point(span, "end", tz, label)
        return _canonical(out)

    @staticmethod
    def _series_originals(
        rec: _Record, timing: _Timing, lower: datetime, upper: datetime
    ) -> list[datetime]:
        """Original starts of the occurrences generated in the window, plus those of
        exceptions moved into it from outside."""
        originals = {original for original, _ in timing.occurrences(lower, upper)}
        for original, override in rec.overrides.items():
            if original in originals or override.timing is None:
                continue
            span = override.timing.span
            if _overlaps(span.start_utc, span.end_utc, lower, upper) and timing.has_occurrence(
                original
            ):
                originals.add(original)
        return sorted(originals)

    @staticmethod
    def _occurrence_span(timing: _Timing, original: datetime, override: _Override | None) -> _Span:
        if override is not None and override.timing is not None:
            return override.timing.span
        return timing.slot(original)

    def _collect(
        self,
        mailbox: _Mailbox,
        since: int | None,
        lower: datetime,
        upper: datetime,
        tz: ZoneInfo,
        label: str,
    ) -> list[tuple[str, EventResource]]:
        """Every item of a delta round, sorted by id (keyset-paged).

        Initial round (``since`` None): live instances in the window. Incremental:
        what changed after ``since``, in full when it is in the window now, else
        ``@removed`` (also for changed events that are, or moved, out of the window).
        """
        out: dict[str, EventResource] = {}

        def full(item: EventResource) -> None:
            out[item["id"]] = item

        def removed(event_id: str) -> None:
            out.setdefault(event_id, _removed(event_id))

        for event_id, rec in mailbox.events.items():
            changed = since is None or rec.change_seq > since
            timing = rec.timing
            if timing is None:  # corrupt: listed as stored, timing never read
                if changed and not rec.deleted:
                    full(dict(rec.resource))
                elif changed and since is not None:
                    removed(event_id)
                continue
            if since is not None and not changed and not rec.overrides:
                continue
            current: set[str] = set()
            if rec.deleted:
                pass
            elif timing.recurrence is None:
                span = timing.span
                if changed and _overlaps(span.start_utc, span.end_utc, lower, upper):
                    current.add(event_id)
                    full(self._render_single(rec, tz, label))
            else:
                # A series: its occurrences (and exceptions) stand for it.
                for original in self._series_originals(rec, timing, lower, upper):
                    override = rec.overrides.get(original)
                    if override is not None and override.cancelled:
                        continue
                    span = self._occurrence_span(timing, original, override)
                    if not _overlaps(span.start_utc, span.end_utc, lower, upper):
                        continue
                    occ_id = self._occurrence_id(event_id, original)
                    current.add(occ_id)
                    if changed or (
                        override is not None and since is not None and override.change_seq > since
                    ):
                        full(self._render_occurrence(rec, timing, original, override, tz, label))
            if since is None:
                continue
            if changed:
                # What the client may know from before, and is no longer shown, is removed;
                # a changed event outside the window is reported @removed too (event: delta docs).
                for old in rec.relevant_timings(since):
                    if old.recurrence is None:
                        known = [event_id]
                    else:
                        known = [
                            self._occurrence_id(event_id, original)
                            for original, _ in old.occurrences(lower, upper)
                        ]
                    for known_id in known:
                        if known_id not in current:
                            removed(known_id)
                if not current:
                    removed(event_id)
            for original, override in rec.overrides.items():
                occ_id = self._occurrence_id(event_id, original)
                if override.change_seq > since and occ_id not in current:
                    removed(occ_id)
        keys = sorted(out)
        items = [(k, out[k]) for k in keys]
        if since is not None and self.delta_replay_probability > 0.0:
            replayed: list[tuple[str, EventResource]] = []
            for key, item in items:
                replayed.append((key, item))
                if self.faults.rng.random() < self.delta_replay_probability:
                    replayed.append((key + "\x00replay", item))
            items = replayed
        return items

    # ----------------------------------------------------------------- notifications

    def _sweep(self) -> None:
        """Drop expired subscriptions; send due ``reauthorizationRequired`` notices."""
        now = self.now()
        for sub in list(self.subscriptions.values()):
            if sub.expires_at <= now:
                del self.subscriptions[sub.id]
                continue
            if (
                self.reauthorize_within is not None
                and not sub.reauthorization_sent
                and sub.lifecycle_notification_url
                and sub.expires_at - now <= self.reauthorize_within
            ):
                sub.reauthorization_sent = True
                self._enqueue_lifecycle(sub, "reauthorizationRequired")

    def _notify(self, mailbox: _Mailbox, change_type: str, event_id: str, etag: Any) -> None:
        """Queue a change notification on every live subscription of the mailbox."""
        self._sweep()
        for sub in self.subscriptions.values():
            if sub.user_id != mailbox.user_id or change_type not in sub.change_types:
                continue
            self._enqueue(
                _Push(
                    sub,
                    "notification",
                    change_type,
                    sub.notification_url,
                    event_id,
                    etag if isinstance(etag, str) else None,
                    mailbox.object_id,
                )
            )

    def send_lifecycle(self, subscription_id: str, event: str) -> None:
        """Send a lifecycle notification (``reauthorizationRequired``,
        ``subscriptionRemoved`` or ``missed``) to the subscription's
        ``lifecycleNotificationUrl``; ``subscriptionRemoved`` also deletes the
        subscription. Without a lifecycle URL nothing is sent (logged as such).
        KeyError for an unknown subscription, ValueError for another event."""
        if event not in LIFECYCLE_EVENTS:
            raise ValueError(f"event must be one of {LIFECYCLE_EVENTS}")
        self._sweep()
        sub = self.subscriptions.get(subscription_id)
        if sub is None:
            raise KeyError(f"unknown subscription {subscription_id!r}")
        self._enqueue_lifecycle(sub, event)
        if event == "subscriptionRemoved":
            del self.subscriptions[subscription_id]

    def _enqueue_lifecycle(self, sub: Subscription, event: str) -> None:
        url = sub.lifecycle_notification_url
        if not url:
            self.delivery_log.append(
                DeliveryRecord(
                    sub.id,
                    "lifecycle",
                    event,
                    None,
                    "",
                    None,
                    "no lifecycleNotificationUrl",
                    1,
                    self.now(),
                )
            )
            return
        self._enqueue(_Push(sub, "lifecycle", event, url))

    def _enqueue(self, job: _Push) -> None:
        queue = self._push_queues.get(job.url)
        if queue is None:
            queue = self._open_queue(
                job.url, functools.partial(self._deliver_batch, job.url), _MAX_BATCH
            )
        queue.put_nowait(job)

    async def _deliver_batch(self, url: str, batch: list[_Push]) -> None:
        for kind in ("lifecycle", "notification"):
            group = [job for job in batch if job.kind == kind]
            if group:
                await self._deliver(url, group)

    def _log(
        self, job: _Push, status: int | None, error: str | None, attempt: int = 1, batch: int = 1
    ) -> None:
        self.delivery_log.append(
            DeliveryRecord(
                job.subscription.id,
                job.kind,
                job.event,
                job.resource_id,
                job.url,
                status,
                error,
                attempt,
                self.now(),
                batch,
            )
        )

    def _payload(self, job: _Push) -> dict[str, Any]:
        sub = job.subscription
        if job.kind == "lifecycle":
            return {
                "subscriptionId": sub.id,
                "subscriptionExpirationDateTime": sub.expiration_date_time,
                "tenantId": self.tenant_id,
                "clientState": sub.client_state,
                "lifecycleEvent": job.event,
            }
        resource = f"Users/{job.object_id}/Events/{job.resource_id}"
        return {
            "id": _b64url(self._rng.getrandbits(80).to_bytes(10, "big")),
            "subscriptionId": sub.id,
            "subscriptionExpirationDateTime": sub.expiration_date_time,
            "clientState": sub.client_state,
            "changeType": job.event,
            "resource": resource,
            "tenantId": self.tenant_id,
            "resourceData": {
                "@odata.type": "#Microsoft.Graph.Event",
                "@odata.id": resource,
                "@odata.etag": job.etag,
                "id": job.resource_id,
            },
        }

    def _still_deliverable(self, job: _Push) -> bool:
        if job.kind == "lifecycle":
            return True
        sub = job.subscription
        if sub.expires_at <= self.now():
            self.subscriptions.pop(sub.id, None)
            self._log(job, None, "subscription expired")
            return False
        if self.subscriptions.get(sub.id) is not sub:
            self._log(job, None, "subscription deleted")
            return False
        return True

    async def _deliver(self, url: str, jobs: list[_Push]) -> None:
        live: list[_Push] = []
        for job in jobs:
            if not self._still_deliverable(job):
                continue
            if job.kind == "notification" and self.faults.should_drop_push():
                self._log(job, None, DROPPED)
                continue
            live.append(job)
        if not live:
            return
        if self._session is None:
            for job in live:
                self._log(job, None, "emulator closed")
            return
        body = json.dumps({"value": [self._payload(job) for job in live]}).encode()

        def log(status: int | None, error: str | None, attempt: int) -> None:
            for job in live:
                self._log(job, status, error, attempt, len(live))

        def still_wanted() -> bool:
            if live[0].kind == "notification":
                live[:] = [job for job in live if self._still_deliverable(job)]
            return bool(live)

        await self._post_with_retries(
            yarl.URL(url, encoded=True),
            body,
            {"Content-Type": "application/json; charset=utf-8"},
            log=log,
            retry=lambda status: status is None or not 200 <= status < 300,
            still_wanted=still_wanted,
        )

    # ----------------------------------------------------------------- HTTP plumbing

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        api = API_PREFIX
        r = router
        r.add_get(api + "/users/{user}/calendarView/delta", self._h_delta)
        r.add_get(api + "/users/{user}/calendarview/delta", self._h_delta)
        r.add_get(api + "/me/calendarView/delta", self._h_delta)
        r.add_get(api + "/me/calendarview/delta", self._h_delta)
        r.add_get(api + "/users/{user}/mailboxSettings/timeZone", self._h_mailbox_time_zone)
        r.add_get(api + "/me/mailboxSettings/timeZone", self._h_mailbox_time_zone)
        r.add_post(api + "/subscriptions", self._h_create_subscription)
        r.add_get(api + "/subscriptions", self._h_list_subscriptions)
        r.add_get(api + "/subscriptions/{id}", self._h_get_subscription)
        r.add_patch(api + "/subscriptions/{id}", self._h_patch_subscription)
        r.add_delete(api + "/subscriptions/{id}", self._h_delete_subscription)
        r.add_post(api + "/subscriptions/{id}/reauthorize", self._h_reauthorize)
        c = _base.CONTROL_PREFIX
        r.add_get(c + "/ca.pem", self._c_ca)
        r.add_post(c + "/mailboxes", self._c_add_mailbox)
        r.add_get(c + "/mailboxes/{user}/events", self._c_list_events)
        r.add_post(c + "/refresh_tokens/revoke", self._c_revoke_refresh)
        r.add_post(c + "/mailboxes/{user}/events", self._c_create)
        r.add_post(c + "/mailboxes/{user}/events/bulk", self._c_create_bulk)
        r.add_patch(c + "/mailboxes/{user}/events/{id}", self._c_update)
        r.add_delete(c + "/mailboxes/{user}/events/{id}", self._c_delete)
        r.add_post(c + "/mailboxes/{user}/events/{id}/corrupt", self._c_corrupt)
        r.add_post(c + "/mailboxes/{user}/expire_delta_tokens", self._c_expire_delta)
        r.add_get(c + "/subscriptions", self._c_subscriptions)
        r.add_post(c + "/subscriptions/{id}/lifecycle", self._c_lifecycle)

    def _add_auth_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/common/discovery/instance", self._a_instance_discovery)
        r.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._a_openid_configuration)
        r.add_post("/{tenant}/oauth2/v2.0/token", self._a_token)
        r.add_post("/{tenant}/oauth2/v2.0/devicecode", self._a_devicecode)
        r.add_get("/{tenant}/v2.0/adminconsent", self._a_adminconsent)
        r.add_post("/{tenant}/v2.0/adminconsent", self._a_adminconsent_submit)
        r.add_get("/devicelogin", self._a_devicelogin)
        r.add_post("/devicelogin", self._a_devicelogin_submit)
        r.add_get("/{tenant}/oauth2/v2.0/authorize", self._a_authorize)
        r.add_post("/{tenant}/oauth2/v2.0/authorize", self._a_consent)
        r.add_get("/{tenant}/discovery/v2.0/keys", self._a_keys)

    def _state(self, request: web.Request) -> _RequestState:
        """Per-call state, kept by ``id(request)`` while the middleware runs the call."""
        state = self._calls.get(id(request))
        if state is None:
            request_id = self._uuid()
            client_request_id = request.headers.get("client-request-id") or request_id
            state = _RequestState(request_id, client_request_id)
            self._calls[id(request)] = state
        return state

    def _error_response(self, exc: GraphApiError, request: web.Request) -> web.Response:
        state = self._state(request)
        date = self._now_dt().strftime("%Y-%m-%dT%H:%M:%S")
        body = exc.envelope(
            date=date, request_id=state.request_id, client_request_id=state.client_request_id
        )
        return web.json_response(body, status=exc.status, headers=exc.headers)

    def _fault_response(self, rule: FaultRule[FaultKind], request: web.Request) -> web.Response:
        return self._error_response(_fault_error(rule.kind), request)

    def _concurrency_key(self, request: web.Request) -> tuple[str, str] | None:
        if self.mailbox_concurrency is None:
            return None
        grant = self._grant_of(request)
        user = request.match_info.get("user")
        if user is None and request.path.startswith(API_PREFIX + "/me/") and grant is not None:
            user = grant.home_user
        mailbox = self._mailboxes.get(user.lower()) if user else None
        if mailbox is None:
            return None
        return (grant.client_id if grant else "", mailbox.object_id)

    def _open_call(self, request: web.Request) -> None:
        self._state(request)

    def _admit(self, request: web.Request) -> tuple[str, web.StreamResponse] | None:
        """Sweep subscriptions, then take one of the mailbox's concurrent-call slots
        (429 ``ApplicationThrottled`` when none is left)."""
        self._sweep()
        key = self._concurrency_key(request)
        if key is None:
            return None
        assert self.mailbox_concurrency is not None
        if self._inflight.get(key, 0) >= self.mailbox_concurrency:
            return "mailbox_concurrency", self._error_response(_application_throttled(), request)
        self._inflight[key] = self._inflight.get(key, 0) + 1
        self._state(request).slot = key
        return None

    def _close_call(self, request: web.Request) -> None:
        slot = self._state(request).slot
        if slot is not None:
            left = self._inflight.get(slot, 1) - 1
            if left > 0:
                self._inflight[slot] = left
            else:
                self._inflight.pop(slot, None)
        self._calls.pop(id(request), None)

    def _unrouted(
        self, request: web.Request, exc: web.HTTPException, is_api: bool
    ) -> web.StreamResponse:
        if not is_api:
            raise exc
        segment = request.path[len(API_PREFIX) + 1 :].split("/")[-1]
        return self._error_response(
            _bad_request(f"Resource not found for the segment '{segment}'."), request
        )

    def _finish(self, request: web.Request, answer: web.StreamResponse) -> web.StreamResponse:
        """Graph's ``request-id``/``client-request-id`` headers on every ``/v1.0`` answer."""
        if request.path.startswith(API_PREFIX + "/"):
            state = self._state(request)
            answer.headers.setdefault("request-id", state.request_id)
            answer.headers.setdefault("client-request-id", state.client_request_id)
        return answer

    @web.middleware
    async def _auth_middleware(
        self, request: web.Request, handler: _base.Handler
    ) -> web.StreamResponse:
        arrival = self.now()
        status = 500
        headers: Mapping[str, str] = {}
        try:
            answer = await handler(request)
            status, headers = answer.status, answer.headers
            return answer
        except web.HTTPException as exc:
            status, headers = exc.status, exc.headers
            raise
        finally:
            self.requests.append(self._record(request, arrival, status, None, headers, False))

    def _attribution(self, request: web.Request, is_api: bool) -> tuple[str | None, str | None]:
        if not is_api:
            return None, None
        grant = self._grant_of(request)
        mailbox = self._state(request).mailbox
        if mailbox is None:
            user = request.match_info.get("user")
            found = self._mailboxes.get(user.lower()) if user else None
            mailbox = found.user_id if found else None
        return None if grant is None else grant.account, mailbox

    def _authorize(self, request: web.Request) -> _Grant:
        """The grant behind a valid bearer token; 401 ``InvalidAuthenticationToken`` else."""
        token = self._bearer(request)
        www = {
            "WWW-Authenticate": (
                f'Bearer realm="", authorization_uri="{self.authority}/oauth2/authorize", '
                f'client_id="{GRAPH_APP_ID}"'
            )
        }
        if not token:
            raise GraphApiError(
                401, "InvalidAuthenticationToken", "Access token is empty.", headers=www
            )
        access = self._access.get(token)
        if access is None:
            if token in self._minted:
                raise GraphApiError(
                    401,
                    "InvalidAuthenticationToken",
                    "Lifetime validation failed, the token is expired.",
                    headers=www,
                )
            raise GraphApiError(
                401, "InvalidAuthenticationToken", "Access token validation failure.", headers=www
            )
        if access.expires_at <= self.now():
            raise GraphApiError(
                401,
                "InvalidAuthenticationToken",
                "Lifetime validation failed, the token is expired.",
                headers=www,
            )
        return access.grant

    def _authorize_mailbox(self, request: web.Request, user: str | None) -> tuple[_Mailbox, _Grant]:
        grant = self._authorize(request)
        if user is None:  # /me
            if grant.user_ids is None:
                raise _bad_request("/me request is only valid with delegated authentication flow.")
            user = grant.home_user
        mailbox = self._mailbox(user)
        self._state(request).mailbox = mailbox.user_id
        if grant.user_ids is not None and mailbox.user_id.lower() not in {
            u.lower() for u in grant.user_ids
        }:
            if grant.app_only:  # outside the application access policy
                raise GraphApiError(403, "ErrorAccessDenied", "Access to OData is disabled.")
            raise _access_denied()
        return mailbox, grant

    # ----------------------------------------------------------------- identity platform

    def _tenant_ok(self, tenant: str) -> bool:
        return tenant.lower() in {self.tenant.lower(), self.tenant_id, *_MULTI_TENANT}

    def _aad_error(
        self,
        request: web.Request,
        status: int,
        error: str,
        code: int,
        message: str,
        *,
        suberror: str | None = None,
    ) -> web.Response:
        trace_id = self._uuid()
        correlation_id = request.headers.get("client-request-id") or self._uuid()
        stamp = self._now_dt().strftime("%Y-%m-%d %H:%M:%SZ")
        body: TokenError = {
            "error": error,
            "error_description": (
                f"AADSTS{code}: {message}\r\nTrace ID: {trace_id}\r\n"
                f"Correlation ID: {correlation_id}\r\nTimestamp: {stamp}"
            ),
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{self.authority_origin}/error?code={code}",
        }
        if suberror is not None:
            body["suberror"] = suberror
        return web.json_response(
            body,
            status=status,
            headers={
                "Cache-Control": "no-store, no-cache",
                "Pragma": "no-cache",
                "x-ms-request-id": trace_id,
                "client-request-id": correlation_id,
            },
        )

    def _authorize_error(self, title: str, code: int, message: str) -> web.Response:
        return web.Response(
            text=_oauth.error_page(title, f"AADSTS{code}: {message}"),
            status=400,
            content_type="text/html",
        )

    async def _a_authorize(self, request: web.Request) -> web.Response:
        """The sign-in and consent page of the authorization-code flow.

        Unknown client (AADSTS700016) or a redirect URI not registered byte for byte
        (AADSTS50011): an error page, no redirect. Otherwise only ``response_type=code``
        and ``response_mode=query|form_post``; errors go back to the redirect URI with
        ``error``, ``error_description`` and the ``state``."""
        tenant = request.match_info["tenant"]
        params = request.query
        client_id = params.get("client_id", "")
        redirect_uri = params.get("redirect_uri", "")
        if not self._tenant_ok(tenant):
            return self._authorize_error("Sign in", 90002, f"Tenant '{tenant}' not found.")
        if client_id not in self._clients:
            return self._authorize_error(
                "Sign in", 700016, f"Application with identifier '{client_id}' was not found."
            )
        if redirect_uri not in self._redirect_uris.get(client_id, set()):
            return self._authorize_error(
                "Sign in",
                50011,
                f"The redirect URI '{redirect_uri}' specified in the request does not match "
                f"the redirect URIs configured for the application '{client_id}'.",
            )
        state = params.get("state")
        echo = {"state": state} if state is not None else {}
        mode = params.get("response_mode") or "query"

        def refuse(error: str, code: int, message: str) -> web.Response:
            query = {"error": error, "error_description": f"AADSTS{code}: {message}", **echo}
            raise web.HTTPFound(redirect_uri + "?" + urlencode(query))

        if params.get("response_type") != "code":
            refuse("unsupported_response_type", 70005, "response_type must be 'code'.")
        if mode not in ("query", "form_post"):
            refuse("invalid_request", 900144, "response_mode must be 'query' or 'form_post'.")
        challenge = params.get("code_challenge")
        method = params.get("code_challenge_method") or "plain"
        if method not in ("plain", "S256"):
            refuse("invalid_request", 501491, "Invalid code_challenge_method.")
        scope = params.get("scope", "")
        hidden = {
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": state or "",
            "has_state": "1" if state is not None else "",
            "mode": mode,
            "code_challenge": challenge or "",
            "code_challenge_method": method,
            "nonce": params.get("nonce") or "",
        }
        user = params.get("login_hint") or next((m.user_id for m in self._mailboxes.values()), "")
        page = _oauth.consent_page(
            action=request.path,
            hidden={"request": self._seal({"t": "authz", **hidden})},
            client_id=client_id,
            scope=scope,
            user=user,
        )
        return web.Response(text=page, content_type="text/html")

    async def _a_consent(self, request: web.Request) -> web.Response:
        form = await request.post()
        sealed = form.get("request")
        params = self._unseal(sealed, "authz") if isinstance(sealed, str) else None
        if params is None:
            return self._authorize_error("Sign in", 90015, "The request was tampered with.")
        redirect_uri = str(params["redirect_uri"])
        echo = {"state": str(params["state"])} if params.get("has_state") else {}
        if form.get("decision") != "allow":
            query = {
                "error": "access_denied",
                "error_description": "AADSTS65004: User declined to consent to access the app.",
                **echo,
            }
            return self._redirect_back(redirect_uri, str(params["mode"]), query)
        user = str(form.get("user") or "")
        if user.lower() not in self._mailboxes:
            return self._authorize_error(
                "Sign in", 50034, f"The user account {user!r} does not exist."
            )
        code = "1.AXoA-emu-code-" + secrets.token_urlsafe(32)
        self._codes[code] = _oauth.AuthCode(
            client_id=str(params["client_id"]),
            redirect_uri=redirect_uri,
            scope=str(params["scope"]),
            user=self._mailboxes[user.lower()].user_id,
            code_challenge=str(params["code_challenge"]) or None,
            code_challenge_method=str(params["code_challenge_method"]),
            offline="offline_access" in str(params["scope"]).split(),
            expires_at=self.now() + _oauth.CODE_LIFETIME,
            nonce=str(params["nonce"]) or None,
        )
        query = {"code": code, **echo, "session_state": self._uuid()}
        return self._redirect_back(redirect_uri, str(params["mode"]), query)

    @staticmethod
    def _redirect_back(redirect_uri: str, mode: str, query: Mapping[str, str]) -> web.Response:
        if mode == "form_post":
            fields = "".join(
                f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                for k, v in query.items()
            )
            return web.Response(
                text=(
                    '<html><body><form method="POST" name="hiddenform" '
                    f'action="{html.escape(redirect_uri)}">{fields}'
                    '<noscript><input type="submit" value="Continue"></noscript>'
                    "</form></body></html>"
                ),
                content_type="text/html",
            )
        raise web.HTTPFound(redirect_uri + "?" + urlencode(query))

    async def _a_adminconsent(self, request: web.Request) -> web.Response:
        """The admin consent page: an administrator grants the app's application
        permissions for the whole tenant. Not on ``common``; the redirect URI must be
        registered; the answer is ``?admin_consent=True&tenant=&scope=&state=``."""
        tenant = request.match_info["tenant"]
        params = request.query
        client_id = params.get("client_id", "")
        redirect_uri = params.get("redirect_uri", "")
        if tenant.lower() in _MULTI_TENANT or not self._tenant_ok(tenant):
            return self._authorize_error(
                "Admin consent", 90002, "Admin consent needs a tenant-specific endpoint."
            )
        if client_id not in self._clients:
            return self._authorize_error(
                "Admin consent", 700016, f"Application with identifier '{client_id}' was not found."
            )
        if redirect_uri not in self._redirect_uris.get(client_id, set()):
            return self._authorize_error(
                "Admin consent", 50011, f"The redirect URI '{redirect_uri}' does not match."
            )
        hidden = {
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": params.get("scope", ""),
            "state": params.get("state", ""),
        }
        page = _oauth.consent_page(
            action=request.path,
            hidden={"request": self._seal({"t": "adminconsent", **hidden})},
            client_id=client_id,
            scope=hidden["scope"],
            user=f"admin@{self.tenant_id[:8]}.onmicrosoft.com",
        )
        return web.Response(text=page, content_type="text/html")

    async def _a_adminconsent_submit(self, request: web.Request) -> web.Response:
        form = await request.post()
        sealed = form.get("request")
        params = self._unseal(sealed, "adminconsent") if isinstance(sealed, str) else None
        if params is None:
            return self._authorize_error("Admin consent", 90015, "The request was tampered with.")
        echo = {"state": str(params["state"])} if params.get("state") else {}
        if form.get("decision") != "allow":
            query = {
                "error": "access_denied",
                "error_description": "AADSTS65004: The admin declined to consent.",
                **echo,
            }
        else:
            self.consent_application(str(params["client_id"]))
            query = {
                "admin_consent": "True",
                "tenant": self.tenant_id,
                "scope": str(params["scope"]),
                **echo,
            }
        raise web.HTTPFound(str(params["redirect_uri"]) + "?" + urlencode(query))

    async def _a_devicecode(self, request: web.Request) -> web.Response:
        """The device authorization request (RFC 8628) of a public client."""
        form = await _base.TokenForm.read(request)
        client_id = form.get("client_id") or ""
        if client_id not in self._clients:
            return self._aad_error(
                request,
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory.",
            )
        device_code = "DAQABAAEAAAD-emu-" + secrets.token_urlsafe(32)
        user_code = "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(9))
        self._devices[device_code] = _DeviceCode(
            client_id, user_code, form.get("scope") or "", self.now() + DEVICE_CODE_LIFETIME
        )
        verification_uri = f"{self.authority_origin}/devicelogin"
        return web.json_response(
            {
                "user_code": user_code,
                "device_code": device_code,
                "verification_uri": verification_uri,
                "expires_in": int(DEVICE_CODE_LIFETIME),
                "interval": 1,
                "message": (
                    f"To sign in, use a web browser to open the page {verification_uri} and "
                    f"enter the code {user_code} to authenticate."
                ),
            },
            headers={"Cache-Control": "no-store, no-cache"},
        )

    async def _a_devicelogin(self, request: web.Request) -> web.Response:
        page = (
            "<!doctype html><html><body><h1>Enter code</h1>"
            '<form method="post" action="/devicelogin">'
            '<label>Code <input name="user_code"></label>'
            '<label>Account <input name="user"></label>'
            '<button name="decision" value="allow">Allow</button>'
            '<button name="decision" value="deny">Deny</button></form></body></html>'
        )
        return web.Response(text=page, content_type="text/html")

    async def _a_devicelogin_submit(self, request: web.Request) -> web.Response:
        form = await request.post()
        code = str(form.get("user_code") or "").strip().upper()
        device = next(
            (d for d in self._devices.values() if d.user_code == code and d.user is None), None
        )
        if device is None or device.expires_at <= self.now():
            return self._authorize_error("Enter code", 70000, "The code you entered has expired.")
        if form.get("decision") != "allow":
            device.declined = True
            return web.Response(
                text=_oauth.error_page("Declined", "No access."), content_type="text/html"
            )
        user = str(form.get("user") or "").lower()
        if user not in self._mailboxes:
            return self._authorize_error(
                "Sign in", 50034, f"The user account {user!r} does not exist."
            )
        device.user = self._mailboxes[user].user_id
        return web.Response(
            text=_oauth.error_page("You have signed in", "You may now close this window."),
            content_type="text/html",
        )

    def _redeem_device_code(
        self, request: web.Request, form: _base.TokenForm, client_id: str
    ) -> web.Response:
        device = self._devices.get(form.get("device_code") or "")
        if device is None or device.client_id != client_id:
            return self._aad_error(
                request, 400, "invalid_grant", 70000, "The provided device code is not valid."
            )
        if device.expires_at <= self.now():
            return self._aad_error(
                request, 400, "expired_token", 70019, "Verification code expired."
            )
        if device.declined:
            return self._aad_error(
                request, 400, "authorization_declined", 70000, "The user declined to sign in."
            )
        if device.user is None:
            return self._aad_error(
                request,
                400,
                "authorization_pending",
                70016,
                "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
            )
        del self._devices[form.get("device_code") or ""]
        mailbox = self._mailboxes[device.user.lower()]
        token = self._new_refresh_token()
        grant = _Grant(
            client_id=client_id,
            user_ids=[mailbox.user_id],
            account=self._account_for(token),
            home_object_id=mailbox.object_id,
            home_user=mailbox.user_id,
            current=token,
            consented=True,
        )
        scopes = device.scope.split()
        return self._grant_response(
            request, form, grant, scopes, rotate=False, offline="offline_access" in scopes
        )

    def _check_client_assertion(
        self,
        request: web.Request,
        form: _base.TokenForm,
        client_id: str,
        assertion: str,
        tenant: str,
    ) -> web.Response | None:
        """A certificate credential (RFC 7523 client assertion): the JWT must be RS256
        or PS256, signed by a certificate registered for the app (``x5t`` or
        ``x5t#S256`` its thumbprint), ``aud`` the token URL, ``iss`` = ``sub`` = the
        client id, unexpired, lifetime at most ten minutes. None when it holds."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def refuse(code: int, message: str) -> web.Response:
            return self._aad_error(request, 401, "invalid_client", code, message)

        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            return refuse(7000218, "Invalid client_assertion_type.")
        parts = assertion.split(".")
        try:
            if len(parts) != 3:
                raise ValueError("not a JWT")
            header = json.loads(_unb64url(parts[0]))
            claims = json.loads(_unb64url(parts[1]))
            signature = _unb64url(parts[2])
            if not isinstance(header, dict) or not isinstance(claims, dict):
                raise ValueError("not objects")
        except ValueError:
            return refuse(50027, "JWT token is invalid or malformed.")
        certs = self._client_certificates.get(client_id, {})
        thumbprint = header.get("x5t#S256") or header.get("x5t")
        public_key = certs.get(str(thumbprint).rstrip("="))  # padded or not
        if public_key is None:
            return refuse(
                700027,
                "The certificate with identifier used to sign the client assertion is not "
                "registered on application.",
            )
        algorithm = header.get("alg")
        pad: Any = (
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=hashes.SHA256.digest_size)
            if algorithm == "PS256"
            else padding.PKCS1v15()
        )
        if algorithm not in ("RS256", "PS256"):
            return refuse(50027, "JWT token is invalid or malformed.")
        try:
            public_key.verify(signature, f"{parts[0]}.{parts[1]}".encode(), pad, hashes.SHA256())
        except InvalidSignature:
            return refuse(700027, "Client assertion failed signature validation.")
        now = self.now()
        exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat"))
        audiences = {
            f"{self.authority_origin}/{tenant}/oauth2/v2.0/token",
            f"{self.authority_origin}/{self.tenant_id}/oauth2/v2.0/token",
        }
        if claims.get("aud") not in audiences:
            return refuse(700212, "No matching federated identity record found (aud).")
        if claims.get("iss") != client_id or claims.get("sub") != client_id:
            return refuse(700021, "Client assertion application identifier doesn't match.")
        if not isinstance(exp, (int, float)) or exp <= now:
            return refuse(700024, "Client assertion is not within its valid time range.")
        if isinstance(nbf, (int, float)) and (nbf > now + 300 or exp - nbf > 600 + 300):
            return refuse(700024, "Client assertion is not within its valid time range.")
        return None

    def _client_credentials(
        self, request: web.Request, form: _base.TokenForm, client_id: str, tenant: str
    ) -> web.Response:
        """App-only tokens: a tenant-specific authority, the ``/.default`` scope; the
        token reaches the mailboxes the application access policy allows (all, if none)."""
        if tenant.lower() in _MULTI_TENANT:
            return self._aad_error(
                request,
                400,
                "invalid_request",
                50059,
                "No tenant-identifying information found in either the request or implied "
                "by any provided credentials.",
            )
        scopes = (form.get("scope") or "").split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            return self._aad_error(
                request,
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {' '.join(scopes)} is not valid. Client "
                "credential flows must have a scope value with /.default suffixed to the "
                "resource identifier (application ID URI).",
            )
        allowed = self._app_access.get(client_id, [])
        grant = _Grant(
            client_id=client_id,
            user_ids=None if allowed is None else list(allowed),
            account=self._account_for("app:" + client_id),
            home_object_id=self._uuid(),
            home_user="",
            current="",
            app_only=True,
        )
        self.app_tokens_issued += 1
        return self._grant_response(request, form, grant, scopes, rotate=False, offline=False)

    def consent_application(self, client_id: str, mailboxes: Sequence[str] | None = None) -> None:
        """An administrator consents the app's application permission ``Calendars.Read``;
        ``mailboxes`` is an application access policy (None: every mailbox). Before
        this, app-only tokens read no mailbox (403)."""
        self._check_client(client_id)
        self._app_access[client_id] = None if mailboxes is None else list(mailboxes)

    def add_client_certificate(self, client_id: str, certificate_pem: bytes) -> str:
        """Register a certificate credential of ``client_id``; returns its SHA-1
        thumbprint (hex), the one ``CALSYNC_MICROSOFT_CLIENT_CERTIFICATE_THUMBPRINT`` names."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        self._check_client(client_id)
        cert = x509.load_pem_x509_certificate(certificate_pem)
        sha1 = cert.fingerprint(hashes.SHA1())  # noqa: S303 - the thumbprint Entra shows
        sha256 = cert.fingerprint(hashes.SHA256())
        keys = self._client_certificates.setdefault(client_id, {})
        keys[_b64url(sha1)] = keys[_b64url(sha256)] = cert.public_key()
        return sha1.hex().upper()

    def _redeem_code(
        self, request: web.Request, form: _base.TokenForm, client_id: str
    ) -> web.Response:
        """``grant_type=authorization_code`` for an authenticated client."""
        raw_code = form.get("code")
        if raw_code is None:
            return self._aad_error(
                request,
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'code'.",
            )
        code = self._codes.pop(raw_code, None)  # single use
        if code is None or code.expires_at <= self.now():
            return self._aad_error(
                request,
                400,
                "invalid_grant",
                70008,
                "The provided authorization code or refresh token has expired due to "
                "inactivity. Send a new interactive authorization request for this user "
                "and resource.",
            )
        if code.client_id != client_id:
            return self._aad_error(
                request,
                400,
                "invalid_grant",
                70000,
                "The provided value for the 'code' parameter is not valid. The code was "
                "issued to another application.",
            )
        if form.get("redirect_uri") != code.redirect_uri:
            return self._aad_error(
                request,
                400,
                "invalid_grant",
                50011,
                "The redirect URI specified in the request does not match the redirect URI "
                "used to obtain the authorization code.",
            )
        if not _oauth.pkce_matches(
            form.get("code_verifier"), code.code_challenge, code.code_challenge_method
        ):
            return self._aad_error(
                request,
                400,
                "invalid_grant",
                501481,
                "The Code_Verifier does not match the code_challenge supplied in the "
                "authorization request.",
            )
        token = self._new_refresh_token()
        mailbox = self._mailboxes[code.user.lower()]
        grant = _Grant(
            client_id=client_id,
            user_ids=[mailbox.user_id],
            account=self._account_for(token),
            home_object_id=mailbox.object_id,
            home_user=mailbox.user_id,
            current=token,
            consented=True,
        )
        requested = (form.get("scope") or code.scope).split()
        return self._grant_response(
            request, form, grant, requested, rotate=False, nonce=code.nonce, offline=code.offline
        )

    async def _a_instance_discovery(self, request: web.Request) -> web.Response:
        host = urlsplit(self.authority_origin).netloc
        return web.json_response(
            {
                "tenant_discovery_endpoint": (
                    f"{self.authority}/v2.0/.well-known/openid-configuration"
                ),
                "api-version": "1.1",
                "metadata": [
                    {"preferred_network": host, "preferred_cache": host, "aliases": [host]}
                ],
            }
        )

    async def _a_openid_configuration(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        if not self._tenant_ok(tenant):
            return self._aad_error(
                request,
                400,
                "invalid_tenant",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID "
                "and are signing into the correct cloud.",
            )
        base = f"{self.authority_origin}/{tenant}"
        issuer_tenant = "{tenantid}" if tenant.lower() in _MULTI_TENANT else self.tenant_id
        return web.json_response(
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{self.authority_origin}/{issuer_tenant}/v2.0",
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": f"{GRAPH_RESOURCE}/oidc/userinfo",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "claims_supported": [
                    "sub",
                    "iss",
                    "aud",
                    "exp",
                    "iat",
                    "auth_time",
                    "nonce",
                    "preferred_username",
                    "name",
                    "tid",
                    "ver",
                    "oid",
                ],
                "tenant_region_scope": None,
                "cloud_instance_name": "microsoftonline.com",
                "cloud_graph_host_name": "graph.windows.net",
                "msgraph_host": "graph.microsoft.com",
            }
        )

    async def _a_keys(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": []})

    def _jwt(self, claims: Mapping[str, Any]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "kid": "calsync-emulator"}
        parts = [
            _b64url(json.dumps(header, separators=(",", ":")).encode()),
            _b64url(json.dumps(claims, separators=(",", ":")).encode()),
            _b64url(secrets.token_bytes(64)),
        ]
        return ".".join(parts)

    async def _a_token(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        if not self._tenant_ok(tenant):
            return self._aad_error(
                request, 400, "invalid_request", 90002, f"Tenant '{tenant}' not found."
            )
        form = await _base.TokenForm.read(request)
        field_ = form.get
        client_id, client_secret = field_("client_id"), field_("client_secret")
        if form.basic is not None:
            basic_id, basic_secret = form.basic
            client_id = client_id or unquote(basic_id.replace("+", " ")) or None
            client_secret = client_secret or unquote(basic_secret.replace("+", " ")) or None

        def missing(name: str) -> web.Response:
            return self._aad_error(
                request,
                400,
                "invalid_request",
                900144,
                f"The request body must contain the following parameter: '{name}'.",
            )

        grant_type = field_("grant_type")
        if grant_type is None:
            return missing("grant_type")
        if client_id is None:
            return missing("client_id")
        if grant_type == DEVICE_CODE_GRANT and client_id in self._clients:
            return self._redeem_device_code(request, form, client_id)
        if grant_type not in ("refresh_token", "authorization_code", "client_credentials"):
            return self._aad_error(
                request,
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant_type}'.",
            )
        known_secret = self._clients.get(client_id)
        if known_secret is None:
            return self._aad_error(
                request,
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{self.tenant_id}'. This can happen if the application has not been installed "
                "by the administrator of the tenant or consented to by any user in the tenant. "
                "You may have sent your authentication request to the wrong tenant.",
            )
        assertion = field_("client_assertion")
        if client_secret is None and assertion is not None:
            refused = self._check_client_assertion(request, form, client_id, assertion, tenant)
            if refused is not None:
                return refused
        elif client_secret is None:
            return self._aad_error(
                request,
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or "
                "'client_secret'.",
            )
        elif not hmac.compare_digest(client_secret.encode(), known_secret.encode()):
            return self._aad_error(
                request,
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is "
                "the client secret value, not the client secret ID, for a secret added to app "
                f"'{client_id}'.",
            )
        if grant_type == "client_credentials":
            return self._client_credentials(request, form, client_id, tenant)
        if grant_type == "authorization_code":
            return self._redeem_code(request, form, client_id)
        refresh_token = field_("refresh_token")
        if refresh_token is None:
            return missing("refresh_token")
        grant = self._refresh.get(refresh_token)
        if grant is None:
            return self._aad_error(
                request,
                400,
                "invalid_grant",
                9002313,
                _AADSTS_MESSAGES[9002313],
                suberror="bad_token",
            )
        if grant.client_id != client_id:
            return self._aad_error(
                request, 400, "invalid_grant", 70000, _AADSTS_MESSAGES[70000], suberror="bad_token"
            )
        requested = (field_("scope") or "").split()
        if grant.revoked_code is not None:
            code = grant.revoked_code
            template = _AADSTS_MESSAGES.get(code, "The grant is no longer valid.")
            message = template.format(
                issued=self._now_dt().strftime("%m/%d/%Y %H:%M:%S"),
                now=self._now_dt().strftime("%m/%d/%Y %H:%M:%S"),
                resource=GRAPH_APP_ID,
                client_id=client_id,
            )
            return self._aad_error(
                request,
                400,
                "invalid_grant",
                code,
                message,
                suberror=_SUBERRORS.get(code, "bad_token"),
            )
        if refresh_token != grant.current and self.old_refresh_tokens == "revoked":
            return self._aad_error(
                request, 400, "invalid_grant", 70008, _AADSTS_MESSAGES[70008], suberror="bad_token"
            )
        return self._grant_response(request, form, grant, requested, rotate=True)

    def _grant_response(
        self,
        request: web.Request,
        form: _base.TokenForm,
        grant: _Grant,
        requested: list[str],
        *,
        rotate: bool,
        nonce: str | None = None,
        offline: bool = True,
    ) -> web.Response:
        """The token response of a grant: an access token, a (new) refresh token when
        ``offline``, an ID token when ``openid`` was asked (with ``nonce``)."""
        field_ = form.get
        client_id = grant.client_id
        scopes: list[str] = []
        for scope in requested:
            if scope.lower() in _OIDC_SCOPES:
                continue
            if scope.endswith("/.default"):
                scopes.extend(s for s in grant.scopes if s not in scopes)
            else:
                full = scope if "://" in scope else f"{GRAPH_RESOURCE}/{scope}"
                if full not in scopes:
                    scopes.append(full)
        if not scopes:
            scopes = list(grant.scopes)
        now = self.now()
        access_token = self._jwt(
            {
                "aud": GRAPH_RESOURCE,
                "iss": f"https://sts.windows.net/{self.tenant_id}/",
                "iat": int(now),
                "nbf": int(now),
                "exp": int(now) + ACCESS_TOKEN_LIFETIME,
                "appid": client_id,
                "oid": grant.home_object_id,
                "scp": " ".join(s.rsplit("/", 1)[-1] for s in scopes),
                "tid": self.tenant_id,
                "upn": grant.home_user,
                "uti": secrets.token_urlsafe(16),
                "ver": "1.0",
            }
        )
        self._mint(access_token, grant, ACCESS_TOKEN_LIFETIME)
        body: TokenResponse = {
            "token_type": "Bearer",
            "scope": " ".join(scopes),
            "expires_in": ACCESS_TOKEN_LIFETIME,
            "ext_expires_in": ACCESS_TOKEN_LIFETIME,
            "access_token": access_token,
        }
        if offline:
            new_refresh = self._new_refresh_token() if rotate else grant.current
            grant.current = new_refresh
            self._refresh[new_refresh] = grant
            body["refresh_token"] = new_refresh
        if "openid" in {s.lower() for s in requested}:
            body["id_token"] = self._jwt(
                {
                    "aud": client_id,
                    "iss": f"{self.authority_origin}/{self.tenant_id}/v2.0",
                    "iat": int(now),
                    "nbf": int(now),
                    "exp": int(now) + 3600,
                    "name": grant.home_user.split("@")[0],
                    "oid": grant.home_object_id,
                    "preferred_username": grant.home_user,
                    "sub": _b64url(
                        hashlib.sha256((grant.home_object_id + client_id).encode()).digest()[:32]
                    ),
                    "tid": self.tenant_id,
                    "ver": "2.0",
                    **({"nonce": nonce} if nonce is not None else {}),
                }
            )
        if field_("client_info") == "1":
            body["client_info"] = _b64url(
                json.dumps({"uid": grant.home_object_id, "utid": self.tenant_id}).encode()
            )
        return web.json_response(
            body,
            headers={
                "Cache-Control": "no-store, no-cache",
                "Pragma": "no-cache",
                "client-request-id": request.headers.get("client-request-id") or self._uuid(),
            },
        )

    # ----------------------------------------------------------------- calendarView delta

    async def _h_mailbox_time_zone(self, request: web.Request) -> web.Response:
        """``{"value": <zone>}``: the zone the mailbox was added with (Windows or IANA,
        as Outlook stores either). Scopes are not checked (real Graph wants
        ``MailboxSettings.Read`` and answers 403 ``ErrorAccessDenied`` without it)."""
        mailbox, _ = self._authorize_mailbox(request, request.match_info.get("user"))
        context = (
            f"{GRAPH_RESOURCE}/v1.0/$metadata#users('{quote(mailbox.user_id)}')"
            "/mailboxSettings/timeZone"
        )
        return web.json_response(
            {"@odata.context": context, "value": mailbox.time_zone}, content_type="application/json"
        )

    async def _h_delta(self, request: web.Request) -> web.Response:
        mailbox, _ = self._authorize_mailbox(request, request.match_info.get("user"))
        query = {k.lower(): v for k, v in request.query.items()}
        prefs = _preferences(request)
        applied: list[str] = []
        tz_label, tz = "UTC", ZoneInfo("UTC")
        wanted_tz = prefs.get("outlook.timezone")
        if wanted_tz:
            try:
                tz = _zone(wanted_tz)
                tz_label = wanted_tz
                applied.append(f'outlook.timezone="{wanted_tz}"')
            except ValueError:
                tz_label, tz = "UTC", ZoneInfo("UTC")
        page_size: int | None = None
        raw_size = prefs.get("odata.maxpagesize")
        if raw_size is not None:
            try:
                page_size = min(max(int(raw_size), 1), MAX_PAGE_SIZE)
                applied.append(f"odata.maxpagesize={page_size}")
            except ValueError:
                page_size = None
        if "idtype" in prefs:
            applied.append(f'IdType="{prefs["idtype"]}"')
        for name in ("$select", "$expand", "$filter", "$orderby", "$search", "$top"):
            if name in query:
                raise _bad_request(
                    "The following parameters are not supported with change tracking over the "
                    "'CalendarView' resource: "
                    "'$orderby, $filter, $select, $expand, $search, $top'.",
                    "ErrorInvalidUrlQuery",
                )
        skip = query.get("$skiptoken")
        delta = query.get("$deltatoken")
        cursor: str | None = None
        if skip is not None:
            payload = self._unseal(skip, "skip")
            if payload is None or payload.get("m") != mailbox.object_id:
                raise _sync_state_not_found()
            self._check_epoch(request, mailbox, payload)
            since = payload["s"]
            walk_seq = int(payload["w"])
            lower_s, upper_s = str(payload["lo"]), str(payload["hi"])
            cursor = str(payload["k"])
            if page_size is None:
                page_size = int(payload.get("n") or self.page_size_default)
        elif delta:
            payload = self._unseal(delta, "delta")
            if payload is None or payload.get("m") != mailbox.object_id:
                raise _sync_state_not_found()
            self._check_epoch(request, mailbox, payload)
            since = int(payload["s"])
            walk_seq = mailbox.seq
            lower_s, upper_s = str(payload["lo"]), str(payload["hi"])
        else:
            raw_lo, raw_hi = query.get("startdatetime"), query.get("enddatetime")
            if not raw_lo or not raw_hi:
                raise _bad_request(
                    "This request requires a time window specified by the query string "
                    "parameters StartDateTime and EndDateTime.",
                    "ErrorInvalidParameter",
                )
            lo = _parse_instant(raw_lo, "StartDateTime")
            hi = _parse_instant(raw_hi, "EndDateTime")
            if hi <= lo:
                raise _bad_request(
                    "The parameter 'EndDateTime' must be later than 'StartDateTime'.",
                    "ErrorInvalidParameter",
                )
            since = None
            walk_seq = mailbox.seq
            lower_s, upper_s = lo.isoformat(), hi.isoformat()
        size = page_size or self.page_size_default
        listing = self._listing(
            mailbox, _Query(mailbox.object_id, since, lower_s, upper_s, tz_label), tz
        )
        first = 0 if cursor is None else bisect.bisect_right(listing.keys, cursor)
        end = first + size
        page = listing.items[first:end]
        link_base = f"{self.base_url}{request.rel_url.raw_path}"
        body: dict[str, Any] = {"@odata.context": f"{self.api_url}/$metadata#Collection(event)"}
        if len(listing.items) > end:
            token = self._seal(
                {
                    "t": "skip",
                    "m": mailbox.object_id,
                    "s": since,
                    "w": walk_seq,
                    "e": mailbox.epoch,
                    "lo": lower_s,
                    "hi": upper_s,
                    "k": listing.keys[end - 1],
                    "n": size,
                }
            )
            body["@odata.nextLink"] = f"{link_base}?$skiptoken={token}"
            body["value"] = page
        else:
            body["value"] = page
            token = self._seal(
                {
                    "t": "delta",
                    "m": mailbox.object_id,
                    "s": walk_seq,
                    "e": mailbox.epoch,
                    "lo": lower_s,
                    "hi": upper_s,
                }
            )
            body["@odata.deltaLink"] = f"{link_base}?$deltatoken={token}"
        headers = {"Content-Type": _ODATA_JSON, "OData-Version": "4.0"}
        if applied:
            headers["Preference-Applied"] = ", ".join(applied)
        return web.Response(body=json.dumps(body).encode(), headers=headers)

    def _check_epoch(
        self, request: web.Request, mailbox: _Mailbox, payload: Mapping[str, Any]
    ) -> None:
        epoch = payload.get("e")
        if epoch == mailbox.epoch:
            return
        style = mailbox.expired_styles.get(int(epoch)) if isinstance(epoch, int) else None
        if style == "410":
            lo = quote(str(payload.get("lo", "")), safe="")
            hi = quote(str(payload.get("hi", "")), safe="")
            location = (
                f"{self.base_url}{request.rel_url.raw_path}"
                f"?startDateTime={lo}&endDateTime={hi}&$deltatoken="
            )
            raise _resync_required(location)
        raise _sync_state_not_found()

    def _listing(self, mailbox: _Mailbox, query: _Query, tz: ZoneInfo) -> _Listing:
        """The sorted items of ``query``, cached while the mailbox is unchanged."""
        cached = self._listings.get(query)
        if cached is not None and cached.seq == mailbox.seq:
            return cached
        lower = datetime.fromisoformat(query.lower)
        upper = datetime.fromisoformat(query.upper)
        items = self._collect(mailbox, query.since, lower, upper, tz, query.tz_label)
        listing = _Listing(mailbox.seq, [k for k, _ in items], [item for _, item in items])
        return self._listings.put(query, listing)

    # ----------------------------------------------------------------- subscriptions

    def _expiry(self, raw: Any) -> float:
        """The accepted expiry for a requested ``expirationDateTime`` (the subscription
        resource's rules)."""
        if not isinstance(raw, str) or not raw:
            raise _invalid_request("expirationDateTime is required.")
        try:
            requested = _parse_instant(raw, "expirationDateTime").timestamp()
        except GraphApiError:
            raise _invalid_request(f"Invalid expirationDateTime '{raw}'.") from None
        now = self.now()
        if requested - now > self.max_subscription_minutes * 60:
            raise _invalid_request(
                f"Subscription expiration can only be {self.max_subscription_minutes} minutes "
                "in the future."
            )
        return max(requested, now + MIN_SUBSCRIPTION_SECONDS)

    async def _validate_endpoint(self, subscription_id: str, url: str) -> str | None:
        """POST the validation request; the failure message, or None when it passed."""
        token = (
            "Validation: Testing client application reachability for subscription Request-Id: "
            + self._uuid()
        )
        sep = "&" if urlsplit(url).query else "?"
        target = yarl.URL(f"{url}{sep}validationToken={quote(token, safe='')}", encoded=True)
        session = self._session
        assert session is not None

        def log(status: int | None, error: str | None) -> None:
            self.delivery_log.append(
                DeliveryRecord(
                    subscription_id,
                    "validation",
                    "validation",
                    None,
                    url,
                    status,
                    error,
                    1,
                    self.now(),
                )
            )

        failed = (
            "Subscription validation request failed. Notification endpoint must respond with "
            "200 OK to validation request."
        )
        try:
            async with session.post(
                target,
                data=b"",
                headers={"Content-Type": "text/plain; charset=utf-8"},
                timeout=aiohttp.ClientTimeout(total=self.validation_timeout),
            ) as resp:
                text = (await resp.read()).decode("utf-8", errors="replace")
                status = resp.status
                content_type = resp.headers.get("Content-Type", "")
        except TimeoutError:
            log(None, "timeout")
            return "Subscription validation request timed out."
        except aiohttp.ClientError as exc:
            log(None, f"{type(exc).__name__}: {exc}")
            return failed
        log(status, None)
        if status != 200:
            return failed
        if not content_type.lower().startswith("text/plain") or text != token:
            return (
                "Subscription validation request failed. Response must exactly match "
                "validationToken query parameter."
            )
        return None

    async def _h_create_subscription(self, request: web.Request) -> web.Response:
        grant = self._authorize(request)
        body = await _json_object(request)
        change_type = body.get("changeType")
        if not isinstance(change_type, str) or not change_type.strip():
            raise _invalid_request("changeType is required.")
        parts = [p.strip() for p in change_type.split(",")]
        if any(p not in CHANGE_TYPES for p in parts) or len(set(parts)) != len(parts):
            raise _invalid_request(f"Invalid changeType '{change_type}'.")
        notification_url = body.get("notificationUrl")
        lifecycle_url = body.get("lifecycleNotificationUrl")
        for name, value in (
            ("notificationUrl", notification_url),
            ("lifecycleNotificationUrl", lifecycle_url),
        ):
            if value is None and name == "lifecycleNotificationUrl":
                continue
            if not isinstance(value, str) or not value.startswith(("https://", "http://")):
                raise _invalid_request(f"Invalid {name} '{value}'.")
        assert isinstance(notification_url, str)
        resource = body.get("resource")
        match = _RESOURCE_RE.match(resource) if isinstance(resource, str) else None
        if match is None:
            raise _invalid_request(f"Resource '{resource}' is not supported.")
        assert isinstance(resource, str)
        user = None if match.group("me") else match.group("user")
        mailbox, _ = self._authorize_mailbox(request, user)
        client_state = body.get("clientState")
        if client_state is not None and (
            not isinstance(client_state, str) or len(client_state) > MAX_CLIENT_STATE
        ):
            raise _invalid_request(
                f"clientState must be a string of at most {MAX_CLIENT_STATE} characters."
            )
        if body.get("includeResourceData"):
            raise _invalid_request(
                "includeResourceData is not supported by the emulator (rich notifications need "
                "an encryptionCertificate)."
            )
        expires_at = self._expiry(body.get("expirationDateTime"))
        self._sweep()
        for existing in self.subscriptions.values():
            if (
                existing.application_id == grant.client_id
                and existing.user_id == mailbox.user_id
                and existing.change_types == frozenset(parts)
            ):
                raise GraphApiError(
                    409,
                    "Conflict",
                    f"Subscription Id {existing.id} already exists for the requested combination",
                )
        subscription_id = self._uuid()
        urls = [notification_url] + ([lifecycle_url] if isinstance(lifecycle_url, str) else [])
        for url in urls:
            failure = await self._validate_endpoint(subscription_id, url)
            if failure is not None:
                raise GraphApiError(400, "ValidationError", failure)
        tls = body.get("latestSupportedTlsVersion")
        sub = Subscription(
            id=subscription_id,
            resource=resource,
            change_type=",".join(parts),
            notification_url=notification_url,
            lifecycle_notification_url=lifecycle_url if isinstance(lifecycle_url, str) else None,
            client_state=client_state,
            expires_at=expires_at,
            application_id=grant.client_id,
            creator_id=grant.home_object_id,
            user_id=mailbox.user_id,
            latest_supported_tls_version=tls if isinstance(tls, str) else "v1_2",
        )
        self.subscriptions[sub.id] = sub
        return web.json_response(sub.resource_json(self.api_url), status=201)

    def _own_subscription(self, request: web.Request) -> tuple[Subscription, _Grant]:
        grant = self._authorize(request)
        self._sweep()
        sub = self.subscriptions.get(request.match_info["id"])
        if sub is None or sub.application_id != grant.client_id:
            raise GraphApiError(
                404, "itemNotFound", f"The object '{request.match_info['id']}' was not found."
            )
        self._state(request).mailbox = sub.user_id
        return sub, grant

    async def _h_list_subscriptions(self, request: web.Request) -> web.Response:
        grant = self._authorize(request)
        self._sweep()
        value = [
            s.resource_json(self.api_url)
            for s in self.subscriptions.values()
            if s.application_id == grant.client_id
        ]
        items = [{k: v for k, v in item.items() if k != "@odata.context"} for item in value]
        return web.json_response(
            {"@odata.context": f"{self.api_url}/$metadata#subscriptions", "value": items}
        )

    async def _h_get_subscription(self, request: web.Request) -> web.Response:
        sub, _ = self._own_subscription(request)
        return web.json_response(sub.resource_json(self.api_url))

    async def _h_patch_subscription(self, request: web.Request) -> web.Response:
        sub, _ = self._own_subscription(request)
        body = await _json_object(request)
        sub.expires_at = self._expiry(body.get("expirationDateTime"))
        sub.reauthorization_sent = False
        return web.json_response(sub.resource_json(self.api_url))

    async def _h_delete_subscription(self, request: web.Request) -> web.Response:
        sub, _ = self._own_subscription(request)
        del self.subscriptions[sub.id]
        return web.Response(status=204)

    async def _h_reauthorize(self, request: web.Request) -> web.Response:
        sub, _ = self._own_subscription(request)
        sub.reauthorization_sent = False
        return web.Response(status=200)

    # ----------------------------------------------------------------- control routes

    def _health(self) -> dict[str, Any]:
        return {
            "authority": self.authority,
            "ca_bundle_path": self.ca_bundle_path,
            "tenant_id": self.tenant_id,
        }

    def _bad_json(self) -> GraphApiError:
        return _bad_json()

    def _control_error(self, message: str, name: str) -> GraphApiError:
        return _bad_request(message)

    def _missing_field(self, name: str) -> GraphApiError:
        return _bad_request(f"Missing required field: {name}")

    def _unknown(self, message: str) -> GraphApiError:
        return _not_found(message)

    def _deliveries(self) -> Sequence[DeliveryRecord]:
        return self.delivery_log

    async def _c_ca(self, request: web.Request) -> web.Response:
        return web.Response(body=self._ca_pem, content_type="application/x-pem-file")

    async def _c_add_mailbox(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        user_id = self._str_field(body, "user_id")
        self.add_mailbox(user_id, time_zone=str(body.get("time_zone") or "UTC"))
        return web.json_response(
            {"user_id": user_id, "object_id": self.mailbox_object_id(user_id)}, status=201
        )

    async def _c_list_events(self, request: web.Request) -> web.Response:
        return web.json_response(self.list_live_events(request.match_info["user"]))

    async def _c_revoke_refresh(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        code = body.get("code", 50173)
        if type(code) is not int:
            raise _bad_request("code must be an integer AADSTS code")
        try:
            self.revoke_refresh_token(self._str_field(body, "refresh_token"), code=code)
        except KeyError:
            raise _not_found("Unknown refresh token.") from None
        return web.Response(status=204)

    async def _c_create(self, request: web.Request) -> web.Response:
        event = self.create_event(
            request.match_info["user"],
            await _json_object(request),
            notify=self._notify_param(request),
        )
        return web.json_response(event, status=201)

    async def _c_create_bulk(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        events = body.get("events")
        if not isinstance(events, list):
            raise _bad_request("Missing required field: events")
        created = self.create_events(request.match_info["user"], events)
        return web.json_response({"ids": [e["id"] for e in created]}, status=201)

    async def _c_update(self, request: web.Request) -> web.Response:
        event = self.update_event(
            request.match_info["user"],
            request.match_info["id"],
            await _json_object(request),
            notify=self._notify_param(request),
        )
        return web.json_response(event)

    async def _c_delete(self, request: web.Request) -> web.Response:
        self.delete_event(
            request.match_info["user"], request.match_info["id"], notify=self._notify_param(request)
        )
        return web.Response(status=204)

    async def _c_corrupt(self, request: web.Request) -> web.Response:
        self.corrupt_event(
            request.match_info["user"],
            request.match_info["id"],
            await _json_object(request),
            notify=self._notify_param(request),
        )
        return web.Response(status=204)

    async def _c_expire_delta(self, request: web.Request) -> web.Response:
        body = await _json_object(request) if request.can_read_body else {}
        style = str(body.get("style") or "410")
        if style not in EXPIRY_STYLES:
            raise _bad_request(f"style must be one of {EXPIRY_STYLES}")
        self.expire_delta_tokens(request.match_info["user"], style=style)
        return web.Response(status=204)

    async def _c_subscriptions(self, request: web.Request) -> web.Response:
        self._sweep()
        return web.json_response(
            [
                {**s.resource_json(self.api_url), "user_id": s.user_id}
                for s in self.subscriptions.values()
            ]
        )

    async def _c_lifecycle(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        event = self._str_field(body, "event")
        try:
            self.send_lifecycle(request.match_info["id"], event)
        except KeyError:
            raise _not_found("Unknown subscription.") from None
        except ValueError as exc:
            raise _bad_request(str(exc)) from None
        return web.Response(status=204)


# --------------------------------------------------------------------------- CLI


async def serve_forever(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    authority_port: int = DEFAULT_AUTHORITY_PORT,
    emulator: MicrosoftEmulator | None = None,
    mailboxes: Sequence[tuple[str, str]] = (),
    clients: Sequence[tuple[str, str]] = (),
    stop: asyncio.Event | None = None,
) -> None:
    """Serve an emulator until ``stop`` is set or SIGINT/SIGTERM arrives; then close it.

    ``mailboxes`` are (user id, time zone) pairs and ``clients`` (id, secret)
    pairs registered before serving. Prints the base URL and the three
    ``CALSYNC_*`` settings on stdout once listening.
    """
    emu = emulator if emulator is not None else MicrosoftEmulator()
    for user_id, tz in mailboxes:
        emu.add_mailbox(user_id, time_zone=tz)
    await _base.serve_emulator(
        emu,
        clients=clients,
        stop=stop,
        start=lambda: emu.start(host, port, authority_port),
        banner=lambda: [
            f"Microsoft Graph emulator listening on {emu.base_url}",
            f"CALSYNC_GRAPH_API_URL={emu.api_url}",
            f"CALSYNC_MICROSOFT_AUTHORITY={emu.authority}",
            f"CALSYNC_MICROSOFT_CA_BUNDLE={emu.ca_bundle_path}",
        ],
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``calsync emulator microsoft`` argument parser."""
    parser = _base.emulator_parser(
        "calsync emulator microsoft",
        "Serve a local Microsoft Graph (calendar) + identity platform emulator.",
        default_port=DEFAULT_PORT,
        calendars=(
            "--mailbox",
            "USER[:TZ]",
            "register a mailbox (repeatable); TZ is a Windows or IANA name",
        ),
        client_help="register an app (repeatable)",
    )
    parser.add_argument("--authority-port", type=int, default=DEFAULT_AUTHORITY_PORT)
    parser.add_argument("--tenant", default="common")
    parser.add_argument("--max-subscription-minutes", type=int, default=10080)
    parser.add_argument("--page-size-default", type=int, default=100)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``calsync emulator microsoft [options]``; returns the exit status."""
    args = build_parser().parse_args(argv)
    emu = MicrosoftEmulator(
        seed=args.seed,
        max_subscription_minutes=args.max_subscription_minutes,
        page_size_default=args.page_size_default,
        tenant=args.tenant,
    )
    return _base.run_until_interrupted(
        serve_forever(
            args.host,
            args.port,
            authority_port=args.authority_port,
            emulator=emu,
            mailboxes=args.mailbox,
            clients=args.client,
        )
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
