"""The admin-token middleware: every route but the public ones needs the bearer token.

A request is let through when the route it *matched* is public (its path is
``/healthz`` or starts with ``/webhooks/`` or ``/connect/``) or when it carries
``Authorization: Bearer <CALSYNC_ADMIN_TOKEN>``. Anything else, unknown paths and
wrong methods included, gets the same ``401`` with ``WWW-Authenticate: Bearer`` and
a fixed body, so an unauthenticated caller learns nothing about which routes exist.
Deciding by the matched route, not the raw path, means no spelling of a path
(``/webhooks/../table/``, percent-encoding) reaches an admin handler as public.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import html
import secrets
import time
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from calsync.crypto import derive_key
from calsync.settings import Settings

_PUBLIC_PATHS = frozenset({"/healthz"})
#: ``/connect/*`` pages are opened by calendar owners, who have no admin token: each is
#: authorized by the one-time token in its own URL or form (calsync.gateway.connect).
_PUBLIC_PREFIXES = ("/webhooks/", "/connect/")
_UNAUTHORIZED = {"error": "a valid 'Authorization: Bearer <admin token>' is required"}


def is_public_path(path: str) -> bool:
    """Whether a route with this path (a route's canonical path) is served without a token."""
    return path in _PUBLIC_PATHS or path.startswith(_PUBLIC_PREFIXES)


def token_digest(token: str) -> bytes:
    """What :func:`bearer_matches` compares against."""
    # Comparing digests keeps the comparison constant-time in the token's length too.
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


def bearer_matches(authorization: str | None, expected_digest: bytes) -> bool:
    """Whether an ``Authorization`` header carries the bearer token of ``expected_digest``.

    The scheme is case-insensitive (RFC 9110); the comparison takes the same time
    whatever the presented token is.
    """
    scheme, _, token = (authorization or "").strip().partition(" ")
    presented = token_digest(token.strip())
    return hmac.compare_digest(presented, expected_digest) and scheme.lower() == "bearer"


def _is_public(request: web.Request) -> bool:
    match = request.match_info
    if match.http_exception is not None:  # 404 or 405: no route was matched
        return False
    resource = match.route.resource
    return resource is not None and is_public_path(resource.canonical)


class Role(enum.StrEnum):
    """What an authenticated caller may do."""

    #: everything: the admin token
    ADMIN = "admin"
    #: look only (GET and HEAD): ``CALSYNC_READ_TOKEN``
    READ = "read"


#: Where the middleware leaves the caller's :class:`Role` on the request.
ROLE_KEY = web.RequestKey("calsync.role", Role)
SESSION_COOKIE = "calsync_session"
#: The form field or header a cookie-authenticated state-changing request carries.
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Routes that check credentials themselves: the login form posts a token to them.
_SELF_CHECKED = frozenset({("POST", "/login")})


@dataclass(frozen=True, slots=True)
class Session:
    """A browser session: who, until when, and the CSRF token its forms carry."""

    role: Role
    expires_at: float
    nonce: str
    csrf_token: str


#: Where the middleware leaves the :class:`Session` when a browser cookie authenticated it.
SESSION_KEY = web.RequestKey("calsync.session", Session)


class SessionSigner:
    """Signs and checks the session cookie (HMAC-SHA256 under a key from the secret key).

    The cookie names the role, its expiry, a random nonce and a digest of the token
    that opened it, so changing ``CALSYNC_ADMIN_TOKEN`` or ``CALSYNC_READ_TOKEN``
    ends every session opened with the old one. The CSRF token is an HMAC of the
    nonce: a page of this origin knows it, a cross-site form cannot.
    """

    def __init__(self, key: bytes, tokens: dict[Role, str], *, lifetime: float = 12 * 3600.0):
        self._key = key
        self._tokens = {role: token_digest(token) for role, token in tokens.items() if token}
        self._lifetime = lifetime

    def _mac(self, purpose: str, payload: str) -> str:
        digest = hmac.new(self._key, f"{purpose}\n{payload}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def role_of_token(self, token: str) -> Role | None:
        """The role whose token this is (constant time per role), or ``None``."""
        presented = token_digest(token.strip())
        found = None
        for role, digest in self._tokens.items():
            if hmac.compare_digest(presented, digest):
                found = role
        return found

    def open(self, role: Role, *, now: float | None = None) -> tuple[str, Session]:
        """A new session's cookie value, and the session."""
        expires = int((now if now is not None else time.time()) + self._lifetime)
        nonce = secrets.token_urlsafe(16)
        bound = self._tokens[role].hex()[:16]
        payload = f"{role.value}.{expires}.{nonce}.{bound}"
        return f"{payload}.{self._mac('session', payload)}", self._session(role, expires, nonce)

    def _session(self, role: Role, expires: float, nonce: str) -> Session:
        return Session(role, expires, nonce, self._mac("csrf", nonce))

    def check(self, cookie: str | None, *, now: float | None = None) -> Session | None:
        """The session a cookie value proves, or ``None`` (forged, expired, old token)."""
        parts = (cookie or "").split(".")
        if len(parts) != 5:
            return None
        role_name, raw_expires, nonce, bound, mac = parts
        payload = ".".join(parts[:4])
        if not hmac.compare_digest(mac.encode(), self._mac("session", payload).encode()):
            return None
        try:
            role, expires = Role(role_name), int(raw_expires)
        except ValueError:
            return None
        digest = self._tokens.get(role)
        if digest is None or not hmac.compare_digest(bound, digest.hex()[:16]):
            return None
        if expires < (now if now is not None else time.time()):
            return None
        return self._session(role, expires, nonce)


def _unauthorized(request: web.Request) -> web.Response:
    if "text/html" in request.headers.get("Accept", ""):
        # a person with a browser: the same 401, with a form to sign in
        return web.Response(
            text=login_page(next_path=request.path_qs),
            status=401,
            content_type="text/html",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return web.json_response(_UNAUTHORIZED, status=401, headers={"WWW-Authenticate": "Bearer"})


def _self_checked(request: web.Request) -> bool:
    if request.match_info.http_exception is not None:
        return False
    resource = request.match_info.route.resource
    return resource is not None and (request.method, resource.canonical) in _SELF_CHECKED


def role_of(request: web.Request) -> Role | None:
    """The role the middleware found for ``request`` (``None`` on public routes)."""
    role = request.get(ROLE_KEY)
    return role if isinstance(role, Role) else None


def admin_token_middleware(
    admin_token: str, *, read_token: str = "", signer: SessionSigner | None = None
) -> Middleware:
    """A middleware refusing every non-public request without a credential (401).

    Credentials: ``Authorization: Bearer`` with the admin token (:attr:`Role.ADMIN`)
    or ``read_token`` (:attr:`Role.READ`), or a session cookie that ``signer`` issued
    (the browser login, :mod:`calsync.web.dashboard`). The read role may only
    ``GET``/``HEAD`` (403 otherwise). A state-changing request authenticated by the
    cookie must carry the session's CSRF token (form field ``csrf_token`` or header
    ``X-CSRF-Token``), else 403: a cross-site form has the cookie but not the token.
    Authenticated requests to unknown paths get aiohttp's usual 404 or 405; a
    browser (``Accept: text/html``) gets its 401 with a login form.
    """
    tokens = {Role.ADMIN: admin_token, Role.READ: read_token}
    bearer = {role: token_digest(token) for role, token in tokens.items() if token}

    @web.middleware
    async def require_admin_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _is_public(request) or _self_checked(request):
            return await handler(request)
        header = request.headers.get("Authorization")
        role: Role | None = None
        for candidate, digest in bearer.items():
            if bearer_matches(header, digest):
                role = candidate
        session = None
        if role is None and signer is not None:
            session = signer.check(request.cookies.get(SESSION_COOKIE))
            role = session.role if session is not None else None
        if role is None:
            return _unauthorized(request)
        request[ROLE_KEY] = role
        if session is not None:
            request[SESSION_KEY] = session
        if request.method not in _SAFE_METHODS:
            if role is not Role.ADMIN and request.path != "/logout":
                return web.json_response(
                    {"error": "the read-only token cannot change anything"}, status=403
                )
            if session is not None and not await _csrf_ok(request, session):
                return web.json_response(
                    {"error": "missing or wrong CSRF token; reload the page"}, status=403
                )
        return await handler(request)

    return require_admin_token


async def _csrf_ok(request: web.Request, session: Session) -> bool:
    presented = request.headers.get(CSRF_HEADER)
    if presented is None and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        form = await request.post()  # cached: the handler reads the same form
        value = form.get(CSRF_FIELD)
        presented = value if isinstance(value, str) else None
    return presented is not None and hmac.compare_digest(
        presented.encode(), session.csrf_token.encode()
    )


def login_page(*, next_path: str = "/dashboard/", error: str = "") -> str:
    """The sign-in form: a token field posted to ``/login``."""
    message = f'<p class="error">{html.escape(error)}</p>' if error else ""
    return _LOGIN_PAGE.format(next=html.escape(next_path, quote=True), message=message)


_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>calsync · sign in</title><style>body{{font-family:system-ui,sans-serif;margin:0;
display:flex;justify-content:center}}main{{max-width:22rem;width:100%;padding:2rem 1rem}}
input,button{{display:block;width:100%;box-sizing:border-box;margin:.4rem 0 1rem;padding:.6rem;
font-size:1rem}}.error{{color:#b00020}}</style></head><body class="login"><main><h1>calsync</h1>
<form method="post" action="/login"><label for="token">Admin or read-only token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required>
<input type="hidden" name="next" value="{next}">{message}
<button type="submit">Sign in</button></form></main></body></html>
"""


def session_signer(settings: Settings) -> SessionSigner:
    """The signer of a deployment's session cookies: a key derived from the secret key,
    sessions bound to the admin and read-only tokens."""
    return SessionSigner(
        derive_key(settings.secret_key, b"dashboard-session"),
        {Role.ADMIN: settings.admin_token, Role.READ: settings.read_token},
    )


def access_middleware(settings: Settings) -> Middleware:
    """:func:`admin_token_middleware` for ``settings``: both tokens and the session cookie."""
    return admin_token_middleware(
        settings.admin_token, read_token=settings.read_token, signer=session_signer(settings)
    )
