"""Tokens, browser sessions and CSRF: who may look, who may change, and how a browser signs in.

A small application behind the real middleware and the dashboard's real login handler.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from calsync.errors import ConfigurationError
from calsync.streams.records import CommandKind
from calsync.web.auth import CSRF_HEADER, SESSION_COOKIE, Role, access_middleware, session_signer
from calsync.web.dashboard import Dashboard
from calsync.web.fleet import Fleet
from tests.conftest import ADMIN_TOKEN, SettingsFactory

READ_TOKEN = "test-read-token-9876543210zyxwvu"
Client = TestClient[web.Request, web.Application]


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def nothing(kind: CommandKind, resource_id: str) -> None:
    raise RuntimeError("no broker here")


async def none_replayed() -> int:
    return 0


async def ready() -> None:
    return None


@pytest.fixture
async def client(make_settings: SettingsFactory) -> AsyncIterator[Client]:
    settings = make_settings(read_token=READ_TOKEN)
    dashboard = Dashboard(
        Fleet(),
        signer=session_signer(settings),
        send_command=nothing,
        replay=none_replayed,
        ready=ready,
        app_id="test",
    )
    app = web.Application(middlewares=[access_middleware(settings)])
    app.add_routes(
        [
            web.get("/healthz", ok),
            web.get("/api/things", ok),
            web.post("/api/things", ok),
            web.delete("/api/things", ok),
            *dashboard.routes(),
        ]
    )
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def sign_in(client: Client, token: str) -> str:
    """POST the login form; returns the session's CSRF token (read from the page)."""
    response = await client.post(
        "/login", data={"token": token, "next": "/dashboard/"}, allow_redirects=False
    )
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/dashboard/"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    page = await client.get("/dashboard/")
    assert page.status == 200
    text = await page.text()
    marker = 'data-csrf="'
    return text[text.index(marker) + len(marker) :].split('"', 1)[0]


async def test_the_read_token_looks_but_changes_nothing(client: Client) -> None:
    assert (await client.get("/api/things", headers=bearer(READ_TOKEN))).status == 200
    assert (await client.get("/dashboard/", headers=bearer(READ_TOKEN))).status == 200
    for method in ("POST", "DELETE"):
        refused = await client.request(method, "/api/things", headers=bearer(READ_TOKEN))
        assert refused.status == 403, method
        assert (await client.request(method, "/api/things", headers=bearer(ADMIN_TOKEN))).ok
    action = await client.post("/dashboard/resources/room-1/resync", headers=bearer(READ_TOKEN))
    assert action.status == 403


async def test_without_credentials_a_browser_gets_the_login_form_with_its_401(
    client: Client,
) -> None:
    page = await client.get("/dashboard/", headers={"Accept": "text/html"})
    assert page.status == 401
    assert page.headers["WWW-Authenticate"] == "Bearer"
    assert 'action="/login"' in await page.text()
    api = await client.get("/api/things")
    assert api.status == 401 and (await api.json())["error"]
    assert (await client.get("/healthz")).status == 200


async def test_a_wrong_token_does_not_sign_in(client: Client) -> None:
    response = await client.post("/login", data={"token": "x" * 32}, allow_redirects=False)
    assert response.status == 401
    assert SESSION_COOKIE not in response.cookies
    assert "not valid" in await response.text()
    assert (await client.get("/api/things")).status == 401


async def test_an_admin_session_needs_the_csrf_token_to_change_anything(client: Client) -> None:
    csrf = await sign_in(client, ADMIN_TOKEN)
    assert (await client.get("/api/things")).status == 200
    assert (await client.post("/api/things")).status == 403  # the cookie alone: no
    assert (await client.post("/api/things", headers={CSRF_HEADER: "forged"})).status == 403
    assert (await client.post("/api/things", headers={CSRF_HEADER: csrf})).status == 200
    assert (await client.post("/api/things", data={"csrf_token": csrf})).status == 200
    out = await client.post("/logout", data={"csrf_token": csrf}, allow_redirects=False)
    assert out.status == 303
    assert (await client.get("/api/things")).status == 401


async def test_a_read_session_cannot_change_anything_even_with_csrf(client: Client) -> None:
    csrf = await sign_in(client, READ_TOKEN)
    assert (await client.get("/api/things")).status == 200
    page = await (await client.get("/dashboard/")).text()
    assert "Replay dead letters" not in page
    assert (await client.post("/api/things", headers={CSRF_HEADER: csrf})).status == 403


async def test_login_redirects_only_to_local_paths(client: Client) -> None:
    for evil in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        response = await client.post(
            "/login", data={"token": ADMIN_TOKEN, "next": evil}, allow_redirects=False
        )
        assert response.headers["Location"] == "/dashboard/", evil


def test_session_cookies_are_bound_to_the_tokens(make_settings: SettingsFactory) -> None:
    settings = make_settings(read_token=READ_TOKEN)
    signer = session_signer(settings)
    cookie, session = signer.open(Role.ADMIN, now=1000.0)
    assert signer.check(cookie, now=1001.0) == session
    assert signer.check(cookie, now=1000.0 + 13 * 3600) is None  # expired
    _role, expires, nonce, bound, mac = cookie.split(".")
    assert signer.check(f"read.{expires}.{nonce}.{bound}.{mac}", now=1001.0) is None
    assert signer.check(cookie[:-2] + "xx", now=1001.0) is None
    rotated = session_signer(make_settings(read_token=READ_TOKEN, admin_token="N" + ADMIN_TOKEN))
    assert rotated.check(cookie, now=1001.0) is None  # a new admin token ends old sessions
    assert signer.role_of_token(READ_TOKEN) is Role.READ
    assert signer.role_of_token("") is None


def test_the_read_token_is_checked_like_the_admin_token(make_settings: SettingsFactory) -> None:
    with pytest.raises(ConfigurationError, match="CALSYNC_READ_TOKEN"):
        make_settings(read_token="short")
    with pytest.raises(ConfigurationError, match="differ"):
        make_settings(read_token=ADMIN_TOKEN)
    assert READ_TOKEN not in repr(make_settings(read_token=READ_TOKEN))
