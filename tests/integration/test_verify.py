"""``calsync verify`` against a real broker, the emulators and a real CalDAV server:
zero differences once the worker has synced; then, with the worker stopped, changes
made at the providers show up as missing, extra and stale intervals."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta

import pytest

from calsync.crypto import SecretBox
from calsync.gateway.publisher import KafkaPublisher
from calsync.settings import Settings
from calsync.testing.caldav_servers import DavServer, RadicaleServer, XandikosServer
from calsync.verify import Report, read_resources, verify
from tests.integration.conftest import BASE, event_body, google_world, ms_event_body
from tests.integration.test_caldav_sync import dav_world, settings_for

SERVERS = {"radicale": RadicaleServer, "xandikos": XandikosServer}


@pytest.fixture(scope="module", params=sorted(SERVERS))
def dav_server(request: pytest.FixtureRequest) -> Iterator[DavServer]:
    with SERVERS[request.param]() as server:
        yield server


def counts(report: Report, rid: str) -> tuple[int, int, int]:
    c = report.resources[rid]
    return c.missing, c.extra, c.stale


async def refresh_token_stored(settings: Settings, rid: str) -> str:
    resources = await read_resources(settings)
    return SecretBox(settings.secret_key).decrypt(resources[rid].credentials["refresh_token"])


async def test_verify_google_and_graph_agree_then_see_what_the_worker_missed(
    kafka_settings,
) -> None:
    async with google_world(kafka_settings, microsoft=True) as world:
        assert world.ms is not None
        calendar = world.calendar("alice")
        mailbox = world.mailbox("bob")
        g_ids = [
            str(world.emulator.insert_event(calendar, event_body(n), notify=False)["id"])
            for n in range(4)
        ]
        m_ids = [
            str(world.ms.create_event(mailbox, ms_event_body(n), notify=False)["id"])
            for n in range(3)
        ]
        await world.register("alice")
        await world.register("bob")
        await world.wait_converged(["alice", "bob"])

        channels, subscriptions = len(world.emulator.channels), len(world.ms.subscriptions)
        report = await verify(world.settings)
        assert report.errors == {}, report.to_text()
        assert report.differences == 0, report.to_text()
        assert report.exit_code == 0
        # read-only: no push channel or subscription was made for the listing
        assert len(world.emulator.channels) == channels
        assert len(world.ms.subscriptions) == subscriptions
        assert (report.resources["alice"].provider, report.resources["alice"].events) == (4, 4)
        assert (report.resources["bob"].provider, report.resources["bob"].events) == (3, 3)

        # The worker stops; the providers change without it.
        await asyncio.to_thread(world.worker.stop)
        world.emulator.patch_event(calendar, g_ids[0], event_body(10), notify=False)  # stale
        world.emulator.delete_event(calendar, g_ids[1], notify=False)  # extra
        world.emulator.insert_event(calendar, event_body(11), notify=False)  # missing
        world.ms.create_event(mailbox, ms_event_body(12), notify=False)  # missing
        world.ms.update_event(mailbox, m_ids[0], ms_event_body(13), notify=False)  # stale

        report = await verify(world.settings, limit=3)
        assert report.errors == {}, report.to_text()
        assert report.counts == {"missing": 2, "extra": 1, "stale": 2}, report.to_text()
        assert counts(report, "alice") == (1, 1, 1)
        assert counts(report, "bob") == (1, 0, 1)
        assert report.exit_code == 1
        assert len(report.examples) == 3  # bounded by the limit, counts are not
        stale = next(d for d in report.examples if d.kind == "stale")
        assert (stale.resource_id, stale.native_event_id) == ("alice", g_ids[0])
        assert stale.provider is not None and stale.events is not None
        assert stale.provider.start_utc == BASE + timedelta(hours=10)
        assert stale.events.start_utc == BASE

        # Each listing of the mailbox rotated its refresh token (Graph rotates on use) and
        # handed the new one over as a rotate command; with the worker stopped nobody
        # applied them, yet the next run (and the worker, once back) finds the live one.
        # (Checked twice: what still differs a moment later is not a change in flight.)
        only = await verify(world.settings, resource_ids=["bob"], recheck_after=0.1)
        assert only.errors == {}, only.to_text()
        assert set(only.resources) == {"bob"}
        assert only.rechecked == ["bob"]
        assert only.counts == {"missing": 1, "extra": 0, "stale": 1}
        current = world.ms.current_refresh_token(world.refresh_tokens["bob"])
        assert await refresh_token_stored(world.settings, "bob") == current


async def test_verify_caldav_and_the_command_line(kafka_settings, dav_server: DavServer) -> None:
    async with google_world(kafka_settings, **settings_for(dav_server)) as world:
        dav = await dav_world(world, dav_server)
        for n in range(4):
            await dav.put(f"ev{n}", BASE + timedelta(hours=n))
        await dav.register("dav")
        await dav.converged("dav")

        # a record that is not a UnifiedEvent is counted, not folded, and stops nothing
        publisher = KafkaPublisher(world.settings.kafka_bootstrap)
        try:
            await publisher.publish(world.settings.topic("events"), "dav", b"not avro")
        finally:
            await publisher.aclose()

        report = await verify(world.settings)
        assert report.errors == {}, report.to_text()
        assert report.differences == 0, report.to_text()
        assert report.resources["dav"].provider == 4
        assert report.undecodable == 1

        await asyncio.to_thread(world.worker.stop)
        await dav.put("ev0", BASE + timedelta(hours=20))  # stale
        await dav.delete("ev1")  # extra
        await dav.put("ev9", BASE + timedelta(hours=9))  # missing
        await dav.put("ev8", BASE + timedelta(hours=8))  # missing

        env = {**os.environ, **world.settings.to_env()}
        answer = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "calsync.cli", "verify", "--json", "--resource", "dav"],
            env=env,
            capture_output=True,
            timeout=120,
        )
        assert answer.returncode == 1, answer.stderr.decode()
        document = json.loads(answer.stdout)
        assert document["counts"] == {"missing": 2, "extra": 1, "stale": 1}
        assert document["resources"]["dav"] == {
            "provider": 5,
            "events": 4,
            "missing": 2,
            "extra": 1,
            "stale": 1,
        }
        found = {(e["kind"], e["native_event_id"]) for e in document["examples"]}
        for kind, uid in (
            ("stale", "ev0"),
            ("extra", "ev1"),
            ("missing", "ev8"),
            ("missing", "ev9"),
        ):
            assert any(k == kind and uid in native_id for k, native_id in found), found

        # An unreachable broker is an error, not a verdict.
        broken = {**env, "CALSYNC_KAFKA_BOOTSTRAP": "127.0.0.1:9"}
        answer = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "calsync.cli", "verify"],
            env=broken,
            capture_output=True,
            timeout=120,
        )
        assert answer.returncode == 2, answer.stderr.decode()
