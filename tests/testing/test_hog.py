"""The CPU hogs of the under-load mode: they spin, they stop, they never outlive pytest."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from calsync.testing.hog import CpuHog, cores, hog_count


def test_hog_count_reads_the_environment_value() -> None:
    assert hog_count(None) == hog_count("") == hog_count("0") == 0
    assert hog_count("3") == 3
    assert hog_count("auto") == cores() == CpuHog().count >= 1
    for bad in ("-1", "many"):
        with pytest.raises(ValueError):
            hog_count(bad)


def _stat(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` after the command name: state, ppid, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _alive(pid: int) -> bool:
    """Running or asleep: gone, or a zombie nobody has reaped yet, is not alive."""
    try:
        return _stat(pid)[0] != "Z"
    except FileNotFoundError:
        return False


def test_hogs_spin_as_separate_processes_and_stop() -> None:
    with CpuHog(2) as hog:
        assert hog.running == 2 and os.getpid() not in hog.pids
        deadline = time.monotonic() + 30
        while not all(_cpu_seconds(pid) > 0.2 for pid in hog.pids):
            assert time.monotonic() < deadline, "the hogs do not burn CPU"
            time.sleep(0.1)
        assert all(os.getpriority(os.PRIO_PROCESS, pid) == os.nice(0) for pid in hog.pids)
        pids = hog.pids
    assert hog.running == 0 and hog.pids == []
    assert not any(_alive(pid) for pid in pids)
    hog.stop()  # idempotent


def test_hogs_exit_when_their_parent_is_killed() -> None:
    """A SIGKILLed pytest cannot stop its hogs: they notice and exit by themselves."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from calsync.testing.hog import CpuHog\n"
            "hog = CpuHog(2)\n"
            "print(*hog.start(), flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
    )
    assert parent.stdout is not None
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"hogs {pids} outlived their parent"
        time.sleep(0.1)
