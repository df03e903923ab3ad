"""Push → event latency: a registered, synced Google calendar is patched (with a push) at
a fixed spacing; each patch is timed until its event record is received from the events
topic, next to the event's own ``latency_ms`` and a breakdown (push answered, list call
arrived, emulator service time), plus one raw produce → consume hop for reference.
Target: p99 ≤ 250 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from benchmarks import codec
from benchmarks.harness.benchmark import Benchmark, Context
from benchmarks.harness.env import Env, raw_producer
from benchmarks.harness.google import event_time, insert_events, tomorrow
from benchmarks.harness.records import Seen, TimedReader
from benchmarks.harness.report import Section, latency_cells, ms, verdict
from benchmarks.openloop import summarize
from calsync.codecs.avro import decode_event, encode_event
from calsync.model import ChangeKind, UnifiedEvent

P99_TARGET_MS = 250.0


@dataclass(slots=True)
class PushResults:
    patches: int
    spacing: float
    warmup: int
    calendar_events: int
    received_ms: list[float] = field(default_factory=list)  # patch → record received by us
    created_ms: list[float] = field(default_factory=list)  # patch → record CreateTime
    latency_field_ms: list[float] = field(default_factory=list)  # the event's latency_ms
    delivered_ms: list[float] = field(default_factory=list)  # patch → push answered
    list_arrived_ms: list[float] = field(default_factory=list)  # patch → incremental list
    list_service_ms: list[float] = field(default_factory=list)  # emulator's list service time
    lost: int = 0
    raw_hop_ms: list[float] = field(default_factory=list)  # raw produce → consume hop

    @property
    def p99(self) -> float:
        return summarize(self.received_ms)["p99"]

    @property
    def ok(self) -> bool:
        return self.p99 <= P99_TARGET_MS and not self.lost


async def paced(count: int, spacing: float) -> AsyncIterator[int]:
    """``0 .. count - 1``, item ``i`` no earlier than ``i * spacing`` s after the first."""
    loop = asyncio.get_running_loop()
    begin = loop.time()
    for i in range(count):
        delay = begin + i * spacing - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        yield i


async def raw_hop(env: Env, samples: int, spacing: float) -> list[float]:
    """One produce → consume hop on the same broker, timed like the patches are."""
    sent: dict[bytes, float] = {}
    async with raw_producer(env, "hop") as (producer, topic):
        reader = TimedReader(env.bootstrap, topic)
        await reader.start()
        stop = asyncio.Event()
        polling = asyncio.create_task(reader.poll_until(stop))
        try:
            value = encode_event(codec.realistic_events(1)[0])
            async for i in paced(samples, spacing):
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
            await reader.aclose()
    return [(r.received - sent[r.key]) * 1000 for r in reader.records if r.key in sent]


async def run(ctx: Context) -> Section:
    env, emulator, worker, opts = ctx.env, ctx.emulator, ctx.worker, ctx.opts
    resource_id = "bench-push"
    calendar = f"push-{uuid.uuid4().hex[:6]}@bench.example"
    emulator.add_calendar(calendar, time_zone="UTC")
    base = tomorrow()
    ids = insert_events(emulator, calendar, opts.push_calendar_events, start=base)
    reader = worker.events
    key = resource_id.encode()
    await worker.register(env, resource_id, calendar)
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
    patched: list[tuple[str, datetime, float]] = []  # event id, new start, time.time()
    try:
        async for i in paced(opts.push_warmup + opts.patches, opts.patch_spacing):
            event_id = ids[i % len(ids)]
            start = base + timedelta(days=2, minutes=15 * i)
            at = time.time()
            emulator.patch_event(calendar, event_id, event_time(start), notify=True)
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
    results = PushResults(opts.patches, opts.patch_spacing, opts.push_warmup, len(ids))
    for event_id, start, at in patched[opts.push_warmup :]:
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
    return Section(report(results), summary(results))


def report(r: PushResults) -> list[str]:
    hop_p99 = summarize(r.raw_hop_ms)["p99"]
    rows = [
        ("patch → event record created (worker producer timestamp)", r.created_ms),
        ("event `latency_ms` field (gateway receipt → emission)", r.latency_field_ms),
        ("patch → push answered 202 (emulator delivery log)", r.delivered_ms),
        ("patch → worker's incremental `events.list` reaches the emulator", r.list_arrived_ms),
        ("emulator `events.list` service time (excluded by construction)", r.list_service_ms),
    ]
    return [
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
        f"| {latency_cells(r.received_ms)} | {r.p99 / hop_p99:.1f}x "
        f"| p99 ≤ {P99_TARGET_MS:g} ms | {verdict(r.ok)} |",
        *(f"| {label} | {len(v)} | {latency_cells(v)} | | | |" for label, v in rows),
        f"| raw baseline: one aiokafka produce (`acks=all`) → consume hop "
        f"| {len(r.raw_hop_ms)} | {latency_cells(r.raw_hop_ms)} | 1.0x | — | — |",
        "",
        f"Patches whose event never arrived within 30 s: {r.lost}. The path has two Kafka "
        "hops (notification, event) plus the push and the list call, so the raw hop is a "
        "floor per hop, not an equal-work baseline.",
    ]


def summary(r: PushResults) -> list[str]:
    return [f"| push → event p99 | {ms(r.p99)} ms | ≤ {P99_TARGET_MS:g} ms | {verdict(r.ok)} |"]


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--patches", type=int, default=100, help="measured patches (%(default)s)")
    group.add_argument("--push-warmup", type=int, default=5, help="warm-up patches (%(default)s)")
    group.add_argument("--patch-spacing", type=float, default=0.3, help="s apart (%(default)s)")
    group.add_argument(
        "--push-calendar-events", type=int, default=20, help="calendar size (%(default)s)"
    )


def check(opts: argparse.Namespace) -> str | None:
    return "--patches must be ≥ 1" if opts.patches < 1 else None


BENCHMARK = Benchmark("push", "Push → event latency", run, add_arguments, check, shares_worker=True)
