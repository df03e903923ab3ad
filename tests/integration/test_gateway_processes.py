"""``calsync gateway --processes N``: N real processes share the webhook port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx

from calsync.crypto import WebhookSigner
from calsync.gateway.processes import GATEWAY_HEADER
from calsync.settings import Settings
from calsync.streams.records import Notification
from calsync.streams.topics import ensure_topics
from calsync.testing.topics import TopicReader
from tests.conftest import ADMIN_TOKEN, free_port
from tests.integration.test_gateway import FAR, push_headers

PROCESSES = 3


@contextlib.contextmanager
def gateway_processes(settings: Settings, processes: int) -> Iterator[subprocess.Popen[bytes]]:
    """``calsync gateway --processes N`` until the block ends (then SIGTERM)."""
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    log = settings.data_dir / "gateway.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        primary = subprocess.Popen(
            [sys.executable, "-m", "calsync.cli", "gateway", "--processes", str(processes)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield primary
    finally:
        if primary.poll() is None:
            primary.send_signal(signal.SIGTERM)
            try:
                primary.wait(20)
            except subprocess.TimeoutExpired:
                primary.kill()
                primary.wait(10)


async def spread(url: str, settings: Settings) -> set[str]:
    """Which processes answer ``/healthz`` over fresh connections (waits for all)."""
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    while len(seen) < PROCESSES and time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            # a connection per request: the kernel picks a listening socket per connection
            async with httpx.AsyncClient(base_url=url, timeout=5) as client:
                answer = await client.get("/healthz")
                if answer.status_code == 200:
                    seen.add(answer.headers[GATEWAY_HEADER])
        await asyncio.sleep(0.05)
    return seen


async def test_several_processes_share_the_port_answer_webhooks_and_relay_the_rest(
    kafka_settings,
) -> None:
    """Every process takes connections and answers webhooks itself (each one on the
    topic); an admin request that lands on a helper is relayed to the primary and
    still needs the token; the helpers end with the primary."""
    port = free_port()
    settings = kafka_settings(web_port=port, web_bind="127.0.0.1")
    await asyncio.to_thread(ensure_topics, settings)
    url = f"http://127.0.0.1:{port}"
    signer = WebhookSigner(settings.secret_key)
    with gateway_processes(settings, PROCESSES) as primary:
        assert await spread(url, settings) == {str(k) for k in range(PROCESSES)}

        answered: dict[str, set[str]] = {}
        for n in range(60):
            rid = f"res-{n}"
            token = signer.channel_token(f"chan-{n}", rid, expires_at_ms=FAR)
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                push = await client.post(
                    "/webhooks/google", headers=push_headers(f"chan-{n}", token)
                )
            assert push.status_code == 202, push.text
            answered.setdefault(push.headers[GATEWAY_HEADER], set()).add(rid)
        assert len(answered) > 1, f"every push went to one process: {answered.keys()}"

        relayed: dict[str, int] = {}
        for _ in range(20):
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                listed = await client.get(
                    "/openapi.json", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
                )
                refused = await client.get("/openapi.json")
            assert listed.status_code == 200 and "paths" in listed.json()
            assert refused.status_code == 401
            relayed[listed.headers[GATEWAY_HEADER]] = listed.status_code
        assert set(relayed) - {"0"}, "no admin request landed on a helper"

        helpers = _children(primary.pid)
        assert len(helpers) == PROCESSES - 1
        primary.kill()  # SIGKILL: the helpers learn it from their pipe's end
        primary.wait(10)
        gone = await asyncio.to_thread(_all_gone, helpers, 30.0)
        assert gone, "a helper outlived the primary"

    reader = await TopicReader(settings.kafka_bootstrap, settings.topic("notifications")).start()
    try:
        await reader.settle(quiet=1.5)
        got = {Notification.loads(v).resource_id for v in reader.values}
        assert got == {f"res-{n}" for n in range(60)}
    finally:
        await reader.aclose()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(line) for line in out.stdout.split()]


def _all_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
