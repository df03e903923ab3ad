"""Credentials "refreshing": a token endpoint failing transiently (here 503) shows on the
dashboard's JSON and in ``/metrics`` while it lasts, and "ok" once a sync goes through.

One worker, the Google emulator (its fault rule on ``/token``), the real broker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import ADMIN_TOKEN
from tests.integration.conftest import GoogleWorld, event_body, google_world

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def fleet_view(client: httpx.AsyncClient, world: GoogleWorld, rid: str) -> dict[str, Any]:
    response = await client.get(f"{world.worker.url}/dashboard/api/fleet", headers=AUTH)
    response.raise_for_status()
    body = response.json()
    return next((r for r in body["resources"] if r["resource_id"] == rid), {}) | {
        "@credentials": body.get("credentials", {})
    }


async def until(
    client: httpx.AsyncClient,
    world: GoogleWorld,
    rid: str,
    check: Callable[[dict[str, Any]], bool],
    *,
    timeout: float = 90.0,
) -> dict[str, Any]:
    """Poll the dashboard's JSON until ``check`` holds for ``rid``'s row."""
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = await fleet_view(client, world, rid)
        if check(view):
            return view
        await asyncio.sleep(0.5)
    raise AssertionError(f"last seen: {view}\n{world.worker.tail()}")


async def refreshing_gauge(client: httpx.AsyncClient, world: GoogleWorld) -> float:
    response = await client.get(f"{world.worker.url}/metrics", headers=AUTH)
    response.raise_for_status()
    for line in response.text.splitlines():
        if line.startswith('calsync_resources{state="refreshing"}'):
            return float(line.split()[-1])
    return 0.0


async def test_a_failing_token_endpoint_reads_refreshing_until_it_recovers(
    kafka_settings: Any,
) -> None:
    async with google_world(
        kafka_settings,
        max_attempts=100,
        retry_base_delay=0.5,
        retry_max_delay=2.0,
        heartbeat_interval=1.0,
        summary_interval=2.0,
    ) as world:
        calendar = world.calendar("alice")
        world.emulator.insert_event(calendar, event_body(1), notify=False)
        await world.register("alice")
        await world.wait_for_count(1)
        async with httpx.AsyncClient(timeout=30) as client:
            ok = await until(client, world, "alice", lambda v: v.get("state") == "ok")
            assert ok["credential"] == "ok"

            # the access token is gone and the token endpoint answers 503: not revoked
            rule = world.emulator.faults.add("unavailable_503", path="^/token$")
            world.emulator.expire_access_tokens()
            world.emulator.insert_event(calendar, event_body(2), notify=True)
            # "retries" counts the retries waiting as timers: it reads 0 for the moment one
            # is being tried (or is still on its way through the retries topic), so wait for
            # a view that shows one waiting rather than asserting on the first "refreshing"
            failing = await until(
                client,
                world,
                "alice",
                lambda v: v.get("credential") == "refreshing" and v.get("retries", 0) >= 1,
            )
            assert failing["state"] == "failing"
            assert failing["@credentials"].get("refreshing") == 1
            assert rule.fired >= 1
            deadline = time.monotonic() + 60
            while await refreshing_gauge(client, world) != 1:
                assert time.monotonic() < deadline, world.worker.tail()
                await asyncio.sleep(0.5)
            # a revoked grant would read reauth_required: nobody has to reconnect
            resource = await client.get(f"{world.worker.url}/api/resources/alice", headers=AUTH)
            assert resource.json()["state"] == "active", resource.text
            assert resource.json()["credentials"] == "refreshing", resource.text

            world.emulator.faults.rules.remove(rule)
            await world.wait_for_count(2)
            healed = await until(
                client,
                world,
                "alice",
                lambda v: v.get("credential") == "ok" and v.get("state") == "ok",
            )
            assert healed["@credentials"] == {"ok": 1}
            resource = await client.get(f"{world.worker.url}/api/resources/alice", headers=AUTH)
            assert resource.json()["credentials"] == "ok", resource.text
            deadline = time.monotonic() + 60
            while await refreshing_gauge(client, world) != 0:
                assert time.monotonic() < deadline, world.worker.tail()
                await asyncio.sleep(0.5)
