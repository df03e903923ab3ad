"""Microsoft Graph (Outlook calendar): MSAL refresh, calendarView delta sync, subscriptions.

Normalization (:func:`normalize_graph_event`) is the privacy boundary: it reads the
id, times, ``isAllDay``, ``isCancelled``, ``showAs``, the user's own response, the
item ``type`` and ``seriesMasterId``, and returns an :class:`~calsync.model.Occurrence`
that carries none of subject, body, location, attendees or organizer.

Decisions, each a reading of the Graph docs (``provider-protocols.md`` §2):

* **Wall times.** ``dateTime`` is a wall time without offset (up to 7 fractional
  digits; digits past microseconds are dropped) read in its ``timeZone`` (Windows or
  IANA name, see :mod:`calsync.providers.windows_zones`; UTC when absent). A wall
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
  to :func:`calsync.busy.status_intent`, the one busy policy. With the default
  :class:`~calsync.busy.BusyPolicy`: ``free`` → FREE (transparent); ``tentative`` →
  TENTATIVE; ``busy`` → BUSY; ``oof`` → OUT_OF_OFFICE; ``workingElsewhere`` → FREE
  (transparent): the person is working and can be booked, only not at the office,
  so the slot is not busy; ``unknown``, missing or new values → BUSY (when unsure,
  do not offer the slot). The response refines it: ``declined`` → FREE,
  ``tentativelyAccepted`` turns BUSY into TENTATIVE; ``oof`` always stays. A
  resource's policy can flip the declined, unanswered, all-day and tentative rules.
* **Series masters** are not occurrences (calendarView delta expands series into
  occurrences and exceptions); :func:`normalize_graph_event` refuses one and
  :meth:`MicrosoftProvider.fetch_changes` drops any before normalizing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from datetime import time as wall_clock
from typing import Any, NotRequired, Protocol, TypedDict, TypeVar
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

import httpx
import msal
import orjson
import requests

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
    StatusIntent,
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
from calsync.providers.windows_zones import zone_for
from calsync.ratelimit import RateLimiter
from calsync.retry import retry_after_from_headers

log = logging.getLogger(__name__)

SCOPES = ("https://graph.microsoft.com/Calendars.Read",)
PROVIDER = "microsoft"  # the RateLimiter's name for Graph

#: Outlook event subscriptions live at most 10,080 minutes, measured by Graph's clock;
#: five minutes of margin keep a request made with a fast clock (a minute or two ahead
#: is common) from being refused (400 for an expiry beyond the maximum).
MAX_SUBSCRIPTION_SECONDS = 10_080 * 60 - 5 * 60

_CURSOR_CODES = frozenset({"syncstatenotfound", "syncstateinvalid", "resyncrequired"})
_THROTTLE_CODES = frozenset({"toomanyrequests", "activitylimitreached", "applicationthrottled"})
_REVOKED_ERRORS = frozenset({"invalid_grant", "interaction_required", "consent_required"})
_TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error"})
_TRANSIENT_AADSTS = frozenset({90024})
_WALL_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
    r"(Z|[+-]\d{2}:\d{2})?"
)
_AADSTS = re.compile(r"AADSTS(\d+)")
_T = TypeVar("_T")


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


class GraphSubscription(TypedDict):
    """The fields of a Graph ``subscription`` that calsync reads."""

    id: str
    resource: str
    expirationDateTime: str


class GraphErrorBody(TypedDict, total=False):
    code: str
    message: str
    innerError: GraphErrorBody


# --------------------------------------------------------------------------- normalization


def _parse_wall(raw: object, which: str) -> datetime:
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
    return _parse_wall(value.get("dateTime"), which), zone


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
    by :func:`calsync.busy.status_intent`."""
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


# --------------------------------------------------------------------------- tokens


class MsalApp(Protocol):
    """The part of :class:`msal.ConfidentialClientApplication` the token source uses."""

    def acquire_token_by_refresh_token(
        self, refresh_token: str, scopes: list[str]
    ) -> Mapping[str, Any] | None: ...


def _aadsts_codes(result: Mapping[str, Any]) -> list[int]:
    codes = result.get("error_codes")
    if isinstance(codes, list) and codes:
        return [c for c in codes if isinstance(c, int)]
    description = result.get("error_description")
    if isinstance(description, str):
        return [int(code) for code in _AADSTS.findall(description)[:1]]
    return []


def _token_error(result: Mapping[str, Any]) -> ProviderError:
    """The calsync error for an MSAL error dict (MSAL returns these; it does not raise).

    Only ``error``, ``suberror`` and the AADSTS code are quoted: the description can
    carry trace ids and account details.
    """
    error = str(result.get("error") or "unknown_error")
    codes = _aadsts_codes(result)
    code = f"AADSTS{codes[0]}" if codes else "no AADSTS code"
    suberror = result.get("suberror")
    detail = f"{error}, {code}" + (f", {suberror}" if isinstance(suberror, str) else "")
    if error == "invalid_client":
        return ProviderRejected(
            f"microsoft refused the application's client credentials ({detail}): the "
            "operator must fix the app registration's client id or secret; the user's "
            "grant is not at fault"
        )
    if error in _TRANSIENT_ERRORS or _TRANSIENT_AADSTS.intersection(codes):
        return TransientProviderError(f"microsoft token endpoint unavailable ({detail})")
    if error in _REVOKED_ERRORS or error == "login_required":
        return AuthorizationRevoked(f"microsoft grant refused ({detail}): the user must re-consent")
    return ProviderRejected(f"microsoft token request refused ({detail}): check the app setup")


def _expires_in(result: Mapping[str, Any]) -> float:
    try:
        seconds = float(result.get("expires_in", 300))
    except (TypeError, ValueError):
        return 300.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 300.0


class MicrosoftTokenSource:
    """Access tokens for one Microsoft grant, redeemed with MSAL, one refresh at a time.

    The refresh token is redeemed with ``acquire_token_by_refresh_token`` in a worker
    thread; the access token is reused until shortly before ``expires_in``. Entra
    usually answers with a new refresh token: it replaces the old one for the next
    refresh and is offered once by :meth:`rotated_refresh_token`, for the caller to
    store. The MSAL application is built on first use (building it fetches the
    tenant's OpenID configuration); ``app_factory`` replaces it in tests.

    Raises :class:`AuthorizationRevoked` when the grant is gone (``invalid_grant``
    with any AADSTS code, ``interaction_required``, consent), a non-retriable
    :class:`ProviderRejected` when the application itself is refused
    (``invalid_client``) or misconfigured, and :class:`TransientProviderError` when
    the token endpoint failed transiently (``temporarily_unavailable``, AADSTS90024,
    5xx, connection errors).
    """

    def __init__(
        self,
        *,
        refresh_token: str,
        authority: str,
        client_id: str,
        client_secret: str,
        ca_bundle: str | None = None,
        scopes: Sequence[str] = SCOPES,
        app_factory: Callable[[], MsalApp] | None = None,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 30.0,
    ) -> None:
        self._refresh_token = refresh_token
        self._authority = authority
        self._client_id = client_id
        self._client_secret = client_secret
        self._ca_bundle = ca_bundle
        self._scopes = list(scopes)
        self._app_factory = app_factory or self._build_app
        self._clock = clock
        self._timeout = timeout
        self._app: MsalApp | None = None
        self._session: requests.Session | None = None
        self._access_token: str | None = None
        self._expires_at = 0.0
        self._rotated: str | None = None
        self._lock = asyncio.Lock()
        # A cancelled caller leaves its refresh running in the thread: this keeps a
        # second one from overlapping it, and the state it writes consistent.
        self._thread_lock = threading.Lock()
        self._state_lock = threading.Lock()

    @property
    def refresh_token(self) -> str:
        """The refresh token the next refresh will redeem."""
        with self._state_lock:
            return self._refresh_token

    async def access_token(self, *, force_refresh: bool = False) -> str:
        async with self._lock:
            with self._state_lock:
                token = self._access_token
                fresh = token is not None and self._clock() < self._expires_at
            if force_refresh or not fresh or token is None:
                token = await asyncio.to_thread(self._refresh)
            return token

    def rotated_refresh_token(self) -> str | None:
        """The refresh token Entra issued in place of the previous one, once; else ``None``."""
        with self._state_lock:
            rotated, self._rotated = self._rotated, None
            return rotated

    async def aclose(self) -> None:
        """Close the HTTP session MSAL uses, if one was opened; idempotent."""
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def _build_app(self) -> MsalApp:
        # a default timeout (MSAL sets none) and a cap on what the authority may send
        session = BoundedSession(
            limit=TOKEN_RESPONSE_LIMIT, timeout=self._timeout, what="microsoft token"
        )
        if self._ca_bundle:
            session.verify = self._ca_bundle
            # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override ``verify`` unless
            # the environment is ignored; an explicitly configured bundle must win.
            session.trust_env = False
        self._session = session
        app: MsalApp = msal.ConfidentialClientApplication(
            self._client_id,
            client_credential=self._client_secret,
            authority=self._authority,
            http_client=session,
            instance_discovery=False,
            token_cache=msal.SerializableTokenCache(),
        )
        return app

    def _refresh(self) -> str:
        """Redeem the refresh token (in a worker thread); returns the new access token."""
        with self._thread_lock:
            if self._app is None:
                self._app = self._call(self._app_factory, "could not set up the MSAL client")
            app = self._app
            result = self._call(
                lambda: app.acquire_token_by_refresh_token(
                    self.refresh_token, scopes=list(self._scopes)
                ),
                "token request failed",
            )
            if not isinstance(result, Mapping):
                raise TransientProviderError("microsoft token endpoint returned no result")
            if "error" in result:
                raise _token_error(result)
            token = result.get("access_token")
            if not isinstance(token, str) or not token:
                raise TransientProviderError("microsoft token endpoint returned no access token")
            expires_in = _expires_in(result)
            new_refresh_token = result.get("refresh_token")
            with self._state_lock:
                self._access_token = token
                self._expires_at = self._clock() + expires_in - min(300.0, expires_in / 2)
                if (
                    isinstance(new_refresh_token, str)
                    and new_refresh_token
                    and new_refresh_token != self._refresh_token
                ):
                    self._refresh_token = self._rotated = new_refresh_token
            return token

    @staticmethod
    def _call(function: Callable[[], _T], what: str) -> _T:
        """Run an MSAL call, translating what it raises (requests, JSON, config) to ours."""
        try:
            return function()
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            raise TransientProviderError(
                f"microsoft token endpoint failed: {what} ({status})", status=status
            ) from exc
        except requests.RequestException as exc:
            raise TransientProviderError(
                f"microsoft token endpoint unreachable: {what} ({type(exc).__name__})"
            ) from exc
        except json.JSONDecodeError as exc:
            raise TransientProviderError(
                f"microsoft token endpoint answered with non-JSON: {what}"
            ) from exc
        except ValueError as exc:  # MSAL's word for a bad authority, tenant or scope
            raise ProviderRejected(
                f"microsoft identity configuration refused: {what}: {exc}"[:300]
            ) from exc


# --------------------------------------------------------------------------- Graph API


def _error_codes(response: httpx.Response) -> list[str]:
    """``error.code`` and the codes nested in ``innerError``, outermost first."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return []
    codes: list[str] = []
    while isinstance(error, Mapping) and len(codes) < 8:
        code = error.get("code")
        if isinstance(code, str) and code:
            codes.append(code)
        error = error.get("innerError", error.get("innererror"))
    return codes


def _translate(response: httpx.Response, *, delta: bool = False) -> ProviderError:
    """The calsync error for a non-success Graph response; ``delta`` for delta-link reads."""
    status = response.status_code
    codes = _error_codes(response)
    folded = {code.casefold() for code in codes}
    label = f"{status} {codes[0]}" if codes else str(status)
    if delta and (status == 410 or (400 <= status < 500 and folded & _CURSOR_CODES)):
        return CursorExpired(f"microsoft delta token expired ({label})", status=status)
    retry_after = retry_after_from_headers(response.headers, now=datetime.now(UTC))
    if (
        status == 429
        or (400 <= status < 500 and folded & _THROTTLE_CODES)
        or (status in (503, 504) and retry_after is not None)
    ):
        return RateLimited(f"microsoft throttled ({label})", retry_after=retry_after, status=status)
    if status == 401:
        return AuthorizationRevoked(f"microsoft rejected the access token ({label})", status=status)
    if status >= 500:
        return TransientProviderError(f"microsoft {label}", status=status)
    return ProviderRejected(f"microsoft {label}", status=status)


def _iso_z(moment: datetime) -> str:
    """An aware datetime as ``YYYY-MM-DDTHH:MM:SSZ`` (naive ones are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ceil_second(moment: datetime) -> datetime:
    return moment + timedelta(microseconds=(1_000_000 - moment.microsecond) % 1_000_000)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


class MicrosoftProvider:
    """One Outlook mailbox's calendar view, read through an injected :class:`httpx.AsyncClient`.

    A full listing starts a calendarView delta round inside the window; Graph encodes
    the window in its ``$skiptoken``/``$deltatoken`` links, which are followed and
    stored verbatim (the cursor is the whole ``@odata.deltaLink`` URL). Links are only
    followed on ``api_url``'s scheme and host: the bearer token goes nowhere else.
    """

    origin = ProviderOrigin.MICROSOFT
    renewable = True

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        api_url: str,
        user_id: str,
        tokens: MicrosoftTokenSource,
        time_zone: str | None = None,
        page_size: int = 100,
        limiter: RateLimiter | None = None,
        account: str = "",
        max_inline_wait: float = 0.25,
        clock: Callable[[], float] = time.time,
        on_rotate: Callable[[dict[str, str]], Awaitable[None]] | None = None,
        policy: BusyPolicy | None = None,
        max_response_bytes: int = JSON_PAGE_LIMIT,
    ) -> None:
        """``on_rotate`` receives rotated credentials as soon as the token source gets
        them (else :meth:`rotated_credentials` offers them later). ``policy`` decides
        the busy state of every event (the default when ``None``). A response over
        ``max_response_bytes`` raises :class:`~calsync.errors.ResponseTooLarge`.

        ``time_zone`` is the mailbox's zone (Windows or IANA name); when ``None`` the
        mailbox's own is asked for (see :meth:`mailbox_zone`). Raises
        :class:`MalformedProviderData` when it is unknown."""
        self._client = client
        self._max_response_bytes = max_response_bytes
        self._policy = BusyPolicy() if policy is None else policy
        self._on_rotate = on_rotate
        self._gate = AccountGate(limiter, PROVIDER, account, max_inline_wait)
        self.account = account
        self._api_url = api_url.rstrip("/")
        self._user_id = user_id
        self._tokens = tokens
        self._registered_zone = zone_for(time_zone) if time_zone else None
        self._mailbox_zone = self._registered_zone
        self._page_size = page_size
        self._clock = clock

    @property
    def _user_path(self) -> str:
        return f"/users/{quote(self._user_id, safe='@')}"

    @property
    def _delta_headers(self) -> list[tuple[str, str]]:
        return [
            ("Prefer", f"odata.maxpagesize={self._page_size}"),
            ("Prefer", 'outlook.timezone="UTC"'),
        ]

    async def _request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json: object = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> httpx.Response:
        for attempt in range(2):
            token = await self._tokens.access_token(force_refresh=attempt > 0)
            if self._on_rotate is not None:
                # The old refresh token may already be dead: store the new one before
                # anything else can fail or the process can die.
                rotated = self.rotated_credentials()
                if rotated is not None:
                    await self._on_rotate(rotated)
            async with self._gate.slot():
                try:
                    response = await send_bounded(
                        self._client,
                        method,
                        url,
                        limit=self._max_response_bytes,
                        what="microsoft graph",
                        params=params,
                        json=json,
                        headers=[*headers, ("Authorization", f"Bearer {token}")],
                    )
                except httpx.TransportError as exc:
                    raise TransientProviderError(f"microsoft graph unreachable: {exc!r}") from exc
            error = _translate(response) if response.status_code >= 400 else None
            self._gate.observe(response.status_code, error)
            if response.status_code == 401 and attempt == 0:
                continue  # the access token may have expired early: refresh once
            return response
        return response

    def _same_origin(self, url: str) -> bool:
        return _origin(url) == _origin(self._api_url)

    async def mailbox_zone(self, *, refresh: bool = False) -> ZoneInfo:
        """The zone all-day events are anchored in.

        The registered ``time_zone`` when there is one; else the mailbox's own
        (``GET /users/{id}/mailboxSettings/timeZone``, a Windows or IANA name), asked
        once and again when ``refresh`` (every full listing, so a changed mailbox
        zone is picked up by the next reconciliation). When Graph will not say (the
        app was not granted ``MailboxSettings.Read``: 403; a custom zone) it is UTC,
        logged as a warning. Raises :class:`AuthorizationRevoked`,
        :class:`RateLimited` and :class:`TransientProviderError` as any read does.
        """
        if self._registered_zone is not None:
            return self._registered_zone
        if self._mailbox_zone is not None and not refresh:
            return self._mailbox_zone
        response = await self._request(
            "GET", f"{self._api_url}{self._user_path}/mailboxSettings/timeZone"
        )
        zone = ZoneInfo("UTC")
        if response.status_code == 200:
            try:
                name = orjson.loads(response.content).get("value")
                if not isinstance(name, str) or not name:
                    raise MalformedProviderData("mailboxSettings/timeZone carried no value")
                zone = zone_for(name)
            except (orjson.JSONDecodeError, AttributeError, MalformedProviderData) as exc:
                log.warning("mailbox time zone unreadable (%s): all-day events anchor at UTC", exc)
        else:
            error = _translate(response)
            if error.retriable or isinstance(error, AuthorizationRevoked):
                raise error
            log.warning(
                "mailbox time zone not readable (%s; MailboxSettings.Read consented?): "
                "all-day events anchor at UTC",
                error,
            )
        self._mailbox_zone = zone
        return zone

    async def fetch_changes(self, cursor: str | None, window: Window) -> AsyncIterator[ChangePage]:
        """Yield pages since ``cursor`` (a stored deltaLink) or of a new round in ``window``.

        Within a page an event that appears several times (replays) counts once, at
        its last appearance; across pages, order is kept, so applying pages in order
        leaves the last version. Series masters are dropped; malformed items are
        quarantined. Raises :class:`CursorExpired` on ``410`` or a
        ``syncStateNotFound``/``resyncRequired`` error, and for a stored cursor that
        does not point at ``api_url`` (the deployment moved: start a new round).
        """
        full = cursor is None
        mailbox_zone = await self.mailbox_zone(refresh=full)
        url: str
        params: dict[str, str] | None = None
        if cursor is None:
            url = f"{self._api_url}{self._user_path}/calendarView/delta"
            params = {
                "startDateTime": _iso_z(window.start),
                "endDateTime": _iso_z(_ceil_second(window.end)),
            }
        elif not self._same_origin(cursor):
            raise CursorExpired("the stored delta link does not point at the configured Graph")
        else:
            url = cursor
        while True:
            response = await self._request("GET", url, params=params, headers=self._delta_headers)
            if response.status_code != 200:
                raise _translate(response, delta=True)
            try:
                body = orjson.loads(response.content)  # several times faster than json
                items = body.get("value", [])
                if not isinstance(items, list):
                    raise TypeError("value is not a list")
            except (orjson.JSONDecodeError, TypeError, AttributeError) as exc:
                raise TransientProviderError("microsoft returned a malformed delta page") from exc
            page = ChangePage(changes=[], full=full, time_zone=mailbox_zone.key)
            for raw in _last_appearances(items):
                if isinstance(raw, Mapping) and _is_series_master(raw):
                    continue
                try:
                    if not isinstance(raw, Mapping):
                        raise MalformedProviderData("item is not an object")
                    page.changes.append(normalize_graph_event(raw, mailbox_zone, self._policy))
                except MalformedProviderData as exc:
                    item_id = raw.get("id") if isinstance(raw, Mapping) else raw
                    page.quarantined.append(Quarantined(hash_item_id(item_id), str(exc)))
            next_link = body.get("@odata.nextLink")
            if isinstance(next_link, str) and next_link:
                if not self._same_origin(next_link):
                    raise ProviderRejected("microsoft sent a nextLink outside the Graph origin")
                url, params = next_link, None
                yield page
                continue
            delta_link = body.get("@odata.deltaLink")
            if not isinstance(delta_link, str) or not delta_link:
                raise TransientProviderError("microsoft's last page carried no deltaLink")
            page.cursor = delta_link
            yield page
            return

    def _expiration(self, ttl_seconds: int) -> str:
        seconds = max(0, min(ttl_seconds, MAX_SUBSCRIPTION_SECONDS))
        return _iso_z(datetime.fromtimestamp(self._clock() + seconds, UTC))

    @staticmethod
    def _subscription(response: httpx.Response, fallback_resource: str) -> Subscription:
        try:
            data = response.json()
            expires = _parse_wall(data["expirationDateTime"], "expirationDateTime")
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=UTC)  # Graph's subscription times are UTC
            resource = data.get("resource")
            return Subscription(
                channel_id=str(data["id"]),
                provider_resource_id=resource if isinstance(resource, str) else fallback_resource,
                expires_at_ms=int(expires.timestamp() * 1000),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TransientProviderError("microsoft returned a malformed subscription") from exc

    async def subscribe(
        self,
        channel_id: str,
        address: str,
        token: str,
        ttl_seconds: int,
        *,
        lifecycle_address: str | None = None,
    ) -> Subscription:
        """Create a Graph subscription to the mailbox's events; Graph assigns its id
        (``channel_id`` is ignored) and echoes ``token`` as ``clientState``.
        ``ttl_seconds`` is capped at :data:`MAX_SUBSCRIPTION_SECONDS`."""
        resource = f"{self._user_path}/events"
        body: dict[str, str] = {
            "changeType": "created,updated,deleted",
            "notificationUrl": address,
            "resource": resource,
            "expirationDateTime": self._expiration(ttl_seconds),
            "clientState": token,
        }
        if lifecycle_address is not None:
            body["lifecycleNotificationUrl"] = lifecycle_address
        response = await self._request("POST", f"{self._api_url}/subscriptions", json=body)
        if response.status_code not in (200, 201):
            raise _translate(response)
        return self._subscription(response, resource)

    async def renew(self, subscription: Subscription, ttl_seconds: int) -> Subscription:
        """Extend the subscription to ``now + ttl_seconds``; a subscription Graph no
        longer has raises :class:`ProviderRejected` with ``status == 404``."""
        url = f"{self._api_url}/subscriptions/{quote(subscription.channel_id, safe='')}"
        body = {"expirationDateTime": self._expiration(ttl_seconds)}
        response = await self._request("PATCH", url, json=body)
        if response.status_code != 200:
            raise _translate(response)
        return self._subscription(response, subscription.provider_resource_id)

    async def unsubscribe(self, subscription: Subscription) -> None:
        url = f"{self._api_url}/subscriptions/{quote(subscription.channel_id, safe='')}"
        response = await self._request("DELETE", url)
        if response.status_code in (200, 204, 404):
            return
        raise _translate(response)

    def rotated_credentials(self) -> dict[str, str] | None:
        rotated = self._tokens.rotated_refresh_token()
        return {"refresh_token": rotated} if rotated is not None else None

    async def aclose(self) -> None:
        """The HTTP client and the (shared) token source belong to the caller."""


def _is_series_master(raw: Mapping[str, Any]) -> bool:
    return raw.get("type") == "seriesMaster" and "@removed" not in raw


def _last_appearances(items: list[object]) -> list[object]:
    """``items`` with each id kept only at its last appearance (replays); items
    without a usable id are all kept, in place."""
    latest: dict[object, object] = {}
    for position, raw in enumerate(items):
        item_id = raw.get("id") if isinstance(raw, Mapping) else None
        key: object = item_id if isinstance(item_id, str) and item_id else (None, position)
        latest.pop(key, None)
        latest[key] = raw
    return list(latest.values())
