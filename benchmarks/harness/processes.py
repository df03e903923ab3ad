"""The processes a benchmark runs: calsync workers, the standalone gateway (in this process
or as its own), the open-loop HTTP load generator; and registering a calendar."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from benchmarks.harness.env import CLIENT_ID, ROOT, Env
from benchmarks.harness.google import insert_events, tomorrow
from benchmarks.harness.records import TimedReader
from benchmarks.openloop import LoadResult
from calsync.emulators.google import GoogleEmulator
from calsync.gateway.http import build_gateway_app
from calsync.gateway.publisher import KafkaPublisher
from calsync.settings import Settings
from calsync.streams.topics import ensure_topics
from calsync.testing.worker import WorkerProcess


@asynccontextmanager
async def serve_gateway(settings: Settings, host: str, port: int) -> AsyncIterator[str]:
    """The standalone gateway (aiohttp + :class:`KafkaPublisher`) served by this process on
    ``host:port`` after creating the app's topics; yields its base URL."""
    await asyncio.to_thread(ensure_topics, settings)
    publisher = KafkaPublisher(settings.kafka_bootstrap)
    await publisher.start()
    runner = web.AppRunner(build_gateway_app(settings, publisher))
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
        await publisher.aclose()


class GatewayProcess:
    """``python -m benchmarks.gateway_proc`` with ``settings``, until :meth:`stop`; with
    ``processes`` > 0, ``calsync gateway --processes N`` instead (N processes sharing
    the port, :mod:`calsync.gateway.processes`)."""

    def __init__(self, settings: Settings, *, processes: int = 0) -> None:
        self.settings = settings
        self.processes = processes
        self.log_path = settings.data_dir / "gateway.log"
        self.process: subprocess.Popen[bytes] | None = None

    def pids(self) -> list[int]:
        """The gateway's processes: the one started and its children (the helpers)."""
        if self.process is None:
            return []
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            extra = [int(pid) for pid in children.read_text().split()]
        except OSError:
            extra = []
        return [self.process.pid, *extra]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.web_port}"

    def start(self, timeout: float = 60.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            command = (
                ["-m", "calsync.cli", "gateway", "--processes", str(self.processes)]
                if self.processes
                else ["-m", "benchmarks.gateway_proc"]
            )
            self.process = subprocess.Popen(
                [sys.executable, *command],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway process exited:\n{self.log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gateway process not ready after {timeout} s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


async def http_load(url: str, headers: list[dict[str, str]], spec: dict[str, Any]) -> LoadResult:
    """Run the open-loop HTTP load generator (:mod:`benchmarks.openloop`) in its own process
    against ``url``; ``spec`` holds its ``rate``, ``duration`` and ``warmup`` (and, if not
    the webhooks' empty POST answered 202, ``method``, ``bodies`` and ``expect``)."""
    request = {"expect": 202, **spec, "url": url, "headers": headers}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.openloop",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await proc.communicate(json.dumps(request).encode())
    if proc.returncode != 0:
        raise RuntimeError(f"load generator exited with {proc.returncode}:\n{err.decode()}")
    result = LoadResult.from_json(json.loads(out))
    if not result.latencies_ms:
        raise RuntimeError(f"no request to {url} succeeded: {result.failures}")
    return result


async def register(
    base_url: str, admin_token: str, resource_id: str, calendar_id: str, refresh_token: str
) -> None:
    """Register a Google calendar through ``POST /api/resources`` (worker or gateway)."""
    body = {
        "resource_id": resource_id,
        "provider": "google",
        "calendar_id": calendar_id,
        "credentials": {"refresh_token": refresh_token},
    }
    async with httpx.AsyncClient(timeout=30.0) as client:
        response = await client.post(
            f"{base_url}/api/resources",
            json=body,
            headers={"Authorization": f"Bearer {admin_token}"},
        )
    if response.status_code != 202:
        raise RuntimeError(f"registering {resource_id}: {response.status_code} {response.text}")


async def register_bulk(
    base_url: str, admin_token: str, rows: list[dict[str, Any]], *, per_request: int = 0
) -> None:
    """Register ``rows`` (``POST /api/resources`` bodies of any provider) through
    ``POST /api/resources/bulk``, as JSON lines, at most ``per_request`` rows (default: the
    endpoint's limit) a request."""
    from calsync.gateway.bulk import MAX_ROWS

    step = per_request or MAX_ROWS
    async with httpx.AsyncClient(timeout=300.0) as client:
        for first in range(0, len(rows), step):
            lines = "\n".join(json.dumps(row) for row in rows[first : first + step])
            response = await client.post(
                f"{base_url}/api/resources/bulk",
                content=lines.encode(),
                headers={
                    "Authorization": f"Bearer {admin_token}",
                    "Content-Type": "application/x-ndjson",
                },
            )
            if response.status_code != 202:
                raise RuntimeError(f"bulk registration: {response.status_code} {response.text}")


@dataclass(slots=True)
class RunningWorker:
    worker: WorkerProcess
    settings: Settings
    events: TimedReader
    refresh_token: str
    started_in_s: float

    async def register(self, env: Env, resource_id: str, calendar_id: str) -> None:
        """Register a calendar (of this worker's OAuth grant) through this worker."""
        await register(
            self.worker.url, env.admin_token, resource_id, calendar_id, self.refresh_token
        )


async def start_worker(
    env: Env, emulator: GoogleEmulator, name: str, **overrides: Any
) -> RunningWorker:
    """A worker subprocess on the emulator, proven ready: a one-event calendar registered
    through it has been synced (so the group is assigned and the producer is warm)."""
    settings = env.settings(
        name, google_api_url=emulator.api_url, google_token_url=emulator.token_url, **overrides
    )
    worker = WorkerProcess(settings)
    began = time.monotonic()
    await asyncio.to_thread(worker.start)
    try:
        events = TimedReader(env.bootstrap, settings.topic("events"))
        await events.start()
        refresh_token = emulator.issue_refresh_token(CLIENT_ID)
        calendar = f"warm-{name}-{uuid.uuid4().hex[:6]}@bench.example"
        emulator.add_calendar(calendar, time_zone="UTC")
        insert_events(emulator, calendar, 1, start=tomorrow())
        await register(worker.url, env.admin_token, f"warm-{name}", calendar, refresh_token)
        try:
            await events.wait_for(
                lambda _: events.per_key[f"warm-{name}".encode()] >= 1, timeout=120
            )
        except TimeoutError:
            raise RuntimeError(f"worker {name} synced nothing:\n{worker.tail()}") from None
    except BaseException:
        await asyncio.to_thread(worker.stop)
        raise
    return RunningWorker(worker, settings, events, refresh_token, time.monotonic() - began)


async def stop_worker(running: RunningWorker) -> None:
    await running.events.aclose()
    await asyncio.to_thread(running.worker.stop)
