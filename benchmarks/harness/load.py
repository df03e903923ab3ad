"""CPU time from ``/proc``: the machine's, this benchmark's (with its children) and one
process's, to say how busy the machine was while a benchmark ran and who made it busy."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class CpuSample:
    """Machine-wide CPU time from ``/proc/stat`` and this benchmark's own (seconds)."""

    busy: float  # every CPU, every process: user + nice + system + irq + softirq + steal
    total: float  # the same plus idle and iowait
    own: float  # this process and every descendant, finished or running


@dataclass(frozen=True, slots=True)
class Load:
    """How busy the machine was while one benchmark ran, and who made it busy."""

    seconds: float
    busy: float  # fraction of the machine (all cores) that was busy
    others: float  # fraction of the machine used by processes outside this benchmark

    @property
    def disturbed(self) -> bool:
        return self.others > 0.10


def _stat_fields(pid: int | str) -> list[str]:
    """``/proc/<pid>/stat`` after the command name (which may hold spaces)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_seconds(fields: list[str]) -> float:
    """utime + stime of a ``/proc/<pid>/stat`` split by :func:`_stat_fields`."""
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """utime + stime of one process (all its threads, not its children), seconds."""
    try:
        return _cpu_seconds(_stat_fields(pid))
    except (OSError, IndexError):
        return math.nan


def _processes() -> dict[int, tuple[int, float]]:
    """Every process in ``/proc``: pid -> (parent pid, utime + stime seconds)."""
    out: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(entry.name)
        except (OSError, IndexError):
            continue
        out[int(entry.name)] = (int(fields[1]), _cpu_seconds(fields))
    return out


def descendants(root: int, processes: dict[int, tuple[int, float]] | None = None) -> list[int]:
    """The running (or unreaped) descendants of ``root``, at any depth."""
    table = _processes() if processes is None else processes
    found = []
    for pid in table:
        ancestor, hops = table[pid][0], 0
        while ancestor and ancestor != root and hops < 64:
            ancestor, hops = table.get(ancestor, (0, 0.0))[0], hops + 1
        if ancestor == root:
            found.append(pid)
    return found


def _descendants_cpu() -> float:
    """utime + stime of every running (or unreaped) descendant of this process."""
    table = _processes()
    return sum(table[pid][1] for pid in descendants(os.getpid(), table))


def cpu_sample() -> CpuSample | None:
    """Now's counters, or ``None`` where ``/proc`` is not there to read."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        running = _descendants_cpu()
    except (OSError, ValueError, IndexError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    mine = os.times()
    own = mine.user + mine.system + mine.children_user + mine.children_system + running
    return CpuSample(busy=(sum(fields) - idle) / tick, total=sum(fields) / tick, own=own)


def load_between(before: CpuSample | None, after: CpuSample | None, seconds: float) -> Load | None:
    if before is None or after is None or after.total <= before.total:
        return None
    total = after.total - before.total
    busy = after.busy - before.busy
    others = max(0.0, busy - (after.own - before.own))
    return Load(seconds=seconds, busy=busy / total, others=others / total)


def _kib_field(path: str, name: str) -> int:
    """The ``name: N kB`` line of a ``/proc`` file, in bytes; 0 where it cannot be read."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def process_rss(pid: int) -> int:
    """Resident memory of one process (``VmRSS``), bytes; 0 once it is gone."""
    return _kib_field(f"/proc/{pid}/status", "VmRSS")


def memory_available() -> int:
    """``MemAvailable`` (what can be had without swapping, reclaimable page cache
    included), bytes; 0 where it cannot be read."""
    return _kib_field("/proc/meminfo", "MemAvailable")
