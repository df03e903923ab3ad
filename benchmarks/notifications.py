"""Notifications per second per worker, with coalescing, next to plain aiokafka consuming
the same records on the same broker.

A fresh worker owns ``--notify-resources`` synced Google calendars (a few events each).
Then ``--notifications`` pushes for them, spread evenly and keyed by resource as the
gateway keys them, are produced to its ``calsync.notifications`` at once: a burst, as
after a provider's backlog or a gateway that buffered. Measured: from the first send to
the moment the worker's consumer group has committed every offset (the dispatcher
commits only finished work, every 0.5 s), the worker's CPU meanwhile, and how many delta
fetches the emulator served for them: the coalescing (a push that arrived before a fetch
of its calendar started is covered by that fetch and costs no provider call).

Baseline: an aiokafka consumer of a fresh group reading the same records from the
beginning (``getmany``, nothing done with them) and committing at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka.admin import KafkaAdminClient

from benchmarks.fullsync import LIFTED_QUOTA
from benchmarks.harness.benchmark import Benchmark, Context
from benchmarks.harness.google import insert_events, tomorrow
from benchmarks.harness.load import process_cpu
from benchmarks.harness.processes import RunningWorker, start_worker, stop_worker
from benchmarks.harness.report import Section
from calsync.streams.records import Notification
from calsync.streams.topics import topic_partitions


def say(message: str) -> None:
    print(f"[notifications] {message}", flush=True)


#: Events in each calendar (the delta fetches find nothing new: the cost is calsync's).
CALENDAR_EVENTS = 3


@dataclass(slots=True)
class Drain:
    notifications: int
    resources: int
    produce_s: float  # first send → every send acknowledged
    drain_s: float  # first send → every offset committed by the worker
    worker_cpu_s: float
    fetches: int  # delta fetches of these calendars the emulator served meanwhile
    raw_s: float  # the baseline: first poll → every record read and committed

    @property
    def rate(self) -> float:
        return self.notifications / self.drain_s

    @property
    def raw_rate(self) -> float:
        return self.notifications / self.raw_s


def committed_total(admin: KafkaAdminClient, group: str, topic: str) -> int:
    """The sum of ``group``'s committed offsets of ``topic`` (blocking)."""
    offsets = admin.list_group_offsets({group: None}).get(group, {})
    return sum(o.offset for tp, o in offsets.items() if tp.topic == topic and o.offset > 0)


async def end_total(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(await topic_partitions(consumer, topic))
        return sum(ends.values())
    finally:
        await consumer.stop()


async def prepare(ctx: Context, resources: int) -> tuple[RunningWorker, dict[str, str]]:
    """A fresh worker with ``resources`` calendars registered and synced: the worker,
    and each resource id's calendar id."""
    env, emulator = ctx.env, ctx.emulator
    running = await start_worker(env, emulator, "notify", **LIFTED_QUOTA)
    say(f"worker ready in {running.started_in_s:.1f} s; registering {resources} calendars")
    try:
        calendars = {
            f"n{i:05d}": f"n{i:05d}-{uuid.uuid4().hex[:6]}@bench.example" for i in range(resources)
        }
        for rid, calendar in calendars.items():
            emulator.add_calendar(calendar, time_zone="UTC")
            insert_events(emulator, calendar, CALENDAR_EVENTS, start=tomorrow())
            await running.register(env, rid, calendar)
        reader = running.events
        await reader.wait_for(
            lambda _: all(reader.per_key[r.encode()] >= CALENDAR_EVENTS for r in calendars),
            timeout=max(120.0, resources / 2),
        )
        say("every calendar synced")
    except BaseException:
        await stop_worker(running)
        raise
    return running, calendars


async def burst(bootstrap: str, topic: str, rids: list[str], count: int) -> float:
    """Produce ``count`` pushes round-robin over ``rids``; returns the seconds taken."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        began = time.perf_counter()
        futures = []
        for i in range(count):
            rid = rids[i % len(rids)]
            value = Notification(
                provider="google", resource_id=rid, reason="push", received_at=time.time()
            ).dumps()
            futures.append(await producer.send(topic, value, key=rid.encode()))
        await asyncio.gather(*futures)
        return time.perf_counter() - began
    finally:
        await producer.stop()


async def raw_drain(bootstrap: str, topic: str, count: int) -> float:
    """A fresh group reading ``count`` records of ``topic`` from the beginning."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-raw-notify-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        seen, began = 0, None
        while seen < count:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            if began is None and batches:
                began = time.perf_counter()
            seen += sum(len(records) for records in batches.values())
        await consumer.commit()
        return time.perf_counter() - (began or time.perf_counter())
    finally:
        await consumer.stop()


async def run(ctx: Context) -> Section:
    env, emulator, opts = ctx.env, ctx.emulator, ctx.opts
    running, calendars = await prepare(ctx, opts.notify_resources)
    rids, ours = list(calendars), set(calendars.values())
    settings = running.settings
    topic = settings.topic("notifications")
    try:
        before = await end_total(env.bootstrap, topic)
        mark = len(emulator.list_calls)
        pid = running.worker.pid
        cpu_before = process_cpu(pid) if pid else 0.0
        began = time.perf_counter()
        produce_s = await burst(env.bootstrap, topic, rids, opts.notifications)
        say(f"{opts.notifications:,} pushes produced in {produce_s:.2f} s")
        goal = before + opts.notifications
        deadline = time.monotonic() + max(300.0, opts.notifications / 100)
        admin = KafkaAdminClient(bootstrap_servers=env.bootstrap, client_id="bench-offsets")
        try:  # one client for the whole wait: polled every 0.1 s
            while await asyncio.to_thread(committed_total, admin, settings.app_id, topic) < goal:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the worker did not drain the burst:\n{running.worker.tail()}"
                    )
                await asyncio.sleep(0.1)
        finally:
            admin.close()
        drain_s = time.perf_counter() - began
        worker_cpu = (process_cpu(pid) if pid else 0.0) - cpu_before
        fetches = sum(
            1 for c in emulator.list_calls[mark:] if c.incremental and c.calendar_id in ours
        )
    finally:
        await stop_worker(running)
    say(f"drained in {drain_s:.2f} s; the raw baseline next")
    raw_s = await raw_drain(env.bootstrap, topic, goal)
    # the baseline read ``goal`` records (the registrations' too): scale it to the burst
    drain = Drain(
        notifications=opts.notifications,
        resources=len(rids),
        produce_s=produce_s,
        drain_s=drain_s,
        worker_cpu_s=worker_cpu,
        fetches=fetches,
        raw_s=raw_s * opts.notifications / goal,
    )
    return Section(report(drain), summary(drain))


def report(d: Drain) -> list[str]:
    return [
        f"A fresh worker owning {d.resources:,} synced Google calendars ({CALENDAR_EVENTS} "
        f"events each); {d.notifications:,} pushes for them, round-robin, produced to its "
        "`calsync.notifications` at once. Drained: every offset committed by the worker's "
        "group (commits every 0.5 s). Raw: an aiokafka consumer of a fresh group reading "
        "the same topic from the beginning, committing at the end.",
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| burst produced in | {d.produce_s:.2f} s |",
        f"| first send → drained by the worker | {d.drain_s:.2f} s |",
        f"| **notifications/s, one worker** | **{d.rate:,.0f}** |",
        f"| raw aiokafka consumption, records/s | {d.raw_rate:,.0f} |",
        f"| calsync ÷ raw | {d.rate / d.raw_rate:.1%} |",
        f"| worker CPU per 1,000 notifications | {1000 * d.worker_cpu_s / d.notifications:.3f} s |",
        f"| delta fetches of these calendars (coalescing) | {d.fetches:,} "
        f"({d.fetches / d.resources:.1f} per calendar, "
        f"{d.notifications / max(1, d.fetches):,.0f} pushes per fetch) |",
    ]


def summary(d: Drain) -> list[str]:
    return [
        f"| notifications/s, one worker, with coalescing | {d.rate:,.0f}/s = "
        f"{d.rate / d.raw_rate:.1%} of raw consumption ({d.raw_rate:,.0f}/s), "
        f"{d.fetches / d.resources:.1f} fetches per calendar | measured | — |"
    ]


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--notifications", type=int, default=50_000, help="pushes in the burst (%(default)s)"
    )
    group.add_argument("--notify-resources", type=int, default=200, help="calendars (%(default)s)")


def check(opts: argparse.Namespace) -> str | None:
    if opts.notifications < 1 or opts.notify_resources < 1:
        return "--notifications and --notify-resources ≥ 1"
    return None


BENCHMARK = Benchmark(
    "notifications",
    "Notifications per second per worker, with coalescing",
    run,
    add_arguments,
    check,
)
