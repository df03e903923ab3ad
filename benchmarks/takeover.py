"""Takeover after a crash: SIGKILL one of two workers, push one change per calendar, and
time kill → the first change delivered from a partition the dead worker held (a *moved*
partition) and kill → every change delivered (converged), with and without standby
replicas (``CALSYNC_STANDBY_REPLICAS`` 1 and 0).

Each repetition is a fresh cluster as deployed (tests/integration/test_failover.py builds
the same): the standalone gateway in this process is the public webhook URL, two
``calsync worker`` processes (:class:`~calsync.testing.cluster.WorkerCluster`, each its
own data dir) on the real broker, ``K`` Google calendars of ``E`` events each registered
and fully synced, so the tables' changelogs hold real state. Fresh topics and data dirs
per repetition keep a worker from holding a stale local copy of a moved partition from an
earlier round. The session timeout (``CALSYNC_KAFKA_SESSION_TIMEOUT``, the production
default unless ``--session-timeout``) dominates and is stated with the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

from benchmarks.harness.benchmark import Benchmark, Context
from benchmarks.harness.env import CLIENT_ID, CLIENT_SECRET, Env, free_port
from benchmarks.harness.google import event_time, insert_events, tomorrow
from benchmarks.harness.processes import register, serve_gateway
from benchmarks.harness.records import Seen, TimedReader
from benchmarks.harness.report import Section, spread
from calsync.codecs.avro import decode_event
from calsync.emulators.google import GoogleEmulator
from calsync.model import ChangeKind
from calsync.settings import Settings
from calsync.streams.topics import TABLES, changelog_topic
from calsync.testing.cluster import WorkerCluster

WORKERS = 2
#: The production default of ``CALSYNC_KAFKA_SESSION_TIMEOUT``.
DEFAULT_SESSION_TIMEOUT = float(Settings.__dataclass_fields__["kafka_session_timeout"].default)  # type: ignore[arg-type]
STANDBY_REPLICAS = (1, 0)


@dataclass(frozen=True, slots=True)
class Takeover:
    """One SIGKILL of one worker of two, timed from the records' CreateTime."""

    standby_replicas: int
    moved_partitions: int  # of the notifications topic, held by the killed worker
    moved_calendars: int
    changelog_records: int  # in the moved partitions of every table's changelog
    synced_s: float  # registration → every calendar's initial sync on calsync.events
    first_moved_s: float  # kill → first pushed change of a moved calendar delivered
    converged_s: float  # kill → every pushed change delivered
    kept_s: float  # kill → every change of the calendars the survivor already held


async def notification_owners(settings: Settings) -> dict[int, set[int]]:
    """Web port of each group member → the notifications partitions it holds, from the
    broker's view of the consumer group.

    Decoded with aiokafka's consumer-protocol structs, which Faust writes with: the
    subscription's user data is Faust's JSON client metadata, naming the worker's URL;
    the assignment lists topic partitions (standbys only ever name changelogs)."""
    topic = settings.topic("notifications")
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([settings.app_id])
    finally:
        await admin.close()
    owners: dict[int, set[int]] = {}
    for response in responses:
        for group in response.to_object()["groups"]:
            for member in group["members"]:
                metadata = ConsumerProtocolMemberMetadata.decode(member["member_metadata"])
                url = str(json.loads(metadata.user_data)["url"])
                assignment = ConsumerProtocolMemberAssignment.decode(member["member_assignment"])
                owners[int(url.rstrip("/").rsplit(":", 1)[1])] = {
                    p for name, numbers in assignment.assignment if name == topic for p in numbers
                }
    return owners


async def changelog_records(settings: Settings, partitions: set[int]) -> int:
    """Records in ``partitions`` of every table's changelog (end minus start offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        tps = [
            TopicPartition(changelog_topic(settings, table), p)
            for table in TABLES
            for p in partitions
        ]
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
    finally:
        await consumer.stop()
    return sum(ends[tp] - starts[tp] for tp in tps)


class World:
    """One fresh cluster: emulator, gateway, two workers and a reader of calsync.events."""

    def __init__(self, emulator: GoogleEmulator, workers: WorkerCluster, events: TimedReader):
        self.emulator = emulator
        self.workers = workers
        self.events = events
        self.ids: dict[str, list[str]] = {}  # resource id → its calendar's event ids

    def calendar_of(self, name: str) -> str:
        return f"{name}@bench.example"

    def add_calendars(self, count: int, events: int) -> None:
        for k in range(count):
            name = f"tk{k:02d}"
            self.emulator.add_calendar(self.calendar_of(name), time_zone="UTC")
            self.ids[name] = insert_events(
                self.emulator, self.calendar_of(name), events, start=tomorrow()
            )

    def change_all(self, start: datetime) -> None:
        """One pushed change per calendar: its first event moves to ``start``."""
        for name, ids in self.ids.items():
            self.emulator.patch_event(self.calendar_of(name), ids[0], event_time(start))

    def delivered(self, mark: int, start: datetime) -> dict[str, Seen]:
        """Per calendar, the first record since ``mark`` that carries its change."""
        found: dict[str, Seen] = {}
        for seen in self.events.records[mark:]:
            name = (seen.key or b"").decode()
            if name in found or name not in self.ids:
                continue
            event = decode_event(seen.value)
            if (
                event.change is ChangeKind.UPSERT
                and event.native_event_id == self.ids[name][0]
                and event.start_utc == start
            ):
                found[name] = seen
        return found


async def one_takeover(env: Env, opts: argparse.Namespace, standby: int, victim: int) -> Takeover:
    emulator = GoogleEmulator(seed=4321)
    await emulator.start()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(emulator.aclose)
        emulator.add_client(CLIENT_ID, CLIENT_SECRET)
        base = env.settings(
            "takeover",
            google_api_url=emulator.api_url,
            google_token_url=emulator.token_url,
            kafka_session_timeout=opts.session_timeout,
            standby_replicas=standby,
        )
        gateway = await stack.enter_async_context(serve_gateway(base, "127.0.0.1", free_port()))
        settings = dataclasses.replace(base, public_url=gateway)
        workers = WorkerCluster(settings, WORKERS)
        stack.push_async_callback(asyncio.to_thread, workers.stop)
        await asyncio.to_thread(workers.start)
        events = TimedReader(env.bootstrap, settings.topic("events"))
        await events.start()
        stack.push_async_callback(events.aclose)
        world = World(emulator, workers, events)
        world.add_calendars(opts.calendars, opts.calendar_events)

        registered = time.time()
        for name in world.ids:
            token = emulator.issue_refresh_token(CLIENT_ID)
            await register(gateway, env.admin_token, name, world.calendar_of(name), token)
        keys = [name.encode() for name in world.ids]
        try:
            await events.wait_for(
                lambda _: all(events.per_key[k] >= opts.calendar_events for k in keys),
                timeout=300,
            )
        except TimeoutError:
            done = sum(events.per_key[k] >= opts.calendar_events for k in keys)
            tails = "\n".join(w.tail(25) for w in workers.workers)
            raise RuntimeError(
                f"the initial sync did not finish: {done} of {len(keys)} calendars, "
                f"{len(events.records):,} events:\n{tails}"
            ) from None
        synced = max(r.timestamp for r in events.records) - registered
        await asyncio.to_thread(workers.wait_balanced)
        await events.settle(quiet=opts.settle)  # and the standbys catch up meanwhile

        owners = await notification_owners(settings)
        killed_port = workers.workers[victim].settings.web_port
        moved = owners.get(killed_port, set())
        if not moved or len(owners) != WORKERS:
            raise RuntimeError(f"cannot tell the killed worker's partitions: {owners}")
        partition_of = {(r.key or b"").decode(): r.partition for r in events.records}
        moved_names = {name for name in world.ids if partition_of.get(name) in moved}
        in_changelogs = await changelog_records(settings, moved)

        mark = len(events.records)
        stop = asyncio.Event()
        polling = asyncio.create_task(events.poll_until(stop))
        start = tomorrow() + timedelta(days=60)
        try:
            killed = time.time()
            workers.workers[victim].kill()
            world.change_all(start)
            deadline = time.monotonic() + opts.session_timeout + 120
            while len(world.delivered(mark, start)) < len(world.ids):
                if time.monotonic() > deadline:
                    tails = "\n".join(w.tail(25) for w in workers.workers)
                    raise RuntimeError(f"not converged 120 s after the timeout:\n{tails}")
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await polling
        found = world.delivered(mark, start)
        moved_at = [found[n].timestamp for n in moved_names]
        kept_at = [s.timestamp for n, s in found.items() if n not in moved_names]
        return Takeover(
            standby_replicas=standby,
            moved_partitions=len(moved),
            moved_calendars=len(moved_names),
            changelog_records=in_changelogs,
            synced_s=synced,
            first_moved_s=min(moved_at) - killed if moved_at else float("nan"),
            converged_s=max(s.timestamp for s in found.values()) - killed,
            kept_s=max(kept_at) - killed if kept_at else float("nan"),
        )


async def run(ctx: Context) -> Section:
    opts = ctx.opts
    runs: list[Takeover] = []
    for standby in STANDBY_REPLICAS:
        for rep in range(opts.takeover_repeats):
            runs.append(await one_takeover(ctx.env, opts, standby, victim=rep % WORKERS))
    return Section(report(runs, opts, ctx.env.partitions), summary(runs, opts))


def _of(runs: list[Takeover], standby: int) -> list[Takeover]:
    return [r for r in runs if r.standby_replicas == standby]


def report(runs: list[Takeover], opts: argparse.Namespace, partitions: int) -> list[str]:
    heartbeat = min(1.0, opts.session_timeout / 6)
    lines = [
        f"Two `calsync worker` processes (each its own data dir) on the broker, the "
        "standalone gateway in the benchmark process as the public webhook URL, "
        f"{opts.calendars} Google calendars of {opts.calendar_events:,} events each "
        f"({opts.calendars * opts.calendar_events:,} events, {partitions} partitions per "
        "topic) registered and fully synced; once the group is stable and "
        f"`calsync.events` has been quiet for {opts.settle:g} s, one worker (alternately "
        "the first and the second) is SIGKILLed and one event of every calendar is patched "
        "with a push. Times run from just before the SIGKILL to the CreateTime of the "
        "record carrying the change. A *moved* calendar is one whose partition the killed "
        "worker held (read from the consumer group's assignment). Each repetition is a "
        "fresh cluster (new topics, empty data dirs), so no worker holds a stale copy of a "
        "moved partition from an earlier round.",
        "",
        f"**Session timeout {opts.session_timeout:g} s** (`CALSYNC_KAFKA_SESSION_TIMEOUT`, "
        f"the production default is {DEFAULT_SESSION_TIMEOUT:g} s), heartbeats every "
        f"{heartbeat:g} s: the coordinator only notices the dead worker after the session "
        "timeout, so it is the floor of every takeover below.",
        "",
        "| standby replicas | runs | kill → first change from a moved partition "
        "| kill → converged | kill → changes of kept partitions | moved partitions "
        "| changelog records in them | initial sync s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for standby in STANDBY_REPLICAS:
        mine = _of(runs, standby)
        lines.append(
            f"| {standby} | {len(mine)} | {spread([r.first_moved_s for r in mine])} "
            f"| {spread([r.converged_s for r in mine])} "
            f"| {spread([r.kept_s for r in mine])} "
            f"| {statistics.median(r.moved_partitions for r in mine):g} of {partitions} "
            f"| {statistics.median(r.changelog_records for r in mine):,.0f} "
            f"| {spread([r.synced_s for r in mine], unit='')} |"
        )
    lines += [
        "",
        "Median (min to max) of the repetitions. Every run, in order:",
        "",
    ]
    lines += [
        f"- standby {r.standby_replicas}: first moved {r.first_moved_s:.2f} s, converged "
        f"{r.converged_s:.2f} s, kept {r.kept_s:.2f} s; {r.moved_calendars} of "
        f"{opts.calendars} calendars moved ({r.moved_partitions} partitions, "
        f"{r.changelog_records:,} changelog records)"
        for r in runs
    ]
    lines += [
        "",
        "There is no raw baseline to divide by: the floor is the session timeout plus one "
        "heartbeat (the survivor learns of the rebalance), which the rows are to be read "
        "against; the gap above it is the rebalance, table recovery (from the standby, or "
        "the whole changelog of each moved partition without one) and the replay of the "
        "dispatcher from the committed offsets.",
    ]
    return lines


def summary(runs: list[Takeover], opts: argparse.Namespace) -> list[str]:
    return [
        f"| takeover, standby replicas {standby}: kill → first moved change / converged "
        f"| {statistics.median(r.first_moved_s for r in _of(runs, standby)):.1f} s / "
        f"{statistics.median(r.converged_s for r in _of(runs, standby)):.1f} s "
        f"(session timeout {opts.session_timeout:g} s) | — | — |"
        for standby in STANDBY_REPLICAS
    ]


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--calendars", type=int, default=20, help="calendars (%(default)s)")
    group.add_argument(
        "--calendar-events", type=int, default=500, help="events per calendar (%(default)s)"
    )
    group.add_argument(
        "--takeover-repeats", type=int, default=3, help="kills per setting (%(default)s)"
    )
    group.add_argument(
        "--session-timeout",
        type=float,
        default=DEFAULT_SESSION_TIMEOUT,
        help="CALSYNC_KAFKA_SESSION_TIMEOUT, s (%(default)s)",
    )
    group.add_argument(
        "--settle", type=float, default=3.0, help="quiet s before the kill (%(default)s)"
    )


def check(opts: argparse.Namespace) -> str | None:
    if opts.calendars < 2 or opts.calendar_events < 1 or opts.takeover_repeats < 1:
        return "--calendars ≥ 2, --calendar-events and --takeover-repeats ≥ 1"
    return None


BENCHMARK = Benchmark("takeover", "Takeover: SIGKILL one of two workers", run, add_arguments, check)
