"""Who may call which HTTP route of a worker or a gateway, and on which address.

Every route is either

* **public**: ``/webhooks/...`` (each push authenticates itself: a signed channel
  token or ``clientState``) and ``/healthz``; or
* **admin**: everything else (the ``/api/`` routes, ``/status/``, Faust's pages when
  ``CALSYNC_FAUST_PAGES`` turns them on), which answers only to
  ``Authorization: Bearer <CALSYNC_ADMIN_TOKEN>``.

One middleware (:func:`calsync.web.auth.admin_token_middleware`) enforces this on
every aiohttp application calsync serves. By default both kinds share
``CALSYNC_WEB_BIND:CALSYNC_WEB_PORT``; with ``CALSYNC_ADMIN_BIND`` the admin routes
move to that address and the public port carries only the public ones
(:mod:`calsync.web.sites`).
"""

from __future__ import annotations

from calsync.web.auth import admin_token_middleware, is_public_path
from calsync.web.sites import Surface, new_application, select_routes

__all__ = [
    "Surface",
    "admin_token_middleware",
    "is_public_path",
    "new_application",
    "select_routes",
]
