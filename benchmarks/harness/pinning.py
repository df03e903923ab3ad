"""Give one process a core of its own: what a worker has when its clients and its broker
run on other machines, measured on one machine.

:func:`alone` moves every thread of one process (and its descendants) to the last CPU this
benchmark may use, and every thread of this benchmark and all its other descendants (the
broker, the other workers, the load generators it starts meanwhile, which inherit the
affinity) to the rest; on leaving, all of them get every CPU back. Linux only
(``sched_setaffinity`` per thread id); processes outside this benchmark are not touched,
so the report's "machine busy (others)" still says whether something else shared the cores.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.harness.load import descendants

__all__ = ["alone", "set_affinity"]


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` on ``cpus`` (threads started later inherit their parent's)."""
    try:
        threads = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return  # the process is gone
    for tid in threads:
        try:
            os.sched_setaffinity(tid, cpus)
        except (ProcessLookupError, PermissionError):
            continue  # a thread that ended meanwhile


@contextmanager
def alone(pid: int) -> Iterator[tuple[set[int], set[int]]]:
    """Run the block with ``pid`` alone on one CPU and this benchmark on the others.

    Yields ``(its CPUs, everyone else's)``. Raises :class:`RuntimeError` with fewer than
    two CPUs to share out."""
    every = os.sched_getaffinity(0)
    if len(every) < 2:
        raise RuntimeError(f"pinning needs two CPUs or more; this process may use {sorted(every)}")
    own = {max(every)}
    rest = every - own
    pinned = {pid, *descendants(pid)}
    me = os.getpid()
    everyone = [me, *descendants(me)]
    try:
        for process in everyone:
            set_affinity(process, own if process in pinned else rest)
        yield own, rest
    finally:
        for process in [me, *descendants(me)]:
            set_affinity(process, every)
