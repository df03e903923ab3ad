"""Gateway push → 202 latency, open loop, next to plain aiokafka ``send_and_wait``.

The open-loop load generator (:mod:`benchmarks.openloop`, a process of its own) sends
signed Google pushes at a fixed rate to the standalone gateway (aiohttp +
:class:`~calsync.gateway.publisher.KafkaPublisher`, in this process) and to the gateway
embedded in the shared worker subprocess; the raw baseline is
``AIOKafkaProducer(acks="all", enable_idempotence=True).send_and_wait`` of same-size records
at the same rate. Target: p99 ≤ 10 ms. A diagnostic row runs the standalone gateway as a
process of its own (:mod:`benchmarks.gateway_proc`) while the worker consumes its
notifications, and every row shows the serving process's CPU per request, to tell the
process boundary from sharing a process with Faust.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from benchmarks.harness.benchmark import Benchmark, Context
from benchmarks.harness.env import free_port, raw_producer
from benchmarks.harness.load import process_cpu
from benchmarks.harness.processes import GatewayProcess, http_load, serve_gateway
from benchmarks.harness.report import Section, latency_cells, ms, verdict
from benchmarks.openloop import LoadResult, open_loop, summarize
from calsync.crypto import WebhookSigner
from calsync.streams.records import Notification, Reason

P99_TARGET_MS = 10.0
#: Distinct resource ids the gateway benchmark spreads its pushes over.
RESOURCES = 64
CHANNEL = "cs-bench-gateway"


@dataclass(slots=True)
class GatewayRun:
    """One open-loop run and the CPU its server (or producer) process spent per request."""

    label: str
    result: LoadResult
    cpu_ms_per_request: float
    targeted: bool  # whether the gateway p99 target applies (not to baselines, diagnostics)

    @property
    def p99(self) -> float:
        return summarize(self.result.latencies_ms)["p99"]

    @property
    def failed(self) -> int:
        return sum(self.result.failures.values())

    @property
    def ok(self) -> bool:
        return self.p99 <= P99_TARGET_MS and not self.failed


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


def push_headers(secret_key: str) -> list[dict[str, str]]:
    """Signed Google push headers, one per resource id, channel tokens valid for an hour."""
    signer = WebhookSigner(secret_key)
    return [
        {
            "X-Goog-Channel-ID": CHANNEL,
            "X-Goog-Channel-Token": signer.channel_token(
                CHANNEL,
                f"bench-gw-{k:02d}",
                expires_at_ms=int((time.time() + 3600) * 1000),
            ),
            "X-Goog-Resource-State": "exists",
            "X-Goog-Resource-ID": "bench-gateway",
            "X-Goog-Message-Number": str(1000 + k),
        }
        for k in range(RESOURCES)
    ]


async def measured(
    label: str,
    work: Callable[[], Awaitable[LoadResult]],
    pid: int,
    opts: argparse.Namespace,
    *,
    targeted: bool,
) -> GatewayRun:
    """Run ``work``; its result and ``pid``'s CPU milliseconds per request sent."""
    before = process_cpu(pid)
    result = await work()
    spent = process_cpu(pid) - before
    requests = int((opts.warmup + opts.duration) * opts.rate)
    return GatewayRun(label, result, spent / requests * 1000, targeted)


async def run(ctx: Context) -> Section:
    env, worker, opts = ctx.env, ctx.worker, ctx.opts
    total = int((opts.warmup + opts.duration) * opts.rate)
    keys = [f"bench-gw-{i % RESOURCES:02d}".encode() for i in range(total)]
    now = time.time()
    values = [
        Notification(
            provider="google",
            resource_id=key.decode(),
            reason=Reason.PUSH.value,
            received_at=now + i / opts.rate,
            channel_id=CHANNEL,
            message_number=1000 + i % RESOURCES,
        ).dumps()
        for i, key in enumerate(keys)
    ]
    headers = push_headers(env.secret_key)
    schedule = {"rate": opts.rate, "duration": opts.duration, "warmup": opts.warmup}
    runs: list[GatewayRun] = []

    # Raw baseline: same keys, same-size values, same rate, same producer configuration.
    async with raw_producer(env, "gateway") as (producer, raw_topic):

        async def produce(i: int) -> bool:
            await producer.send_and_wait(raw_topic, values[i], key=keys[i])
            return True

        def raw_load() -> Awaitable[LoadResult]:
            return open_loop(produce, **schedule)

        label = "raw baseline: `AIOKafkaProducer.send_and_wait`"
        runs.append(await measured(label, raw_load, os.getpid(), opts, targeted=False))

    # The standalone gateway, served by this process; the client is another process.
    settings = env.settings("gateway")
    async with serve_gateway(settings, "127.0.0.1", settings.web_port) as base:
        url = f"{base}/webhooks/google"
        label = "standalone gateway (aiohttp + `KafkaPublisher`)"
        runs.append(
            await measured(
                label, lambda: http_load(url, headers, schedule), os.getpid(), opts, targeted=True
            )
        )

    # The gateway inside a worker (its sync agent consumes the notifications meanwhile).
    url = f"{worker.worker.url}/webhooks/google"
    pid = worker.worker.pid
    if pid is None:
        raise RuntimeError("the worker is not running")
    label = "gateway embedded in a worker subprocess"
    runs.append(
        await measured(label, lambda: http_load(url, headers, schedule), pid, opts, targeted=True)
    )

    # Diagnostic: the same standalone gateway as a process of its own, while the worker
    # (same topics) consumes what it writes: the process boundary without sharing a process
    # with Faust.
    gateway = GatewayProcess(replace(worker.settings, web_port=free_port()))
    await asyncio.to_thread(gateway.start)
    try:
        url = f"{gateway.url}/webhooks/google"
        assert gateway.process is not None
        label = "diagnostic: standalone gateway as its own process, the worker consuming"
        runs.append(
            await measured(
                label,
                lambda: http_load(url, headers, schedule),
                gateway.process.pid,
                opts,
                targeted=False,
            )
        )
    finally:
        await asyncio.to_thread(gateway.stop)

    results = GatewayResults(
        rate=opts.rate,
        duration=opts.duration,
        warmup=opts.warmup,
        record_bytes=statistics.fmean(len(v) for v in values),
        runs=runs,
    )
    return Section(report(results), summary(results))


def report(r: GatewayResults) -> list[str]:
    raw_p99 = r.raw.p99
    lines = [
        f"Open loop: {r.rate:g} requests/s for {r.duration:g} s after a {r.warmup:g} s warm-up "
        "(not counted). Request *i* is due at a fixed time and its latency runs from that "
        "time, so a stall delays (and is counted in) every request due during it. Each request "
        f"is a signed Google push (`POST /webhooks/google`, {RESOURCES} resource ids "
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
        ratio = run.p99 / raw_p99 if raw_p99 > 0 else float("nan")
        target = f"p99 ≤ {P99_TARGET_MS:g} ms" if run.targeted else "—"
        lines.append(
            f"| {run.label} | {len(result.latencies_ms)}/{result.sent} "
            f"| {latency_cells(result.latencies_ms)} | {run.failed} "
            f"| {ratio:.2f}x | {run.cpu_ms_per_request:.2f} | {target} "
            f"| {verdict(run.ok) if run.targeted else '—'} |"
        )
    lines.append("")
    for run in r.runs:
        lag = summarize(run.result.lag_ms)
        fails = ", ".join(f"{k}: {v}" for k, v in sorted(run.result.failures.items()))
        lines.append(
            f"- {run.label.split(':')[0]}: the generator started requests late by p99 "
            f"{ms(lag['p99'])} ms, max {ms(lag['max'])} ms (included above); "
            f"failures: {fails or 'none'}"
        )
    return lines


def summary(r: GatewayResults) -> list[str]:
    raw = r.raw.p99
    return [
        f"| push → 202 p99, {run.label.split(' (')[0]} | {ms(run.p99)} ms "
        f"({run.p99 / raw:.1f}x raw {ms(raw)} ms) | ≤ {P99_TARGET_MS:g} ms "
        f"| {verdict(run.ok)} |"
        for run in r.runs
        if run.targeted
    ]


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--rate", type=float, default=200.0, help="requests/s (%(default)s)")
    group.add_argument("--duration", type=float, default=10.0, help="measured s (%(default)s)")
    group.add_argument("--warmup", type=float, default=2.0, help="warm-up s (%(default)s)")


def check(opts: argparse.Namespace) -> str | None:
    if opts.rate <= 0 or opts.duration <= 0 or opts.warmup < 0:
        return "--rate and --duration must be positive, --warmup not negative"
    return None


BENCHMARK = Benchmark(
    "gateway", "Gateway: push → 202 latency", run, add_arguments, check, shares_worker=True
)
