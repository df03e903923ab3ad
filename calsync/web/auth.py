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

import hashlib
import hmac

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

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


def admin_token_middleware(admin_token: str) -> Middleware:
    """A middleware refusing every non-public request without ``admin_token`` (401).

    Authenticated requests to unknown paths get aiohttp's usual 404 or 405.
    """
    expected = token_digest(admin_token)

    @web.middleware
    async def require_admin_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _is_public(request) or bearer_matches(request.headers.get("Authorization"), expected):
            return await handler(request)
        return web.json_response(_UNAUTHORIZED, status=401, headers={"WWW-Authenticate": "Bearer"})

    return require_admin_token
