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
