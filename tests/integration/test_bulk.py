"""Bulk registration through the API and the CLI, against the real broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx

from calsync.gateway.bulk import MAX_BULK_BYTES
from calsync.streams.records import Command
from calsync.streams.topics import ensure_topics
from calsync.testing.topics import TopicReader
from tests.conftest import ADMIN_TOKEN
from tests.gateway.test_bulk import CSV
from tests.integration.conftest import serve_gateway

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def registered(settings) -> list[Command]:  # type: ignore[no-untyped-def]
    reader = await TopicReader(settings.kafka_bootstrap, settings.topic("commands")).start()
    try:
        await reader.settle(quiet=1.0)
        return [Command.loads(v) for v in reader.values]
    finally:
        await reader.aclose()


async def test_bulk_api_is_all_or_nothing_and_idempotent(kafka_settings) -> None:
    settings = kafka_settings()
    async with serve_gateway(settings) as url, httpx.AsyncClient(base_url=url) as client:

        async def post(content: bytes, kind: str = "text/csv") -> httpx.Response:
            return await client.post(
                "/api/resources/bulk",
                content=content,
                headers={**ADMIN, "Content-Type": kind},
            )

        assert (await client.post("/api/resources/bulk", content=CSV)).status_code == 401
        first = await post(CSV.encode())
        assert first.status_code == 202, first.text
        assert first.json()["resource_ids"] == ["room-1", "alice", "bob"]
        again = await post(CSV.encode())  # the same file: the same resources again
        assert again.status_code == 202
        bad = await post((CSV + "carol,google,primary,,,,,,\n").encode())
        assert bad.status_code == 400
        assert bad.json()["error"].startswith("line 5:")
        assert (await post(CSV.encode(), "text/plain")).status_code == 415
        huge = await post(b"x" * (MAX_BULK_BYTES + 1))
        assert huge.status_code == 413
    commands = await registered(settings)
    assert sorted(c.resource_id for c in commands) == sorted(["room-1", "alice", "bob"] * 2)
    assert b"app-password" not in b"".join(c.dumps() for c in commands)


async def test_cli_import_checks_the_whole_file_first(kafka_settings, tmp_path: Path) -> None:
    settings = kafka_settings()
    await asyncio.to_thread(ensure_topics, settings)
    good, bad = tmp_path / "rooms.csv", tmp_path / "bad.csv"
    good.write_text(CSV)
    bad.write_text(CSV + "alice,google,primary,,1//x,,,,\n")
    env = {**os.environ, **settings.to_env()}

    def run(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "calsync.cli", "resources", "import", str(path), "--wait", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    refused = await asyncio.to_thread(run, bad)
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert "line 5" in refused.stderr and "nothing was registered" in refused.stderr
    ok = await asyncio.to_thread(run, good)
    assert ok.returncode == 0, (ok.stdout, ok.stderr)
    assert "registered 3 resources" in ok.stdout
    assert sorted(c.resource_id for c in await registered(settings)) == ["alice", "bob", "room-1"]
