"""Notifications per second per worker, with coalescing, next to plain aiokafka consuming
the same records on the same broker.

For each count in ``--notify-workers`` (1 unless given): that many fresh workers of one
app, each its own process and data dir as on separate machines, own
``--notify-resources`` synced Google calendars (a few events each). Then
``--notifications`` pushes for them, spread evenly and keyed by resource as the gateway
keys them, are produced to the app's ``calsync.notifications`` at once: a burst, as
after a provider's backlog or a gateway that buffered. Measured: from the first send to
the moment the workers' consumer group has committed every offset (the dispatcher
commits only finished work, every 0.5 s), the workers' CPU meanwhile, and how many delta
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
from benchmarks.harness.env import CLIENT_ID
from benchmarks.harness.google import insert_events, tomorrow
from benchmarks.harness.load import process_cpu
from benchmarks.harness.processes import register
from benchmarks.harness.records import TimedReader
from benchmarks.harness.report import Section
from calsync.streams.records import Notification
from calsync.streams.topics import topic_partitions
from calsync.testing.cluster import WorkerCluster


def say(message: str) -> None:
    print(f"[notifications] {message}", flush=True)


#: Events in each calendar (the delta fetches find nothing new: the cost is calsync's).
CALENDAR_EVENTS = 3


@dataclass(slots=True)
class Drain:
    workers: int
    notifications: int
    resources: int
    produce_s: float  # first send → every send acknowledged
    drain_s: float  # first send → every offset committed by the workers' group
    workers_cpu_s: float  # all the workers' CPU meanwhile
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


async def prepare(ctx: Context, workers: int) -> tuple[WorkerCluster, TimedReader, dict[str, str]]:
    """``workers`` fresh workers of one app (each its own data dir, as on separate
    machines), with ``--notify-resources`` calendars registered and synced: the
    started cluster, a reader of its events topic and each resource id's calendar id."""
    env, emulator, opts = ctx.env, ctx.emulator, ctx.opts
    settings = env.settings(
        f"notify{workers}",
        google_api_url=emulator.api_url,
        google_token_url=emulator.token_url,
        **LIFTED_QUOTA,
    )
    cluster = WorkerCluster(settings, workers)
    events = TimedReader(env.bootstrap, settings.topic("events"))
    try:
        began = time.monotonic()
        await asyncio.to_thread(cluster.start)
        await asyncio.to_thread(cluster.wait_balanced)
        say(f"{workers} worker(s) ready in {time.monotonic() - began:.1f} s")
        await events.start()
        refresh_token = emulator.issue_refresh_token(CLIENT_ID)
        calendars = {
            f"n{i:05d}": f"n{i:05d}-{uuid.uuid4().hex[:6]}@bench.example"
            for i in range(opts.notify_resources)
        }
        for rid, calendar in calendars.items():
            emulator.add_calendar(calendar, time_zone="UTC")
            insert_events(emulator, calendar, CALENDAR_EVENTS, start=tomorrow())
            await register(cluster.workers[0].url, env.admin_token, rid, calendar, refresh_token)
        await events.wait_for(
            lambda _: all(events.per_key[r.encode()] >= CALENDAR_EVENTS for r in calendars),
            timeout=max(120.0, len(calendars) / 2),
        )
        say("every calendar synced")
    except BaseException:
        await events.aclose()
        await asyncio.to_thread(cluster.stop)
        raise
    return cluster, events, calendars


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


async def drain_with(ctx: Context, workers: int) -> Drain:
    """One measurement: ``workers`` workers drain a burst; then the raw baseline."""
    env, emulator, opts = ctx.env, ctx.emulator, ctx.opts
    cluster, events, calendars = await prepare(ctx, workers)
    rids, ours = list(calendars), set(calendars.values())
    settings = cluster.settings
    topic = settings.topic("notifications")
    pids = [pid for w in cluster.workers if (pid := w.pid)]
    try:
        before = await end_total(env.bootstrap, topic)
        mark = len(emulator.list_calls)
        cpu_before = sum(process_cpu(pid) for pid in pids)
        began = time.perf_counter()
        produce_s = await burst(env.bootstrap, topic, rids, opts.notifications)
        say(f"{opts.notifications:,} pushes produced in {produce_s:.2f} s")
        goal = before + opts.notifications
        deadline = time.monotonic() + max(300.0, opts.notifications / 100)
        admin = KafkaAdminClient(bootstrap_servers=env.bootstrap, client_id="bench-offsets")
        try:  # one client for the whole wait: polled every 0.1 s
            while await asyncio.to_thread(committed_total, admin, settings.app_id, topic) < goal:
                if time.monotonic() > deadline:
                    tails = "\n".join(w.tail() for w in cluster.workers)
                    raise RuntimeError(f"the workers did not drain the burst:\n{tails}")
                await asyncio.sleep(0.1)
        finally:
            admin.close()
        drain_s = time.perf_counter() - began
        workers_cpu = sum(process_cpu(pid) for pid in pids) - cpu_before
        fetches = sum(
            1 for c in emulator.list_calls[mark:] if c.incremental and c.calendar_id in ours
        )
    finally:
        await events.aclose()
        await asyncio.to_thread(cluster.stop)
    say(f"{workers} worker(s) drained it in {drain_s:.2f} s; the raw baseline next")
    raw_s = await raw_drain(env.bootstrap, topic, goal)
    # the baseline read ``goal`` records (the registrations' too): scale it to the burst
    return Drain(
        workers=workers,
        notifications=opts.notifications,
        resources=len(rids),
        produce_s=produce_s,
        drain_s=drain_s,
        workers_cpu_s=workers_cpu,
        fetches=fetches,
        raw_s=raw_s * opts.notifications / goal,
    )


async def run(ctx: Context) -> Section:
    drains = [await drain_with(ctx, n) for n in ctx.opts.notify_workers]
    return Section(report(drains), summary(drains))


def report(drains: list[Drain]) -> list[str]:
    first = drains[0]
    lines = [
        f"N fresh workers of one app (each its own data dir, as on separate machines) "
        f"owning {first.resources} synced Google calendars ({CALENDAR_EVENTS} events each); "
        f"{first.notifications:,} pushes for them, round-robin, produced to the app's "
        "`calsync.notifications` at once. Drained: every offset committed by the workers' "
        "group (each commits every 0.5 s). Raw: an aiokafka consumer of a fresh group "
        "reading the same topic from the beginning after the workers stopped, committing "
        "at the end, measured right after each row's drain.",
        "",
        "| workers | burst produced in | first send → drained | **notifications/s** | "
        "per worker | raw aiokafka, records/s | calsync ÷ raw | workers' CPU per 1,000 "
        "notifications | delta fetches (coalescing) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for d in drains:
        lines.append(
            f"| {d.workers} | {d.produce_s:.2f} s | {d.drain_s:.2f} s | **{d.rate:,.0f}** | "
            f"{d.rate / d.workers:,.0f} | {d.raw_rate:,.0f} | {d.rate / d.raw_rate:.1%} | "
            f"{1000 * d.workers_cpu_s / d.notifications:.3f} s | {d.fetches:,} "
            f"({d.fetches / d.resources:.1f} per calendar, "
            f"{d.notifications / max(1, d.fetches):,.0f} pushes per fetch) |"
        )
    return lines


def summary(drains: list[Drain]) -> list[str]:
    rates = ", ".join(
        f"{d.rate:,.0f}/s with {d.workers} ({d.rate / d.raw_rate:.1%} of raw {d.raw_rate:,.0f}/s)"
        for d in drains
    )
    return [f"| notifications/s with coalescing, by workers | {rates} | measured | — |"]


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of counts: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"counts must be ≥ 1: {text!r}")
    return counts


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--notifications", type=int, default=50_000, help="pushes in the burst (%(default)s)"
    )
    group.add_argument("--notify-resources", type=int, default=200, help="calendars (%(default)s)")
    group.add_argument(
        "--notify-workers",
        type=_counts,
        default=[1],
        metavar="N[,N...]",
        help="worker counts, one drain each, e.g. 1,2,4 (1)",
    )


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
