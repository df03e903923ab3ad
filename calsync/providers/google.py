"""Google Calendar v3: OAuth refresh, full and incremental event sync, watch channels.

Normalization (:func:`normalize_google_event`) is the privacy boundary: it reads
times, status, transparency, ``eventType`` and the user's own response (the busy
state is decided by :mod:`calsync.busy`), and returns an
:class:`~calsync.model.Occurrence` that carries none of title, description,
location, attendees or organizer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, date, datetime, time
from typing import Any, NotRequired, TypedDict
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
import orjson
from google.auth.exceptions import RefreshError, TransportError
from google.auth.transport.requests import Request as GoogleAuthRequest
from google.oauth2.credentials import Credentials

from calsync.busy import BusyPolicy, status_intent
from calsync.errors import (
    AuthorizationRevoked,
    CursorExpired,
    MalformedProviderData,
    ProviderError,
    ProviderRejected,
    RateLimited,
    TransientProviderError,
)
from calsync.model import (
    Change,
    Deletion,
    Occurrence,
    ProviderOrigin,
    Transparency,
)
from calsync.providers.base import (
    AccountGate,
    ChangePage,
    Quarantined,
    Subscription,
    Window,
    hash_item_id,
)
from calsync.providers.http import (
    JSON_PAGE_LIMIT,
    TOKEN_RESPONSE_LIMIT,
    BoundedSession,
    send_bounded,
)
from calsync.ratelimit import RateLimiter
from calsync.retry import retry_after_from_headers

SCOPES = ("https://www.googleapis.com/auth/calendar.readonly",)
_RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "quotaExceeded"})


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
    deletion. The busy state is :func:`calsync.busy.status_intent` of ``transparency``,
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


class GoogleTokenSource:
    """Access tokens for one Google grant, refreshed with google-auth, one at a time.

    Raises :class:`AuthorizationRevoked` when the grant is gone (``invalid_grant``),
    :class:`TransientProviderError` when the token endpoint failed transiently and
    :class:`~calsync.errors.ResponseTooLarge` when it answered with more than
    :data:`~calsync.providers.http.TOKEN_RESPONSE_LIMIT` bytes.
    """

    def __init__(
        self, *, refresh_token: str, token_url: str, client_id: str, client_secret: str
    ) -> None:
        self._credentials = Credentials(  # type: ignore[no-untyped-call]
            None,
            refresh_token=refresh_token,
            token_uri=token_url,
            client_id=client_id,
            client_secret=client_secret,
            scopes=list(SCOPES),
        )
        self._lock = asyncio.Lock()

    async def access_token(self, *, force_refresh: bool = False) -> str:
        async with self._lock:
            if force_refresh or not self._credentials.valid:
                await asyncio.to_thread(self._refresh)
            token = self._credentials.token
            if not isinstance(token, str):
                raise TransientProviderError("token endpoint returned no access token")
            return token

    def _refresh(self) -> None:
        try:
            with BoundedSession(limit=TOKEN_RESPONSE_LIMIT, what="google token") as session:
                request = GoogleAuthRequest(session=session)
                self._credentials.refresh(request)  # type: ignore[no-untyped-call]
        except RefreshError as exc:
            if getattr(exc, "retryable", False):
                raise TransientProviderError(f"token refresh failed: {exc}") from exc
            raise AuthorizationRevoked(f"google grant refused: {exc.args[0]}") from exc
        except TransportError as exc:
            raise TransientProviderError(f"token endpoint unreachable: {exc}") from exc


def _error_reason(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body["error"]["errors"][0]["reason"])
    except (ValueError, KeyError, IndexError, TypeError):
        return ""


def _translate(response: httpx.Response) -> ProviderError:
    """The calsync error for a non-success Google API response."""
    status = response.status_code
    reason = _error_reason(response)
    if status == 429 or (status == 403 and reason in _RATE_LIMIT_REASONS):
        retry_after = retry_after_from_headers(response.headers, now=datetime.now(UTC))
        return RateLimited(
            f"google rate limit ({status} {reason or 'rateLimitExceeded'})",
            retry_after=retry_after,
            status=status,
        )
    if status == 410:
        return CursorExpired(f"google sync token expired ({reason or 'gone'})", status=status)
    if status == 401:
        return AuthorizationRevoked("google rejected the access token", status=status)
    if status >= 500:
        retry_after = retry_after_from_headers(response.headers, now=datetime.now(UTC))
        if retry_after is not None:
            return RateLimited(f"google {status}", retry_after=retry_after, status=status)
        return TransientProviderError(f"google {status} {reason}".strip(), status=status)
    return ProviderRejected(f"google {status} {reason}".strip(), status=status)


class GoogleProvider:
    """One Google calendar, read through an injected :class:`httpx.AsyncClient`.

    Full listings use ``singleEvents=true`` inside the window (``timeMin`` bounds the
    end, ``timeMax`` the start) so recurring series arrive as instances; incremental
    walks repeat only the sync-compatible parameters with the ``syncToken``.
    """

    origin = ProviderOrigin.GOOGLE
    renewable = False

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        api_url: str,
        calendar_id: str,
        tokens: GoogleTokenSource,
        time_zone: str | None = None,
        page_size: int = 250,
        limiter: RateLimiter | None = None,
        account: str = "",
        max_inline_wait: float = 0.25,
        policy: BusyPolicy | None = None,
        max_response_bytes: int = JSON_PAGE_LIMIT,
    ) -> None:
        """``policy`` decides the busy state of every event (the default when ``None``).
        A response over ``max_response_bytes`` raises
        :class:`~calsync.errors.ResponseTooLarge`."""
        self._client = client
        self._max_response_bytes = max_response_bytes
        self._policy = BusyPolicy() if policy is None else policy
        self._gate = AccountGate(limiter, "google", account, max_inline_wait)
        self.account = account
        self._api_url = api_url.rstrip("/")
        self._calendar_id = calendar_id
        self._tokens = tokens
        self._default_zone = ZoneInfo(time_zone or "UTC")
        self._page_size = page_size

    @property
    def _events_url(self) -> str:
        return f"{self._api_url}/calendars/{quote(self._calendar_id, safe='')}/events"

    async def _request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json: object = None,
    ) -> httpx.Response:
        for attempt in range(2):
            token = await self._tokens.access_token(force_refresh=attempt > 0)
            async with self._gate.slot():
                try:
                    response = await send_bounded(
                        self._client,
                        method,
                        url,
                        limit=self._max_response_bytes,
                        what="google",
                        params=params,
                        json=json,
                        headers={"Authorization": f"Bearer {token}"},
                    )
                except httpx.TransportError as exc:
                    raise TransientProviderError(f"google unreachable: {exc!r}") from exc
            error = _translate(response) if response.status_code >= 400 else None
            self._gate.observe(response.status_code, error)
            if response.status_code == 401 and attempt == 0:
                continue  # the access token may have expired early: refresh once
            return response
        return response

    async def fetch_changes(self, cursor: str | None, window: Window) -> AsyncIterator[ChangePage]:
        """Yield pages since ``cursor`` (or a full listing in ``window``).

        Raises :class:`CursorExpired` on ``410``; the caller restarts without a cursor.
        """
        base: dict[str, str] = {"singleEvents": "true", "maxResults": str(self._page_size)}
        if cursor is None:
            base["timeMin"] = window.start.isoformat()
            base["timeMax"] = window.end.isoformat()
        else:
            base["syncToken"] = cursor
        page_token: str | None = None
        while True:
            params = dict(base)
            if page_token:
                params["pageToken"] = page_token
            response = await self._request("GET", self._events_url, params=params)
            if response.status_code != 200:
                raise _translate(response)
            try:
                body = orjson.loads(response.content)  # several times faster than json
                items = body.get("items", [])
                if not isinstance(items, list):
                    raise TypeError("items is not a list")
            except (orjson.JSONDecodeError, TypeError, AttributeError) as exc:
                raise TransientProviderError("google returned a malformed page") from exc
            zone_name = body.get("timeZone")
            zone = self._default_zone
            if isinstance(zone_name, str):
                try:
                    zone = ZoneInfo(zone_name)
                except (ZoneInfoNotFoundError, ValueError):
                    zone = self._default_zone
            page = ChangePage(changes=[], full=cursor is None, time_zone=str(zone.key))
            for raw in items:
                try:
                    if not isinstance(raw, Mapping):
                        raise MalformedProviderData("item is not an object")
                    page.changes.append(normalize_google_event(raw, zone, self._policy))
                except MalformedProviderData as exc:
                    item_id = raw.get("id") if isinstance(raw, Mapping) else raw
                    page.quarantined.append(Quarantined(hash_item_id(item_id), str(exc)))
            page_token = body.get("nextPageToken")
            if not page_token:
                sync_token = body.get("nextSyncToken")
                if not isinstance(sync_token, str):
                    raise TransientProviderError("google's last page carried no nextSyncToken")
                page.cursor = sync_token
                yield page
                return
            yield page

    async def subscribe(
        self,
        channel_id: str,
        address: str,
        token: str,
        ttl_seconds: int,
        *,
        lifecycle_address: str | None = None,
    ) -> Subscription:
        body = {
            "id": channel_id,
            "type": "web_hook",
            "address": address,
            "token": token,
            "params": {"ttl": str(ttl_seconds)},
        }
        response = await self._request("POST", f"{self._events_url}/watch", json=body)
        if response.status_code != 200:
            raise _translate(response)
        try:
            data = response.json()
            return Subscription(
                channel_id=str(data["id"]),
                provider_resource_id=str(data["resourceId"]),
                expires_at_ms=int(data.get("expiration") or 0),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise TransientProviderError("google returned a malformed channel") from exc

    async def unsubscribe(self, subscription: Subscription) -> None:
        body = {"id": subscription.channel_id, "resourceId": subscription.provider_resource_id}
        response = await self._request("POST", f"{self._api_url}/channels/stop", json=body)
        if response.status_code in (200, 204, 404):
            return
        raise _translate(response)

    async def renew(self, subscription: Subscription, ttl_seconds: int) -> Subscription:
        raise ProviderRejected("google channels cannot be renewed; create a new one")

    def rotated_credentials(self) -> dict[str, str] | None:
        return None  # a Google refresh returns no new refresh token

    async def aclose(self) -> None:
        """The HTTP client belongs to the caller; nothing else to release."""
