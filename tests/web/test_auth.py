"""The admin-token middleware on a small application: who gets through, who gets 401."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from calsync.web.auth import admin_token_middleware, bearer_matches, is_public_path

TOKEN = "Zq3-vL9_xT2kP8mR4wB7nY1cH6jF0dGs"
SECRET = "room-1@acme.com"  # what an admin route shows and nobody else may see
GOOD = {"Authorization": f"Bearer {TOKEN}"}


async def secret(request: web.Request) -> web.Response:
    return web.json_response({"calendar_id": SECRET})


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application(middlewares=[admin_token_middleware(TOKEN)])
    app.add_routes(
        [
            web.post("/webhooks/google", ok),
            web.get("/healthz", ok),
            web.get("/api/resources/{rid}", secret),
            web.get("/table/{name}/{key}/", secret),
            web.get("/status/", secret),
        ]
    )
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def test_public_routes_need_no_token(
    client: TestClient[web.Request, web.Application],
) -> None:
    assert (await client.post("/webhooks/google")).status == 200
    assert (await client.get("/healthz")).status == 200
    assert (await client.head("/healthz")).status == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer x{TOKEN}"},
        {"Authorization": f"Bearer {TOKEN.upper()}"},
        {"X-Admin-Token": TOKEN},
    ],
)
@pytest.mark.parametrize("path", ["/api/resources/room-1", "/table/resources/room-1/", "/status/"])
async def test_admin_routes_refuse_without_the_token(
    client: TestClient[web.Request, web.Application], path: str, headers: dict[str, str]
) -> None:
    response = await client.get(path, headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert SECRET not in await response.text()


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_admin_routes_answer_with_the_token(
    client: TestClient[web.Request, web.Application], scheme: str
) -> None:
    response = await client.get(
        "/api/resources/room-1", headers={"Authorization": f"{scheme} {TOKEN}"}
    )
    assert response.status == 200 and SECRET in await response.text()


async def test_unknown_paths_reveal_nothing(
    client: TestClient[web.Request, web.Application],
) -> None:
    """Without the token every unknown path and wrong method looks the same: 401."""
    refused = [
        await client.get("/nothing-here"),
        await client.get("/"),
        await client.get("/webhooks/nothing-here"),
        await client.get("/webhooks/google"),  # a public path, the wrong method
        await client.post("/healthz"),
    ]
    bodies = {await response.text() for response in refused}
    assert {response.status for response in refused} == {401} and len(bodies) == 1
    # with the token aiohttp's usual answers come back
    assert (await client.get("/nothing-here", headers=GOOD)).status == 404
    assert (await client.get("/webhooks/google", headers=GOOD)).status == 405


@pytest.mark.parametrize(
    "path",
    [
        "/webhooks/../api/resources/room-1",
        "/webhooks/%2e%2e/api/resources/room-1",
        "/webhooks/..%2fapi/resources/room-1",
        "/healthz/../status/",
        "/healthz%2f../status/",
        "/webhooks/./../status/",
        "/webhooks//../status/",
        "/status/?next=/webhooks/google",
        "/table/resources/room-1/#/webhooks/",
    ],
)
async def test_no_spelling_of_a_path_makes_an_admin_route_public(
    client: TestClient[web.Request, web.Application], path: str
) -> None:
    response = await client.get(path)
    assert response.status in (401, 404)
    assert SECRET not in await response.text()


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/webhooks/../status/",
        b"/webhooks/%2e%2e/status/",
        b"/healthz/../api/resources/room-1",
        b"//status/",
        b"/webhooks/google/../../table/resources/room-1/",
    ],
)
async def test_raw_paths_the_client_would_normalize(
    client: TestClient[web.Request, web.Application], raw_path: bytes
) -> None:
    """The same, sent as raw bytes, so no client library tidies the path first."""
    assert client.server.host is not None and client.server.port is not None
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(b"GET " + raw_path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    status = int(answer.split(b" ", 2)[1])
    assert status in (400, 401, 404) and SECRET.encode() not in answer


def test_public_paths() -> None:
    assert is_public_path("/healthz") and is_public_path("/webhooks/microsoft/lifecycle")
    assert is_public_path("/connect/google/callback")
    for path in (
        "/",
        "/healthz/",
        "/webhooks",
        "/connect",
        "/api/connect",
        "/api/resources",
        "/status/",
        "/table/",
    ):
        assert not is_public_path(path)


def test_bearer_matches_only_the_exact_token() -> None:
    import hashlib

    digest = hashlib.sha256(TOKEN.encode()).digest()
    assert bearer_matches(f"Bearer {TOKEN}", digest)
    assert bearer_matches(f"  bearer   {TOKEN}  ", digest)
    assert not bearer_matches(None, digest)
    assert not bearer_matches(f"Bearer {TOKEN}\udcff", digest)  # undecodable header bytes
