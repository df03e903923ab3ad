"""``/metrics`` of a real worker: it parses, and its histograms move when webhooks arrive."""

from __future__ import annotations

import asyncio
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_TOKEN
from tests.integration.conftest import event_body, google_world

READ_TOKEN = "test-read-token-9876543210zyxwvu"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and labels (parsing fails on bad text)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def total(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(value for (sample, _), value in found.items() if sample == name)


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return samples(response.text)


async def test_metrics_parse_and_move_with_webhooks(kafka_settings) -> None:
    async with google_world(kafka_settings, read_token=READ_TOKEN) as world:
        calendar = world.calendar("alice")
        world.emulator.insert_event(calendar, event_body(1), notify=False)
        await world.register("alice")
        await world.wait_for_count(1)
        async with httpx.AsyncClient(base_url=world.worker.url) as anonymous:
            assert (await anonymous.get("/metrics")).status_code == 401
        headers = {"Authorization": f"Bearer {READ_TOKEN}"}
        async with httpx.AsyncClient(base_url=world.worker.url, headers=headers) as client:
            before = await scrape(client)
            assert total(before, "calsync_provider_requests_total") > 0
            assert total(before, "calsync_events_emitted_total") >= 1
            for n in range(3):
                world.emulator.insert_event(calendar, event_body(2 + n), notify=True)
            await world.wait_for_count(4)
            deadline = time.monotonic() + 60
            while True:
                after = await scrape(client)
                responses = "calsync_webhook_response_seconds_count"
                latencies = "calsync_webhook_to_event_seconds_count"
                moved = (
                    total(after, responses) > total(before, responses)
                    and total(after, latencies) >= total(before, latencies) + 3
                )
                if moved:
                    break
                assert time.monotonic() < deadline, sorted(after.items())[:40]
                await asyncio.sleep(0.5)
            google = (("provider", "google"),)
            assert after[("calsync_webhook_response_seconds_count", google)] >= 1
            assert after[("calsync_webhook_to_event_seconds_count", google)] >= 4
            accepted = (("provider", "google"), ("status", "202"))
            assert after[("calsync_webhook_requests_total", accepted)] >= 1
            assert after[("calsync_resources", (("state", "active"),))] == 1
            assert total(after, "calsync_resource_sync_age_seconds_gcount") == 1
            # no series names a resource: staleness is a distribution
            assert not [key for key in after if "alice" in str(key)]
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            assert (await client.get("/metrics", headers=admin)).status_code == 200
