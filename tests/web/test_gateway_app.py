"""``calsync gateway``'s application: the same guard as the worker, split by surface."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from calsync.gateway.http import build_gateway_app
from tests.conftest import ADMIN_TOKEN, SettingsFactory

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class NullPublisher:
    """A publisher that accepts everything (nothing here gets far enough to publish)."""

    async def publish(self, topic: str, key: str, value: bytes) -> None:
        return None


def paths(app: web.Application) -> set[str]:
    return {r.resource.canonical for r in app.router.routes() if r.resource is not None}


@pytest.mark.parametrize(
    ("surface", "public", "admin"),
    [("all", True, True), ("public", True, False), ("admin", False, True)],
)
async def test_surfaces(
    make_settings: SettingsFactory, surface: str, public: bool, admin: bool
) -> None:
    app = build_gateway_app(make_settings(), NullPublisher(), surface=surface)
    mounted = paths(app)
    assert "/healthz" in mounted
    assert ("/webhooks/google" in mounted) is public
    assert ("/api/resources" in mounted) is admin
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/healthz")).status == 200
        # without the token nothing tells an admin route from an unknown path
        for method, path in [
            ("POST", "/api/resources"),
            ("DELETE", "/api/resources/r"),
            ("GET", "/x"),
        ]:
            response = await client.request(method, path)
            assert response.status == 401 and response.headers["WWW-Authenticate"] == "Bearer"
        status = (await client.post("/api/resources", headers=AUTH, json={})).status
        assert status == (400 if admin else 404)


def test_an_unknown_surface_is_refused(make_settings: SettingsFactory) -> None:
    with pytest.raises(ValueError, match="everything"):
        build_gateway_app(make_settings(), NullPublisher(), surface="everything")


async def test_a_link_made_on_the_admin_address_opens_on_the_public_one(
    make_settings: SettingsFactory,
) -> None:
    from calsync.gateway.http import Gateway

    settings = make_settings(google_client_id="cid.apps.googleusercontent.com")
    gateway = Gateway(settings, NullPublisher())  # type: ignore[arg-type]
    admin = build_gateway_app(settings, NullPublisher(), surface="admin", gateway=gateway)
    public = build_gateway_app(settings, NullPublisher(), surface="public", gateway=gateway)
    assert "/connect/{link}" in paths(public) and "/connect/{link}" not in paths(admin)
    assert "/api/connect" in paths(admin) and "/api/connect" not in paths(public)
    async with TestClient(TestServer(admin)) as a, TestClient(TestServer(public)) as p:
        made = await a.post(
            "/api/connect", headers=AUTH, json={"resource_id": "r", "provider": "google"}
        )
        assert made.status == 201
        link = (await made.json())["connect_url"].split("/connect/")[1]
        opened = await p.get(f"/connect/{link}", allow_redirects=False)
        assert opened.status == 302
        location = opened.headers["Location"]
        assert location.startswith("https://accounts.google.com/o/oauth2/v2/auth?")
        assert "code_challenge_method=S256" in location and "state=" in location
