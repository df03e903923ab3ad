"""CPU hogs: busy processes that keep every core loaded while the suite runs.

A test that passes only on an idle machine is flaky. ``./scripts/test --under-load``
(or ``CALSYNC_TEST_HOG=<n>``) starts a :class:`CpuHog` for the whole pytest session
(``tests/conftest.py``), so timing assumptions show up as failures here rather than
on a busy CI runner.

Each hog is a separate Python process spinning in a loop at the default priority
(its niceness is not raised), so it competes with the broker, the workers and the
CalDAV servers as another tenant of the machine would. A hog checks every few
milliseconds that its parent is still the process that started it and exits when
it is not, so hogs never outlive a killed test run.
"""

from __future__ import annotations

import os
import subprocess
import sys

from calsync.testing.lifecycle import StartOnEnter, terminate

__all__ = ["CpuHog", "cores", "hog_count"]

# The loop a hog runs: spin, and look at the parent's pid between short bursts.
_SPIN = """
import os, sys
parent = int(sys.argv[1])
while os.getppid() == parent:
    for _ in range(200_000):
        pass
"""


def cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def hog_count(value: str | None) -> int:
    """How many hogs ``CALSYNC_TEST_HOG`` asks for: unset, empty or ``0`` is none,
    ``auto`` is one per core, a positive integer is that many.

    Raises :class:`ValueError` for anything else.
    """
    text = (value or "").strip().lower()
    if text in ("", "0"):
        return 0
    if text == "auto":
        return cores()
    count = int(text)
    if count < 0:
        raise ValueError(f"CALSYNC_TEST_HOG must be 'auto' or a count >= 0, not {value!r}")
    return count


class CpuHog(StartOnEnter):
    """``count`` busy processes (default: one per core); ``with`` starts and stops them.

    :meth:`start` and :meth:`stop` are idempotent; :meth:`stop` waits until every hog
    has exited.
    """

    __slots__ = ("count", "processes")

    def __init__(self, count: int | None = None) -> None:
        self.count = count if count is not None else cores()
        self.processes: list[subprocess.Popen[bytes]] = []

    def __repr__(self) -> str:
        return f"CpuHog(count={self.count}, pids={self.pids})"

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    @property
    def running(self) -> int:
        """How many hogs are alive now."""
        return sum(1 for p in self.processes if p.poll() is None)

    def start(self) -> list[int]:
        """Start the hogs (once); returns their pids."""
        if not self.processes:
            for _ in range(self.count):
                self.processes.append(
                    subprocess.Popen(  # noqa: S603 - our interpreter and our own script
                        [sys.executable, "-c", _SPIN, str(os.getpid())],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
        return self.pids

    def stop(self) -> None:
        """Stop every hog and wait for it."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            terminate(process, grace=5.0)
        self.processes.clear()
