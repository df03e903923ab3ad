"""The gateway against a real broker: what it accepts is on the topic, what it refuses is not."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import httpx

from calsync.crypto import SecretBox, WebhookSigner
from calsync.streams.records import Command, Notification
from calsync.streams.topics import ensure_topics
from calsync.testing.topics import TopicReader
from tests.conftest import ADMIN_TOKEN
from tests.integration.conftest import google_world, serve_gateway

FAR = int((time.time() + 7 * 86400) * 1000)  # a channel expiry a week ahead, in epoch ms


def push_headers(channel: str, token: str | None, state: str = "exists", number: str = "7"):
    headers = {
        "X-Goog-Channel-ID": channel,
        "X-Goog-Resource-ID": "gres-1",
        "X-Goog-Resource-State": state,
        "X-Goog-Resource-URI": "https://www.googleapis.com/calendar/v3/calendars/x/events",
        "X-Goog-Message-Number": number,
        "Content-Type": "application/json; utf-8",
    }
    if token is not None:
        headers["X-Goog-Channel-Token"] = token
    return headers


async def test_google_pushes(kafka_settings) -> None:
    settings = kafka_settings()
    signer = WebhookSigner(settings.secret_key)
    token = signer.channel_token("chan-1", "res-1", expires_at_ms=FAR)
    expired = signer.channel_token("chan-1", "res-1", expires_at_ms=int(time.time() * 1000) - 1)
    async with serve_gateway(settings) as url, httpx.AsyncClient(base_url=url) as client:
        post = client.post
        ok = await post("/webhooks/google", headers=push_headers("chan-1", token))
        assert ok.status_code == 202
        sync = await post("/webhooks/google", headers=push_headers("chan-1", token, "sync", "1"))
        assert sync.status_code == 200
        forged = token[:-3] + "abc"
        refused = {
            "forged": await post("/webhooks/google", headers=push_headers("chan-1", forged)),
            "other key": await post(
                "/webhooks/google",
                headers=push_headers(
                    "chan-1",
                    WebhookSigner("x" * 32).channel_token("chan-1", "res-1", expires_at_ms=FAR),
                ),
            ),
            "other channel": await post("/webhooks/google", headers=push_headers("chan-2", token)),
            "expired": await post("/webhooks/google", headers=push_headers("chan-1", expired)),
            "no token": await post("/webhooks/google", headers=push_headers("chan-1", None)),
            "bad state": await post(
                "/webhooks/google", headers=push_headers("chan-1", token, "weird")
            ),
            "bad number": await post(
                "/webhooks/google", headers=push_headers("chan-1", token, number="x")
            ),
            "no channel": await post("/webhooks/google", headers=push_headers("", token)),
            "non-ascii number": await post(
                "/webhooks/google", headers=push_headers("chan-1", token, number="²".encode())
            ),
            "huge number": await post(
                "/webhooks/google", headers=push_headers("chan-1", token, number="9" * 5000)
            ),
            "oversized": await post(
                "/webhooks/google",
                headers=push_headers("chan-1", token),
                content=b"x" * (settings.gateway_max_body + 1),
            ),
        }
        statuses = {name: r.status_code for name, r in refused.items()}
        assert statuses == {
            "forged": 403,
            "other key": 403,
            "other channel": 403,
            "expired": 403,
            "no token": 401,
            "bad state": 400,
            "bad number": 400,
            "no channel": 400,
            "non-ascii number": 400,
            "huge number": 400,
            "oversized": 413,
        }
        assert all("error" in r.json() for r in refused.values())

    reader = await TopicReader(settings.kafka_bootstrap, settings.topic("notifications")).start()
    try:
        await reader.settle(quiet=1.5)
        assert len(reader.values) == 1  # only the authentic `exists` push
        (notification,) = [Notification.loads(v) for v in reader.values]
        assert notification.resource_id == "res-1"
        assert notification.reason == "push"
        assert notification.channel_id == "chan-1" and notification.message_number == 7
    finally:
        await reader.aclose()


async def test_admin_api(kafka_settings) -> None:
    settings = kafka_settings()
    body = {
        "resource_id": "room-1",
        "provider": "google",
        "calendar_id": "primary",
        "credentials": {"refresh_token": "1//plaintext-refresh"},
    }
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with serve_gateway(settings) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.post("/api/resources", json=body)).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await client.post("/api/resources", json=body, headers=wrong)).status_code == 401
        bad = await client.post("/api/resources", json={**body, "provider": "aol"}, headers=auth)
        assert bad.status_code == 400 and bad.json()["field"] == "provider"
        garbage = await client.post("/api/resources", content=b"{not json", headers=auth)
        assert garbage.status_code == 400
        ok = await client.post("/api/resources", json=body, headers=auth)
        assert ok.status_code == 202 and ok.json()["resource_id"] == "room-1"

    reader = await TopicReader(settings.kafka_bootstrap, settings.topic("commands")).start()
    try:
        await reader.settle(quiet=1.5)
        assert len(reader.values) == 1
        assert b"plaintext-refresh" not in reader.values[0]
        command = Command.loads(reader.values[0])
        assert command.kind == "register" and command.resource_id == "room-1"
        stored = json.loads(reader.values[0])["credentials"]["refresh_token"]
        assert SecretBox(settings.secret_key).decrypt(stored) == "1//plaintext-refresh"
    finally:
        await reader.aclose()


async def test_cli_registration_writes_an_encrypted_command(kafka_settings) -> None:
    settings = kafka_settings()
    await asyncio.to_thread(ensure_topics, settings)
    env = {**os.environ, **settings.to_env()}
    args = [*CLI, "resources", "add", "--wait", "0", "--resource-id", "room-9"]
    ok = await asyncio.to_thread(
        subprocess.run,
        [*args, "--calendar-id", "room-9@acme", "--refresh-token", "1//cli-secret"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    bad = await asyncio.to_thread(
        subprocess.run,
        [*args, "--calendar-id", "x", "--refresh-token", "t", "--time-zone", "Mars/Base"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "time_zone" in bad.stderr
    reader = await TopicReader(settings.kafka_bootstrap, settings.topic("commands")).start()
    try:
        await reader.settle(quiet=1.5)
    finally:
        await reader.aclose()
    assert len(reader.values) == 1 and b"cli-secret" not in reader.values[0]
    assert Command.loads(reader.values[0]).resource_id == "room-9"


CLI = [sys.executable, "-m", "calsync.cli"]


async def test_registration_waits_for_the_workers_outcome(kafka_settings) -> None:
    """?wait answers with the first sync's outcome, good or bad; the status URL tells
    it too, also from a standalone gateway (no tables: it reads calsync.status)."""
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with google_world(kafka_settings) as world:
        calendar_id = world.calendar("alice")

        def body(refresh_token: str) -> dict[str, object]:
            return {
                "resource_id": "alice",
                "provider": "google",
                "calendar_id": calendar_id,
                "credentials": {"refresh_token": refresh_token},
            }

        async with httpx.AsyncClient(base_url=world.worker.url, timeout=60) as client:
            good = await client.post(
                "/api/resources?wait=30s", json=body(world.refresh_tokens["alice"]), headers=auth
            )
            assert good.status_code == 200, (good.text, world.worker.tail())
            assert good.json()["status"] == "synced"
            assert good.json()["registration"]["ok"] is True
            location = good.headers["Location"]

            bad = await client.post(
                "/api/resources?wait=30s", json=body("1//not-a-grant"), headers=auth
            )
            assert bad.status_code == 200, (bad.text, world.worker.tail())
            outcome = bad.json()["registration"]
            assert bad.json()["status"] == outcome["outcome"] == "reauth_required"
            assert outcome["ok"] is False and outcome["detail"]

        async with serve_gateway(world.settings) as url, httpx.AsyncClient(base_url=url) as client:
            polled = await client.get(location, headers=auth)
            assert polled.status_code == 200, polled.text
            assert polled.json()["status"] == "synced"


async def test_cli_registration_reports_the_outcome(kafka_settings) -> None:
    async with google_world(kafka_settings) as world:
        calendar_id = world.calendar("bob")
        env = {**os.environ, **world.settings.to_env()}
        args = [*CLI, "resources", "add", "--resource-id", "bob", "--calendar-id", calendar_id]

        def run(refresh_token: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*args, "--refresh-token", refresh_token, "--wait", "30"],
                env=env,
                capture_output=True,
                text=True,
                timeout=90,
            )

        ok = await asyncio.to_thread(run, world.refresh_tokens["bob"])
        assert ok.returncode == 0, (ok.stdout, ok.stderr, world.worker.tail())
        assert "first sync finished" in ok.stdout
        refused = await asyncio.to_thread(run, "1//not-a-grant")
        assert refused.returncode == 1, (refused.stdout, refused.stderr)
        assert "refused the credentials" in refused.stdout
