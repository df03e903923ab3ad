"""A real worker's web server: without the admin token only webhooks and /healthz answer.

The worker has synced a calendar, so every table holds a row that names it; no
unauthenticated answer may contain the calendar id (or the resource's ciphertext).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import httpx

from tests.conftest import ADMIN_TOKEN, free_port
from tests.integration.conftest import GoogleWorld, event_body, google_world

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
#: Every read route the worker served before, Faust's built-in pages included
#: (faust/web/apps: tables, router, stats, graph, metrics, production index).
READ_ROUTES = [
    "/",
    "/table/",
    "/table/resources/",
    "/table/resources/alice/",
    "/table/sync_state/alice/",
    "/table/channels/alice/",
    "/table/timers/",
    "/router/",
    "/router/topics",
    "/router/resources/",
    "/router/resources/alice/",
    "/assignment/",
    "/graph/",
    "/performance/",
    "/stats/",
    "/status/",
    "/api/status",
    "/api/resources/alice",
    "/api/resources/alice/registration",
    "/dashboard/",
    "/dashboard/resources/alice",
    "/dashboard/api/fleet",
    "/dashboard/api/resources/alice",
    "/metrics",
    "/openapi.json",
    "/no/such/page",
]
ADMIN_PAGES = [
    "/status/",
    "/api/status",
    "/api/resources/alice",
    "/dashboard/",
    "/dashboard/api/fleet",
    "/metrics",
    "/openapi.json",
]
FAUST_PAGES = ["/table/", "/table/resources/alice/", "/router/", "/assignment/"]


async def synced(world: GoogleWorld) -> str:
    """Register ``alice`` with one event; wait for it, then for a pushed second one."""
    calendar = world.calendar("alice")
    world.emulator.insert_event(calendar, event_body(1))
    await world.register("alice")
    await world.wait_for_count(1)
    # the push arrives at /webhooks/google with no admin token, and must get through
    world.emulator.insert_event(calendar, event_body(2), notify=True)
    await world.wait_for_count(2)
    return calendar


async def assert_nothing_leaks(base_url: str, calendar: str, *, headers: dict[str, str]) -> None:
    answered = []
    async with httpx.AsyncClient(base_url=base_url, headers=headers) as client:
        for path in READ_ROUTES:
            response = await client.get(path)
            text = response.text
            leaks = calendar in text or "alice" in text or "gAAAA" in text  # gAAAA: Fernet
            refused = response.status_code == 404 or (
                response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
            )
            if leaks or not refused:
                answered.append((path, response.status_code, "leaks" if leaks else ""))
        assert (await client.get("/healthz")).status_code == 200
    assert not answered, (base_url, answered)


async def assert_status_page_links_work(client: httpx.AsyncClient) -> list[str]:
    page = await client.get("/status/")
    assert page.status_code == 200 and "alice" in page.text
    links = re.findall(r'href="([^"]+)"', page.text)
    assert links
    for link in links:
        assert (await client.get(link)).status_code == 200, link
    return links


async def test_the_worker_answers_admin_routes_only_to_the_token(kafka_settings) -> None:
    async with google_world(kafka_settings) as world:
        calendar = await synced(world)
        await assert_nothing_leaks(world.worker.url, calendar, headers={})
        await assert_nothing_leaks(
            world.worker.url, calendar, headers={"Authorization": "Bearer x"}
        )
        async with httpx.AsyncClient(base_url=world.worker.url, headers=AUTH) as client:
            for path in ADMIN_PAGES:
                assert (await client.get(path)).status_code == 200, path
            described = (await client.get("/api/resources/alice")).json()
            assert described["calendar_id"] == calendar
            for path in FAUST_PAGES:  # off unless CALSYNC_FAUST_PAGES
                assert (await client.get(path)).status_code == 404, path
            links = await assert_status_page_links_work(client)
            assert "/table/" not in links and "/router/" not in links


async def test_admin_bind_leaves_only_webhooks_on_the_public_port(kafka_settings) -> None:
    admin_port = free_port()
    async with google_world(
        kafka_settings, admin_bind=f"127.0.0.1:{admin_port}", faust_pages=True
    ) as world:
        assert world.admin_url == f"http://127.0.0.1:{admin_port}"
        calendar = await synced(world)  # registered on the admin port, pushed to the public
        # the public port knows nothing else, token or not
        await assert_nothing_leaks(world.worker.url, calendar, headers={})
        await assert_nothing_leaks(world.worker.url, calendar, headers=AUTH)
        # the admin port: the token, or nothing
        await assert_nothing_leaks(world.admin_url, calendar, headers={})
        async with httpx.AsyncClient(base_url=world.admin_url, headers=AUTH) as client:
            for path in [*ADMIN_PAGES, *FAUST_PAGES, "/healthz"]:
                assert (await client.get(path)).status_code == 200, path
            row = await client.get("/table/resources/alice/")
            assert calendar in row.text
            links = await assert_status_page_links_work(client)
            assert "/table/" in links and "/router/" in links
            webhook = await client.post("/webhooks/google")
            assert webhook.status_code == 404  # webhooks are the public port's


def test_calsync_gateway_with_admin_bind(kafka_settings, tmp_path) -> None:
    """``calsync gateway``: webhooks and /healthz on the web port, the API on the admin one."""
    admin_port = free_port()
    settings = kafka_settings(admin_bind=f"127.0.0.1:{admin_port}")
    public_url = f"http://127.0.0.1:{settings.web_port}"
    admin_url = f"http://127.0.0.1:{admin_port}"
    log_path = tmp_path / "gateway.log"
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "calsync.cli", "gateway"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with httpx.Client(timeout=30) as client:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{admin_url}/healthz").status_code == 200:
                        break
                time.sleep(0.25)
            assert client.get(f"{public_url}/healthz").status_code == 200
            # routed (400: the push lacks its headers), without any token
            assert client.post(f"{public_url}/webhooks/google").status_code == 400
            delete = "/api/resources/nobody"
            assert client.delete(public_url + delete, headers=AUTH).status_code == 404
            assert client.delete(public_url + delete).status_code == 401
            assert client.delete(admin_url + delete).status_code == 401
            assert client.delete(admin_url + delete, headers=AUTH).status_code == 202
            assert client.post(f"{admin_url}/webhooks/google").status_code == 401
            # the gateway counted the push it refused; its metrics are on the admin port
            metrics = client.get(f"{admin_url}/metrics", headers=AUTH)
            assert metrics.status_code == 200
            assert 'calsync_webhook_requests_total{provider="google",status="400"} 1.0' in (
                metrics.text
            )
            assert client.get(f"{public_url}/metrics", headers=AUTH).status_code == 404
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log_path.read_text()
        assert "Unclosed" not in log_path.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
