"""The benchmarks' lean HTTP client against a server that closes idle connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from benchmarks import openloop
from benchmarks.openloop import LeanClient
from calsync.testing.ports import free_port


@pytest.fixture
async def server() -> AsyncIterator[str]:
    """A server that closes a connection idle for 0.2 s, as calsync's do after 10 s."""

    async def accepted(request: web.Request) -> web.Response:
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/hook", accepted)
    runner = web.AppRunner(app, keepalive_timeout=0.2)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_connection_the_server_closed_is_not_reused(server: str) -> None:
    client = LeanClient(server)
    try:
        status, _, _ = await client.request("POST", "/hook", {}, b"")
        assert status == 202
        await asyncio.sleep(0.6)  # the server closes the idle connection meanwhile
        status, _, _ = await client.request("POST", "/hook", {}, b"")
        assert status == 202
    finally:
        await client.aclose()


async def test_a_connection_idle_past_the_keepalive_is_not_reused(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openloop, "KEEPALIVE_S", 0.0)
    client = LeanClient(server)
    try:
        await client.request("POST", "/hook", {}, b"")
        (_, first, _) = client._idle[0]
        await client.request("POST", "/hook", {}, b"")
        (_, second, _) = client._idle[0]
        assert second is not first and first.is_closing()
    finally:
        await client.aclose()
