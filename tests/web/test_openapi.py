"""The OpenAPI document is true: every route the worker (and the standalone gateway)
mounts is described, every description is mounted, and bodies are checked against it.

The route walk reads the application the real ``create_app`` builds, so a route added
anywhere shows up here without a test edit: describe it in ``calsync/web/openapi.json``.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator

from calsync.app import create_app
from calsync.gateway.http import build_gateway_app
from calsync.gateway.publisher import Publisher
from calsync.web.openapi import document, document_text, operations, shape
from tests.conftest import ADMIN_TOKEN, SettingsFactory

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def mounted(application: web.Application) -> set[tuple[str, str]]:
    """``(METHOD, path)`` of every route; HEAD is aiohttp's automatic twin of GET."""
    return {
        (route.method, shape(route.resource.canonical))
        for route in application.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }


def described() -> set[tuple[str, str]]:
    return {(method, shape(path)) for method, path in operations(document())}


def worker_app(make_settings: SettingsFactory) -> web.Application:
    app = create_app(make_settings())
    app.web.init_server()
    application: web.Application = app.web.web_app
    return application


class NoBroker(Publisher):
    async def publish(self, topic: str, key: str, value: bytes) -> None:
        raise ConnectionError("no broker in this test")


def test_every_worker_route_is_described_and_every_description_is_a_route(
    make_settings: SettingsFactory,
) -> None:
    served = mounted(worker_app(make_settings))
    assert served - described() == set(), "mounted but not in calsync/web/openapi.json"
    assert described() - served == set(), "in calsync/web/openapi.json but not mounted"


def test_the_standalone_gateway_serves_described_routes_only(
    make_settings: SettingsFactory,
) -> None:
    served = mounted(build_gateway_app(make_settings(), NoBroker()))
    assert served and served <= described()


def test_the_document_is_openapi_3_1_with_valid_schemas() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1")
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            assert operation.get("responses"), (method, path)
            for parameter in operation.get("parameters", []):
                if "$ref" not in parameter:
                    Draft202012Validator.check_schema(parameter["schema"])
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    public = {
        (method, path)
        for path, item in doc["paths"].items()
        for method, operation in item.items()
        if operation.get("security") == []
    }
    assert {path for _, path in public} == {
        "/healthz",
        "/webhooks/google",
        "/webhooks/microsoft",
        "/webhooks/microsoft/lifecycle",
        "/login",
        # a calendar owner's pages: each authorized by its own one-time token
        "/connect/{link}",
        "/connect/{link}/calendars",
        "/connect/google/callback",
        "/connect/microsoft/callback",
        "/connect/microsoft/admin-consent",
    }


async def test_the_worker_serves_the_document(make_settings: SettingsFactory) -> None:
    async with TestClient(TestServer(worker_app(make_settings))) as client:
        assert (await client.get("/openapi.json")).status == 401
        response = await client.get("/openapi.json", headers=AUTH)
        assert response.status == 200
        assert await response.text() == document_text()


async def post_registration(client: TestClient[Any, Any], body: object) -> dict[str, Any]:
    response = await client.post(
        "/api/resources",
        data=body if isinstance(body, bytes) else json.dumps(body),
        headers=AUTH,
    )
    assert response.status == 400, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


async def test_malformed_bodies_get_a_400_saying_what_is_wrong(
    make_settings: SettingsFactory,
) -> None:
    good = {
        "resource_id": "room-1",
        "provider": "google",
        "calendar_id": "room-1@example.com",
        "credentials": {"refresh_token": "r"},
    }
    app = build_gateway_app(make_settings(), NoBroker())
    async with TestClient(TestServer(app)) as client:
        missing = await post_registration(
            client, {k: v for k, v in good.items() if k != "provider"}
        )
        assert "'provider' is a required property" in missing["error"]
        wrong_type = await post_registration(client, {**good, "credentials": ["r"]})
        assert wrong_type["field"] == "credentials"
        assert "is not of type 'object'" in wrong_type["error"]
        unknown = await post_registration(client, {**good, "provider": "yahoo"})
        assert unknown["field"] == "provider" and "yahoo" in unknown["error"]
        switch = await post_registration(client, {**good, "busy_policy": {"all_day_is_busy": 1}})
        assert switch["field"] == "busy_policy.all_day_is_busy"
        not_json = await post_registration(client, b"{nope")
        assert not_json["error"].startswith("the body is not JSON")
        empty = await post_registration(client, b"")
        assert empty["error"] == "the body must be a JSON object"
        # a body the schema accepts reaches the handler (which finds no broker: 503)
        accepted = await client.post("/api/resources", json=good, headers=AUTH)
        assert accepted.status == 503
