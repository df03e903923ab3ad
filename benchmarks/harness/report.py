"""The report: the machine, number formats, and the markdown document of one run."""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import shutil
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from benchmarks.harness.env import ROOT
from benchmarks.harness.load import Load
from benchmarks.openloop import summarize
from calsync.testing.broker import kafka_version

LOAD_AVERAGE = "load average at the end (1, 5, 15 min)"


@dataclass(frozen=True, slots=True)
class Section:
    """What one benchmark contributes: its section's body (below its heading) and its rows
    of the summary table (``| benchmark | measured | target | result |``)."""

    body: list[str]
    summary: list[str]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One benchmark's place in the report: its section, or why it could not run."""

    number: int
    name: str
    title: str
    section: Section | None
    error: str | None = None
    load: Load | None = None


# --------------------------------------------------------------------------- formats


def ms(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**MISS**"


def latency_cells(values: Sequence[float]) -> str:
    """``p50 | p95 | p99 | max`` of ``values`` (ms) as table cells."""
    s = summarize(values)
    return " | ".join(ms(s.get(k, math.nan)) for k in ("p50", "p95", "p99", "max"))


def spread(values: Sequence[float], unit: str = " s") -> str:
    """``median (min to max)`` of ``values``: the spread of a few repetitions."""
    if not values:
        return "n/a"
    return f"{statistics.median(values):.1f}{unit} ({min(values):.1f} to {max(values):.1f})"


# --------------------------------------------------------------------------- machine


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


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
        LOAD_AVERAGE: load_average(),
    }


def _git(git: str, *args: str) -> str:
    return subprocess.run(
        [git, "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30, check=True
    ).stdout


def revision() -> str:
    """The checkout's commit, and whether tracked files differ from it."""
    git = shutil.which("git")
    if git is None:
        return "unknown (no git)"
    try:
        head = _git(git, "rev-parse", "--short", "HEAD").strip()
        changed = _git(git, "status", "--porcelain", "--untracked-files=no").splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    if changed:
        return f"git {head} with uncommitted changes to {len(changed)} tracked file(s)"
    return f"git {head}"


# --------------------------------------------------------------------------- document


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


def render(
    outcomes: Sequence[Outcome],
    info: dict[str, str],
    command: str,
    started: datetime,
    seconds: float,
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
    summary = [row for o in outcomes if o.section for row in o.section.summary]
    summary += [f"| {o.name} | could not run | — | **ERROR** |" for o in outcomes if o.error]
    if summary:
        lines += ["| benchmark | measured | target | result |", "| --- | --- | --- | --- |"]
        lines += [*summary, ""]
    for o in outcomes:
        if o.section is not None:
            lines += [f"## {o.number}. {o.title}", "", *o.section.body, ""]
            if o.load is not None:
                lines += [load_note(o.load), ""]
        elif o.error is not None:
            lines += [
                f"## {o.number}. {o.title}: could not run",
                "",
                "```",
                o.error.rstrip(),
                "```",
                "",
            ]
    return "\n".join(lines).rstrip() + "\n"
