"""``calsync resources pause|resume|resync|remove``: the same commands as the admin API and
the dashboard's buttons, applied by a real worker (the real broker, the Google emulator)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

from calsync.model import ChangeKind
from calsync.streams.records import Command
from calsync.testing.topics import TopicReader
from tests.conftest import ADMIN_TOKEN
from tests.integration.conftest import GoogleWorld, event_body, google_world

CLI = [sys.executable, "-m", "calsync.cli"]
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def cli(world: GoogleWorld, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "resources", *args],
        env={**os.environ, **world.settings.to_env()},
        capture_output=True,
        text=True,
        timeout=90,
    )


async def run(world: GoogleWorld, action: str, rid: str) -> None:
    done = await asyncio.to_thread(cli, world, action, "--resource-id", rid)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert f"{action} {rid}" in done.stdout


async def resource_until(
    world: GoogleWorld, rid: str, check: Callable[[dict[str, Any]], bool], timeout: float = 90.0
) -> dict[str, Any]:
    """Poll ``/api/resources/{rid}`` until ``check`` holds (a loaded machine is slow)."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=30) as client:
        while time.monotonic() < deadline:
            response = await client.get(f"{world.worker.url}/api/resources/{rid}", headers=AUTH)
            if response.status_code == 200:
                body = response.json()
                if check(body):
                    return body
            await asyncio.sleep(0.5)
    raise AssertionError(f"last seen: {body}\n{world.worker.tail()}")


async def statuses_named(world: GoogleWorld, rid: str, name: str) -> int:
    return sum(1 for s in await world.statuses() if s.resource_id == rid and s.status == name)


async def test_cli_pause_resume_resync_remove_reach_the_worker(kafka_settings: Any) -> None:
    async with google_world(kafka_settings) as world:
        calendar = world.calendar("alice")
        world.emulator.insert_event(calendar, event_body(1), notify=False)
        await world.register("alice")
        await world.wait_for_count(1)
        commands = await TopicReader(
            world.settings.kafka_bootstrap, world.settings.topic("commands")
        ).start()
        try:
            await run(world, "pause", "alice")
            await resource_until(world, "alice", lambda r: r["state"] == "paused")
            # a change made while paused is found by the full resync of resume
            world.emulator.insert_event(calendar, event_body(2), notify=True)
            await run(world, "resume", "alice")
            await resource_until(world, "alice", lambda r: r["state"] == "active")
            await world.wait_for_count(2)

            resyncs = await statuses_named(world, "alice", "resync_finished")
            await run(world, "resync", "alice")
            deadline = time.monotonic() + 90
            while await statuses_named(world, "alice", "resync_finished") <= resyncs:
                assert time.monotonic() < deadline, world.worker.tail()
                await asyncio.sleep(0.5)

            await run(world, "remove", "alice")
            await resource_until(world, "alice", lambda r: r["state"] == "removed")
            # a removed resource's events are deleted downstream
            await world.events.wait_for(
                lambda r: any(
                    e.change is ChangeKind.DELETE for e in r.events() if e.resource_id == "alice"
                ),
                timeout=90,
            )

            # what the CLI wrote is the admin API's command record, nothing more
            await commands.settle(quiet=0.5)
            written = [Command.loads(v) for v in commands.values]
            assert [c.kind for c in written if c.resource_id == "alice"][-4:] == [
                "pause",
                "resume",
                "resync",
                "remove",
            ]
            assert all(c.credentials is None and c.provider is None for c in written[-4:])
        finally:
            await commands.aclose()

        refused = await asyncio.to_thread(cli, world, "pause", "--resource-id", "not valid!")
        assert refused.returncode == 2 and "resource_id is not valid" in refused.stderr
