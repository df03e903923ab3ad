"""Which routes go on which address, and the small servers that serve them.

A worker or gateway serves :attr:`Surface.ALL` on ``CALSYNC_WEB_BIND:CALSYNC_WEB_PORT``
unless ``CALSYNC_ADMIN_BIND`` is set; then that port serves :attr:`Surface.PUBLIC` and
the admin address :attr:`Surface.ADMIN`. Every application comes from
:func:`new_application`, so every one of them has the admin-token middleware.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import signal
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from mode import Service

from calsync.settings import Settings
from calsync.web.auth import access_middleware, is_public_path
from calsync.web.openapi import body_validation


class Surface(enum.Enum):
    """Which routes one address serves."""

    #: public and admin routes together (no ``CALSYNC_ADMIN_BIND``)
    ALL = "all"
    #: the webhooks, the connect pages and ``/healthz`` only: the address the internet
    #: may reach
    PUBLIC = "public"
    #: everything but the webhooks; ``/healthz`` too, for whoever probes this address
    ADMIN = "admin"

    def serves(self, path: str) -> bool:
        """Whether a route with this path belongs on an address of this surface."""
        if self is Surface.ALL or path == "/healthz":
            return True
        return is_public_path(path) == (self is Surface.PUBLIC)


def select_routes(routes: Iterable[web.RouteDef], surface: Surface) -> list[web.RouteDef]:
    """The routes of ``routes`` that ``surface`` serves, in their order."""
    return [route for route in routes if surface.serves(route.path)]


def new_application(
    settings: Settings, routes: Iterable[web.RouteDef] = (), **options: Any
) -> web.Application:
    """An aiohttp application guarded by the admin token, bodies capped at the gateway's limit."""
    app = web.Application(
        client_max_size=settings.gateway_max_body,
        middlewares=[
            access_middleware(settings),
            body_validation(settings.gateway_read_timeout),
        ],
        **options,
    )
    app.add_routes(list(routes))
    return app


@dataclass(frozen=True, slots=True)
class Site:
    """One application on one address."""

    app: web.Application
    host: str
    port: int
    #: keyword arguments of ``web.AppRunner`` (timeouts)
    runner_options: Mapping[str, Any] = field(default_factory=dict)
    #: bind with ``SO_REUSEPORT``: several processes share the port
    #: (:mod:`calsync.gateway.processes`)
    reuse_port: bool = False
    #: listening sockets served by the same application too (the gateway's relay)
    sockets: tuple[socket.socket, ...] = ()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class SiteServer(Service):
    """A :class:`mode.Service` serving one :class:`Site`: the worker's public port when
    ``CALSYNC_ADMIN_BIND`` gives Faust's web server the admin address.

    Starting fails (``OSError``) when the address is taken; stopping is idempotent.
    """

    def __init__(self, site: Site, **kwargs: Any) -> None:
        self.site = site
        self._runner: web.AppRunner | None = None
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        runner = web.AppRunner(self.site.app, access_log=None, **self.site.runner_options)
        await runner.setup()
        self._runner = runner
        await web.TCPSite(runner, self.site.host, self.site.port).start()

    async def on_stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


async def serve_until_signalled(
    sites: Sequence[Site],
    *,
    until: asyncio.Event | None = None,
    on_serving: Callable[[], None] | None = None,
) -> None:
    """Serve every site until SIGINT or SIGTERM (or ``until`` is set), then shut them
    down (cleanup hooks run). ``on_serving`` is called once every site is listening.

    Raises ``OSError`` when an address is taken (the sites started so far are shut down).
    """
    loop = asyncio.get_running_loop()
    stop = until or asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runners: list[web.AppRunner] = []
    try:
        for site in sites:
            runner = web.AppRunner(site.app, **site.runner_options)
            runners.append(runner)
            await runner.setup()
            await web.TCPSite(
                runner, site.host, site.port, reuse_port=site.reuse_port or None
            ).start()
            for sock in site.sockets:
                await web.SockSite(runner, sock).start()
        if on_serving is not None:
            on_serving()
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(signum)
