"""``calsync connect caldav`` against real Radicale and Xandikos: discovery, a password
check, registration of the calendars picked, and events from them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta

import pytest

from calsync.crypto import SecretBox
from calsync.gateway.connect import extra_resource_id
from calsync.streams.records import Command
from calsync.testing.caldav_servers import DavAdmin, DavServer, RadicaleServer, XandikosServer
from calsync.testing.topics import TopicReader
from tests.integration.conftest import BASE, google_world
from tests.integration.test_caldav_sync import ics, settings_for

SERVERS = {"radicale": RadicaleServer, "xandikos": XandikosServer}
CLI = [sys.executable, "-m", "calsync.cli"]


@pytest.fixture(scope="module", params=sorted(SERVERS))
def dav_server(request: pytest.FixtureRequest) -> Iterator[DavServer]:
    with SERVERS[request.param]() as server:
        yield server


async def test_connect_caldav_discovers_checks_and_registers(
    kafka_settings, dav_server: DavServer
) -> None:
    async with google_world(kafka_settings, **settings_for(dav_server)) as world:
        async with dav_server.client() as http:
            admin = DavAdmin(http)
            work = await admin.make_calendar(dav_server.home_url, "work")
            home = await admin.make_calendar(dav_server.home_url, "home")
            await admin.put(work, "w1.ics", ics("w1", BASE + timedelta(hours=1)))
            await admin.put(home, "h1.ics", ics("h1", BASE + timedelta(hours=2)))
        env = {**os.environ, **world.settings.to_env()}
        # the server's root: discovery starts at /.well-known/caldav
        args = [
            *CLI,
            "connect",
            "caldav",
            "--url",
            dav_server.url,
            "--username",
            dav_server.username,
        ]

        def run(*extra: str, password: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*args, *extra],
                env={**env, "CALSYNC_CALDAV_PASSWORD": password},
                capture_output=True,
                text=True,
                timeout=120,
            )

        wrong = await asyncio.to_thread(
            run, "--resource-id", "nope", "--calendar", "all", password="not-the-password"
        )
        assert wrong.returncode == 1, (wrong.stdout, wrong.stderr)
        assert "refused the username or password" in wrong.stderr
        assert "Nothing was registered" in wrong.stderr
        assert "not-the-password" not in wrong.stdout + wrong.stderr

        ok = await asyncio.to_thread(
            run,
            "--resource-id",
            "dav",
            "--calendar",
            "work",
            "--calendar",
            "home",
            password=dav_server.password,
        )
        assert ok.returncode == 0, (ok.stdout, ok.stderr, world.worker.tail())
        assert work in ok.stdout and home in ok.stdout  # the calendars it found
        assert ok.stdout.count("first sync finished") == 2

        reader = await TopicReader(
            world.settings.kafka_bootstrap, world.settings.topic("commands")
        ).start()
        await reader.settle(quiet=1.0)
        await reader.aclose()
        raw = b"".join(reader.values)
        assert dav_server.password.encode() not in raw
        registered = {
            c.resource_id: c for c in map(Command.loads, reader.values) if c.kind == "register"
        }
        other = home if registered["dav"].calendar_id == work else work
        assert set(registered) == {"dav", extra_resource_id("dav", other)}
        assert {c.calendar_id for c in registered.values()} == {work, home}
        box = SecretBox(world.settings.secret_key)
        for command in registered.values():
            assert command.credentials is not None
            assert box.decrypt(command.credentials["password"]) == dav_server.password

        # events from both calendars reach the events topic
        async def seen() -> set[str]:
            await world.events.poll(0.5)
            return {e.native_event_id for e in world.decoded()}

        deadline = asyncio.get_running_loop().time() + 60
        while not {"w1", "h1"} <= await seen():
            assert asyncio.get_running_loop().time() < deadline, world.worker.tail()
        assert dav_server.password not in world.worker.log_path.read_text(errors="replace")
