"""Connect links: a calendar's owner clicks a link, consents, picks calendars, done.

Routes (``/connect/*`` is served without the admin token: each page is authorized
by an unguessable one-time token in its URL or form, see docs/security.md)::

    POST /api/connect                      (admin) make a link: 201 {connect_url, ...}
    GET  /connect/{link}                   302 to the provider's consent screen
    GET  /connect/google/callback          redeem the code; the calendar picker page
    GET  /connect/microsoft/callback       redeem the code (msal); register the mailbox
    POST /api/connect/microsoft/admin-consent  (admin) an admin-consent URL for a tenant
    GET  /connect/microsoft/admin-consent  the administrator's answer (single-use state)
    POST /connect/{link}/calendars         register the picked calendars; success page

Status codes of the owner's pages: 200 a page saying what happened; 302 on to the
consent screen; 400 a callback whose ``state`` is missing, forged, spent or expired
(nothing is registered), or a malformed form; 404 a link that is unknown, spent or
expired; 502 the provider refused the code (wrong verifier, a code of another
client, a code used twice: nothing is registered); 503 the store is full or the
broker did not acknowledge. Every page carries ``Cache-Control: no-store``,
``Referrer-Policy: no-referrer`` (the link token never leaves in a ``Referer``), a
``Content-Security-Policy`` allowing no script, and escapes everything it shows.

Bounds on what a stranger sends: tokens are 43 characters of ``[A-Za-z0-9_-]``;
``code`` at most :data:`MAX_CODE` characters; at most :data:`MAX_PICKED` calendars
per form; bodies are capped by the application's ``client_max_size``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from aiohttp import web

from calsync.clock import Clock
from calsync.connect import google as google_consent
from calsync.connect import microsoft as microsoft_consent
from calsync.connect.store import (
    CalendarChoice,
    ConnectLink,
    ConnectStore,
    PendingChoice,
    PendingConsent,
    StoreFull,
    new_token,
)
from calsync.crypto import SecretBox
from calsync.providers.registry import REGISTRY
from calsync.settings import Settings
from calsync.streams.records import Command, CommandKind

log = logging.getLogger(__name__)

#: ``secrets.token_urlsafe(32)``: what every link, state and choice token looks like.
TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
MAX_CODE = 2048
MAX_PICKED = 50
#: The providers a connect link can be made for (CalDAV has no consent: ``calsync
#: connect caldav`` or ``POST /api/resources`` with an app password).
CONNECT_PROVIDERS = tuple(name for name, each in REGISTRY.items() if each.connect)
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
}

Publish = Callable[[str, str, bytes], Awaitable[None]]


def page(
    title: str, paragraphs: Sequence[str], *, status: int = 200, body: str = ""
) -> web.Response:
    """A small HTML page; ``paragraphs`` are escaped, ``body`` is trusted markup."""
    text = "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:40em;margin:3em auto}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>{text}{body}</body></html>"
    )
    return web.Response(text=document, status=status, content_type="text/html", headers=_HEADERS)


def extra_resource_id(resource_id: str, calendar_id: str) -> str:
    """The resource id of a second (third, ...) calendar picked through one link."""
    digest = hashlib.sha256(calendar_id.encode()).hexdigest()[:8]
    return f"{resource_id[:119]}.{digest}"


class ConnectFlows:
    """The connect routes, bound to settings, a store and a way to publish commands."""

    def __init__(
        self,
        settings: Settings,
        publish: Publish,
        secrets: SecretBox,
        *,
        clock: Clock,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._settings = settings
        self._publish = publish
        self._secrets = secrets
        self._clock = clock
        self._client = client
        self._commands = settings.topic("commands")
        self.store = ConnectStore(clock, settings.connect_max_pending)

    def routes(self, admin: Callable[[web.Request], Awaitable[web.Response]]) -> list[web.RouteDef]:
        """``admin`` is the gateway's handler of ``POST /api/connect`` (it checks the token)."""
        return [
            web.post("/api/connect", admin),
            web.get("/connect/google/callback", self.google_callback),
            web.get("/connect/microsoft/callback", self.microsoft_callback),
            web.get("/connect/microsoft/admin-consent", self.admin_consent_callback),
            web.get("/connect/{link}", self.open_link),
            web.post("/connect/{link}/calendars", self.choose_calendars),
        ]

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        return self._client

    # ------------------------------------------------------------------ admin

    def create_link(
        self,
        *,
        resource_id: str,
        provider: str,
        calendar_id: str | None,
        time_zone: str | None,
        busy_policy: Mapping[str, bool] | None,
    ) -> dict[str, Any]:
        """Make a link; raises :class:`StoreFull`. Returns the API answer's body."""
        expires_at = self._clock() + self._settings.connect_link_ttl
        token = self.store.links.add(
            ConnectLink(
                resource_id=resource_id,
                provider=provider,
                expires_at=expires_at,
                calendar_id=calendar_id,
                time_zone=time_zone,
                busy_policy=dict(busy_policy) if busy_policy is not None else None,
            )
        )
        return {
            "resource_id": resource_id,
            "provider": provider,
            "connect_url": f"{self._settings.public_url.rstrip('/')}/connect/{token}",
            "expires_at": expires_at,
        }

    def create_admin_consent(self, tenant: str) -> dict[str, Any]:
        """An admin-consent URL for ``tenant`` (application permissions for rooms and
        whole teams): the tenant's administrator opens it; the answer comes back to
        ``/connect/microsoft/admin-consent`` with a single-use ``state``. Raises
        :class:`StoreFull`."""
        expires_at = self._clock() + self._settings.connect_link_ttl
        state = self.store.consents.add(PendingConsent(link_token="", expires_at=expires_at))
        base = self._settings.microsoft_authority.rstrip("/").rsplit("/", 1)[0]
        query = urlencode(
            {
                "client_id": self._settings.microsoft_client_id,
                "scope": "https://graph.microsoft.com/.default",
                "redirect_uri": microsoft_consent.admin_consent_url(self._settings),
                "state": state,
            }
        )
        return {
            "tenant": tenant,
            "admin_consent_url": f"{base}/{quote(tenant, safe='')}/v2.0/adminconsent?{query}",
            "expires_at": expires_at,
        }

    async def admin_consent_callback(self, request: web.Request) -> web.Response:
        """The tenant's administrator answered the admin-consent request."""
        query = request.query
        state = query.get("state", "")
        consent = self.store.consents.take(state) if TOKEN.fullmatch(state) else None
        if consent is None or consent.link_token:
            return page(
                "This answer cannot be used",
                ["It was already used, has expired, or did not start here."],
                status=400,
            )
        if query.get("admin_consent") != "True":
            return page(
                "Nothing was granted",
                ["The administrator did not consent; rooms cannot be read yet."],
            )
        tenant = query.get("tenant", "")[:64]
        return page(
            "Access granted for your organisation",
            [
                f"calsync may now read calendars in the tenant {tenant}, within any "
                "application access policy an Exchange administrator sets.",
                'Register rooms with the credentials {"tenant": "' + tenant + '"}.',
            ],
        )

    # ------------------------------------------------------------------ owner pages

    async def open_link(self, request: web.Request) -> web.Response:
        """Start a consent for the link: a new single-use ``state``, then the provider."""
        token = request.match_info["link"]
        link = self.store.links.get(token) if TOKEN.fullmatch(token) else None
        if link is None:
            return page(
                "This link does not work",
                [
                    "The link is unknown, was already used or has expired.",
                    "Ask whoever sent it for a new one.",
                ],
                status=404,
            )
        # Opening the link again starts over: earlier consents of it stop working.
        self.store.consents.discard_where(lambda c: c.link_token == token)
        expires_at = self._clock() + self._settings.connect_state_ttl
        state = new_token()
        if link.provider == "microsoft":
            try:
                flow = await microsoft_consent.begin(self._settings, state)
            except microsoft_consent.ConsentFailed as exc:
                return page("Please try again later", [str(exc)], status=502)
            url = str(flow["auth_uri"])
            consent = PendingConsent(link_token=token, expires_at=expires_at, msal_flow=flow)
        else:
            url, verifier = google_consent.authorization_url(self._settings, state)
            consent = PendingConsent(
                link_token=token, expires_at=expires_at, code_verifier=verifier
            )
        try:
            self.store.consents.add(consent, state)
        except StoreFull:
            return page(
                "Please try again later", ["Too many connections are in progress."], status=503
            )
        raise web.HTTPFound(url, headers=_HEADERS)

    async def google_callback(self, request: web.Request) -> web.Response:
        """Google sent the owner back: check ``state`` (single use), redeem, list calendars."""
        return await self._callback(request, "google")

    async def microsoft_callback(self, request: web.Request) -> web.Response:
        """Microsoft sent the owner back (``response_mode=query``)."""
        return await self._callback(request, "microsoft")

    async def _grant(
        self, provider: str, consent: PendingConsent, query: Mapping[str, str]
    ) -> tuple[dict[str, str], list[CalendarChoice]]:
        """Redeem the callback: plaintext credentials and the calendars they can read.
        Raises :class:`ConsentFailed` of either provider module."""
        code = query["code"]
        if provider == "microsoft":
            assert consent.msal_flow is not None
            response = {k: query[k] for k in ("code", "state", "session_state") if k in query}
            return await microsoft_consent.complete(self._settings, consent.msal_flow, response)
        tokens = await google_consent.redeem(self._settings, code, consent.code_verifier)
        calendars = await google_consent.list_calendars(
            self._settings, self._http(), tokens["access_token"]
        )
        return {"refresh_token": tokens["refresh_token"]}, calendars

    async def _callback(self, request: web.Request, provider: str) -> web.Response:
        query = request.query
        state = query.get("state", "")
        consent = self.store.consents.take(state) if TOKEN.fullmatch(state) else None
        if consent is None:
            log.info("connect callback with an unknown, spent or expired state refused")
            return page(
                "This sign-in cannot be used",
                [
                    "It was already used, took longer than ten minutes, or did not start here.",
                    "Nothing was connected. Open the link you were sent again.",
                ],
                status=400,
            )
        link = self.store.links.get(consent.link_token)
        if link is None or link.provider != provider:
            return page("This link does not work", ["The link has expired."], status=404)
        if "error" in query:
            return page(
                "Nothing was connected",
                [
                    "You did not allow access, so no calendar was connected.",
                    "You can open the link again to change your mind.",
                ],
            )
        code = query.get("code", "")
        if not code or len(code) > MAX_CODE or not code.isprintable():
            return page("This sign-in cannot be used", ["No usable code came back."], status=400)
        try:
            plaintext, calendars = await self._grant(provider, consent, query)
        except (google_consent.ConsentFailed, microsoft_consent.ConsentFailed) as exc:
            return page("Nothing was connected", [str(exc)], status=502)
        if link.calendar_id is not None:
            # a reconnect (or a link for one calendar): the account signed in must be
            # the one that can read it, or the resource would sync nothing
            wanted = link.calendar_id.lower()
            calendars = [c for c in calendars if c.calendar_id.lower() == wanted]
            if not calendars:
                return page(
                    "Nothing was connected",
                    [
                        f"The account you signed in with cannot read the calendar "
                        f"{link.calendar_id}.",
                        "Open the link again and sign in with the account that owns it.",
                    ],
                    status=400,
                )
            calendars = [dataclasses.replace(calendars[0], calendar_id=link.calendar_id)]
        if not calendars:
            return page("Nothing was connected", ["Your account has no calendars to share."])
        credentials = {name: self._secrets.encrypt(value) for name, value in plaintext.items()}
        if len(calendars) == 1:
            return await self._register(consent.link_token, link, credentials, calendars)
        try:
            choice = self.store.choices.add(
                PendingChoice(
                    link_token=consent.link_token,
                    expires_at=self._clock() + self._settings.connect_state_ttl,
                    credentials=credentials,
                    calendars=tuple(calendars),
                )
            )
        except StoreFull:
            return page(
                "Please try again later", ["Too many connections are in progress."], status=503
            )
        return self._picker(consent.link_token, choice, calendars)

    def _picker(
        self, link_token: str, choice: str, calendars: Sequence[CalendarChoice]
    ) -> web.Response:
        rows = "".join(
            "<li><label>"
            f'<input type="checkbox" name="calendar" value="{index}"'
            f"{' checked' if c.primary or (index == 0) else ''}> "
            f"{html.escape(c.label)}{' (main calendar)' if c.primary else ''}"
            "</label></li>"
            for index, c in enumerate(calendars)
        )
        form = (
            f'<form method="post" action="/connect/{link_token}/calendars">'
            f'<input type="hidden" name="choice" value="{choice}"><ul>{rows}</ul>'
            '<button type="submit">Share busy times</button></form>'
        )
        return page(
            "Which calendars may be shared?",
            [
                "Only when you are busy or free is shared: no titles, places or people.",
                "Pick the calendars whose busy times should count.",
            ],
            body=form,
        )

    async def choose_calendars(self, request: web.Request) -> web.Response:
        """The picker form: register each chosen calendar, spend the link."""
        link_token = request.match_info["link"]
        try:
            form = await request.post()
        except (ValueError, web.HTTPRequestEntityTooLarge):
            return page("Nothing was connected", ["The form could not be read."], status=400)
        raw_choice = form.get("choice")
        choice_token = raw_choice if isinstance(raw_choice, str) else ""
        picked = form.getall("calendar", [])
        if not TOKEN.fullmatch(link_token) or not TOKEN.fullmatch(choice_token):
            return page("Nothing was connected", ["The form is not valid."], status=400)
        if len(picked) > MAX_PICKED:
            return page(
                "Nothing was connected", [f"Pick at most {MAX_PICKED} calendars."], status=400
            )
        choice = self.store.choices.get(choice_token)
        link = self.store.links.get(link_token)
        if choice is None or link is None or choice.link_token != link_token:
            return page(
                "This page has expired",
                ["Nothing was connected. Open the link you were sent again."],
                status=400,
            )
        indexes: list[int] = []
        for raw in picked:
            if not isinstance(raw, str) or not raw.isdigit() or int(raw) >= len(choice.calendars):
                return page("Nothing was connected", ["The form is not valid."], status=400)
            if int(raw) not in indexes:
                indexes.append(int(raw))
        if not indexes:
            return page("Nothing was connected", ["Pick at least one calendar."], status=400)
        self.store.choices.take(choice_token)
        calendars = [choice.calendars[i] for i in indexes]
        return await self._register(link_token, link, choice.credentials, calendars)

    async def _register(
        self,
        link_token: str,
        link: ConnectLink,
        credentials: Mapping[str, str],
        calendars: Sequence[CalendarChoice],
    ) -> web.Response:
        now = round(self._clock(), 3)
        registered: list[str] = []
        for index, calendar in enumerate(calendars):
            rid = (
                link.resource_id
                if index == 0
                else extra_resource_id(link.resource_id, calendar.calendar_id)
            )
            command = Command(
                kind=CommandKind.REGISTER.value,
                resource_id=rid,
                issued_at=now,
                provider=link.provider,
                calendar_id=calendar.calendar_id,
                time_zone=link.time_zone or calendar.time_zone,
                credentials=dict(credentials),
                busy_policy=dict(link.busy_policy) if link.busy_policy is not None else None,
            )
            try:
                await self._publish(self._commands, rid, command.dumps())
            except Exception as exc:
                log.warning("connect: publishing the register command failed: %r", exc)
                return page(
                    "Please try again",
                    ["Your calendar could not be saved just now. Open the link again in a minute."],
                    status=503,
                )
            registered.append(calendar.label)
        self.store.spend(link_token)
        log.info("connect link for %s registered %d calendar(s)", link.resource_id, len(registered))
        items = "".join(f"<li>{html.escape(label)}</li>" for label in registered)
        return page(
            "Your calendar is connected",
            [
                "From now on only your busy and free times are shared; titles, places and "
                "people never leave your calendar.",
                "You can close this page. To stop sharing, remove calsync's access in your "
                "account's security settings (Google Account: Security, Third-party "
                "access; Microsoft: My Apps or myaccount.microsoft.com, App permissions).",
            ],
            body=f"<ul>{items}</ul>",
        )
