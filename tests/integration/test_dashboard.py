"""The dashboard in a real browser (Debian's chromium, driven by Playwright), two workers.

Every resource appears whichever worker owns it, a revoked grant reads "needs
reconnecting", a change made in the emulator reaches the page without a reload, and
the resync button goes through the command path. Screenshots (wide and phone width)
are saved under ``artifacts/screenshots/`` for CI to keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import BrowserContext, Page, async_playwright, expect

from calsync.emulators.google import GoogleEmulator
from calsync.settings import Settings
from calsync.testing.cluster import WorkerCluster
from calsync.testing.topics import TopicReader
from tests.conftest import ADMIN_TOKEN
from tests.integration.conftest import CLIENT_ID, CLIENT_SECRET, event_body, serve_gateway

READ_TOKEN = "test-read-token-9876543210zyxwvu"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
NAMES = [f"cal{n:02d}" for n in range(8)]
REVOKED = "lost"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
#: Generous: two workers, a broker and a browser share a loaded 2-core machine.
WAIT_MS = 90_000


@dataclass
class Deployment:
    emulator: GoogleEmulator
    settings: Settings
    gateway: str
    workers: WorkerCluster
    events: TopicReader

    def url(self, index: int) -> str:
        return self.workers.workers[index].url


@asynccontextmanager
async def deployment(kafka_settings: Any) -> AsyncIterator[Deployment]:
    async with contextlib.AsyncExitStack() as stack:
        emulator = GoogleEmulator(seed=77)
        await emulator.start()
        stack.push_async_callback(emulator.aclose)
        emulator.add_client(CLIENT_ID, CLIENT_SECRET)
        base: Settings = kafka_settings(
            google_api_url=emulator.api_url,
            google_token_url=emulator.token_url,
            google_client_id=CLIENT_ID,
            google_client_secret=CLIENT_SECRET,
            read_token=READ_TOKEN,
            heartbeat_interval=1.0,
            summary_interval=3.0,
            kafka_session_timeout=6.0,
        )
        gateway = await stack.enter_async_context(serve_gateway(base))
        settings = dataclasses.replace(base, public_url=gateway)
        group = WorkerCluster(settings, 2)
        stack.push_async_callback(asyncio.to_thread, group.stop)
        await asyncio.to_thread(group.start)
        events = await TopicReader(settings.kafka_bootstrap, settings.topic("events")).start()
        stack.push_async_callback(events.aclose)
        yield Deployment(emulator, settings, gateway, group, events)


async def register(world: Deployment, name: str, refresh_token: str) -> None:
    body = {
        "resource_id": name,
        "provider": "google",
        "calendar_id": f"{name}@example.com",
        "credentials": {"refresh_token": refresh_token},
    }
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{world.gateway}/api/resources", json=body, headers=AUTH)
    assert response.status_code == 202, response.text


async def wait_until_both_workers_own_resources(world: Deployment) -> None:
    deadline = time.monotonic() + 120
    async with httpx.AsyncClient(headers=AUTH) as client:
        while True:
            owned = [
                (await client.get(f"{w.url}/api/status")).json()["resources"]
                for w in world.workers.workers
            ]
            if sum(owned) == len(NAMES) + 1 and all(owned):
                return
            assert time.monotonic() < deadline, owned
            await asyncio.sleep(0.5)


@asynccontextmanager
async def browser(profile: Path) -> AsyncIterator[BrowserContext]:
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 900},
        )
        try:
            yield context
        finally:
            await context.close()


async def sign_in(page: Page, base_url: str, token: str) -> None:
    """Open the dashboard without a session: the 401 page is the login form."""
    response = await page.goto(f"{base_url}/dashboard/")
    assert response is not None and response.status == 401
    await page.screenshot(path=str(SCREENSHOTS / "login.png"))
    await page.fill("#token", token)
    await page.click("button[type=submit]")
    await expect(page.locator("#resources")).to_be_visible(timeout=WAIT_MS)


async def test_dashboard_in_a_browser(kafka_settings, tmp_path: Path) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    async with deployment(kafka_settings) as world:
        for name in NAMES:
            world.emulator.add_calendar(f"{name}@example.com")
            world.emulator.insert_event(f"{name}@example.com", event_body(1), notify=False)
            await register(world, name, world.emulator.issue_refresh_token(CLIENT_ID))
        world.emulator.add_calendar(f"{REVOKED}@example.com")
        revoked = world.emulator.issue_refresh_token(CLIENT_ID)
        world.emulator.revoke_refresh_token(revoked)
        await register(world, REVOKED, revoked)
        await wait_until_both_workers_own_resources(world)

        async with browser(tmp_path / "chromium-profile") as context:
            page = await context.new_page()
            await sign_in(page, world.url(1), ADMIN_TOKEN)
            cookies = {c["name"]: c for c in await context.cookies()}
            assert cookies["calsync_session"]["httpOnly"]
            assert cookies["calsync_session"]["sameSite"] == "Strict"

            # every resource, whichever worker owns it, on one worker's page
            for name in NAMES:
                await expect(
                    page.locator(f'tr[data-id="{name}"] td[data-label="state"]')
                ).to_have_text("in sync", timeout=WAIT_MS)
            lost = page.locator(f'tr[data-id="{REVOKED}"]')
            await expect(lost.locator('td[data-label="credentials"]')).to_have_text(
                "needs reconnecting", timeout=WAIT_MS
            )
            await expect(lost.locator('td[data-label="last error"]')).to_contain_text(
                "Reconnect the calendar"
            )
            await expect(page.locator("#workers li")).to_have_count(2, timeout=WAIT_MS)
            await page.screenshot(path=str(SCREENSHOTS / "dashboard-wide.png"), full_page=True)

            # only problems
            await page.check("#f-problems")
            await expect(page.locator("tr[data-id]:visible")).to_have_count(1)
            await expect(page.locator(f'tr[data-id="{REVOKED}"]')).to_be_visible()
            await page.uncheck("#f-problems")

            # a change in the emulator reaches the page without a reload
            await page.evaluate("window.__notReloaded = true")
            row = page.locator('tr[data-id="cal03"]')
            before = float(await row.get_attribute("data-synced") or 0)
            world.emulator.insert_event("cal03@example.com", event_body(5), notify=True)
            await page.wait_for_function(
                "before => Number(document.querySelector('tr[data-id=\"cal03\"]')"
                ".getAttribute('data-synced')) > before",
                arg=before,
                timeout=WAIT_MS,
            )
            assert await page.evaluate("window.__notReloaded === true")
            await expect(row.locator('td[data-label="lag"]')).not_to_have_text("—")

            # the resync button, on the resource's page
            await page.click('tr[data-id="cal05"] a')
            await expect(page.locator("h1")).to_have_text("cal05")
            started = '#detail li[data-status="resync_started"]'
            await expect(page.locator(started).first).to_be_attached(timeout=WAIT_MS)
            await expect(page.locator("svg.chart")).to_be_visible()
            await page.evaluate("window.__notReloaded = true")
            clicked = time.time()
            await page.click("#resync")
            await expect(page.locator("#flash")).to_have_text("resync of cal05 requested")
            # a full resync that started after the click, shown without a reload
            await page.wait_for_function(
                """clicked => Array.from(document.querySelectorAll(
                    '#detail li[data-status="resync_started"]'))
                    .some(li => Number(li.dataset.at) >= clicked)""",
                arg=clicked,
                timeout=WAIT_MS,
            )
            assert await page.evaluate("window.__notReloaded === true")
            await page.screenshot(path=str(SCREENSHOTS / "resource-wide.png"), full_page=True)

            # phone width: the table turns into cards, nothing scrolls sideways
            await page.set_viewport_size({"width": 390, "height": 844})
            await page.goto(f"{world.url(0)}/dashboard/")
            await expect(page.locator(f'tr[data-id="{REVOKED}"]')).to_be_visible()
            overflow = await page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, overflow
            await page.screenshot(path=str(SCREENSHOTS / "dashboard-phone.png"), full_page=True)
            await page.goto(f"{world.url(0)}/dashboard/resources/{REVOKED}")
            await expect(page.locator("#detail .errors")).to_contain_text("Reconnect the calendar")
            await page.screenshot(path=str(SCREENSHOTS / "resource-phone.png"), full_page=True)

        # the read-only token sees everything and can change nothing
        async with browser(tmp_path / "chromium-profile-read") as context:
            page = await context.new_page()
            await sign_in(page, world.url(0), READ_TOKEN)
            await expect(page.locator(f'tr[data-id="{REVOKED}"]')).to_be_visible(timeout=WAIT_MS)
            assert await page.locator("#replay").count() == 0
            await page.goto(f"{world.url(0)}/dashboard/resources/cal05")
            assert await page.locator("#resync").count() == 0
            csrf = await page.evaluate("document.body.dataset.csrf")
            refused = await page.evaluate(
                """async csrf => (await fetch('/dashboard/resources/cal05/remove', {
                    method: 'POST', headers: {'X-CSRF-Token': csrf}})).status""",
                csrf,
            )
            assert refused == 403
