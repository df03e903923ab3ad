"""calsync's performance targets, measured next to a raw baseline on the same broker.

``python -m benchmarks.run`` runs every benchmark; ``python -m benchmarks.run gateway push``
runs those. The benchmarks on the broker share one real Kafka broker (Kafka from
``ci/kafka``, see :mod:`calsync.testing.broker`), the Google emulator in-process and calsync
workers as subprocesses; then ``docs/benchmarks.md`` is overwritten with the machine, the
command and one section per benchmark, numbered in this order:

1. :mod:`benchmarks.gateway`: push → 202 latency, open loop. Target: p99 ≤ 10 ms.
2. :mod:`benchmarks.push`: push → event latency. Target: p99 ≤ 250 ms.
3. :mod:`benchmarks.fullsync`: full sync events/s. Target: ≥ 50 % of raw aiokafka.
4. :mod:`benchmarks.codec`: avro vs fastavro per record (no broker).
5. :mod:`benchmarks.takeover`: SIGKILL one of two workers; kill → first event from a
   moved partition and kill → converged, with and without standby replicas.
6. :mod:`benchmarks.availability`: the availability index of 10,000 resources x 200
   intervals: free-slot query p99 (target ≤ 5 ms on the owning worker), hold decisions/s,
   memory per million intervals, index build time from the changelog.
7. :mod:`benchmarks.scale`: N workers, R calendars across Google, Microsoft and Radicale,
   edits and one fault (``--fault none|kill|add|429|410|drop|down|revoke|diskfull``);
   initial sync, fault → resumed and → converged, and a truth check of
   ``calsync.events`` (differences must be 0). A plain run includes it at the issue's
   size (10,000 resources), which takes long: name the others to leave it out, or give
   it ``--resources``.
8. :mod:`benchmarks.notifications`: a burst of pushes for synced calendars drained by one
   worker (or by each count of ``--notify-workers``): notifications/s and fetches per
   calendar (coalescing), next to raw aiokafka consumption of the same records.

Each module declares a :class:`~benchmarks.harness.benchmark.Benchmark`; what they share
(processes, readers, baselines' producers, the machine's load, the report) is
:mod:`benchmarks.harness`. It reports, it does not gate: the exit status is 0 when every
benchmark ran (targets met or not) and 1 when one could not run (the document then says
which and why). Each section ends with how busy the machine was meanwhile and how much of
that was other processes (from ``/proc``), since a shared machine moves tails far more than
any code change. ``--help`` lists the sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import (
    availability,
    codec,
    fullsync,
    gateway,
    notifications,
    push,
    scale,
    takeover,
)
from benchmarks.harness.benchmark import Benchmark, Context
from benchmarks.harness.env import CLIENT_ID, CLIENT_SECRET, ROOT, Env
from benchmarks.harness.google import TimedGoogleEmulator
from benchmarks.harness.load import Load, cpu_sample, load_between
from benchmarks.harness.processes import start_worker, stop_worker
from benchmarks.harness.report import (
    LOAD_AVERAGE,
    Outcome,
    Section,
    load_average,
    machine,
    render,
)
from calsync.testing.broker import KafkaBroker

DEFAULT_OUTPUT = ROOT / "docs" / "benchmarks.md"
#: Every benchmark, in the report's order.
BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        gateway.BENCHMARK,
        push.BENCHMARK,
        fullsync.BENCHMARK,
        codec.BENCHMARK,
        takeover.BENCHMARK,
        availability.BENCHMARK,
        scale.BENCHMARK,
        notifications.BENCHMARK,
    )
}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def outcome(
    benchmark: Benchmark,
    section: Section | None,
    *,
    error: str | None = None,
    load: Load | None = None,
) -> Outcome:
    number = list(BENCHMARKS).index(benchmark.name) + 1
    return Outcome(number, benchmark.name, benchmark.title, section, error, load)


class Runner:
    """Runs the chosen benchmarks and keeps each one's :class:`Outcome`."""

    def __init__(self, chosen: Sequence[Benchmark], opts: argparse.Namespace) -> None:
        self.chosen = list(chosen)
        self.opts = opts
        self.outcomes: dict[str, Outcome] = {}

    def failed(self, benchmark: Benchmark, error: str) -> None:
        self.outcomes.setdefault(benchmark.name, outcome(benchmark, None, error=error))

    async def guarded(self, benchmark: Benchmark, ctx: Context) -> None:
        """Run one benchmark; an exception is recorded (and printed), not raised."""
        log(f"{benchmark.name} ...")
        began, before = time.monotonic(), cpu_sample()
        try:
            section = await benchmark.run(ctx)
        except Exception:
            error = traceback.format_exc()
            log(f"{benchmark.name} FAILED:\n{error}")
            self.failed(benchmark, error)
            return
        seconds = time.monotonic() - began
        load = load_between(before, cpu_sample(), seconds)
        self.outcomes[benchmark.name] = outcome(benchmark, section, load=load)
        log(f"{benchmark.name} done in {seconds:.1f} s")

    async def with_broker(self, env: Env) -> None:
        """The benchmarks on the broker; the latency ones share a worker, started first."""
        emulator = TimedGoogleEmulator()
        await emulator.start()
        ctx = Context(self.opts, env, emulator)
        try:
            emulator.add_client(CLIENT_ID, CLIENT_SECRET)
            sharing = [b for b in self.chosen if b.broker and b.shares_worker]
            if sharing:
                log("starting worker ...")
                try:
                    ctx.worker_ = await start_worker(env, emulator, "latency")
                except Exception:
                    for b in sharing:
                        self.failed(b, traceback.format_exc())
                if ctx.worker_ is not None:
                    try:
                        for b in sharing:
                            await self.guarded(b, ctx)
                    finally:
                        await stop_worker(ctx.worker_)
                        ctx.worker_ = None
            for b in self.chosen:
                if b.broker and not b.shares_worker:
                    await self.guarded(b, ctx)
        finally:
            await emulator.aclose()

    async def without_broker(self) -> None:
        ctx = Context(self.opts)
        for b in self.chosen:
            if not b.broker:
                await self.guarded(b, ctx)

    def run(self, workdir: Path) -> list[Outcome]:
        if any(b.broker for b in self.chosen):
            log("starting Kafka ...")
            try:
                with KafkaBroker() as broker:
                    env = Env(broker.bootstrap, workdir, self.opts.partitions, broker=broker)
                    asyncio.run(self.with_broker(env))
            except Exception:
                error = traceback.format_exc()
                for b in self.chosen:
                    if b.broker:
                        self.failed(b, error)
        if not all(b.broker for b in self.chosen):
            asyncio.run(self.without_broker())
        return sorted(self.outcomes.values(), key=lambda o: o.number)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Measure calsync against raw aiokafka on one broker; write the report.",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="benchmark",
        help=f"the benchmarks to run, of {', '.join(BENCHMARKS)} (all when none is named)",
    )
    # The former spelling of the positional names, still accepted.
    parser.add_argument("--only", nargs="+", default=[], help=argparse.SUPPRESS)
    for number, b in enumerate(BENCHMARKS.values(), 1):
        b.add_arguments(parser.add_argument_group(f"{number}. {b.name}: {b.title}"))
    parser.add_argument(
        "--partitions", type=int, default=8, help="partitions per topic (%(default)s)"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="report file")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work dir (worker logs, RocksDB)"
    )
    opts = parser.parse_args(argv)
    opts.names = list(dict.fromkeys([*opts.names, *opts.only])) or list(BENCHMARKS)
    unknown = [name for name in opts.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"no benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    for name in opts.names:
        problem = BENCHMARKS[name].check(opts)
        if problem:
            parser.error(problem)
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    opts = parse_args(args)
    command = " ".join(["python -m benchmarks.run", *map(shlex.quote, args)])
    started = datetime.now(UTC)
    began = time.monotonic()
    info = machine()  # before the run: the revision measured, not one committed meanwhile
    chosen = [b for name, b in BENCHMARKS.items() if name in opts.names]
    workdir = Path(tempfile.mkdtemp(prefix="calsync-bench-"))
    try:
        outcomes = Runner(chosen, opts).run(workdir)
    finally:
        if opts.keep:
            log(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.monotonic() - began
    info[LOAD_AVERAGE] = load_average()
    text = render(outcomes, info, command, started, seconds)
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(text, encoding="utf-8")
    print(text)
    log(f"wrote {opts.output} in {seconds:.0f} s")
    return 1 if any(o.error for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
