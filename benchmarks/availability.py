"""The availability index loaded with ``R`` resources x ``I`` busy intervals each (10,000
x 200 by default): free-slot query latency, hold decisions per second, memory per
million intervals and the index build time from the changelogs.

**Loading.** The benchmark writes the tables' changelogs itself, as the sync would have
left them, into the partition the gateway's producer gives each raw resource id
(murmur2, aiokafka's default partitioner): ``resources`` (a Google
:class:`~calsync.tables.records.Resource`), ``sync_state`` (a
:class:`~calsync.tables.records.SyncState` synced a minute ago, with each occurrence's
version and the digest of the index value) and ``busy`` (a
:class:`~calsync.availability.index.BusyIndex` of ``I`` occurrences over ten weeks,
weekdays, starting 07:00-17:45 UTC, 15 to 120 minutes, mostly busy, some tentative or out of
office). Then a ``calsync worker`` starts on the loaded changelogs: **build time** runs
from the process start to ``/healthz`` answering and then to every resource readable
(the last resource written to each partition answers with its busy intervals), next to
the same start with empty changelogs.

**Memory.** The RocksDB directories of the ``busy`` table (and of all tables) under that
worker's data dir, and the worker's resident set (``VmRSS``) after the build minus the
empty worker's, each per million intervals loaded.

**Latency.** A second worker joins (the production default of one standby replica, so it
also restores the other half); once the group is stable and both workers have logged
``Worker ready`` after the rebalance, an open-loop
load generator in its own process sends ``POST /api/availability/query`` (10 resources
all owned by the first worker, one week, 30-minute meetings on a 15-minute grid in
working hours Mon-Fri 09:00-17:00 Europe/Berlin; the resource sets rotate over
``--query-sets`` disjoint sets) to the owning worker and to the other worker, which
routes it (one ``_snapshot`` request to the owner), each next to ``GET /healthz`` on
the same worker: aiohttp's constant JSON handler in the same process, the floor.
Target: p99 ≤ 5 ms on the owning worker. With ``--pin`` the owner's floor and
query run again with the owner alone on one CPU and everything else of the benchmark (the
broker, the other worker, the generator) on the others
(:mod:`benchmarks.harness.pinning`): on a small machine the generator and the broker
otherwise take the owner's core at random moments, which no deployment does (on the
2-core benchmark machine it made no measurable difference; docs/benchmarks.md §6).

**Holds.** Closed loop, alternately to either worker: ``POST /api/holds`` for
non-overlapping 30-minute slots (past the busy intervals) on one resource one at a time
(a decision's own latency), then ``--hold-concurrency`` in flight on one resource and
across 100 resources; accepted holds per second of wall time, each request's latency,
and the two workers' CPU per decision.

The latency runs use the project's open-loop load generator (:mod:`benchmarks.openloop`)
in its own process, with this benchmark's methods, bodies and expected statuses, and its
lean client (:class:`benchmarks.openloop.LeanClient`, precise start times): with aiohttp's
client the generator itself took about 2 ms at the median and 3-7 ms at p99 against a bare
aiohttp server on this benchmark's 2-core machine, more than the target being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from benchmarks.harness import processes
from benchmarks.harness.benchmark import Benchmark, Context
from benchmarks.harness.load import Load, cpu_sample, load_between, process_cpu
from benchmarks.harness.pinning import alone
from benchmarks.harness.report import Section, latency_cells, ms, verdict
from benchmarks.openloop import LoadResult, summarize
from calsync.availability.index import BusyIndex, Entry
from calsync.availability.intervals import flags_for
from calsync.model import StatusIntent
from calsync.settings import Settings
from calsync.streams.topics import changelog_topic, ensure_topics
from calsync.tables.records import Resource, SyncState
from calsync.testing.cluster import WorkerCluster
from calsync.testing.worker import WorkerProcess

P99_TARGET_MS = 5.0
QUERY_RESOURCES = 10
MANY_RESOURCES = 100
#: The busy intervals lie in this many weeks from the Monday of the current week.
WEEKS = 10
#: The week queried (0 is the current week).
QUERY_WEEK = 2
#: Holds start this many days after the Monday of the current week (past the busy time).
HOLDS_FROM_DAY = WEEKS * 7 + 7
ROUTED_HEADER = "X-Calsync-Answered-By"
#: Seconds the worker's idle CPU is measured over, before its latency runs.
IDLE_S = 5.0
#: Holds sent one at a time (the decision's own latency, no queue).
SERIAL_HOLDS = 40


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def monday() -> datetime:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=today.weekday())


def resource_id(i: int) -> str:
    return f"avail-{i:05d}"


def partition_of(rid: str, partitions: int) -> int:
    """The partition the gateway's producer (aiokafka's default partitioner) gives ``rid``."""
    every = list(range(partitions))
    return int(DefaultPartitioner()(rid.encode(), every, every))


def busy_index(i: int, intervals: int, week0: datetime, synced_at: int) -> BusyIndex:
    """Resource ``i``'s occurrences: ``intervals`` of them over :data:`WEEKS` weeks of
    weekdays, starting 07:00-17:45 UTC, 15-120 minutes; 85 % busy, 10 % tentative, 5 % out
    of office."""
    rng = random.Random(i)
    base = int(week0.timestamp())
    entries: dict[str, Entry] = {}
    for k in range(intervals):
        day = rng.randrange(WEEKS) * 7 + rng.randrange(5)
        start = base + day * 86_400 + rng.randrange(7 * 4, 18 * 4) * 900
        end = start + rng.choice((15, 30, 30, 45, 60, 60, 90, 120)) * 60
        roll = rng.random()
        intent = (
            StatusIntent.BUSY
            if roll < 0.85
            else StatusIntent.TENTATIVE
            if roll < 0.95
            else StatusIntent.OUT_OF_OFFICE
        )
        native = f"ev{i:05d}x{k:04d}{rng.getrandbits(40):010x}"
        entries[native] = Entry(native, start, end, flags_for(intent), synced_at)
    return BusyIndex(entries)


@dataclass(slots=True)
class Loaded:
    """What the benchmark wrote into the changelogs."""

    ids: list[str]
    partition: dict[str, int]
    records: int
    bytes: int
    busy_bytes: int
    seconds: float
    #: the last resource written to each partition: readable means that partition is built
    last_of: dict[int, str]


async def load_changelogs(settings: Settings, resources: int, intervals: int) -> Loaded:
    """Write ``resources`` resources' ``resources``, ``sync_state`` and ``busy`` changelog
    records, each into its resource's partition."""
    partitions = settings.topic_partitions
    week0 = monday()
    now = time.time()
    ids = [resource_id(i) for i in range(resources)]
    partition = {rid: partition_of(rid, partitions) for rid in ids}
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="bench-availability-loader",
        acks="all",
        linger_ms=20,
        max_batch_size=1 << 20,
        max_request_size=4 << 20,
    )
    await producer.start()
    began = time.monotonic()
    records = size = busy_size = 0
    try:
        topics = {t: changelog_topic(settings, t) for t in ("resources", "sync_state", "busy")}
        pending: list[asyncio.Future[Any]] = []
        for i, rid in enumerate(ids):
            key = json.dumps(rid).encode()
            index = busy_index(i, intervals, week0, int(now - 60))
            busy = index.encode()
            # What the sync stores beside the index: each occurrence's version (a Google
            # etag) and the digest of the index value stored with the state.
            versions = {
                native: f'"{3_181_161_784_712_000 + k}"' for k, native in enumerate(index.entries)
            }
            values = {
                "resources": Resource(
                    provider="google",
                    calendar_id=f"{rid}@bench.example",
                    registered_at=now - 3600,
                    credentials={},
                    time_zone="Europe/Berlin",
                ).dumps(),
                "sync_state": SyncState(
                    cursor=f"CKi{i:08d}bench",
                    index=versions,
                    synced_at=now - 60,
                    fetch_started_at=now - 61,
                    fetches=1,
                    time_zone="UTC",
                    busy_digest=hashlib.blake2b(busy, digest_size=16).hexdigest(),
                ).dumps(),
                "busy": busy,
            }
            for table, value in values.items():
                pending.append(
                    await producer.send(topics[table], value, key=key, partition=partition[rid])
                )
                records += 1
                size += len(key) + len(value)
            busy_size += len(busy)
            if len(pending) >= 3000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    last_of = {partition[rid]: rid for rid in ids}
    return Loaded(ids, partition, records, size, busy_size, time.monotonic() - began, last_of)


# --------------------------------------------------------------------------- measuring


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def dir_bytes(root: Path, pattern: str) -> int:
    """Bytes of the files under the directories ``pattern`` matches below ``root``."""
    total = 0
    for directory in root.rglob(pattern):
        for path in directory.rglob("*") if directory.is_dir() else [directory]:
            if path.is_file():
                total += path.stat().st_size
    return total


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def busy_of(client: httpx.AsyncClient, url: str, rid: str, token: str) -> int | None:
    """How many busy intervals ``url`` reports for ``rid`` in its first eight weeks, or
    None while it cannot answer (``/healthz`` answers before the tables are recovered)."""
    start = monday()
    try:
        response = await client.get(
            f"{url}/api/availability/{rid}",
            params={"start": iso(start), "end": iso(start + timedelta(days=56))},
            headers=auth(token),
        )
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    return len(response.json()["busy"])


@dataclass(slots=True)
class Build:
    label: str
    healthy_s: float  # process start → /healthz 200
    ready_s: float  # process start → Faust logs "Worker ready" (recovery complete)
    readable_s: float  # process start → the last resource of every partition answers
    rss: int  # after the build, settled


def logged_ready(log: Path, since: float) -> float:
    """When (``time.time()``) the worker's log says ``Worker ready`` after ``since``."""
    for line in log.read_text(errors="replace").splitlines():
        if "[^---Recovery]: Worker ready" not in line or not line.startswith("["):
            continue
        try:
            stamp = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        if stamp >= since - 1.0:
            return stamp
    return math.nan


async def start_and_build(
    worker: WorkerProcess, loaded: Loaded | None, token: str, timeout: float
) -> Build:
    """Start ``worker``; time it to healthy and to every partition's last resource readable."""
    began, wall = time.monotonic(), time.time()
    await asyncio.to_thread(worker.start, timeout=timeout)
    healthy = time.monotonic() - began
    readable = healthy
    if loaded is not None:
        waiting = dict(loaded.last_of)
        async with httpx.AsyncClient(timeout=10.0) as client:
            while waiting:
                if time.monotonic() - began > timeout:
                    raise RuntimeError(
                        f"{len(waiting)} partitions not readable after {timeout:g} s:\n"
                        + worker.tail()
                    )
                for p, rid in list(waiting.items()):
                    if await busy_of(client, worker.url, rid, token):
                        del waiting[p]
                if waiting:
                    await asyncio.sleep(0.1)
        readable = time.monotonic() - began
    ready = logged_ready(worker.log_path, wall)
    for _ in range(300):  # the log line is written just before the first answers
        if not math.isnan(ready):
            break
        await asyncio.sleep(0.2)
        ready = logged_ready(worker.log_path, wall)
    await asyncio.sleep(3.0)  # let the recovery's buffers go before reading the RSS
    assert worker.pid is not None
    label = "loaded" if loaded else "empty"
    return Build(label, healthy, ready - wall, max(readable, ready - wall), rss_bytes(worker.pid))


@dataclass(slots=True)
class LatencyRun:
    label: str
    result: LoadResult
    cpu_ms_per_request: float
    targeted: bool
    floor: bool
    #: which worker served, and how ("owning worker", "other worker", ...): rows of one
    #: ``where`` compare with that row's floor
    where: str = ""
    load: Load | None = None  # the machine meanwhile
    idle_ms_per_s: float = math.nan  # the worker's CPU with no request (timers, consumers)

    @property
    def net_cpu_ms(self) -> float:
        """CPU per request net of what the worker spends idle over the same time."""
        return self.cpu_ms_per_request - self.idle_ms_per_s / self.result.rate

    @property
    def p99(self) -> float:
        return summarize(self.result.latencies_ms)["p99"]

    @property
    def failed(self) -> int:
        return sum(self.result.failures.values())

    @property
    def ok(self) -> bool:
        return self.p99 <= P99_TARGET_MS and not self.failed


async def http_load(spec: dict[str, Any]) -> LoadResult:
    """The open-loop load generator (:mod:`benchmarks.openloop`) in its own process."""
    headers = spec.get("headers") or {}
    rest = {k: v for k, v in spec.items() if k not in ("url", "headers")}
    return await processes.http_load(str(spec["url"]), [headers], rest)


async def measured(
    label: str, spec: dict[str, Any], pid: int, *, targeted: bool, floor: bool, where: str
) -> LatencyRun:
    before, sample, began = process_cpu(pid), cpu_sample(), time.monotonic()
    result = await http_load(spec)
    spent = process_cpu(pid) - before
    load = load_between(sample, cpu_sample(), time.monotonic() - began)
    requests = int((spec["warmup"] + spec["duration"]) * spec["rate"])
    return LatencyRun(label, result, spent / requests * 1000, targeted, floor, where, load)


async def floor_and_query(
    worker: WorkerProcess,
    where: str,
    label: str,
    schedule: dict[str, float],
    bodies: list[dict[str, Any]],
    token: str,
    *,
    targeted: bool,
) -> list[LatencyRun]:
    """The floor (``GET /healthz``), then the queries, on ``worker``; its idle CPU first."""
    assert worker.pid is not None
    before = process_cpu(worker.pid)
    await asyncio.sleep(IDLE_S)
    idle = (process_cpu(worker.pid) - before) / IDLE_S * 1000
    floor_spec = {
        **schedule,
        "url": f"{worker.url}/healthz",
        "client": "lean",
        "method": "GET",
        "bodies": [None],
        "headers": {},
        "expect": 200,
    }
    query_spec = {
        **schedule,
        "url": f"{worker.url}/api/availability/query",
        "client": "lean",
        "method": "POST",
        "bodies": bodies,
        "headers": auth(token),
        "expect": 200,
    }
    runs = [
        await measured(
            f"floor: `GET /healthz`, {where}",
            floor_spec,
            worker.pid,
            targeted=False,
            floor=True,
            where=where,
        ),
        await measured(label, query_spec, worker.pid, targeted=targeted, floor=False, where=where),
    ]
    for one_run in runs:
        one_run.idle_ms_per_s = idle
    return runs


def query_body(rids: list[str]) -> dict[str, Any]:
    start = monday() + timedelta(days=7 * QUERY_WEEK)
    hours = {
        "zone": "Europe/Berlin",
        "weekly": {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri")},
    }
    return {
        "resources": [{"id": rid, "working_hours": hours} for rid in rids],
        "start": iso(start),
        "end": iso(start + timedelta(days=7)),
        "duration_minutes": 30,
        "granularity_minutes": 15,
        "zone": "Europe/Berlin",
    }


@dataclass(slots=True)
class HoldRun:
    label: str
    resources: int
    requests: int
    concurrency: int
    statuses: Counter[str]
    wall_s: float
    latencies_ms: list[float]
    cpu_s: float = math.nan  # both workers' CPU over the run
    load: Load | None = None

    @property
    def cpu_ms_per_decision(self) -> float:
        decided = self.statuses.get("201", 0) + self.statuses.get("409", 0)
        return self.cpu_s / decided * 1000 if decided else math.nan

    @property
    def accepted(self) -> int:
        return self.statuses.get("201", 0)

    @property
    def per_second(self) -> float:
        return self.accepted / self.wall_s if self.wall_s > 0 else math.nan


async def hold_run(
    label: str,
    urls: list[str],
    rids: list[str],
    requests: int,
    concurrency: int,
    token: str,
    first_slot: datetime,
    pids: tuple[int, ...] = (),
) -> HoldRun:
    """``requests`` holds, request ``k`` on ``rids[k % n]`` at slot ``k // n`` (30 minutes
    each, back to back: none overlaps another), sent alternately to ``urls``."""
    n = len(rids)
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for k in range(requests):
        queue.put_nowait(k)
    run_id = uuid.uuid4().hex[:8]
    limits = httpx.Limits(
        max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2
    )

    async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:

        async def one(k: int) -> None:
            start = first_slot + timedelta(minutes=30 * (k // n))
            body = {
                "resources": [rids[k % n]],
                "start": iso(start),
                "end": iso(start + timedelta(minutes=30)),
                "ttl_seconds": 3600,
                "idempotency_key": f"bench-{run_id}-{k}",
            }
            began = time.perf_counter()
            try:
                response = await client.post(
                    f"{urls[k % len(urls)]}/api/holds", json=body, headers=auth(token)
                )
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1
                return
            latencies.append((time.perf_counter() - began) * 1000)
            statuses[str(response.status_code)] += 1

        async def worker() -> None:
            while True:
                try:
                    k = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await one(k)

        cpu, sample, began = sum(map(process_cpu, pids)), cpu_sample(), time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.monotonic() - began
        load = load_between(sample, cpu_sample(), wall)
        cpu = sum(map(process_cpu, pids)) - cpu
    return HoldRun(label, n, requests, concurrency, statuses, wall, latencies, cpu, load)


# --------------------------------------------------------------------------- the run


@dataclass(slots=True)
class Results:
    resources: int
    intervals: int
    partitions: int
    loaded: Loaded
    empty: Build
    built: Build
    busy_disk: int
    tables_disk: int
    query_sets: int
    owner_partitions: list[int]
    joined_s: float
    response_bytes: float
    slots_per_answer: float
    query_spec: dict[str, float]
    latency: list[LatencyRun] = field(default_factory=list)
    holds: list[HoldRun] = field(default_factory=list)
    #: with ``--pin``: the owner's CPUs and everyone else's in the pinned rows
    pinned: tuple[list[int], list[int]] | None = None

    @property
    def millions(self) -> float:
        return self.resources * self.intervals / 1e6


async def owned_partitions(url: str, loaded: Loaded, token: str) -> list[int]:
    """The partitions whose resources ``url`` answers itself (no forwarding header)."""
    first: dict[int, str] = {}
    for rid in loaded.ids:
        first.setdefault(loaded.partition[rid], rid)
    owned = []
    async with httpx.AsyncClient(timeout=10.0) as client:
        for p, rid in sorted(first.items()):
            response = await client.get(f"{url}/api/availability/{rid}", headers=auth(token))
            if response.status_code != 200:
                raise RuntimeError(f"{rid}: {response.status_code} {response.text[:200]}")
            if ROUTED_HEADER not in response.headers:
                owned.append(p)
    return owned


async def run(ctx: Context) -> Section:
    env, opts = ctx.env, ctx.opts
    emulator = ctx.emulator
    token = env.admin_token
    timeout = max(300.0, opts.index_resources * opts.index_intervals / 2000)

    # The floor of a start: a worker of another app, on empty changelogs.
    empty_settings = env.settings(
        "avail-empty", google_api_url=emulator.api_url, google_token_url=emulator.token_url
    )
    await asyncio.to_thread(ensure_topics, empty_settings)
    empty_worker = WorkerProcess(empty_settings)
    try:
        empty = await start_and_build(empty_worker, None, token, timeout)
    finally:
        await asyncio.to_thread(empty_worker.stop)

    settings = env.settings(
        "availability", google_api_url=emulator.api_url, google_token_url=emulator.token_url
    )
    await asyncio.to_thread(ensure_topics, settings)
    loaded = await load_changelogs(settings, opts.index_resources, opts.index_intervals)
    cluster = WorkerCluster(settings, 2)
    try:
        owner, other = cluster.workers
        built = await start_and_build(owner, loaded, token, timeout)
        busy_disk = dir_bytes(owner.settings.data_dir, "busy-*.db")
        tables_disk = dir_bytes(owner.settings.data_dir, "*.db")

        wall = time.time()
        await asyncio.to_thread(other.start, timeout=timeout)
        await asyncio.to_thread(cluster.wait_balanced, timeout=timeout)
        # Both workers recover after the rebalance (the joiner its actives and, with one
        # standby replica, a standby of the rest): wait for both to log "Worker ready".
        for _ in range(int(timeout * 5)):
            if not any(math.isnan(logged_ready(w.log_path, wall)) for w in cluster.workers):
                break
            await asyncio.sleep(0.2)
        joined = max(logged_ready(w.log_path, wall) for w in cluster.workers) - wall
        await asyncio.sleep(2.0)

        owned = await owned_partitions(owner.url, loaded, token)
        if not owned or len(owned) == settings.topic_partitions:
            raise RuntimeError(f"the first worker owns partitions {owned}: not a split")
        mine = [rid for rid in loaded.ids if loaded.partition[rid] in owned]
        sets = min(opts.query_sets, len(mine) // QUERY_RESOURCES)
        if sets < 1:
            raise RuntimeError(f"only {len(mine)} resources on the owning worker")
        picked = random.Random(7).sample(mine, sets * QUERY_RESOURCES)
        bodies = [
            query_body(picked[s * QUERY_RESOURCES : (s + 1) * QUERY_RESOURCES]) for s in range(sets)
        ]

        # Every query set answers 200 on both workers, the routed one through the owner.
        sizes, slot_counts = [], []
        async with httpx.AsyncClient(timeout=30.0) as client:
            for body in bodies:
                for url in (owner.url, other.url):
                    response = await client.post(
                        f"{url}/api/availability/query", json=body, headers=auth(token)
                    )
                    if response.status_code != 200:
                        raise RuntimeError(f"query: {response.status_code} {response.text[:300]}")
                    sizes.append(len(response.content))
                    slot_counts.append(len(response.json()["slots"]))

        schedule = {
            "rate": opts.query_rate,
            "duration": opts.query_duration,
            "warmup": opts.query_warmup,
        }
        results = Results(
            resources=opts.index_resources,
            intervals=opts.index_intervals,
            partitions=settings.topic_partitions,
            loaded=loaded,
            empty=empty,
            built=built,
            busy_disk=busy_disk,
            tables_disk=tables_disk,
            query_sets=sets,
            owner_partitions=owned,
            joined_s=joined,
            response_bytes=sum(sizes) / len(sizes),
            slots_per_answer=sum(slot_counts) / len(slot_counts),
            query_spec=schedule,
        )
        results.latency += await floor_and_query(
            owner, "owning worker", "query, owning worker", schedule, bodies, token, targeted=True
        )
        results.latency += await floor_and_query(
            other,
            "other worker",
            "query, routed (other worker → owner)",
            schedule,
            bodies,
            token,
            targeted=False,
        )
        if opts.pin:
            # As if the clients and the broker ran on other machines: the owner keeps one
            # core to itself; the broker, the other worker and the generator share the rest.
            assert owner.pid is not None
            with alone(owner.pid) as (own, rest):
                results.pinned = (sorted(own), sorted(rest))
                where = "owning worker alone on a core"
                results.latency += await floor_and_query(
                    owner, where, f"query, {where}", schedule, bodies, token, targeted=True
                )

        urls = [owner.url, other.url]
        assert owner.pid is not None and other.pid is not None
        pids = (owner.pid, other.pid)
        first_slot = monday() + timedelta(days=HOLDS_FROM_DAY)
        # Warm-up: each worker starts following the holds topic on its first hold.
        warm = [resource_id(opts.index_resources - 1)]
        await hold_run("warm-up", urls, warm, 4, 2, token, first_slot)
        first_slot += timedelta(days=2)
        serial = [resource_id(opts.index_resources - 2)]
        results.holds.append(
            await hold_run(
                "one resource, one at a time",
                urls,
                serial,
                SERIAL_HOLDS,
                1,
                token,
                first_slot,
                pids,
            )
        )
        one = [resource_id(0)]
        results.holds.append(
            await hold_run(
                "one resource",
                urls,
                one,
                opts.holds_one,
                opts.hold_concurrency,
                token,
                first_slot,
                pids,
            )
        )
        count = min(MANY_RESOURCES, opts.index_resources - 3)
        many = [resource_id(i) for i in range(1, 1 + count)]
        results.holds.append(
            await hold_run(
                f"{len(many)} resources",
                urls,
                many,
                opts.holds_many,
                opts.hold_concurrency,
                token,
                first_slot,
                pids,
            )
        )
    finally:
        await asyncio.to_thread(cluster.stop)
    return Section(report(results), summary(results))


# --------------------------------------------------------------------------- report


def mib(value: float) -> str:
    return f"{value / (1 << 20):,.1f} MiB"


def report(r: Results) -> list[str]:
    loaded = r.loaded
    floor_p99 = {run.where: run.p99 for run in r.latency if run.floor}
    s = r.query_spec
    lines = [
        f"{r.resources:,} Google resources x {r.intervals} busy intervals "
        f"({r.resources * r.intervals:,} intervals, {r.partitions} partitions) written "
        "straight into the `resources`, `sync_state` and `busy` changelogs, each record in "
        "its resource's partition (what the sync leaves there, the sync state with each "
        "occurrence's version and the index digest; "
        f"{loaded.records:,} records, {mib(loaded.bytes)}, of which {mib(loaded.busy_bytes)} "
        f"`busy` values, written in {loaded.seconds:.1f} s). Intervals: ten weeks of "
        "weekdays, starting 07:00-17:45 UTC, 15-120 minutes, 85 % busy, 10 % tentative, 5 % out of "
        "office.",
        "",
        "**Index build from the changelog** (one `calsync worker` restoring every "
        "partition; *readable*: the last resource written to each partition answers "
        "`GET /api/availability` with its intervals):",
        "",
        "| worker | start → `/healthz` 200 | start → `Worker ready` (Faust log) "
        "| start → every partition readable | RSS after |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| empty changelogs (process start, group join) | {r.empty.healthy_s:.1f} s "
        f"| {r.empty.ready_s:.1f} s | {r.empty.readable_s:.1f} s | {mib(r.empty.rss)} |",
        f"| {r.resources:,} x {r.intervals} loaded | {r.built.healthy_s:.1f} s "
        f"| {r.built.ready_s:.1f} s | {r.built.readable_s:.1f} s | {mib(r.built.rss)} |",
        "",
        "`/healthz` answers before the tables are recovered (the web server starts first; "
        "meanwhile the API answers 503), so the build is timed to the log line and to the "
        "first answers.",
        "",
        f"Build time net of an empty start: **{r.built.readable_s - r.empty.readable_s:.1f} s** "
        f"for {r.resources:,} resources ({loaded.records:,} changelog records). The second "
        f"worker then joined (one standby replica, the default): both workers logged "
        f"`Worker ready` {r.joined_s:.1f} s after its start.",
        "",
        "**Memory per million intervals** (the worker that restored everything):",
        "",
        "| | total | per million intervals |",
        "| --- | ---: | ---: |",
        f"| RocksDB on disk, `busy` table | {mib(r.busy_disk)} | {mib(r.busy_disk / r.millions)} |",
        f"| RocksDB on disk, all tables | {mib(r.tables_disk)} "
        f"| {mib(r.tables_disk / r.millions)} |",
        f"| resident (VmRSS) loaded minus empty worker | {mib(r.built.rss - r.empty.rss)} "
        f"| {mib((r.built.rss - r.empty.rss) / r.millions)} |",
        "",
        f"**Free-slot query latency**, open loop: {s['rate']:g} requests/s for "
        f"{s['duration']:g} s after a {s['warmup']:g} s warm-up (not counted), latency from "
        "each request's due time, load generator in its own process (a minimal keep-alive "
        "HTTP/1.1 client, `benchmarks.openloop.LeanClient`, each request started at its due "
        "time rather than up to a millisecond after it). Two workers; the first "
        f"owns partitions {', '.join(map(str, r.owner_partitions))}. Each query: 10 resources "
        "owned by the first worker (rotating over "
        f"{r.query_sets} disjoint sets), one week (week {QUERY_WEEK + 1} of the ten), 30 "
        "minutes on a 15-minute grid, working hours Mon-Fri 09:00-17:00 Europe/Berlin per "
        f"resource, all of them free; answers average {r.slots_per_answer:.1f} slots, "
        f"{r.response_bytes / 1024:.1f} KiB. The routed request goes to the other worker, which "
        "asks the owner for a snapshot of the 10 resources (one HTTP request) and finds the "
        "slots itself. The floor is `GET /healthz` on the same worker (a constant JSON "
        "handler in the same aiohttp app, same middlewares). CPU per request is the serving "
        "worker's user + system time over the run (warm-up included) divided by the requests "
        f"sent; in brackets net of its idle CPU (measured over {IDLE_S:g} s without requests "
        "just before: Faust's consumers, timers, the standby's fetches). The routed row's "
        "CPU is the receiving worker's; the owner spends its snapshot on top.",
        *(
            [
                "",
                "The rows *alone on a core* repeat the owner's floor and query with the "
                f"owning worker's threads on CPU {', '.join(map(str, r.pinned[0]))} and every "
                "other process of this benchmark (the broker, the other worker, the load "
                f"generator, the emulator) on CPU {', '.join(map(str, r.pinned[1]))} "
                "(`sched_setaffinity` per thread): what the worker has when its clients and "
                "its broker run on other machines. Processes outside the benchmark are not "
                "moved (their share is in the last column).",
            ]
            if r.pinned
            else []
        ),
        "",
        "| path | measured | p50 ms | p95 ms | p99 ms | max ms | failed | p99 / floor p99 "
        "| CPU ms / request (net of idle) | machine busy (others) | target | result |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for run in r.latency:
        base = floor_p99.get(run.where, math.nan)
        ratio = "—" if run.floor else f"{run.p99 / base:.2f}x"
        target = f"p99 ≤ {P99_TARGET_MS:g} ms" if run.targeted else "—"
        busy = f"{run.load.busy:.0%} ({run.load.others:.0%})" if run.load else "n/a"
        lines.append(
            f"| {run.label} | {len(run.result.latencies_ms)}/{run.result.sent} "
            f"| {latency_cells(run.result.latencies_ms)} | {run.failed} | {ratio} "
            f"| {run.cpu_ms_per_request:.2f} ({run.net_cpu_ms:.2f}) | {busy} | {target} "
            f"| {verdict(run.ok) if run.targeted else '—'} |"
        )
    lines.append("")
    for run in r.latency:
        lag = summarize(run.result.lag_ms)
        fails = ", ".join(f"{k}: {v}" for k, v in sorted(run.result.failures.items()))
        inside = ""
        if run.result.server_ms:
            spent = summarize(run.result.server_ms)
            inside = (
                f"; inside the worker (its `Server-Timing`, handler start to answer) p50 "
                f"{ms(spent['p50'])}, p99 {ms(spent['p99'])}, max {ms(spent['max'])} ms"
            )
        lines.append(
            f"- {run.label}: the generator started requests late by p99 {ms(lag['p99'])} ms, "
            f"max {ms(lag['max'])} ms (included above){inside}; failures: {fails or 'none'}"
        )
    lines += [
        "",
        "**Hold decisions**, closed loop, requests alternately to either worker, each "
        "`POST /api/holds` for its own 30-minute slot (none overlaps another, none a busy "
        "interval), TTL 1 h, answered once the owner's decision is on `calsync.holds`; "
        "accepted per second of wall time. The first row sends one request at a time: the "
        "latency of one decision with no queue in front of it.",
        "",
        "| resources | requests | in flight | 201 accepted | other answers | wall s "
        "| accepted / s | p50 ms | p99 ms | max ms | workers' CPU ms / decision "
        "| machine busy (others) |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for h in r.holds:
        others = ", ".join(f"{k}: {v}" for k, v in sorted(h.statuses.items()) if k != "201")
        lat = summarize(h.latencies_ms)
        lines.append(
            f"| {h.label} | {h.requests} | {h.concurrency} | {h.accepted} | {others or 'none'} "
            f"| {h.wall_s:.1f} | {h.per_second:,.0f} | {ms(lat['p50'])} | {ms(lat['p99'])} "
            f"| {ms(lat['max'])} | {h.cpu_ms_per_decision:.1f} "
            f"| {f'{h.load.busy:.0%} ({h.load.others:.0%})' if h.load else 'n/a'} |"
        )
    lines += [
        "",
        "One resource is decided in its partition's order, one request at a time, each "
        "reading and rewriting the resource's hold book (which grows with every accepted "
        "hold) and writing the decision with `acks=all`; across resources the partitions "
        "decide in parallel. Workers' CPU per decision is both workers' user + system time "
        "over the run divided by the decisions: the receiving worker's request and wait, the "
        "owner's decision and writes, and both workers following `calsync.holds`.",
    ]
    return lines


def summary(r: Results) -> list[str]:
    rows = []
    floors = {x.where: x for x in r.latency if x.floor}
    for run in r.latency:
        if run.floor:
            continue
        floor = floors.get(run.where)
        extra = f" (floor {ms(floor.p99)} ms)" if floor is not None and run.targeted else ""
        rows.append(
            f"| free-slot query p99, {run.label.split(', ', 1)[1]} | {ms(run.p99)} ms{extra} "
            f"| {'≤ 5 ms' if run.targeted else '—'} "
            f"| {verdict(run.ok) if run.targeted else '—'} |"
        )
    for h in r.holds:
        if h.concurrency == 1:
            p50 = summarize(h.latencies_ms)["p50"]
            rows.append(f"| hold decision, {h.label} | p50 {ms(p50)} ms | — | — |")
        else:
            rows.append(f"| hold decisions, {h.label} | {h.per_second:,.0f} accepted/s | — | — |")
    rows.append(
        f"| index memory per million intervals | {mib(r.busy_disk / r.millions)} on disk "
        f"(`busy`), {mib((r.built.rss - r.empty.rss) / r.millions)} resident | — | — |"
    )
    rows.append(
        f"| index build, {r.resources:,} resources from the changelog | "
        f"{r.built.readable_s:.1f} s ({r.empty.readable_s:.1f} s empty start) | — | — |"
    )
    return rows


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--index-resources", type=int, default=10_000, help="resources loaded (%(default)s)"
    )
    group.add_argument(
        "--index-intervals", type=int, default=200, help="busy intervals each (%(default)s)"
    )
    group.add_argument(
        "--query-rate", type=float, default=25.0, help="queries/s, open loop (%(default)s)"
    )
    group.add_argument(
        "--query-duration", type=float, default=20.0, help="measured s (%(default)s)"
    )
    group.add_argument("--query-warmup", type=float, default=2.0, help="warm-up s (%(default)s)")
    group.add_argument(
        "--query-sets", type=int, default=50, help="disjoint sets of 10 resources (%(default)s)"
    )
    group.add_argument(
        "--holds-one", type=int, default=300, help="holds on one resource (%(default)s)"
    )
    group.add_argument(
        "--holds-many", type=int, default=2000, help="holds across 100 resources (%(default)s)"
    )
    group.add_argument(
        "--hold-concurrency", type=int, default=32, help="holds in flight (%(default)s)"
    )
    group.add_argument(
        "--pin",
        action="store_true",
        help="also run the owner's floor and query with the owner alone on a core",
    )


def check(opts: argparse.Namespace) -> str | None:
    if opts.index_resources < 2 * QUERY_RESOURCES + 3 or opts.index_intervals < 1:
        return f"--index-resources ≥ {2 * QUERY_RESOURCES + 3}, --index-intervals ≥ 1"
    if opts.query_rate <= 0 or opts.query_duration <= 0 or opts.query_warmup < 0:
        return "--query-rate and --query-duration must be positive, --query-warmup not negative"
    if min(opts.query_sets, opts.holds_one, opts.holds_many, opts.hold_concurrency) < 1:
        return "--query-sets, --holds-one, --holds-many and --hold-concurrency ≥ 1"
    if opts.pin and len(os.sched_getaffinity(0)) < 2:
        return "--pin needs two CPUs: the owner's and everyone else's"
    return None


BENCHMARK = Benchmark(
    "availability",
    "Availability index: free-slot query, holds, memory, build",
    run,
    add_arguments,
    check,
)
