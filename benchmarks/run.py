"""calsync's performance targets, measured next to a raw baseline on the same broker.

One command, ``python -m benchmarks.run``, starts one real Kafka broker (Kafka from
``ci/kafka``, see :mod:`calsync.testing.broker`), the Google emulator in-process and calsync
workers as subprocesses, measures, and overwrites ``docs/benchmarks.md`` with the machine, the
command and one table per benchmark:

1. **gateway push → 202** latency, open loop (:mod:`benchmarks.openloop`) at a fixed rate,
   against the standalone gateway (aiohttp + :class:`~calsync.gateway.publisher.KafkaPublisher`,
   in this process; the HTTP client runs in a separate process) and the gateway embedded in a
   worker subprocess, next to plain ``AIOKafkaProducer(acks="all", enable_idempotence=True)
   .send_and_wait`` of same-size records at the same rate. Target: p99 ≤ 10 ms. A diagnostic
   row runs the standalone gateway as a process of its own (:mod:`benchmarks.gateway_proc`)
   while the worker consumes its notifications, and every row shows the serving process's
   CPU per request, to tell the process boundary from sharing a process with Faust.
2. **push → event** latency: a registered, synced Google calendar is patched (with a push) at
   a fixed spacing; each patch is timed until its event record is received from the events
   topic, next to the event's own ``latency_ms`` and a breakdown (push answered, list call
   arrived, emulator service time), plus one raw produce → consume hop for reference.
   Target: p99 ≤ 250 ms.
3. **full sync** events/s of a calendar of ``N`` events on a fresh worker, next to plain
   aiokafka producing the same ``N`` events (``encode_event``, pipelined ``send`` awaited per
   batch of 250, as the worker's outbox does) to a fresh topic. Target: ≥ 50 % of raw.
4. **avro vs fastavro** per record (:func:`benchmarks.codec.run`).

It reports, it does not gate: the exit status is 0 when every benchmark ran (targets met or
not) and 1 when one could not run (the document then says which and why). Each section ends
with how busy the machine was meanwhile and how much of that was other processes (from
``/proc``), since a shared machine moves tails far more than any code change.
``--only`` runs a subset and ``--help`` lists the sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import secrets
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
from aiohttp import web
from aiokafka import AIOKafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from benchmarks import codec
from benchmarks.openloop import LoadResult, open_loop, summarize
from calsync.codecs.avro import decode_event, encode_event
from calsync.crypto import WebhookSigner
from calsync.emulators.google import GoogleEmulator
from calsync.gateway.http import build_gateway_app
from calsync.gateway.publisher import KafkaPublisher
from calsync.model import ChangeKind, UnifiedEvent
from calsync.settings import Settings
from calsync.streams.records import Notification, Reason
from calsync.streams.topics import ensure_topics
from calsync.testing.broker import KafkaBroker, kafka_version
from calsync.testing.topics import TopicReader
from calsync.testing.worker import WorkerProcess

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "docs" / "benchmarks.md"
BENCHMARKS = ("gateway", "push", "fullsync", "codec")

LOAD_AVERAGE = "load average at the end (1, 5, 15 min)"
GATEWAY_P99_TARGET_MS = 10.0
PUSH_P99_TARGET_MS = 250.0
FULL_SYNC_RATIO_TARGET = 0.5
#: What the worker's outbox sends per ``emit`` for a Google full listing (one page).
BATCH = 250
#: Distinct resource ids the gateway benchmark spreads its pushes over.
GATEWAY_RESOURCES = 64
GATEWAY_CHANNEL = "cs-bench-gateway"
CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-client-secret"  # noqa: S105 - the emulator's test client, not a secret

_T = TypeVar("_T")


# --------------------------------------------------------------------------- plumbing


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class CpuSample:
    """Machine-wide CPU time from ``/proc/stat`` and this benchmark's own (seconds)."""

    busy: float  # every CPU, every process: user + nice + system + irq + softirq + steal
    total: float  # the same plus idle and iowait
    own: float  # this process and every descendant, finished or running


@dataclass(frozen=True, slots=True)
class Load:
    """How busy the machine was while one benchmark ran, and who made it busy."""

    seconds: float
    busy: float  # fraction of the machine (all cores) that was busy
    others: float  # fraction of the machine used by processes outside this benchmark

    @property
    def disturbed(self) -> bool:
        return self.others > 0.10


def _descendants_cpu() -> float:
    """utime + stime of every running (or unreaped) descendant of this process."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / tick
    me = os.getpid()
    total = 0.0
    for pid in cpu:
        ancestor, hops = parents.get(pid), 0
        while ancestor and ancestor != me and hops < 64:
            ancestor, hops = parents.get(ancestor), hops + 1
        if ancestor == me:
            total += cpu[pid]
    return total


def cpu_sample() -> CpuSample | None:
    """Now's counters, or ``None`` where ``/proc`` is not there to read."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        running = _descendants_cpu()
    except (OSError, ValueError, IndexError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    mine = os.times()
    own = mine.user + mine.system + mine.children_user + mine.children_system + running
    return CpuSample(busy=(sum(fields) - idle) / tick, total=sum(fields) / tick, own=own)


def load_between(before: CpuSample | None, after: CpuSample | None, seconds: float) -> Load | None:
    if before is None or after is None or after.total <= before.total:
        return None
    total = after.total - before.total
    busy = after.busy - before.busy
    others = max(0.0, busy - (after.own - before.own))
    return Load(seconds=seconds, busy=busy / total, others=others / total)


@dataclass(slots=True)
class Env:
    """What every benchmark shares: the broker, a work dir and the secrets of this run."""

    bootstrap: str
    workdir: Path
    partitions: int
    secret_key: str = field(default_factory=lambda: secrets.token_hex(16))
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))

    def settings(self, name: str, **overrides: Any) -> Settings:
        """Settings with their own app id, topic prefix, data dir and web port."""
        unique = uuid.uuid4().hex[:8]
        port = free_port()
        values: dict[str, Any] = {
            "secret_key": self.secret_key,
            "admin_token": self.admin_token,
            "kafka_bootstrap": self.bootstrap,
            "app_id": f"bench-{name}-{unique}",
            "topic_prefix": f"bench{unique}.",
            "topic_partitions": self.partitions,
            "data_dir": self.workdir / f"{name}-{unique}",
            "web_port": port,
            "public_url": f"http://127.0.0.1:{port}",
            "google_client_id": CLIENT_ID,
            "google_client_secret": CLIENT_SECRET,
            "kafka_session_timeout": 10.0,
        }
        values.update(overrides)
        return Settings(**values)

    def create_topic(self, name: str) -> None:
        """A fresh topic with the run's partition count (blocking; call in a thread)."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="bench-admin")
        try:
            admin.create_topics([NewTopic(name, self.partitions, 1)])
            deadline = time.monotonic() + 30
            while not all(m.get("partitions") for m in admin.describe_topics([name])):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"topic {name} has no partitions after 30 s")
                time.sleep(0.1)
        finally:
            admin.close()


@dataclass(frozen=True, slots=True)
class Seen:
    """One record as a consumer in this process received it."""

    received: float  # time.time() when getmany returned it
    timestamp: float  # the record's CreateTime (the producer's clock), seconds
    key: bytes | None
    value: bytes
    partition: int
    offset: int


class TimedReader(TopicReader):
    """A :class:`TopicReader` that also keeps when each record arrived, and its timestamp."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self.records: list[Seen] = []
        self.per_key: Counter[bytes | None] = Counter()

    async def poll(self, timeout: float = 0.2) -> int:
        batches = await self._consumer.getmany(timeout_ms=int(timeout * 1000))
        received = time.time()
        count = 0
        for messages in batches.values():
            for m in messages:
                self.values.append(m.value)
                self.records.append(
                    Seen(received, m.timestamp / 1000, m.key, m.value, m.partition, m.offset)
                )
                self.per_key[m.key] += 1
                count += 1
        return count

    async def poll_until(self, stop: asyncio.Event) -> None:
        """Poll continuously (as a background task) until ``stop`` is set."""
        while not stop.is_set():
            await self.poll(0.05)


@dataclass(frozen=True, slots=True)
class ListCall:
    """One events.list call as the emulator served it."""

    calendar_id: str
    incremental: bool
    arrived: float  # time.time()
    service_s: float  # handler time, HTTP parsing and the network excluded


class TimedGoogleEmulator(GoogleEmulator):
    """The Google emulator, also timing its own events.list handler."""

    def __init__(self) -> None:
        super().__init__()
        self.list_calls: list[ListCall] = []

    async def _h_list(self, request: web.Request) -> web.Response:
        arrived, started = time.time(), time.perf_counter()
        try:
            return await super()._h_list(request)
        finally:
            self.list_calls.append(
                ListCall(
                    request.match_info["calendar_id"],
                    "syncToken" in request.query,
                    arrived,
                    time.perf_counter() - started,
                )
            )


def insert_events(
    emulator: GoogleEmulator, calendar_id: str, n: int, *, start: datetime
) -> list[str]:
    """``n`` 30-minute events 5 minutes apart from ``start`` (all inside the horizon)."""
    ids = []
    for i in range(n):
        begin = start + timedelta(minutes=5 * i)
        event = emulator.insert_event(
            calendar_id,
            {
                "summary": f"bench {i}",
                "start": {"dateTime": begin.isoformat()},
                "end": {"dateTime": (begin + timedelta(minutes=30)).isoformat()},
            },
            notify=False,
        )
        ids.append(str(event["id"]))
    return ids


def tomorrow() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)


async def register(
    worker: WorkerProcess, env: Env, resource_id: str, calendar_id: str, refresh_token: str
) -> None:
    body = {
        "resource_id": resource_id,
        "provider": "google",
        "calendar_id": calendar_id,
        "credentials": {"refresh_token": refresh_token},
    }
    async with httpx.AsyncClient(timeout=30.0) as client:
        response = await client.post(
            f"{worker.url}/api/resources",
            json=body,
            headers={"Authorization": f"Bearer {env.admin_token}"},
        )
    if response.status_code != 202:
        raise RuntimeError(f"registering {resource_id}: {response.status_code} {response.text}")


@dataclass(slots=True)
class RunningWorker:
    worker: WorkerProcess
    settings: Settings
    events: TimedReader
    refresh_token: str
    started_in_s: float


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
        await register(worker, env, f"warm-{name}", calendar, refresh_token)
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


def fresh_producer(bootstrap: str) -> AIOKafkaProducer:
    """The raw baseline's producer: what :class:`KafkaPublisher` and the worker configure."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="bench-raw",
        acks="all",
        enable_idempotence=True,
        linger_ms=0,
    )


# --------------------------------------------------------------------------- 1. gateway


@dataclass(slots=True)
class GatewayRun:
    """One open-loop run and the CPU its server (or producer) process spent per request."""

    label: str
    result: LoadResult
    cpu_ms_per_request: float
    targeted: bool  # whether the gateway p99 target applies (not to baselines, diagnostics)


@dataclass(slots=True)
class GatewayResults:
    rate: float
    duration: float
    warmup: float
    record_bytes: float
    runs: list[GatewayRun]

    @property
    def raw(self) -> GatewayRun:
        return self.runs[0]


def gateway_headers(env: Env) -> list[dict[str, str]]:
    signer = WebhookSigner(env.secret_key)
    return [
        {
            "X-Goog-Channel-ID": GATEWAY_CHANNEL,
            "X-Goog-Channel-Token": signer.channel_token(
                GATEWAY_CHANNEL,
                f"bench-gw-{k:02d}",
                expires_at_ms=int((time.time() + 3600) * 1000),
            ),
            "X-Goog-Resource-State": "exists",
            "X-Goog-Resource-ID": "bench-gateway",
            "X-Goog-Message-Number": str(1000 + k),
        }
        for k in range(GATEWAY_RESOURCES)
    ]


def process_cpu(pid: int) -> float:
    """utime + stime of one process (all its threads, not its children), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measured(
    work: Callable[[], Awaitable[LoadResult]], pid: int, opts: argparse.Namespace
) -> tuple[LoadResult, float]:
    """Run ``work`` and return its result and ``pid``'s CPU milliseconds per request sent."""
    before = process_cpu(pid)
    result = await work()
    spent = process_cpu(pid) - before
    requests = int((opts.warmup + opts.duration) * opts.rate)
    return result, spent / requests * 1000


async def http_load(
    url: str, headers: list[dict[str, str]], opts: argparse.Namespace
) -> LoadResult:
    """Run the open-loop HTTP load generator in its own process against ``url``."""
    spec = {
        "url": url,
        "rate": opts.rate,
        "duration": opts.duration,
        "warmup": opts.warmup,
        "headers": headers,
        "expect": 202,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.openloop",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await proc.communicate(json.dumps(spec).encode())
    if proc.returncode != 0:
        raise RuntimeError(f"load generator exited with {proc.returncode}:\n{err.decode()}")
    result = LoadResult.from_json(json.loads(out))
    if not result.latencies_ms:
        raise RuntimeError(f"no request to {url} succeeded: {result.failures}")
    return result


class GatewayProcess:
    """``python -m benchmarks.gateway_proc`` with ``settings``, until :meth:`stop`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log_path = settings.data_dir / "gateway.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.web_port}"

    def start(self, timeout: float = 60.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.gateway_proc"],
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


async def bench_gateway(
    env: Env, worker: RunningWorker, opts: argparse.Namespace
) -> GatewayResults:
    total = int((opts.warmup + opts.duration) * opts.rate)
    keys = [f"bench-gw-{i % GATEWAY_RESOURCES:02d}".encode() for i in range(total)]
    now = time.time()
    values = [
        Notification(
            provider="google",
            resource_id=key.decode(),
            reason=Reason.PUSH.value,
            received_at=now + i / opts.rate,
            channel_id=GATEWAY_CHANNEL,
            message_number=1000 + i % GATEWAY_RESOURCES,
        ).dumps()
        for i, key in enumerate(keys)
    ]
    headers = gateway_headers(env)
    runs: list[GatewayRun] = []

    # Raw baseline: same keys, same-size values, same rate, same producer configuration.
    raw_topic = f"bench-raw-gateway-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(env.create_topic, raw_topic)
    producer = fresh_producer(env.bootstrap)
    await producer.start()
    try:
        await producer.partitions_for(raw_topic)

        async def produce(i: int) -> bool:
            await producer.send_and_wait(raw_topic, values[i], key=keys[i])
            return True

        def raw_load() -> Awaitable[LoadResult]:
            return open_loop(produce, rate=opts.rate, duration=opts.duration, warmup=opts.warmup)

        result, cpu = await measured(raw_load, os.getpid(), opts)
        runs.append(
            GatewayRun("raw baseline: `AIOKafkaProducer.send_and_wait`", result, cpu, False)
        )
    finally:
        await producer.stop()

    # The standalone gateway, served by this process; the client is another process.
    settings = env.settings("gateway")
    await asyncio.to_thread(ensure_topics, settings)
    publisher = KafkaPublisher(settings.kafka_bootstrap)
    await publisher.start()
    runner = web.AppRunner(build_gateway_app(settings, publisher))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", settings.web_port).start()
        url = f"http://127.0.0.1:{settings.web_port}/webhooks/google"
        result, cpu = await measured(lambda: http_load(url, headers, opts), os.getpid(), opts)
        runs.append(
            GatewayRun("standalone gateway (aiohttp + `KafkaPublisher`)", result, cpu, True)
        )
    finally:
        await runner.cleanup()
        await publisher.aclose()

    # The gateway inside a worker (its sync agent consumes the notifications meanwhile).
    url = f"{worker.worker.url}/webhooks/google"
    pid = worker.worker.pid
    if pid is None:
        raise RuntimeError("the worker is not running")
    result, cpu = await measured(lambda: http_load(url, headers, opts), pid, opts)
    runs.append(GatewayRun("gateway embedded in a worker subprocess", result, cpu, True))

    # Diagnostic: the same standalone gateway as a process of its own, while the worker
    # (same topics) consumes what it writes: the process boundary without sharing a process
    # with Faust.
    gateway = GatewayProcess(replace(worker.settings, web_port=free_port()))
    await asyncio.to_thread(gateway.start)
    try:
        url = f"{gateway.url}/webhooks/google"
        assert gateway.process is not None
        result, cpu = await measured(
            lambda: http_load(url, headers, opts), gateway.process.pid, opts
        )
        runs.append(
            GatewayRun(
                "diagnostic: standalone gateway as its own process, the worker consuming",
                result,
                cpu,
                False,
            )
        )
    finally:
        await asyncio.to_thread(gateway.stop)

    return GatewayResults(
        rate=opts.rate,
        duration=opts.duration,
        warmup=opts.warmup,
        record_bytes=statistics.fmean(len(v) for v in values),
        runs=runs,
    )


# --------------------------------------------------------------------------- 2. push → event


@dataclass(slots=True)
class PushResults:
    patches: int
    spacing: float
    warmup: int
    calendar_events: int
    received_ms: list[float]  # patch → record received by our consumer
    created_ms: list[float]  # patch → record CreateTime (worker's producer)
    latency_field_ms: list[float]  # the event's latency_ms: gateway receipt → emission
    delivered_ms: list[float]  # patch → push answered (emulator delivery log)
    list_arrived_ms: list[float]  # patch → the incremental events.list reached the emulator
    list_service_ms: list[float]  # the emulator's own events.list service time
    lost: int
    raw_hop_ms: list[float]  # raw aiokafka produce (acks=all) → our consumer received it


async def raw_hop(env: Env, samples: int, spacing: float) -> list[float]:
    """One produce → consume hop on the same broker, timed like the patches are."""
    topic = f"bench-raw-hop-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(env.create_topic, topic)
    reader = TimedReader(env.bootstrap, topic)
    await reader.start()
    stop = asyncio.Event()
    polling = asyncio.create_task(reader.poll_until(stop))
    producer = fresh_producer(env.bootstrap)
    await producer.start()
    sent: dict[bytes, float] = {}
    try:
        await producer.partitions_for(topic)
        value = encode_event(codec.realistic_events(1)[0])
        loop = asyncio.get_running_loop()
        begin = loop.time()
        for i in range(samples):
            delay = begin + i * spacing - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            key = f"hop-{i}".encode()
            sent[key] = time.time()
            await producer.send_and_wait(topic, value, key=key)
    finally:
        stop.set()
        await polling
    try:
        with contextlib.suppress(TimeoutError):
            await reader.wait_for(lambda r: len(r.values) >= samples, timeout=30)
    finally:
        await producer.stop()
        await reader.aclose()
    return [(r.received - sent[r.key]) * 1000 for r in reader.records if r.key in sent]


async def bench_push(
    env: Env, emulator: TimedGoogleEmulator, worker: RunningWorker, opts: argparse.Namespace
) -> PushResults:
    resource_id = "bench-push"
    calendar = f"push-{uuid.uuid4().hex[:6]}@bench.example"
    emulator.add_calendar(calendar, time_zone="UTC")
    base = tomorrow()
    ids = insert_events(emulator, calendar, opts.push_calendar_events, start=base)
    reader = worker.events
    key = resource_id.encode()
    await register(worker.worker, env, resource_id, calendar, worker.refresh_token)
    try:
        await reader.wait_for(lambda _: reader.per_key[key] >= len(ids), timeout=120)
    except TimeoutError:
        raise RuntimeError(f"the initial sync did not finish:\n{worker.worker.tail()}") from None
    if not any(c.calendar_id == calendar for c in emulator.channels.values()):
        raise RuntimeError("the worker did not open a push channel")
    await reader.settle(quiet=1.0)
    already = len(reader.records)

    stop = asyncio.Event()
    polling = asyncio.create_task(reader.poll_until(stop))
    total = opts.push_warmup + opts.patches
    patched: list[tuple[str, datetime, float]] = []  # event id, new start, time.time()
    loop = asyncio.get_running_loop()
    try:
        begin = loop.time()
        for i in range(total):
            delay = begin + i * opts.patch_spacing - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            event_id = ids[i % len(ids)]
            start = base + timedelta(days=2, minutes=15 * i)
            at = time.time()
            emulator.patch_event(
                calendar,
                event_id,
                {
                    "start": {"dateTime": start.isoformat()},
                    "end": {"dateTime": (start + timedelta(minutes=30)).isoformat()},
                },
                notify=True,
            )
            patched.append((event_id, start, at))

        def matched() -> dict[tuple[str, datetime], tuple[Seen, UnifiedEvent]]:
            found: dict[tuple[str, datetime], tuple[Seen, UnifiedEvent]] = {}
            for seen in reader.records[already:]:
                if seen.key != key:
                    continue
                event = decode_event(seen.value)
                if event.change is ChangeKind.UPSERT and event.start_utc is not None:
                    found.setdefault((event.native_event_id, event.start_utc), (seen, event))
            return found

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = matched()
            if all((eid, start) in found for eid, start, _ in patched):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await polling
    found = matched()

    deliveries = sorted(d.time for d in emulator.delivery_log if d.status == 202)
    incremental = sorted(
        (c for c in emulator.list_calls if c.calendar_id == calendar and c.incremental),
        key=lambda c: c.arrived,
    )
    results = PushResults(
        patches=opts.patches,
        spacing=opts.patch_spacing,
        warmup=opts.push_warmup,
        calendar_events=len(ids),
        received_ms=[],
        created_ms=[],
        latency_field_ms=[],
        delivered_ms=[],
        list_arrived_ms=[],
        list_service_ms=[],
        lost=0,
        raw_hop_ms=[],
    )
    for i, (event_id, start, at) in enumerate(patched):
        if i < opts.push_warmup:
            continue
        hit = found.get((event_id, start))
        if hit is None:
            results.lost += 1
            continue
        seen, event = hit
        results.received_ms.append((seen.received - at) * 1000)
        results.created_ms.append((seen.timestamp - at) * 1000)
        if event.latency_ms is not None:
            results.latency_field_ms.append(float(event.latency_ms))
        delivered = next((t for t in deliveries if t >= at), None)
        if delivered is not None and delivered <= seen.received:
            results.delivered_ms.append((delivered - at) * 1000)
        call = next((c for c in incremental if c.arrived >= at), None)
        if call is not None and call.arrived <= seen.received:
            results.list_arrived_ms.append((call.arrived - at) * 1000)
            results.list_service_ms.append(call.service_s * 1000)
    if not results.received_ms:
        raise RuntimeError(f"no patch reached the events topic:\n{worker.worker.tail()}")
    results.raw_hop_ms = await raw_hop(env, opts.patches, min(opts.patch_spacing, 0.05))
    return results


# --------------------------------------------------------------------------- 3. full sync


@dataclass(slots=True)
class RawRun:
    wall_s: float  # first send → last ack
    first_last_s: float  # first → last record CreateTime


#: The worker's client-side Google quota limiter (per user and per project), lifted: the
#: emulator enforces no quota, and the target is about what calsync itself costs.
LIFTED_QUOTA: dict[str, float] = {
    "google_user_rate": 1e6,
    "google_user_burst": 1e6,
    "google_app_rate": 1e6,
    "google_app_burst": 1e6,
}


@dataclass(slots=True)
class WorkerSync:
    """One full sync of ``n`` events by a fresh worker, timed from its records."""

    label: str
    settings: dict[str, float]  # the quota settings the worker ran with
    n: int
    worker_started_s: float
    first_last_s: float  # first → last event record CreateTime
    register_last_s: float  # registration POST → last event record CreateTime
    register_first_s: float
    pages: int
    emulator_list_s: float  # every full-listing page the emulator served
    emulator_inside_s: float  # the pages served between the first and the last record
    register_to_list_s: float  # registration POST → the first events.list arrives
    #: Summed over the pages (None when the pages and records could not be lined up):
    #: list served → first record of the page created (HTTP, JSON, normalize, encode);
    #: first → last record of the page created (the ``send`` loop);
    #: last record → next list call arrives (acks awaited, quota waits, next request).
    phases: dict[str, float] | None
    record_bytes: float

    @property
    def rate(self) -> float:
        return (self.n - 1) / self.first_last_s if self.first_last_s > 0 else math.inf

    @property
    def own_rate(self) -> float:
        """First → last with the emulator's service time inside it taken out."""
        own = self.first_last_s - self.emulator_inside_s
        return (self.n - 1) / own if own > 0 else math.inf


@dataclass(slots=True)
class FullSyncResults:
    n: int
    partitions: int
    lifted: WorkerSync  # the quota limiter lifted: what the target is about
    quota: WorkerSync  # the production defaults, quota limiter included
    raw: list[RawRun]

    @property
    def raw_rate(self) -> float:
        return statistics.median(
            (self.n - 1) / r.first_last_s if r.first_last_s > 0 else math.inf for r in self.raw
        )

    @property
    def raw_wall_rate(self) -> float:
        return statistics.median(self.n / r.wall_s for r in self.raw)


async def raw_full_sync(env: Env, events: list[UnifiedEvent], key: bytes) -> RawRun:
    """Plain aiokafka doing what the outbox does: encode, ``send`` a batch, await it."""
    topic = f"bench-raw-full-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(env.create_topic, topic)
    producer = fresh_producer(env.bootstrap)
    await producer.start()
    try:
        await producer.partitions_for(topic)
        timestamps: list[int] = []
        began = time.perf_counter()
        for b in range(0, len(events), BATCH):
            values = [encode_event(e) for e in events[b : b + BATCH]]
            futures = [await producer.send(topic, value, key=key) for value in values]
            metadata = await asyncio.gather(*futures)
            timestamps.extend(m.timestamp for m in metadata)
        wall = time.perf_counter() - began
    finally:
        await producer.stop()
    return RawRun(wall_s=wall, first_last_s=(max(timestamps) - min(timestamps)) / 1000)


def page_phases(pages: list[ListCall], records: list[Seen]) -> dict[str, float] | None:
    """Where the worker's full sync spends its time, summed over the pages (seconds).

    Page ``k`` of the listing became records ``BATCH * k ...`` (one key, one partition, so
    offset order is emission order); CreateTime has millisecond resolution.
    """
    chunks = [records[i : i + BATCH] for i in range(0, len(records), BATCH)]
    if len(chunks) != len(pages):
        return None
    phases = {"served_to_first": 0.0, "first_to_last": 0.0, "last_to_next_call": 0.0}
    for k, (call, chunk) in enumerate(zip(pages, chunks, strict=True)):
        first = min(r.timestamp for r in chunk)
        last = max(r.timestamp for r in chunk)
        phases["served_to_first"] += first - (call.arrived + call.service_s)
        phases["first_to_last"] += last - first
        if k + 1 < len(pages):
            phases["last_to_next_call"] += pages[k + 1].arrived - last
    return phases


async def worker_full_sync(
    env: Env,
    emulator: TimedGoogleEmulator,
    n: int,
    label: str,
    overrides: dict[str, float],
) -> tuple[WorkerSync, list[UnifiedEvent]]:
    """Register a fresh ``n``-event calendar on a fresh worker and time its full sync."""
    known = {f.name for f in fields(Settings)}
    applied = {k: v for k, v in overrides.items() if k in known}
    calendar = f"full-{uuid.uuid4().hex[:6]}@bench.example"
    emulator.add_calendar(calendar, time_zone="UTC")
    insert_events(emulator, calendar, n, start=tomorrow())
    running = await start_worker(env, emulator, "fullsync", **applied)
    resource_id = "bench-full"
    key = resource_id.encode()
    try:
        reader = running.events
        registered = time.time()
        await register(running.worker, env, resource_id, calendar, running.refresh_token)
        try:
            await reader.wait_for(lambda _: reader.per_key[key] >= n, timeout=max(120.0, n / 20))
        except TimeoutError:
            raise RuntimeError(
                f"full sync emitted {reader.per_key[key]} of {n} events:\n{running.worker.tail()}"
            ) from None
        await reader.settle(quiet=1.0)
    finally:
        await stop_worker(running)
    records = sorted((r for r in reader.records if r.key == key), key=lambda r: r.offset)
    events = [decode_event(r.value) for r in records]
    if len({e.native_event_id for e in events}) != n or len(events) != n:
        raise RuntimeError(f"expected {n} distinct events, got {len(events)} records")
    first = min(r.timestamp for r in records)
    last = max(r.timestamp for r in records)
    pages = sorted(
        (c for c in emulator.list_calls if c.calendar_id == calendar and not c.incremental),
        key=lambda c: c.arrived,
    )
    quota = {
        name: float(getattr(running.settings, name))
        for name in LIFTED_QUOTA
        if hasattr(running.settings, name)
    }
    sync = WorkerSync(
        label=label,
        settings=quota,
        n=n,
        worker_started_s=running.started_in_s,
        first_last_s=last - first,
        register_last_s=last - registered,
        register_first_s=first - registered,
        pages=len(pages),
        emulator_list_s=sum(c.service_s for c in pages),
        emulator_inside_s=sum(c.service_s for c in pages if first < c.arrived < last),
        register_to_list_s=pages[0].arrived - registered if pages else math.nan,
        phases=page_phases(pages, records),
        record_bytes=statistics.fmean(len(r.value) for r in records),
    )
    return sync, events


async def bench_full_sync(
    env: Env, emulator: TimedGoogleEmulator, opts: argparse.Namespace
) -> FullSyncResults:
    n = opts.events
    lifted, events = await worker_full_sync(
        env, emulator, n, "Google quota limiter lifted", LIFTED_QUOTA
    )
    quota, _ = await worker_full_sync(env, emulator, n, "production defaults", {})
    raw = [await raw_full_sync(env, events, b"bench-full") for _ in range(opts.raw_repeats)]
    return FullSyncResults(n=n, partitions=env.partitions, lifted=lifted, quota=quota, raw=raw)


# --------------------------------------------------------------------------- report


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    java = "not found"
    java_bin = shutil.which("java")
    if java_bin:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                [java_bin, "-version"], capture_output=True, text=True, timeout=30, check=False
            )
            java = (done.stderr or done.stdout).splitlines()[0].strip()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "calsync": revision(),
        "CPU": cpu,
        "cores": f"{os.cpu_count()} logical" + (f" ({usable} usable)" if usable else ""),
        "RAM": ram,
        "OS": platform.platform(),
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "event loop": "uvloop" if _version("uvloop") != "not installed" else "asyncio (default)",
        "Kafka broker": f"Apache Kafka {kafka_version()} (KRaft, single node, loopback), {java}",
        "faust-streaming": _version("faust-streaming"),
        "aiokafka": _version("aiokafka"),
        "aiohttp": _version("aiohttp"),
        "fastavro / avro": f"{_version('fastavro')} / {_version('avro')}",
        LOAD_AVERAGE: ", ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def revision() -> str:
    """The checkout's commit, and whether tracked files differ from it."""
    git = shutil.which("git")
    if git is None:
        return "unknown (no git)"
    try:
        head = subprocess.run(
            [git, "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            [git, "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    if changed:
        return f"git {head} with uncommitted changes to {len(changed)} tracked file(s)"
    return f"git {head}"


def _ms(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**MISS**"


def _latency_cells(values: Sequence[float]) -> str:
    s = summarize(values)
    return " | ".join(_ms(s.get(k, math.nan)) for k in ("p50", "p95", "p99", "max"))


def report_gateway(r: GatewayResults) -> list[str]:
    raw_p99 = summarize(r.raw.result.latencies_ms)["p99"]
    lines = [
        "## 1. Gateway: push → 202 latency",
        "",
        f"Open loop: {r.rate:g} requests/s for {r.duration:g} s after a {r.warmup:g} s warm-up "
        "(not counted). Request *i* is due at a fixed time and its latency runs from that "
        "time, so a stall delays (and is counted in) every request due during it. Each request "
        f"is a signed Google push (`POST /webhooks/google`, {GATEWAY_RESOURCES} resource ids "
        f"in turn) that the gateway answers 202 after writing one ~{r.record_bytes:.0f}-byte "
        "notification with `acks=all` and idempotence. The HTTP load generator is a separate "
        "process (`benchmarks/openloop.py`); the baseline calls `send_and_wait` of the same "
        "keys and same-size values on the same broker in this process, with the same "
        "open-loop schedule. The resources are not registered, so the worker's sync agent only "
        "looks each notification up and logs it (log level `info`, the default). CPU per "
        "request is the serving process's user + system time (all its threads) over the run, "
        "warm-up included, divided by the requests sent.",
        "",
        "| path | measured | p50 ms | p95 ms | p99 ms | max ms | failed | p99 / raw p99 "
        "| CPU ms / request | target | result |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for run in r.runs:
        result = run.result
        s = summarize(result.latencies_ms)
        failed = sum(result.failures.values())
        ratio = s["p99"] / raw_p99 if raw_p99 > 0 else math.nan
        target = f"p99 ≤ {GATEWAY_P99_TARGET_MS:g} ms" if run.targeted else "—"
        ok = s["p99"] <= GATEWAY_P99_TARGET_MS and not failed
        verdict = _verdict(ok) if run.targeted else "—"
        lines.append(
            f"| {run.label} | {len(result.latencies_ms)}/{result.sent} "
            f"| {_latency_cells(result.latencies_ms)} | {failed} "
            f"| {ratio:.2f}x | {run.cpu_ms_per_request:.2f} | {target} | {verdict} |"
        )
    lines.append("")
    for run in r.runs:
        lag = summarize(run.result.lag_ms)
        fails = ", ".join(f"{k}: {v}" for k, v in sorted(run.result.failures.items()))
        lines.append(
            f"- {run.label.split(':')[0]}: the generator started requests late by p99 "
            f"{_ms(lag['p99'])} ms, max {_ms(lag['max'])} ms (included above); "
            f"failures: {fails or 'none'}"
        )
    return lines


def report_push(r: PushResults) -> list[str]:
    hop_p99 = summarize(r.raw_hop_ms)["p99"]
    received = summarize(r.received_ms)
    lines = [
        "## 2. Push → event latency",
        "",
        f"A Google calendar of {r.calendar_events} events is registered with a worker "
        "subprocess and fully synced; then one event is patched through the in-process "
        f"emulator every {r.spacing * 1000:g} ms, {r.patches} times after {r.warmup} warm-up "
        "patches (not counted). Each patch queues a push; the emulator POSTs it to the "
        "worker's gateway, the worker fetches the change with its sync token and emits the "
        "event. Times run from just before `patch_event` (so they include the emulator's "
        "push delivery) to the event's record. The emulator injects no latency; its own "
        "service time for the incremental `events.list` is shown separately.",
        "",
        "| measure | n | p50 ms | p95 ms | p99 ms | max ms | p99 / raw hop p99 | target | result |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        f"| **patch → event record received from the events topic** | {len(r.received_ms)} "
        f"| {_latency_cells(r.received_ms)} | {received['p99'] / hop_p99:.1f}x "
        f"| p99 ≤ {PUSH_P99_TARGET_MS:g} ms "
        f"| {_verdict(received['p99'] <= PUSH_P99_TARGET_MS and not r.lost)} |",
        f"| patch → event record created (worker producer timestamp) | {len(r.created_ms)} "
        f"| {_latency_cells(r.created_ms)} | | | |",
        "| event `latency_ms` field (gateway receipt → emission) "
        f"| {len(r.latency_field_ms)} | {_latency_cells(r.latency_field_ms)} | | | |",
        f"| patch → push answered 202 (emulator delivery log) | {len(r.delivered_ms)} "
        f"| {_latency_cells(r.delivered_ms)} | | | |",
        f"| patch → worker's incremental `events.list` reaches the emulator "
        f"| {len(r.list_arrived_ms)} | {_latency_cells(r.list_arrived_ms)} | | | |",
        f"| emulator `events.list` service time (excluded by construction) "
        f"| {len(r.list_service_ms)} | {_latency_cells(r.list_service_ms)} | | | |",
        f"| raw baseline: one aiokafka produce (`acks=all`) → consume hop "
        f"| {len(r.raw_hop_ms)} | {_latency_cells(r.raw_hop_ms)} | 1.0x | — | — |",
        "",
        f"Patches whose event never arrived within 30 s: {r.lost}. The path has two Kafka "
        "hops (notification, event) plus the push and the list call, so the raw hop is a "
        "floor per hop, not an equal-work baseline.",
    ]
    return lines


def _quota(sync: WorkerSync) -> str:
    return ", ".join(f"`{k}`={v:g}" for k, v in sync.settings.items()) or "n/a"


def report_full_sync(r: FullSyncResults) -> list[str]:
    lifted, quota = r.lifted, r.quota
    target = f"≥ {FULL_SYNC_RATIO_TARGET:.0%} of raw"
    raw_runs = ", ".join(f"{(r.n - 1) / x.first_last_s:,.0f}" for x in r.raw if x.first_last_s)

    def ratio(rate: float) -> float:
        return rate / r.raw_rate if r.raw_rate > 0 else math.nan

    lines = [
        "## 3. Full sync: events per second",
        "",
        f"A calendar of {r.n:,} events ({lifted.pages} pages of up to {BATCH}) is registered on "
        f"a fresh worker subprocess ({r.partitions} partitions per topic; ready "
        f"{lifted.worker_started_s:.1f} s after launch, proven by a one-event calendar). Rates "
        "use the records' CreateTime, first → last event record (n - 1 intervals). The "
        "target row runs the worker with its client-side Google quota limiter lifted "
        f"({_quota(lifted)}): the emulator enforces no quota and the target is about what "
        "calsync itself costs. A second fresh worker with the production defaults "
        f"({_quota(quota)}) syncs a second, identical calendar. The raw baseline produces the "
        f"same {r.n:,} events (decoded from the worker's records) with plain aiokafka to a "
        "fresh topic with the same partition count and key: `encode_event` and `send` per "
        f"record, each batch of {BATCH} awaited together (what the worker's outbox does); "
        f"median of {len(r.raw)} runs ({raw_runs} events/s). Mean record "
        f"{lifted.record_bytes:.0f} bytes.",
        "",
        "| path | events | first → last s | events/s | ratio to raw | target | result |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
        f"| raw baseline: aiokafka pipelined `send`, batches of {BATCH} | {r.n:,} "
        f"| {statistics.median(x.first_last_s for x in r.raw):.3f} | {r.raw_rate:,.0f} | 1.00 "
        "| — | — |",
        f"| **worker full sync, quota limiter lifted** | {r.n:,} | {lifted.first_last_s:.3f} "
        f"| {lifted.rate:,.0f} | {ratio(lifted.rate):.2f} | {target} "
        f"| {_verdict(ratio(lifted.rate) >= FULL_SYNC_RATIO_TARGET)} |",
        f"| same, the emulator's service time taken out (diagnostic) | {r.n:,} "
        f"| {lifted.first_last_s - lifted.emulator_inside_s:.3f} | {lifted.own_rate:,.0f} "
        f"| {ratio(lifted.own_rate):.2f} | — | — |",
        f"| worker full sync, production defaults (quota limiter on) | {r.n:,} "
        f"| {quota.first_last_s:.3f} | {quota.rate:,.0f} | {ratio(quota.rate):.2f} | — | — |",
        "",
    ]
    for sync in (lifted, quota):
        lines.append(
            f"- {sync.label}: registration POST → first event {sync.register_first_s:.2f} s, "
            f"→ last event {sync.register_last_s:.2f} s ({r.n / sync.register_last_s:,.0f} "
            "events/s end to end); the emulator (in the benchmark process) served the "
            f"{sync.pages} pages in {sync.emulator_list_s:.2f} s, {sync.emulator_inside_s:.2f} s "
            "of it between the first and the last record."
        )
    lines.append(f"- Raw baseline, first send → last ack: {r.raw_wall_rate:,.0f} events/s.")
    if lifted.phases and quota.phases:
        rows: list[tuple[str, float, float, bool]] = [
            (
                "registration POST → first `events.list` arrives (command agent, "
                "`events.watch`, full-sync notification, token refresh)",
                lifted.register_to_list_s,
                quota.register_to_list_s,
                False,
            ),
            (
                "emulator serves the page (`events.list` handler)",
                lifted.emulator_list_s,
                quota.emulator_list_s,
                True,
            ),
            (
                "page served → its first record created (HTTP, JSON parse, normalize, diff, "
                "`encode_event`)",
                lifted.phases["served_to_first"],
                quota.phases["served_to_first"],
                True,
            ),
            (
                f"first → last record of the page created ({BATCH} x `producer.send`)",
                lifted.phases["first_to_last"],
                quota.phases["first_to_last"],
                True,
            ),
            (
                "last record of a page → next `events.list` arrives (acks awaited, quota "
                "waits, request)",
                lifted.phases["last_to_next_call"],
                quota.phases["last_to_next_call"],
                True,
            ),
        ]
        lines += [
            "",
            "Where the time from registration to the last record goes (page phases summed over "
            f"the {lifted.pages} pages; CreateTime has millisecond resolution):",
            "",
            "| phase | limiter lifted s | per page ms | share | production defaults s "
            "| per page ms | share |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for label, a, b, paged in rows:
            pa = f"{a / lifted.pages * 1000:.1f}" if paged else "—"
            pb = f"{b / quota.pages * 1000:.1f}" if paged else "—"
            lines.append(
                f"| {label} | {a:.3f} | {pa} | {a / lifted.register_last_s:.0%} "
                f"| {b:.3f} | {pb} | {b / quota.register_last_s:.0%} |"
            )
        lines.append(
            f"| **registration → last record** | {lifted.register_last_s:.3f} | | 100% "
            f"| {quota.register_last_s:.3f} | | 100% |"
        )
    return lines


def report_codec(r: dict[str, float]) -> list[str]:
    table = codec.markdown(r).splitlines()
    return [
        "## 4. Avro codec: avro vs fastavro per record",
        "",
        "`benchmarks.codec.run()`: the events in memory, no broker; best of "
        f"{int(r['repeats'])} passes. Informational, no target.",
        "",
        *table,
    ]


@dataclass(slots=True)
class Results:
    gateway: GatewayResults | None = None
    push: PushResults | None = None
    full_sync: FullSyncResults | None = None
    codec: dict[str, float] | None = None
    errors: dict[str, str] = field(default_factory=dict)
    load: dict[str, Load] = field(default_factory=dict)


def render(
    results: Results, info: dict[str, str], command: str, started: datetime, seconds: float
) -> str:
    lines = [
        "# calsync benchmarks",
        "",
        "Written by the command below, which overwrites this file on every run; numbers are "
        "from that one run, raw baselines measured on the same broker in the same run. "
        "Compare ratios across machines, not absolute numbers.",
        "",
        f"- **Command:** `{command}`",
        f"- **Date:** {started.isoformat(timespec='seconds')} (run time {seconds:.0f} s)",
    ]
    lines += [f"- **{k}:** {v}" for k, v in info.items()]
    lines.append("")
    summary = summary_rows(results)
    if summary:
        lines += ["| benchmark | measured | target | result |", "| --- | --- | --- | --- |"]
        lines += summary
        lines.append("")
    sections: dict[str, list[str] | None] = {
        "gateway": report_gateway(results.gateway) if results.gateway else None,
        "push": report_push(results.push) if results.push else None,
        "fullsync": report_full_sync(results.full_sync) if results.full_sync else None,
        "codec": report_codec(results.codec) if results.codec else None,
    }
    for name, section in sections.items():
        if section is not None:
            lines += [*section, ""]
            load = results.load.get(name)
            if load is not None:
                lines += [load_note(load), ""]
        elif name in results.errors:
            lines += [
                f"## {name}: could not run",
                "",
                "```",
                results.errors[name].rstrip(),
                "```",
                "",
            ]
    return "\n".join(lines).rstrip() + "\n"


def load_note(load: Load) -> str:
    note = (
        f"_Machine load while this ran ({load.seconds:.0f} s): {load.busy:.0%} of all cores "
        f"busy, {load.others:.0%} of them by processes outside this benchmark._"
    )
    if load.disturbed:
        note += (
            " **Other work was running on the machine: treat these numbers, and especially "
            "the tails, as disturbed; rerun on a quiet machine.**"
        )
    return note


def summary_rows(results: Results) -> list[str]:
    rows = []
    if results.gateway:
        raw = summarize(results.gateway.raw.result.latencies_ms)["p99"]
        for run in results.gateway.runs:
            if not run.targeted:
                continue
            p99 = summarize(run.result.latencies_ms)["p99"]
            ok = p99 <= GATEWAY_P99_TARGET_MS and not sum(run.result.failures.values())
            rows.append(
                f"| push → 202 p99, {run.label.split(' (')[0]} | {_ms(p99)} ms "
                f"({p99 / raw:.1f}x raw {_ms(raw)} ms) | ≤ {GATEWAY_P99_TARGET_MS:g} ms "
                f"| {_verdict(ok)} |"
            )
    if results.push:
        p99 = summarize(results.push.received_ms)["p99"]
        rows.append(
            f"| push → event p99 | {_ms(p99)} ms | ≤ {PUSH_P99_TARGET_MS:g} ms "
            f"| {_verdict(p99 <= PUSH_P99_TARGET_MS and not results.push.lost)} |"
        )
    if results.full_sync:
        f = results.full_sync
        ratio = f.lifted.rate / f.raw_rate
        rows.append(
            f"| full sync events/s (quota limiter lifted) | {f.lifted.rate:,.0f} ({ratio:.0%} of "
            f"raw {f.raw_rate:,.0f}) | ≥ {FULL_SYNC_RATIO_TARGET:.0%} of raw "
            f"| {_verdict(ratio >= FULL_SYNC_RATIO_TARGET)} |"
        )
        rows.append(
            f"| full sync events/s, production defaults (informational) | {f.quota.rate:,.0f} "
            f"({f.quota.rate / f.raw_rate:.0%} of raw) | — | — |"
        )
    if results.codec:
        c = results.codec
        rows.append(
            f"| fastavro vs avro encode | {c['encode_speedup']:.1f}x "
            f"({c['fastavro_encode_us_per_record']:.1f} vs {c['avro_encode_us_per_record']:.1f} "
            "µs/record) | — | — |"
        )
    for name in results.errors:
        rows.append(f"| {name} | could not run | — | **ERROR** |")
    return rows


# --------------------------------------------------------------------------- main


async def guarded(results: Results, name: str, work: Callable[[], Awaitable[_T]]) -> _T | None:
    """Run one benchmark; an exception is recorded (and printed), not raised."""
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    began, before = time.monotonic(), cpu_sample()
    try:
        value = await work()
    except Exception:
        results.errors[name] = traceback.format_exc()
        print(f"[bench] {name} FAILED:\n{results.errors[name]}", file=sys.stderr, flush=True)
        return None
    seconds = time.monotonic() - began
    load = load_between(before, cpu_sample(), seconds)
    if load is not None:
        results.load[name] = load
    print(f"[bench] {name} done in {seconds:.1f} s", file=sys.stderr, flush=True)
    return value


async def run_with_broker(env: Env, opts: argparse.Namespace, results: Results) -> None:
    selected = set(opts.only)
    emulator = TimedGoogleEmulator()
    await emulator.start()
    try:
        emulator.add_client(CLIENT_ID, CLIENT_SECRET)
        if selected & {"gateway", "push"}:
            print("[bench] starting worker ...", file=sys.stderr, flush=True)
            try:
                running: RunningWorker | None = await start_worker(env, emulator, "latency")
            except Exception:
                error = traceback.format_exc()
                for name in selected & {"gateway", "push"}:
                    results.errors[name] = error
                running = None
            if running is not None:
                worker = running
                try:
                    if "gateway" in selected:
                        results.gateway = await guarded(
                            results, "gateway", lambda: bench_gateway(env, worker, opts)
                        )
                    if "push" in selected:
                        results.push = await guarded(
                            results, "push", lambda: bench_push(env, emulator, worker, opts)
                        )
                finally:
                    await stop_worker(worker)
        if "fullsync" in selected:
            results.full_sync = await guarded(
                results, "fullsync", lambda: bench_full_sync(env, emulator, opts)
            )
    finally:
        await emulator.aclose()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Measure calsync against raw aiokafka on one broker; write the report.",
    )
    g = parser.add_argument_group("1. gateway push → 202")
    g.add_argument("--rate", type=float, default=200.0, help="requests/s (%(default)s)")
    g.add_argument("--duration", type=float, default=10.0, help="measured s (%(default)s)")
    g.add_argument("--warmup", type=float, default=2.0, help="warm-up s (%(default)s)")
    p = parser.add_argument_group("2. push → event")
    p.add_argument("--patches", type=int, default=100, help="measured patches (%(default)s)")
    p.add_argument("--push-warmup", type=int, default=5, help="warm-up patches (%(default)s)")
    p.add_argument("--patch-spacing", type=float, default=0.3, help="s apart (%(default)s)")
    p.add_argument(
        "--push-calendar-events", type=int, default=20, help="calendar size (%(default)s)"
    )
    f = parser.add_argument_group("3. full sync")
    f.add_argument("--events", type=int, default=5000, help="calendar size (%(default)s)")
    f.add_argument("--raw-repeats", type=int, default=3, help="raw baseline runs (%(default)s)")
    c = parser.add_argument_group("4. codec")
    c.add_argument("--codec-records", type=int, default=codec.DEFAULT_N, help="(%(default)s)")
    parser.add_argument(
        "--partitions", type=int, default=8, help="partitions per topic (%(default)s)"
    )
    parser.add_argument(
        "--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS), help="subset to run"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="report file")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work dir (worker logs, RocksDB)"
    )
    opts = parser.parse_args(argv)
    if opts.rate <= 0 or opts.duration <= 0 or opts.warmup < 0:
        parser.error("--rate and --duration must be positive, --warmup not negative")
    if opts.patches < 1 or opts.events < 2 or opts.raw_repeats < 1 or opts.codec_records < 1:
        parser.error("--patches, --raw-repeats, --codec-records ≥ 1 and --events ≥ 2")
    if opts.events > 100_000:
        parser.error("--events above 100000 would leave the one-year sync horizon")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    opts = parse_args(args)
    command = " ".join(["python -m benchmarks.run", *map(shlex.quote, args)])
    started = datetime.now(UTC)
    began = time.monotonic()
    info = machine()  # before the run: the revision measured, not one committed meanwhile
    results = Results()
    workdir = Path(tempfile.mkdtemp(prefix="calsync-bench-"))
    try:
        if set(opts.only) & {"gateway", "push", "fullsync"}:
            print("[bench] starting Kafka ...", file=sys.stderr, flush=True)
            try:
                with KafkaBroker() as broker:
                    env = Env(broker.bootstrap, workdir, opts.partitions)
                    asyncio.run(run_with_broker(env, opts, results))
            except Exception:
                error = traceback.format_exc()
                outcome = {
                    "gateway": results.gateway,
                    "push": results.push,
                    "fullsync": results.full_sync,
                }
                for name, value in outcome.items():
                    if name in opts.only and value is None:
                        results.errors.setdefault(name, error)
        if "codec" in opts.only:
            print("[bench] codec ...", file=sys.stderr, flush=True)
            codec_began, before = time.monotonic(), cpu_sample()
            try:
                results.codec = codec.run(opts.codec_records)
            except Exception:
                results.errors["codec"] = traceback.format_exc()
            load = load_between(before, cpu_sample(), time.monotonic() - codec_began)
            if load is not None and results.codec is not None:
                results.load["codec"] = load
    finally:
        if opts.keep:
            print(f"[bench] work dir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.monotonic() - began
    info[LOAD_AVERAGE] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    text = render(results, info, command, started, seconds)
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(text, encoding="utf-8")
    print(text)
    print(f"[bench] wrote {opts.output} in {seconds:.0f} s", file=sys.stderr)
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
