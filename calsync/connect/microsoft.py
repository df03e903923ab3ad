"""Microsoft's authorization-code flow for connect links, with msal.

``ConfidentialClientApplication.initiate_auth_code_flow`` makes the sign-in URL
(msal adds PKCE S256, ``nonce`` and, since it asks for them itself, ``openid``,
``profile`` and ``offline_access``); the whole ``flow`` dict is kept server-side
beside the ``state``. ``acquire_token_by_auth_code_flow`` checks the ``state``, sends
the verifier and checks the ID token's ``nonce``. The delegated scope is
``Calendars.Read`` (plus ``offline_access`` for a refresh token): it reads the
signed-in user's calendar and nothing else.

The authority is ``CALSYNC_MICROSOFT_AUTHORITY``: ``…/common`` (any work, school or
personal account), ``…/organizations``, or one tenant (single-tenant apps). A
Microsoft resource syncs the mailbox's default calendar, so the "calendar" of a
consent is the signed-in mailbox (its ``preferred_username``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import msal

from calsync.connect.store import CalendarChoice
from calsync.errors import CalsyncError
from calsync.providers.http import TOKEN_RESPONSE_LIMIT, BoundedSession
from calsync.providers.microsoft import SCOPES
from calsync.settings import Settings

_TIMEOUT = 30.0


class ConsentFailed(CalsyncError):
    """The consent could not be completed; the message is fit for the owner's eyes."""


def callback_url(settings: Settings) -> str:
    """The redirect URI (platform "Web") to register in the Entra app registration."""
    return settings.public_url.rstrip("/") + "/connect/microsoft/callback"


def admin_consent_url(settings: Settings) -> str:
    """Where the admin-consent answer comes back (register it as a Web redirect URI)."""
    return settings.public_url.rstrip("/") + "/connect/microsoft/admin-consent"


def _app(settings: Settings) -> tuple[Any, BoundedSession]:
    session = BoundedSession(limit=TOKEN_RESPONSE_LIMIT, timeout=_TIMEOUT, what="microsoft token")
    if settings.microsoft_ca_bundle:
        session.verify = settings.microsoft_ca_bundle
        session.trust_env = False
    app = msal.ConfidentialClientApplication(
        settings.microsoft_client_id,
        client_credential=settings.microsoft_client_secret,
        authority=settings.microsoft_authority,
        http_client=session,
        instance_discovery=False,
    )
    return app, session


def _begin(settings: Settings, state: str, redirect_uri: str) -> dict[str, Any]:
    app, session = _app(settings)
    try:
        flow = app.initiate_auth_code_flow(
            list(SCOPES), redirect_uri=redirect_uri, state=state, prompt="select_account"
        )
    except Exception as exc:  # msal's discovery errors, requests' errors
        raise ConsentFailed(
            f"Microsoft sign-in could not be prepared ({type(exc).__name__})"
        ) from None
    finally:
        session.close()
    return dict(flow)


async def begin(
    settings: Settings, state: str, *, redirect_uri: str | None = None
) -> dict[str, Any]:
    """msal's auth-code ``flow`` for ``state``; ``flow["auth_uri"]`` is the sign-in URL.

    Raises :class:`ConsentFailed` when the authority cannot be reached."""
    return await asyncio.to_thread(_begin, settings, state, redirect_uri or callback_url(settings))


def _complete(
    settings: Settings, flow: Mapping[str, Any], response: Mapping[str, str]
) -> dict[str, str]:
    app, session = _app(settings)
    try:
        result = app.acquire_token_by_auth_code_flow(dict(flow), dict(response))
    except ValueError:
        raise ConsentFailed("the sign-in did not match; please open the link again") from None
    except Exception as exc:
        raise ConsentFailed(
            f"Microsoft could not be reached to complete the sign-in ({type(exc).__name__})"
        ) from None
    finally:
        session.close()
    return _tokens(result)


def device_code_consent(settings: Settings, show: Any) -> dict[str, str]:
    """msal's device-code flow (``calsync connect microsoft`` on a headless machine):
    ``show`` receives the message naming the page and the code; blocks until the user
    signed in, declined, or the code expired. Needs "Allow public client flows" on the
    app registration. Returns ``{"refresh_token", "mailbox"}``; raises
    :class:`ConsentFailed`."""
    session = BoundedSession(limit=TOKEN_RESPONSE_LIMIT, timeout=_TIMEOUT, what="microsoft token")
    if settings.microsoft_ca_bundle:
        session.verify = settings.microsoft_ca_bundle
        session.trust_env = False
    try:
        app = msal.PublicClientApplication(
            settings.microsoft_client_id,
            authority=settings.microsoft_authority,
            http_client=session,
            instance_discovery=False,
        )
        flow = app.initiate_device_flow(scopes=list(SCOPES))
        if "user_code" not in flow:
            raise ConsentFailed(
                f"Microsoft refused the device sign-in ({flow.get('error', 'no code')})"
            )
        show(str(flow["message"]))
        result = app.acquire_token_by_device_flow(flow)
    except ConsentFailed:
        raise
    except Exception as exc:
        raise ConsentFailed(f"the sign-in did not complete ({type(exc).__name__})") from None
    finally:
        session.close()
    return _tokens(result)


def _tokens(result: Any) -> dict[str, str]:
    if not isinstance(result, Mapping) or "error" in result:
        error = result.get("error") if isinstance(result, Mapping) else None
        codes = result.get("error_codes") if isinstance(result, Mapping) else None
        code = f", AADSTS{codes[0]}" if isinstance(codes, list) and codes else ""
        raise ConsentFailed(
            f"Microsoft did not accept the sign-in ({error or 'no answer'}{code}); "
            "please open the link again"
        )
    refresh_token = result.get("refresh_token")
    claims = result.get("id_token_claims") or {}
    mailbox = claims.get("preferred_username") or claims.get("oid")
    if not isinstance(refresh_token, str) or not refresh_token:
        raise ConsentFailed("Microsoft granted no offline access; please open the link again")
    if not isinstance(mailbox, str) or not mailbox:
        raise ConsentFailed("Microsoft did not say which mailbox signed in")
    return {"refresh_token": refresh_token, "mailbox": mailbox[:256]}


async def complete(
    settings: Settings, flow: Mapping[str, Any], response: Mapping[str, str]
) -> tuple[dict[str, str], list[CalendarChoice]]:
    """Redeem the callback: ``({"refresh_token": ...}, [the signed-in mailbox])``.

    Raises :class:`ConsentFailed` (a state that does not match, a refused code, a
    wrong PKCE verifier, no refresh token)."""
    found = await asyncio.to_thread(_complete, settings, flow, response)
    mailbox = found["mailbox"]
    return {"refresh_token": found["refresh_token"]}, [
        CalendarChoice(calendar_id=mailbox, label=mailbox, time_zone=None, primary=True)
    ]
