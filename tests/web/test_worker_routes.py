"""The worker's web server, built in-process (no broker): what it mounts, what it guards."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from calsync.app import CalsyncApp, create_app
from tests.conftest import ADMIN_TOKEN, SettingsFactory, free_port

WEBHOOKS = {
    ("POST", "/webhooks/google"),
    ("POST", "/webhooks/microsoft"),
    ("POST", "/webhooks/microsoft/lifecycle"),
}
HEALTH = {("GET", "/healthz"), ("HEAD", "/healthz")}
#: Pages a calendar's owner opens from a connect link: no admin token, but each one is
#: authorized by the link's own one-time token (calsync.gateway.connect)
CONNECT = {
    ("GET", "/connect/google/callback"),
    ("HEAD", "/connect/google/callback"),
    ("GET", "/connect/microsoft/callback"),
    ("HEAD", "/connect/microsoft/callback"),
    ("GET", "/connect/microsoft/admin-consent"),
    ("HEAD", "/connect/microsoft/admin-consent"),
    ("GET", "/connect/{link}"),
    ("HEAD", "/connect/{link}"),
    ("POST", "/connect/{link}/calendars"),
}
#: Faust's built-in pages (faust/web/apps/*): none is mounted unless asked for
FAUST_PREFIXES = ("/table", "/router", "/graph", "/performance", "/assignment")


def web_app(app: CalsyncApp) -> web.Application:
    app.web.init_server()
    application: web.Application = app.web.web_app
    return application


def routes(application: web.Application) -> set[tuple[str, str]]:
    return {
        (route.method, route.resource.canonical)
        for route in application.router.routes()
        if route.resource is not None
    }


def concrete(path: str) -> str:
    """A request path for a route: every ``{placeholder}`` becomes ``room-1``."""
    return re.sub(r"\{[^}]+\}", "room-1", path)


@asynccontextmanager
async def served(
    application: web.Application,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(application)) as client:
        yield client


def build(make_settings: SettingsFactory, **overrides: object) -> CalsyncApp:
    return create_app(make_settings(**overrides))


async def test_faust_pages_are_off_by_default(make_settings: SettingsFactory) -> None:
    application = web_app(build(make_settings))
    mounted = routes(application)
    assert not [path for _, path in mounted if path.startswith(FAUST_PREFIXES)]
    async with served(application) as client:  # "/" is calsync's way to the dashboard
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        index = await client.get("/", headers=auth, allow_redirects=False)
        assert (index.status, index.headers["Location"]) == (302, "/dashboard/")
    assert mounted >= WEBHOOKS | HEALTH
    assert {("GET", "/status/"), ("GET", "/api/status"), ("POST", "/api/resources")} <= mounted


async def test_every_route_but_webhooks_and_health_needs_the_token(
    make_settings: SettingsFactory,
) -> None:
    """Walks every mounted route, so a route added later is covered without a test edit."""
    for pages in (False, True):
        application = web_app(build(make_settings, faust_pages=pages))
        mounted = routes(application)
        if pages:
            assert {("GET", "/table/{name}/{key}/"), ("GET", "/router/"), ("GET", "/")} <= mounted
        async with served(application) as client:
            assert {r for r in mounted if r[1].startswith("/connect/")} == CONNECT
            for method, path in sorted(mounted - WEBHOOKS - HEALTH - CONNECT):
                response = await client.request(method, concrete(path))
                assert response.status == 401, (method, path, response.status)
                assert response.headers["WWW-Authenticate"] == "Bearer"
            for method, path in sorted(CONNECT):
                # without a live one-time token they do nothing
                response = await client.request(method, concrete(path), allow_redirects=False)
                assert response.status in (400, 404), (method, path, response.status)
            health = await client.get("/healthz")
            assert health.status == 200
            # without the token, every unknown path looks like any admin route
            assert (await client.get("/table/resources/room-1/")).status == 401
            assert (await client.get("/no/such/page")).status == 401
            wrong = {"Authorization": "Bearer " + "x" * len(ADMIN_TOKEN)}
            assert (await client.get("/api/status", headers=wrong)).status == 401


async def test_admin_bind_moves_admin_routes_off_the_public_port(
    make_settings: SettingsFactory,
) -> None:
    app = build(make_settings, admin_bind=f"127.0.0.1:{free_port()}", faust_pages=True)
    assert app.public_server is not None
    public = routes(app.public_server.site.app)
    # owners open connect links from wherever they are: the public port serves them
    assert public == WEBHOOKS | HEALTH | CONNECT
    assert (app.public_server.site.host, app.public_server.site.port) == (
        app.settings.web_bind,
        app.settings.web_port,
    )
    admin = routes(web_app(app))
    assert not admin & WEBHOOKS and not admin & CONNECT
    assert ("POST", "/api/connect") in admin
    assert admin >= HEALTH and ("GET", "/api/status") in admin and ("GET", "/table/") in admin
    assert app.conf.web_port == app.settings.admin_address[1]  # type: ignore[index]
    async with served(app.public_server.site.app) as client:
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert (await client.get("/api/status", headers=auth)).status == 404
        assert (await client.get("/status/")).status == 401


async def test_without_admin_bind_there_is_one_server(make_settings: SettingsFactory) -> None:
    app = build(make_settings)
    assert app.public_server is None
    assert (app.conf.web_bind, app.conf.web_port) == (app.settings.web_bind, app.settings.web_port)


READ_TOKEN = "test-read-token-9876543210zyxwvu"
#: Routes that check the credential themselves (the login form) or end a session.
SESSION_ROUTES = {("POST", "/login"), ("POST", "/logout")}


async def test_the_read_token_reads_every_route_and_changes_none(
    make_settings: SettingsFactory,
) -> None:
    """Walks every mounted route: GETs pass the guard, everything else is refused (403)."""
    application = web_app(build(make_settings, read_token=READ_TOKEN))
    mounted = routes(application)
    changing = sorted(
        (method, path)
        for method, path in mounted - WEBHOOKS - HEALTH - SESSION_ROUTES - CONNECT
        if method not in ("GET", "HEAD")
    )
    assert ("POST", "/api/resources") in changing
    assert ("POST", "/dashboard/resources/{resource_id}/{action}") in changing
    read = {"Authorization": f"Bearer {READ_TOKEN}"}
    async with served(application) as client:
        for method, path in changing:
            response = await client.request(method, concrete(path), headers=read)
            assert response.status == 403, (method, path, response.status)
        for path in ("/openapi.json", "/dashboard/static/dashboard.js"):
            assert (await client.get(path, headers=read)).status == 200, path
