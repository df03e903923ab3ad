"""Google's OAuth 2.0 web-server flow for connect links, with google-auth-oauthlib.

The scope is ``calendar.readonly``: it is the one scope that both reads events
(``events.list`` with sync tokens and watch channels) and lists the owner's
calendars (``calendarList.list``, for the picker) and shows each calendar's time
zone; ``calendar.events.readonly`` cannot list calendars, so it would need
``calendar.calendarlist.readonly`` beside it: two consent lines for the same reach.
Nothing calsync asks for can write.

The flow: :func:`authorization_url` makes the consent URL with ``state``, PKCE
(S256, a 128-character verifier generated here and kept server-side),
``access_type=offline`` and ``prompt=consent`` (so a refresh token comes back even
from an owner who consented before); :func:`redeem` trades the code and verifier for
the tokens; :func:`list_calendars` reads the owner's calendars. Errors come out as
:class:`ConsentFailed`, whose message can be shown to the owner.

requests-oauthlib refuses plain-HTTP endpoints (``InsecureTransportError``) unless
``OAUTHLIB_INSECURE_TRANSPORT`` is set in the environment: production endpoints are
HTTPS; only tests against the local emulator set it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
from google_auth_oauthlib.flow import Flow  # type: ignore[import-untyped]
from oauthlib.oauth2 import OAuth2Error  # type: ignore[import-untyped]

from calsync.connect.store import CalendarChoice
from calsync.errors import CalsyncError
from calsync.providers.google import SCOPES
from calsync.settings import Settings

# requests-oauthlib logs whole token responses (refresh tokens included) at DEBUG:
# keep it above DEBUG whatever CALSYNC_LOG_LEVEL says.
logging.getLogger("requests_oauthlib").setLevel(logging.INFO)
logging.getLogger("oauthlib").setLevel(logging.INFO)

#: calendarList pages read at most (250 calendars a page); more are not offered.
MAX_CALENDAR_PAGES = 4
_TIMEOUT = 30.0


class ConsentFailed(CalsyncError):
    """The consent could not be completed; the message is fit for the owner's eyes."""


def callback_url(settings: Settings) -> str:
    """The redirect URI to register in the Google OAuth client."""
    return settings.public_url.rstrip("/") + "/connect/google/callback"


def _flow(settings: Settings, redirect_uri: str, code_verifier: str | None = None) -> Any:
    config = {
        "web": {
            "client_id": settings.google_client_id,
            "client_secret": settings.google_client_secret,
            "auth_uri": settings.google_auth_url,
            "token_uri": settings.google_token_url,
        }
    }
    return Flow.from_client_config(
        config,
        scopes=list(SCOPES),
        redirect_uri=redirect_uri,
        code_verifier=code_verifier,
        autogenerate_code_verifier=True,
    )


def authorization_url(
    settings: Settings, state: str, *, redirect_uri: str | None = None
) -> tuple[str, str]:
    """``(consent URL, PKCE code verifier)`` for ``state``."""
    flow = _flow(settings, redirect_uri or callback_url(settings))
    url, _ = flow.authorization_url(state=state, access_type="offline", prompt="consent")
    return str(url), str(flow.code_verifier)


def _redeem(settings: Settings, code: str, verifier: str, redirect_uri: str) -> dict[str, str]:
    flow = _flow(settings, redirect_uri, code_verifier=verifier)
    try:
        token = flow.fetch_token(code=code, timeout=_TIMEOUT)
    except OAuth2Error as exc:
        raise ConsentFailed(
            f"Google did not accept the consent ({exc.error}); please open the link again"
        ) from None
    except Exception as exc:  # requests' errors, a Warning for a changed scope
        raise ConsentFailed(
            f"Google could not be reached to complete the consent ({type(exc).__name__})"
        ) from None
    refresh_token = token.get("refresh_token")
    access_token = token.get("access_token")
    if not isinstance(refresh_token, str) or not isinstance(access_token, str):
        raise ConsentFailed(
            "Google granted no offline access (no refresh token); please open the link again"
        )
    return {"refresh_token": refresh_token, "access_token": access_token}


async def redeem(
    settings: Settings, code: str, verifier: str, *, redirect_uri: str | None = None
) -> dict[str, str]:
    """Trade the code for ``{"refresh_token", "access_token"}``; raises :class:`ConsentFailed`."""
    return await asyncio.to_thread(
        _redeem, settings, code, verifier, redirect_uri or callback_url(settings)
    )


def installed_app_consent(
    settings: Settings, *, open_browser: bool, timeout: float
) -> dict[str, str]:
    """The installed-app flow (``calsync connect google``): a one-request web server on
    a free loopback port (``http://127.0.0.1:PORT/``, which a "Desktop app" OAuth client
    accepts on any port), the consent URL printed (and opened when ``open_browser``),
    PKCE and ``state`` as in the web flow. Returns ``{"refresh_token",
    "access_token"}``; raises :class:`ConsentFailed`."""
    from google_auth_oauthlib.flow import InstalledAppFlow

    config = {
        "installed": {
            "client_id": settings.google_client_id,
            "client_secret": settings.google_client_secret,
            "auth_uri": settings.google_auth_url,
            "token_uri": settings.google_token_url,
        }
    }
    flow = InstalledAppFlow.from_client_config(
        config, scopes=list(SCOPES), autogenerate_code_verifier=True
    )
    try:
        credentials = flow.run_local_server(
            host="127.0.0.1",
            port=0,
            open_browser=open_browser,
            authorization_prompt_message="Open this URL in a browser and allow access:\n{url}",
            success_message="Done: the calendar is connected. You can close this window.",
            timeout_seconds=int(timeout),
            access_type="offline",
            prompt="consent",
        )
    except OAuth2Error as exc:
        raise ConsentFailed(f"Google did not accept the consent ({exc.error})") from None
    except Exception as exc:  # a timeout, requests' errors, a refusal in the browser
        raise ConsentFailed(f"the consent did not complete ({type(exc).__name__})") from None
    if not credentials.refresh_token or not credentials.token:
        raise ConsentFailed("Google granted no offline access (no refresh token)")
    return {"refresh_token": credentials.refresh_token, "access_token": credentials.token}


async def list_calendars(
    settings: Settings, client: httpx.AsyncClient, access_token: str
) -> list[CalendarChoice]:
    """The calendars the owner may share (``calendarList.list``), primary first.

    Raises :class:`ConsentFailed` when the list cannot be read.
    """
    found: list[CalendarChoice] = []
    page_token: str | None = None
    url = settings.google_api_url.rstrip("/") + "/users/me/calendarList"
    for _ in range(MAX_CALENDAR_PAGES):
        params = {"maxResults": "250", "minAccessRole": "reader"}
        if page_token:
            params["pageToken"] = page_token
        try:
            response = await client.get(
                url,
                params=params,
                headers={"Authorization": f"Bearer {access_token}"},
                timeout=_TIMEOUT,
            )
            body = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            body = None
        if not isinstance(body, dict):
            raise ConsentFailed("your calendars could not be listed; please open the link again")
        for item in body.get("items") or []:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                continue
            zone = item.get("timeZone")
            found.append(
                CalendarChoice(
                    calendar_id=item["id"][:1024],
                    label=str(item.get("summaryOverride") or item.get("summary") or item["id"])[
                        :200
                    ],
                    time_zone=zone if isinstance(zone, str) else None,
                    primary=item.get("primary") is True,
                )
            )
        next_token = body.get("nextPageToken")
        page_token = next_token if isinstance(next_token, str) else None
        if page_token is None:
            break
    found.sort(key=lambda c: not c.primary)
    return found
