"""What a benchmark module declares, and what :mod:`benchmarks.run` runs it with.

Each benchmark module (:mod:`benchmarks.gateway`, ...) has one :class:`Benchmark`,
``BENCHMARK``: its name on the command line, its section title, its options and an async
``run(context) -> Section`` that measures (raw baseline included) and writes its section.
``run`` raises when the benchmark cannot run; the runner records that in the report and
goes on with the next.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from benchmarks.harness.env import Env
from benchmarks.harness.google import TimedGoogleEmulator
from benchmarks.harness.processes import RunningWorker
from benchmarks.harness.report import Section


def _no_check(opts: argparse.Namespace) -> str | None:
    return None


@dataclass(slots=True)
class Context:
    """What a benchmark runs with: the parsed options and, for those on the broker, the
    run's :class:`Env` and in-process Google emulator, and the worker the latency
    benchmarks share (started once for all of them, see :attr:`Benchmark.shares_worker`)."""

    opts: argparse.Namespace
    env_: Env | None = None
    emulator_: TimedGoogleEmulator | None = None
    worker_: RunningWorker | None = field(default=None)

    @property
    def env(self) -> Env:
        if self.env_ is None:
            raise RuntimeError("this benchmark needs the broker (declare broker=True)")
        return self.env_

    @property
    def emulator(self) -> TimedGoogleEmulator:
        if self.emulator_ is None:
            raise RuntimeError("this benchmark needs the broker (declare broker=True)")
        return self.emulator_

    @property
    def worker(self) -> RunningWorker:
        if self.worker_ is None:
            raise RuntimeError("no shared worker (declare shares_worker=True)")
        return self.worker_


@dataclass(frozen=True, slots=True)
class Benchmark:
    """One benchmark: ``python -m benchmarks.run <name>`` runs it alone."""

    name: str
    title: str  # the report's section heading, after its number
    run: Callable[[Context], Awaitable[Section]]
    #: Adds this benchmark's options to their own group of the command line.
    add_arguments: Callable[[argparse._ArgumentGroup], None]
    #: An error message when the options are out of range, else None.
    check: Callable[[argparse.Namespace], str | None] = _no_check
    broker: bool = True  # needs the Kafka broker and the emulator
    shares_worker: bool = False  # runs against the worker started once for the latency runs
