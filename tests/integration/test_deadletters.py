"""Dead letters replayed over the admin API (the dashboard's button takes the same path)."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.conftest import ADMIN_TOKEN
from tests.integration.conftest import event_body, google_world

READ_TOKEN = "test-read-token-9876543210zyxwvu"


async def test_a_dead_letter_is_replayed_once(kafka_settings) -> None:
    async with google_world(
        kafka_settings,
        read_token=READ_TOKEN,
        max_attempts=2,
        retry_patience=0.0,  # dead-lettered after the attempts, at once
        retry_base_delay=0.2,
        retry_max_delay=0.5,
    ) as world:
        calendar = world.calendar("alice")
        world.emulator.insert_event(calendar, event_body(1), notify=False)
        await world.register("alice")
        await world.wait_for_count(1)
        world.emulator.faults.add("backend_error_500", method="GET", path=r"/events$")
        world.emulator.insert_event(calendar, event_body(2), notify=True)
        deadline = time.monotonic() + 60
        while "failed" not in [s.status for s in await world.statuses()]:
            assert time.monotonic() < deadline, world.worker.tail()
            await asyncio.sleep(0.5)
        world.emulator.faults.clear()
        url = f"{world.worker.url}/api/deadletters/replay"
        async with httpx.AsyncClient(timeout=60) as client:
            read = await client.post(url, headers={"Authorization": f"Bearer {READ_TOKEN}"})
            assert read.status_code == 403
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            replayed = await client.post(url, headers=admin)
            assert replayed.status_code == 200, replayed.text
            assert replayed.json()["replayed"] >= 1
            await world.wait_converged(["alice"], timeout=60)
            again = await client.post(url, headers=admin)
            assert again.json() == {"replayed": 0}
