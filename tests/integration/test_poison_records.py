"""Malformed records on calsync.retries and calsync.commands, produced to a running
worker: quarantined with a status event, acked, and never fatal (a worker that died
on one would die on it again after every restart)."""

from __future__ import annotations

import asyncio
import time

import httpx
from aiokafka import AIOKafkaProducer

from calsync.streams.records import StatusEvent
from tests.integration.conftest import event_body, google_world

#: Not UTF-8, not JSON, JSON but not an object, an object of the wrong shape, a
#: nested record of the wrong shape, a field of the wrong type, a tombstone.
POISON: list[bytes | None] = [
    b"\xff\x00 not json at all",
    b"{truncated",
    b"[1, 2, 3]",
    b'{"hello": "world"}',
    b'{"notification": {"provider": "google"}, "attempt": 1, "due_at": 1.0, "last_error": ""}',
    b'{"kind": "register", "resource_id": 42, "issued_at": "soon"}',
    None,
]


async def test_poison_on_retries_and_commands_is_quarantined_and_the_worker_goes_on(
    kafka_settings,
) -> None:
    async with google_world(kafka_settings) as world:
        settings = world.settings
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for topic in (settings.topic("retries"), settings.topic("commands")):
                for value in POISON:
                    await producer.send_and_wait(topic, value=value, key=b"poisoned")
        finally:
            await producer.stop()

        calendar = world.calendar("after")
        world.emulator.insert_events(calendar, [event_body(n) for n in range(3)])
        await world.register("after")  # a valid command behind the poison
        await world.wait_converged(["after"], timeout=90)

        async with httpx.AsyncClient() as client:
            health = await client.get(f"{world.worker.url}/healthz")
        assert health.status_code == 200, health.text
        assert world.worker.running, world.worker.tail()

        deadline = time.monotonic() + 30
        while True:
            statuses: list[StatusEvent] = await world.statuses()
            quarantined = [s for s in statuses if s.status == "quarantined"]
            if len(quarantined) >= 2 * len(POISON) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert len(quarantined) == 2 * len(POISON), [s.detail for s in quarantined]
        seen = {(s.data or {})["topic"] for s in quarantined}
        assert seen == {settings.topic("retries"), settings.topic("commands")}
        for status in quarantined:
            assert status.resource_id == "poisoned"
            assert set(status.data or {}) == {"topic", "partition", "offset"}
            assert "world" not in status.detail and "soon" not in status.detail  # no contents
        counts = (await world.api_status())["quarantined"]
        assert counts == {settings.topic("retries"): 7, settings.topic("commands"): 7}
