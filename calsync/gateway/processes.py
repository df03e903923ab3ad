"""Several gateway processes behind one port: ``calsync gateway --processes N``.

One Python process answers a few thousand webhooks a second at most (its CPU per
request, ``docs/benchmarks.md`` section 1); a busier deployment needs more cores on
the webhook port. With ``--processes N`` the gateway process (the *primary*) binds
the public port with ``SO_REUSEPORT`` and starts ``N - 1`` *helpers* that bind the
same port the same way; the kernel spreads new connections over the N listening
sockets.

Only the webhooks are answered everywhere: they need nothing but the settings (a
Google channel token or a Graph ``clientState`` is checked with the shared secret)
and a producer. Everything else on the port (the connect pages, whose links live
in the primary's memory, and, without ``CALSYNC_ADMIN_BIND``, the admin API) is
relayed by a helper to the primary over a loopback socket only the primary
listens on, and answered there: same routes, same token check, same bodies
(bounded by the application's body limit). ``/healthz`` is answered locally. Every
response carries ``X-Calsync-Gateway: <k>``, the index of the process that took the
connection (0 is the primary), so an operator can see the spread. Each process
counts the webhooks it answered in its own metrics: ``/metrics`` (the primary's,
relayed) shows the primary's share only.

A helper ends when the primary does: it reads its standard input, a pipe the
primary holds, and stops at end of file (the primary stopped, or died).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Sequence

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from calsync.gateway.http import Gateway, server_options
from calsync.gateway.publisher import KafkaPublisher
from calsync.settings import Settings
from calsync.web.sites import Site, Surface, new_application, select_routes

__all__ = [
    "GATEWAY_HEADER",
    "build_helper_app",
    "relay_socket",
    "serve_helper",
    "start_helpers",
    "stop_helpers",
    "tag_responses",
]

log = logging.getLogger(__name__)

#: The response header naming the gateway process that took the connection.
GATEWAY_HEADER = "X-Calsync-Gateway"
#: Paths a helper answers itself; everything else is relayed to the primary.
_LOCAL_PREFIX = "/webhooks/"
#: Request and response headers that describe one hop, not the message (RFC 9110 §7.6.1).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


def tag_responses(index: int) -> Middleware:
    """A middleware adding :data:`GATEWAY_HEADER` to every response of this process."""

    @web.middleware
    async def tag(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers[GATEWAY_HEADER] = str(index)
            raise
        response.headers[GATEWAY_HEADER] = str(index)
        return response

    return tag


def relay_socket() -> socket.socket:
    """A listening loopback socket on a free port: the primary's end of the relay."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def build_helper_app(
    settings: Settings, publisher: KafkaPublisher, relay_to: str, index: int
) -> web.Application:
    """A helper's application: the webhooks and ``/healthz`` answered here, every
    other request relayed to the primary at ``relay_to`` (``http://127.0.0.1:<port>``).

    The helper declares the primary's routes of its surface and checks tokens (and
    bodies) like the primary, which checks them again; a path the primary does not
    serve is a 404 here.
    """
    gateway = Gateway(settings, publisher)
    surface = Surface.ALL if settings.admin_address is None else Surface.PUBLIC
    served = select_routes(
        [*gateway.routes(), web.get("/metrics", _never), web.get("/openapi.json", _never)],
        surface,
    )
    clients: list[aiohttp.ClientSession] = []
    timeout = aiohttp.ClientTimeout(total=settings.gateway_read_timeout + 30.0)

    async def relay(request: web.Request) -> web.StreamResponse:
        if not clients:
            clients.append(aiohttp.ClientSession(timeout=timeout, auto_decompress=False))
        body = await request.read()  # bounded by client_max_size (413 past it)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            async with clients[0].request(
                request.method,
                relay_to + request.path_qs,
                headers=headers,
                data=body,
                allow_redirects=False,
            ) as answer:
                content = await answer.read()
                out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
                return web.Response(status=answer.status, headers=out, body=content)
        except (aiohttp.ClientError, TimeoutError):
            log.warning("the primary gateway process did not answer a relayed request")
            return web.json_response(
                {"error": "the gateway is restarting; retry"},
                status=503,
                headers={"Retry-After": "1"},
            )

    # The primary's routes, each answered here (webhooks, /healthz) or relayed, under
    # the same token middleware as the primary's: a stranger's admin request stops here.
    local = [r for r in served if r.path.startswith(_LOCAL_PREFIX) or r.path == "/healthz"]
    relayed = [web.route(r.method, r.path, relay) for r in served if r not in local]
    app = new_application(settings, [*local, *relayed])
    app.middlewares.insert(0, tag_responses(index))  # outermost: on every answer

    async def close(_: web.Application) -> None:
        await gateway.aclose()
        for client in clients:
            await client.close()

    app.on_cleanup.append(close)
    return app


async def _never(request: web.Request) -> web.StreamResponse:
    raise AssertionError("a relayed route is never answered here")  # pragma: no cover


def serve_helper(settings: Settings, relay_to: str, index: int) -> None:
    """Run one helper (``calsync gateway --relay-to URL --index K``) until SIGTERM,
    SIGINT or the end of its standard input."""
    from calsync.web.sites import serve_until_signalled

    publisher = KafkaPublisher(settings.kafka_bootstrap, client_id=f"calsync-gateway-{index}")
    app = build_helper_app(settings, publisher, relay_to, index)
    site = Site(
        app, settings.web_bind, settings.web_port, server_options(settings), reuse_port=True
    )

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        orphaned = asyncio.Event()
        pipe = sys.stdin.fileno()

        def primary_gone() -> None:  # readable: end of file (or a stray byte)
            try:
                data = os.read(pipe, 1)
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(pipe)
                orphaned.set()

        # watched by the loop, not a thread: a thread blocked on stdin makes the
        # interpreter's shutdown fail ("could not acquire lock for <stdin>")
        loop.add_reader(pipe, primary_gone)
        await publisher.start()
        try:
            await serve_until_signalled([site], until=orphaned)
        finally:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(pipe)
            await publisher.aclose()

    asyncio.run(serve())


def start_helpers(
    count: int, relay_to: str, env: dict[str, str] | None = None
) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` helpers (indexes 1..count), each reading a pipe held here."""
    helpers = []
    for index in range(1, count + 1):
        helpers.append(
            subprocess.Popen(  # noqa: S603  # our own interpreter and module, fixed arguments
                [
                    sys.executable,
                    "-m",
                    "calsync.cli",
                    "gateway",
                    "--relay-to",
                    relay_to,
                    "--index",
                    str(index),
                ],
                stdin=subprocess.PIPE,
                env=env if env is not None else dict(os.environ),
            )
        )
    return helpers


def stop_helpers(helpers: Sequence[subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
    """Stop the helpers (SIGTERM, then SIGKILL after ``timeout``) and reap them."""
    for helper in helpers:
        if helper.poll() is None:
            helper.terminate()
    for helper in helpers:
        try:
            helper.wait(timeout)
        except subprocess.TimeoutExpired:
            helper.kill()
            helper.wait(timeout)
        if helper.stdin is not None:
            with contextlib.suppress(OSError):
                helper.stdin.close()
