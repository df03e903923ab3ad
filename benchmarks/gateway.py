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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

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
    rate: float = 0.0

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
    #: the rate sweep (``--rates``): every rate's raw, standalone and embedded runs
    sweep: list[GatewayRun] = field(default_factory=list)
    sweep_duration: float = 0.0
    #: the load generator's HTTP client (``--gateway-client``)
    client: str = "aiohttp"
    #: paths that could not be measured, and why
    failures: list[str] = field(default_factory=list)

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
    pid: int | Sequence[int],
    opts: argparse.Namespace,
    *,
    targeted: bool,
    rate: float = 0.0,
) -> GatewayRun:
    """Run ``work`` (at ``rate``, ``opts.rate`` unless given); its result and the CPU
    milliseconds per request sent of ``pid`` (of every one, if several)."""
    pids = [pid] if isinstance(pid, int) else list(pid)
    before = sum(process_cpu(p) for p in pids)
    result = await work()
    spent = sum(process_cpu(p) for p in pids) - before
    rate = rate or opts.rate
    requests = int((opts.warmup + opts.duration) * rate)
    return GatewayRun(label, result, spent / requests * 1000, targeted, rate)


def notifications(rate: float, duration: float, warmup: float) -> tuple[list[bytes], list[bytes]]:
    """Keys and values the raw baseline produces at ``rate``: the notifications the
    gateway would write for the same pushes."""
    total = int((warmup + duration) * rate)
    keys = [f"bench-gw-{i % RESOURCES:02d}".encode() for i in range(total)]
    now = time.time()
    values = [
        Notification(
            provider="google",
            resource_id=key.decode(),
            reason=Reason.PUSH.value,
            received_at=now + i / rate,
            channel_id=CHANNEL,
            message_number=1000 + i % RESOURCES,
        ).dumps()
        for i, key in enumerate(keys)
    ]
    return keys, values


async def three_paths(
    ctx: Context,
    rate: float,
    duration: float,
    headers: list[dict[str, str]],
    failures: list[str],
) -> list[GatewayRun]:
    """Raw ``send_and_wait``, the standalone gateway in this process and the gateway
    embedded in the shared worker, each at ``rate`` for ``duration`` s (after the warm-up).
    A worker that cannot be reached is noted in ``failures`` (with its log's tail)."""
    env, worker, opts = ctx.env, ctx.worker, ctx.opts
    keys, values = notifications(rate, duration, opts.warmup)
    schedule = load_spec(opts, rate, duration)
    timing = replace_opts(opts, rate=rate, duration=duration)
    runs: list[GatewayRun] = []

    # Raw baseline: same keys, same-size values, same rate, same producer configuration.
    async with raw_producer(env, "gateway") as (producer, raw_topic):

        async def produce(i: int) -> bool:
            await producer.send_and_wait(raw_topic, values[i], key=keys[i])
            return True

        def raw_load() -> Awaitable[LoadResult]:
            # scheduled as the HTTP load generator schedules its requests
            precise = opts.gateway_client == "lean"
            return open_loop(
                produce, rate=rate, duration=duration, warmup=opts.warmup, precise=precise
            )

        label = "raw baseline: `AIOKafkaProducer.send_and_wait`"
        runs.append(await measured(label, raw_load, os.getpid(), timing, targeted=False))

    # The standalone gateway, served by this process; the client is another process.
    settings = env.settings("gateway")
    async with serve_gateway(settings, "127.0.0.1", settings.web_port) as base:
        url = f"{base}/webhooks/google"
        label = "standalone gateway (aiohttp + `KafkaPublisher`)"
        runs.append(
            await measured(
                label, lambda: http_load(url, headers, schedule), os.getpid(), timing, targeted=True
            )
        )

    # The gateway inside a worker (its sync agent consumes the notifications meanwhile).
    url = f"{worker.worker.url}/webhooks/google"
    pid = worker.worker.pid
    label = "gateway embedded in a worker subprocess"
    if pid is None or not worker.worker.running:
        failures.append(f"{rate:g}/s, {label}: the worker is not running\n{worker.worker.tail(30)}")
        return runs
    try:
        runs.append(
            await measured(
                label, lambda: http_load(url, headers, schedule), pid, timing, targeted=True
            )
        )
    except RuntimeError as exc:  # the rest of the sweep still counts
        failures.append(f"{rate:g}/s, {label}: {exc}\n{worker.worker.tail(30)}")
    return runs


async def processes_path(
    ctx: Context, rate: float, duration: float, headers: list[dict[str, str]]
) -> GatewayRun:
    """``calsync gateway --processes N`` (``--gateway-processes``) at ``rate``: N
    processes sharing the port; CPU is all of theirs."""
    env, opts = ctx.env, ctx.opts
    n = opts.gateway_processes
    gateway = GatewayProcess(replace(env.settings("gateway"), web_port=free_port()), processes=n)
    await asyncio.to_thread(gateway.start)
    try:
        await asyncio.sleep(2.0)  # the helpers start after the primary answers
        schedule = load_spec(opts, rate, duration)
        timing = replace_opts(opts, rate=rate, duration=duration)
        return await measured(
            f"standalone gateway, {n} processes (`calsync gateway --processes {n}`)",
            lambda: http_load(f"{gateway.url}/webhooks/google", headers, schedule),
            gateway.pids(),
            timing,
            targeted=True,
            rate=rate,
        )
    finally:
        await asyncio.to_thread(gateway.stop)


def load_spec(opts: argparse.Namespace, rate: float, duration: float) -> dict[str, Any]:
    """The load generator's schedule at ``rate`` for ``duration`` s, with the chosen
    client (``--gateway-client``)."""
    return {
        "rate": rate,
        "duration": duration,
        "warmup": opts.warmup,
        "client": opts.gateway_client,
    }


def replace_opts(opts: argparse.Namespace, **values: float) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(opts), **values})


async def run(ctx: Context) -> Section:
    env, worker, opts = ctx.env, ctx.worker, ctx.opts
    headers = push_headers(env.secret_key)
    failures: list[str] = []
    runs = await three_paths(ctx, opts.rate, opts.duration, headers, failures)
    schedule = load_spec(opts, opts.rate, opts.duration)

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

    sweep: list[GatewayRun] = []
    for rate in opts.rates:
        sweep += await three_paths(ctx, rate, opts.sweep_duration, headers, failures)
        if opts.gateway_processes > 1:
            try:
                sweep.append(await processes_path(ctx, rate, opts.sweep_duration, headers))
            except RuntimeError as exc:
                failures.append(f"{rate:g}/s, {opts.gateway_processes} processes: {exc}")

    _, values = notifications(opts.rate, opts.duration, opts.warmup)
    results = GatewayResults(
        rate=opts.rate,
        duration=opts.duration,
        warmup=opts.warmup,
        record_bytes=statistics.fmean(len(v) for v in values),
        runs=runs,
        sweep=sweep,
        sweep_duration=opts.sweep_duration,
        client=opts.gateway_client,
        failures=failures,
    )
    return Section(report(results), summary(results))


def report(r: GatewayResults) -> list[str]:
    raw_p99 = r.raw.p99
    lines = [
        f"Open loop: {r.rate:g} requests/s for {r.duration:g} s after a {r.warmup:g} s "
        "warm-up (not counted). Request *i* is due at a fixed time and its latency runs "
        "from that time, so a stall delays (and is counted in) every request due during it. "
        f"Each request is a signed Google push (`POST /webhooks/google`, {RESOURCES} "
        "resource ids in turn) that the gateway answers 202 after writing one "
        f"~{r.record_bytes:.0f}-byte notification with `acks=all` and idempotence. The HTTP "
        f"load generator is a separate process (`benchmarks/openloop.py`, {r.client} "
        "client); the baseline calls `send_and_wait` of the same keys and same-size values "
        "on the same broker in this process, with the same open-loop schedule. The "
        "resources are not registered, so the worker's sync agent only looks each "
        "notification up and logs it (log level `info`, the default). CPU per request is "
        "the serving process's user + system time (all its threads) over the run, warm-up "
        "included, divided by the requests sent.",
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
    if r.sweep:
        lines += ["", *sweep_report(r)]
    if r.failures:
        lines += ["", "**Not measured:**", ""]
        for failure in r.failures:
            head, _, tail = failure.partition("\n")
            lines.append(f"- {head}")
            if tail:
                lines += ["", "```", tail.strip()[-3000:], "```", ""]
    return lines


def sweep_report(r: GatewayResults) -> list[str]:
    """The rate sweep: each path at each rate, and the highest rate each sustained."""
    lines = [
        f"**Rate sweep**, open loop, {r.sweep_duration:g} s per rate after a {r.warmup:g} s "
        "warm-up, the same pushes and baseline as above. *Sustained*: p99 within the "
        f"{P99_TARGET_MS:g} ms target and no request failed. *Capacity per core*: 1,000 ms "
        "divided by the serving process's CPU ms per request (for the raw baseline: this "
        "benchmark's process, which runs the producer), an estimate of the requests/s one "
        "fully busy core would carry. The load generator is one Python "
        f"process ({r.client} client) on the same machine as the broker and the server; "
        "at the higher rates it is itself late (its lateness is included).",
        "",
        "| rate /s | path | p50 ms | p95 ms | p99 ms | max ms | errors | p99 / raw p99 "
        "| CPU ms / request | capacity per core /s | sustained |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    raw_p99 = {run.rate: run.p99 for run in r.sweep if not run.targeted}
    for run in r.sweep:
        base = raw_p99.get(run.rate, float("nan"))
        capacity = 1000 / run.cpu_ms_per_request if run.cpu_ms_per_request > 0 else float("nan")
        lines.append(
            f"| {run.rate:,.0f} | {run.label.split(' (')[0].split(':')[0]} "
            f"| {latency_cells(run.result.latencies_ms)} | {run.failed} "
            f"| {run.p99 / base:.2f}x | {run.cpu_ms_per_request:.2f} | {capacity:,.0f} "
            f"| {'yes' if run.ok else 'no'} |"
        )
    lines.append("")
    for run in r.sweep:
        if run.result.failures:
            fails = ", ".join(f"{k}: {v}" for k, v in sorted(run.result.failures.items()))
            lines.append(f"- {run.rate:,.0f}/s, {run.label.split(' (')[0]}: failures {fails}")
    for label in dict.fromkeys(run.label for run in r.sweep):
        held = [run.rate for run in r.sweep if run.label == label and run.ok]
        short = label.split(" (")[0].split(":")[0]
        lines.append(
            f"- {short}: highest rate sustained {max(held):,.0f}/s"
            if held
            else f"- {short}: sustained none of the rates"
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
    group.add_argument(
        "--rates",
        type=_rates,
        default=[],
        help="a rate sweep after the main run, e.g. 200,500,1000,2000 (none by default)",
    )
    group.add_argument(
        "--sweep-duration", type=float, default=60.0, help="measured s per rate (%(default)s)"
    )
    group.add_argument(
        "--gateway-processes",
        type=int,
        default=0,
        help="in the sweep, also `calsync gateway --processes N` (none by default)",
    )
    group.add_argument(
        "--gateway-client",
        choices=("aiohttp", "lean"),
        default="aiohttp",
        help="the load generator's HTTP client: aiohttp's (the default, as in earlier "
        "runs) or benchmarks.openloop.LeanClient, which spends a few microseconds per "
        "request where aiohttp's spends about a millisecond",
    )


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of rates: {text!r}") from None
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError("rates must be positive")
    return rates


def check(opts: argparse.Namespace) -> str | None:
    if opts.rate <= 0 or opts.duration <= 0 or opts.warmup < 0 or opts.sweep_duration <= 0:
        return "--rate, --duration and --sweep-duration must be positive, --warmup not negative"
    return None


BENCHMARK = Benchmark(
    "gateway", "Gateway: push → 202 latency", run, add_arguments, check, shares_worker=True
)
