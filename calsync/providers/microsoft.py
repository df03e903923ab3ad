"""Microsoft Graph (Outlook calendar): MSAL refresh, calendarView delta sync, subscriptions.

Each event goes through :func:`calsync.normalize.microsoft.normalize_graph_event`,
the privacy boundary; its module docstring states how Graph's times and ``showAs``
are read.
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
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypedDict, TypeVar
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

import httpx
import msal
import orjson
import requests

from calsync.errors import (
    AuthorizationRevoked,
    CursorExpired,
    MalformedProviderData,
    ProviderError,
    ProviderRejected,
    TransientProviderError,
)
from calsync.model import (
    ProviderOrigin,
    Window,
)
from calsync.normalize.busy import BusyPolicy
from calsync.normalize.microsoft import normalize_graph_event, parse_wall
from calsync.normalize.windows_zones import zone_for
from calsync.pacing import paced
from calsync.providers.base import ChangePage, Subscription
from calsync.providers.http import (
    JSON_PAGE_LIMIT,
    TOKEN_RESPONSE_LIMIT,
    AccountGate,
    BoundedSession,
    ProviderHttp,
    json_page,
    read_ahead,
    status_error,
)
from calsync.providers.spec import BuildContext, ProviderSpec, PushKind, account_key
from calsync.ratelimit import BucketSpec, RateLimiter
from calsync.settings import Settings
from calsync.tables.records import Resource

log = logging.getLogger(__name__)

SCOPES = ("https://graph.microsoft.com/Calendars.Read",)
#: Application permissions are asked for as the resource's ``.default`` scope.
APP_SCOPE = "https://graph.microsoft.com/.default"
NAME = "microsoft"  # registrations', tables' and the RateLimiter's name for Graph

#: Outlook event subscriptions live at most 10,080 minutes, measured by Graph's clock;
#: five minutes of margin keep a request made with a fast clock (a minute or two ahead
#: is common) from being refused (400 for an expiry beyond the maximum).
MAX_SUBSCRIPTION_SECONDS = 10_080 * 60 - 5 * 60

_CURSOR_CODES = frozenset({"syncstatenotfound", "syncstateinvalid", "resyncrequired"})
_THROTTLE_CODES = frozenset({"toomanyrequests", "activitylimitreached", "applicationthrottled"})
_REVOKED_ERRORS = frozenset({"invalid_grant", "interaction_required", "consent_required"})
_TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error"})
_TRANSIENT_AADSTS = frozenset({90024})
_AADSTS = re.compile(r"AADSTS(\d+)")
_T = TypeVar("_T")


class GraphSubscription(TypedDict):
    """The fields of a Graph ``subscription`` that calsync reads."""

    id: str
    resource: str
    expirationDateTime: str


class GraphErrorBody(TypedDict, total=False):
    code: str
    message: str
    innerError: GraphErrorBody


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

    def rotated_credentials(self) -> dict[str, str] | None:
        """:meth:`rotated_refresh_token` as credentials (see :class:`ProviderHttp`)."""
        rotated = self.rotated_refresh_token()
        return {"refresh_token": rotated} if rotated is not None else None

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
            client_credential=self._client_credential(),
            authority=self._authority,
            http_client=session,
            instance_discovery=False,
            token_cache=msal.SerializableTokenCache(),
        )
        return app

    def _client_credential(self) -> str | dict[str, str]:
        return self._client_secret

    def _acquire(self, app: Any) -> Any:
        return app.acquire_token_by_refresh_token(self.refresh_token, scopes=list(self._scopes))

    def _refresh(self) -> str:
        """Redeem the refresh token (in a worker thread); returns the new access token."""
        with self._thread_lock:
            if self._app is None:
                self._app = self._call(self._app_factory, "could not set up the MSAL client")
            app = self._app
            result = self._call(lambda: self._acquire(app), "token request failed")
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


class MicrosoftAppTokenSource(MicrosoftTokenSource):
    """Application (app-only) access tokens: msal's client-credentials flow
    (``acquire_token_for_client``, scope ``https://graph.microsoft.com/.default``) for
    one tenant, with the app's client secret or certificate. The application
    permission ``Calendars.Read`` (admin-consented) reaches every mailbox of the
    tenant unless an application access policy narrows it. Nothing rotates."""

    def __init__(
        self,
        *,
        authority: str,
        client_id: str,
        client_credential: str | dict[str, str],
        ca_bundle: str | None = None,
        app_factory: Callable[[], MsalApp] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            refresh_token="",
            authority=authority,
            client_id=client_id,
            client_secret="",
            ca_bundle=ca_bundle,
            scopes=(APP_SCOPE,),
            app_factory=app_factory,
            clock=clock,
        )
        self._credential = client_credential

    def _client_credential(self) -> str | dict[str, str]:
        return self._credential

    def _acquire(self, app: Any) -> Any:
        return app.acquire_token_for_client(scopes=list(self._scopes))


def tenant_authority(authority: str, tenant: str) -> str:
    """``https://login.microsoftonline.com/common`` + ``contoso.com`` →
    ``https://login.microsoftonline.com/contoso.com`` (client credentials need a tenant)."""
    return authority.rstrip("/").rsplit("/", 1)[0] + "/" + quote(tenant, safe="")


def app_credential(settings: Settings) -> str | dict[str, str]:
    """The application's client credential: its certificate when
    ``CALSYNC_MICROSOFT_CLIENT_CERTIFICATE`` names a PEM file (private key and
    certificate) with ``..._THUMBPRINT``, else ``CALSYNC_MICROSOFT_CLIENT_SECRET``."""
    path = settings.microsoft_client_certificate
    if not path:
        return settings.microsoft_client_secret
    try:
        pem = Path(path).read_text()
    except OSError as exc:
        raise ProviderRejected(f"the client certificate cannot be read: {exc.strerror}") from None
    return {
        "private_key": pem,
        "thumbprint": settings.microsoft_client_certificate_thumbprint,
        "public_certificate": pem,
    }


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
    """The calsync error for a non-success Graph response (``delta`` for delta-link
    reads): :func:`status_error` refined with Graph's error codes (cursor expiry on delta
    reads, throttling) and a ``Retry-After`` on 503/504."""
    status = response.status_code
    codes = _error_codes(response)
    folded = {code.casefold() for code in codes}
    client_error = 400 <= status < 500
    if status == 403 and folded & {"erroraccessdenied", "accessdenied"}:
        return ProviderRejected(
            f"microsoft graph 403 {codes[0]}: the application may not read this mailbox "
            "(outside its application access policy, or Calendars.Read not consented); "
            "an Exchange administrator must grant access; not retried",
            status=status,
        )
    return status_error(
        response,
        NAME,
        label=f"{status} {codes[0]}" if codes else str(status),
        cursor_expired=delta and (status == 410 or (client_error and bool(folded & _CURSOR_CODES))),
        throttled=client_error and bool(folded & _THROTTLE_CODES),
        retry_after_throttles=lambda code: code in (503, 504),
    )


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
        self._policy = BusyPolicy() if policy is None else policy
        gate = AccountGate(limiter, NAME, account, max_inline_wait)
        self._http = ProviderHttp(
            client,
            gate,
            "microsoft graph",
            _translate,
            max_response_bytes,
            tokens=tokens,
            on_rotate=on_rotate,
        )
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
        response = await self._http.send(
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

        async def request(url: str, params: dict[str, str] | None) -> tuple[Any, list[Any]]:
            response = await self._http.send("GET", url, params=params, headers=self._delta_headers)
            if response.status_code != 200:
                raise _translate(response, delta=True)
            return json_page(response, "value", NAME)

        def after(
            page: tuple[Any, list[Any]],
        ) -> Callable[[], Awaitable[tuple[Any, list[Any]]]] | None:
            next_link = page[0].get("@odata.nextLink")
            if not isinstance(next_link, str) or not next_link:
                return None
            if not self._same_origin(next_link):
                return None  # never requested; refused below, before its page is handed out
            return partial(request, next_link, None)

        async for body, items in read_ahead(partial(request, url, params), after):
            page = ChangePage(changes=[], full=full, time_zone=mailbox_zone.key)
            async for raw in paced(_last_appearances(items)):
                if isinstance(raw, Mapping) and _is_series_master(raw):
                    continue
                page.add(
                    raw, lambda event: normalize_graph_event(event, mailbox_zone, self._policy)
                )
            next_link = body.get("@odata.nextLink")
            if isinstance(next_link, str) and next_link:
                if not self._same_origin(next_link):
                    raise ProviderRejected("microsoft sent a nextLink outside the Graph origin")
            else:
                delta_link = body.get("@odata.deltaLink")
                if not isinstance(delta_link, str) or not delta_link:
                    raise TransientProviderError("microsoft's last page carried no deltaLink")
                page.cursor = delta_link
            yield page

    def _expiration(self, ttl_seconds: int) -> str:
        seconds = max(0, min(ttl_seconds, MAX_SUBSCRIPTION_SECONDS))
        return _iso_z(datetime.fromtimestamp(self._clock() + seconds, UTC))

    @staticmethod
    def _subscription(response: httpx.Response, fallback_resource: str) -> Subscription:
        try:
            data = response.json()
            expires = parse_wall(data["expirationDateTime"], "expirationDateTime")
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
        response = await self._http.send("POST", f"{self._api_url}/subscriptions", json=body)
        if response.status_code not in (200, 201):
            raise _translate(response)
        return self._subscription(response, resource)

    async def renew(self, subscription: Subscription, ttl_seconds: int) -> Subscription:
        """Extend the subscription to ``now + ttl_seconds``; a subscription Graph no
        longer has raises :class:`ProviderRejected` with ``status == 404``."""
        url = f"{self._api_url}/subscriptions/{quote(subscription.channel_id, safe='')}"
        body = {"expirationDateTime": self._expiration(ttl_seconds)}
        response = await self._http.send("PATCH", url, json=body)
        if response.status_code != 200:
            raise _translate(response)
        return self._subscription(response, subscription.provider_resource_id)

    async def unsubscribe(self, subscription: Subscription) -> None:
        url = f"{self._api_url}/subscriptions/{quote(subscription.channel_id, safe='')}"
        response = await self._http.send("DELETE", url)
        if response.status_code in (200, 204, 404):
            return
        raise _translate(response)

    def rotated_credentials(self) -> dict[str, str] | None:
        """What the token source rotated and nobody took yet (with ``on_rotate`` unset)."""
        return self._tokens.rotated_credentials()

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


#: Graph's Outlook quotas: 10,000 requests per 10 minutes and 4 concurrent per app and
#: mailbox; 130,000 requests per 10 s per app across all tenants.
MAILBOX_BUCKET = BucketSpec(rate=10_000 / 600, burst=20.0, concurrency=4)
APP_BUCKET = BucketSpec(rate=130_000 / 10, burst=1_000.0)


def _account(resource: Resource, credentials: Mapping[str, str]) -> str:
    # Graph limits per mailbox, and the grant rotates its refresh token on every use,
    # so the mailbox (not the token) is the account.
    return account_key(NAME, resource.calendar_id.lower())


def _build(context: BuildContext) -> MicrosoftProvider:
    settings = context.settings
    tokens: MicrosoftTokenSource
    if "tenant" in context.credentials:
        tenant = context.credentials["tenant"]
        tokens = context.shared(
            lambda: MicrosoftAppTokenSource(
                authority=tenant_authority(settings.microsoft_authority, tenant),
                client_id=settings.microsoft_client_id,
                client_credential=app_credential(settings),
                ca_bundle=settings.microsoft_ca_bundle or None,
            )
        )
    else:
        tokens = MicrosoftTokenSource(
            refresh_token=context.credentials["refresh_token"],
            authority=settings.microsoft_authority,
            client_id=settings.microsoft_client_id,
            client_secret=settings.microsoft_client_secret,
            ca_bundle=settings.microsoft_ca_bundle or None,
        )
    return MicrosoftProvider(
        client=context.client,
        api_url=settings.graph_api_url,
        user_id=context.resource.calendar_id,
        tokens=tokens,
        time_zone=context.resource.time_zone,
        limiter=context.limiter,
        account=context.account,
        max_inline_wait=settings.max_inline_wait,
        clock=context.clock,
        on_rotate=context.on_rotate,
        policy=context.policy,
    )


SPEC = ProviderSpec(
    name=NAME,
    origin=ProviderOrigin.MICROSOFT,
    credential_fields=("refresh_token",),
    # application permission (client credentials) in this tenant: the resource's
    # calendar_id names the mailbox
    other_credentials=(("tenant",),),
    push=PushKind.SUBSCRIPTION,
    rate_limits=lambda settings: (MAILBOX_BUCKET, APP_BUCKET),
    account=_account,
    build=_build,
    subscription_ttl=lambda settings: settings.graph_subscription_minutes * 60,
    webhook_path="/webhooks/microsoft",
    shares_app_quota=True,
    connect=True,
)
