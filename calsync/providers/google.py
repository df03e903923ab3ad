"""Google Calendar v3: OAuth refresh, full and incremental event sync, watch channels.

Each event goes through :func:`calsync.normalize.google.normalize_google_event`, the
privacy boundary: nothing but times and busy state leaves this adapter.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import partial
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from google.auth.exceptions import RefreshError, TransportError
from google.auth.transport.requests import Request as GoogleAuthRequest
from google.oauth2 import service_account
from google.oauth2.credentials import Credentials

from calsync.errors import (
    AuthorizationRevoked,
    ProviderError,
    ProviderRejected,
    TransientProviderError,
)
from calsync.model import (
    ProviderOrigin,
    Window,
)
from calsync.normalize.busy import BusyPolicy
from calsync.normalize.google import normalize_google_event
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

NAME = "google"
SCOPES = ("https://www.googleapis.com/auth/calendar.readonly",)
_RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "quotaExceeded"})


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

    def rotated_credentials(self) -> dict[str, str] | None:
        return None  # a Google refresh returns no new refresh token

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


class GoogleServiceAccountTokenSource:
    """Access tokens of a Workspace service account impersonating ``subject``
    (domain-wide delegation): google-auth signs an RS256 JWT assertion with the key and
    trades it at the token endpoint (``urn:ietf:params:oauth:grant-type:jwt-bearer``).

    The key's own ``token_uri`` is replaced by ``CALSYNC_GOOGLE_TOKEN_URL``. Raises
    :class:`ProviderRejected` for a key that does not parse,
    :class:`AuthorizationRevoked` when the token endpoint refuses (delegation not
    granted for the scope, unknown subject), :class:`TransientProviderError` otherwise.
    """

    def __init__(self, *, key_json: str, subject: str, token_url: str) -> None:
        self._key_json = key_json
        self._subject = subject
        self._token_url = token_url
        self._credentials: service_account.Credentials | None = None
        self._lock = asyncio.Lock()

    def _build(self) -> service_account.Credentials:
        try:
            info = json.loads(self._key_json)
            if not isinstance(info, dict):
                raise ValueError("not a JSON object")
            info["token_uri"] = self._token_url
            made: service_account.Credentials = (
                service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                    info, scopes=list(SCOPES), subject=self._subject
                )
            )
            return made
        except (ValueError, KeyError) as exc:
            # the message names the missing field, never the key material
            raise ProviderRejected(
                f"the service account key does not parse ({type(exc).__name__})"
            ) from None

    async def access_token(self, *, force_refresh: bool = False) -> str:
        async with self._lock:
            if self._credentials is None:
                self._credentials = self._build()
            if force_refresh or not self._credentials.valid:
                await asyncio.to_thread(self._refresh, self._credentials)
            token = self._credentials.token
            if not isinstance(token, str):
                raise TransientProviderError("token endpoint returned no access token")
            return token

    def rotated_credentials(self) -> dict[str, str] | None:
        return None

    @staticmethod
    def _refresh(credentials: service_account.Credentials) -> None:
        try:
            with BoundedSession(limit=TOKEN_RESPONSE_LIMIT, what="google token") as session:
                credentials.refresh(GoogleAuthRequest(session=session))  # type: ignore[no-untyped-call]
        except RefreshError as exc:
            if getattr(exc, "retryable", False):
                raise TransientProviderError(f"token request failed: {exc}") from exc
            raise AuthorizationRevoked(
                f"google refused the delegated access: {exc.args[0]}"
            ) from exc
        except TransportError as exc:
            raise TransientProviderError(f"token endpoint unreachable: {exc}") from exc


def _error_reason(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body["error"]["errors"][0]["reason"])
    except (ValueError, KeyError, IndexError, TypeError):
        return ""


def _translate(response: httpx.Response) -> ProviderError:
    """The calsync error for a non-success Google API response: :func:`status_error`
    refined with Google's rate-limit 403s, ``410`` (sync token expired) and a ``Retry-After``
    on any 5xx."""
    status = response.status_code
    reason = _error_reason(response)
    return status_error(
        response,
        NAME,
        label=f"{status} {reason}".strip(),
        cursor_expired=status == 410,
        throttled=status == 403 and reason in _RATE_LIMIT_REASONS,
        retry_after_throttles=lambda code: code >= 500,
    )


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
        tokens: GoogleTokenSource | GoogleServiceAccountTokenSource,
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
        self._policy = BusyPolicy() if policy is None else policy
        gate = AccountGate(limiter, NAME, account, max_inline_wait)
        self._http = ProviderHttp(client, gate, NAME, _translate, max_response_bytes, tokens=tokens)
        self.account = account
        self._api_url = api_url.rstrip("/")
        self._calendar_id = calendar_id
        self._tokens = tokens
        self._default_zone = ZoneInfo(time_zone or "UTC")
        self._page_size = page_size

    @property
    def _events_url(self) -> str:
        return f"{self._api_url}/calendars/{quote(self._calendar_id, safe='')}/events"

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

        async def request(params: dict[str, str]) -> tuple[Any, list[Any]]:
            response = await self._http.send("GET", self._events_url, params=params)
            if response.status_code != 200:
                raise _translate(response)
            return json_page(response, "items", NAME)

        def after(
            page: tuple[Any, list[Any]],
        ) -> Callable[[], Awaitable[tuple[Any, list[Any]]]] | None:
            page_token = page[0].get("nextPageToken")
            if not page_token:
                return None
            return partial(request, {**base, "pageToken": str(page_token)})

        async for body, items in read_ahead(partial(request, base), after):
            zone_name = body.get("timeZone")
            zone = self._default_zone
            if isinstance(zone_name, str):
                try:
                    zone = ZoneInfo(zone_name)
                except (ZoneInfoNotFoundError, ValueError):
                    zone = self._default_zone
            page = ChangePage(changes=[], full=cursor is None, time_zone=str(zone.key))
            async for raw in paced(items):  # the next page's request gets on meanwhile
                page.add(
                    raw, partial(normalize_google_event, calendar_zone=zone, policy=self._policy)
                )
            if not body.get("nextPageToken"):
                sync_token = body.get("nextSyncToken")
                if not isinstance(sync_token, str):
                    raise TransientProviderError("google's last page carried no nextSyncToken")
                page.cursor = sync_token
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
        response = await self._http.send("POST", f"{self._events_url}/watch", json=body)
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
        response = await self._http.send("POST", f"{self._api_url}/channels/stop", json=body)
        if response.status_code in (200, 204, 404):
            return
        raise _translate(response)

    async def renew(self, subscription: Subscription, ttl_seconds: int) -> Subscription:
        raise ProviderRejected("google channels cannot be renewed; create a new one")

    def rotated_credentials(self) -> dict[str, str] | None:
        return None  # a Google refresh returns no new refresh token

    async def aclose(self) -> None:
        """The HTTP client belongs to the caller; nothing else to release."""


def _rate_limits(settings: Settings) -> tuple[BucketSpec, BucketSpec]:
    """Google Calendar's quotas: 600 requests/min per user, 10,000/min per project."""
    return (
        BucketSpec(rate=settings.google_user_rate, burst=settings.google_user_burst),
        BucketSpec(rate=settings.google_app_rate, burst=settings.google_app_burst),
    )


def _account(resource: Resource, credentials: Mapping[str, str]) -> str:
    # Google counts per user: resources sharing a grant share a bucket (and a token
    # source); a service account's quota is that of the user it impersonates
    # (the key is part of it: the token source is shared per account)
    if "subject" in credentials:
        subject = credentials["subject"].lower()
        return account_key(NAME, f"{credentials['service_account_key']}\x1f{subject}")
    return account_key(NAME, credentials["refresh_token"])


def _build(context: BuildContext) -> GoogleProvider:
    settings = context.settings
    credentials = context.credentials
    tokens: GoogleTokenSource | GoogleServiceAccountTokenSource
    if "service_account_key" in credentials:
        tokens = context.shared(
            lambda: GoogleServiceAccountTokenSource(
                key_json=credentials["service_account_key"],
                subject=credentials["subject"],
                token_url=settings.google_token_url,
            )
        )
    else:
        tokens = context.shared(
            lambda: GoogleTokenSource(
                refresh_token=credentials["refresh_token"],
                token_url=settings.google_token_url,
                client_id=settings.google_client_id,
                client_secret=settings.google_client_secret,
            )
        )
    return GoogleProvider(
        client=context.client,
        api_url=settings.google_api_url,
        calendar_id=context.resource.calendar_id,
        tokens=tokens,
        time_zone=context.resource.time_zone,
        limiter=context.limiter,
        account=context.account,
        max_inline_wait=settings.max_inline_wait,
        policy=context.policy,
    )


SPEC = ProviderSpec(
    name=NAME,
    origin=ProviderOrigin.GOOGLE,
    credential_fields=("refresh_token",),
    # Workspace domain-wide delegation: a service account's JSON key and the user
    # (calendar owner) it impersonates
    other_credentials=(("service_account_key", "subject"),),
    push=PushKind.CHANNEL,
    rate_limits=_rate_limits,
    account=_account,
    build=_build,
    subscription_ttl=lambda settings: settings.google_channel_ttl,
    webhook_path="/webhooks/google",
    shares_app_quota=True,
    connect=True,
)
