"""Run a calsync worker as a child process (tests, the demo and the benchmarks use it)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from calsync.settings import Settings
from calsync.testing.lifecycle import StartOnEnter


class WorkerProcess(StartOnEnter):
    """``calsync worker`` in a subprocess, configured only through ``CALSYNC_*`` variables.

    :meth:`start` returns once the worker's web server answers ``/healthz`` (which it
    does only after table recovery). :meth:`kill` sends SIGKILL (a crash);
    :meth:`stop` asks politely, then kills. Both are idempotent.
    """

    def __init__(self, settings: Settings, *, log_path: Path | None = None) -> None:
        self.settings = settings
        self.log_path = log_path or settings.data_dir / f"worker-{settings.app_id}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.web_port}"

    @property
    def running(self) -> bool:
        """Started and not exited (nor killed or stopped)."""
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has exited by itself, else None."""
        return self._process.poll() if self._process is not None else None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, *, timeout: float = 90.0) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "calsync.cli", "worker"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"worker exited with {self._process.returncode}:\n{self.tail()}")
            try:
                answer = httpx.get(f"{self.url}/healthz", timeout=1.0)
                # up, and its tables assigned and restored (the first rebalance is over)
                if answer.status_code == 200 and answer.json().get("tables") == "ready":
                    return self
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.25)
        self.kill()
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.tail()}")

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stacks(self, *, wait: float = 2.0, limit: int = 60) -> str:
        """Where the running worker's threads and tasks are waiting, for a failure
        report: mode's SIGUSR1 dump (every thread and task stack, to the log), cut
        down to its calsync and aiokafka frames, each once, in order."""
        process = self._process
        if process is None or process.poll() is not None:
            return "(not running)"
        try:
            before = self.log_path.stat().st_size
            process.send_signal(signal.SIGUSR1)
            time.sleep(wait)
            with self.log_path.open("rb") as log:
                log.seek(before)
                dump = log.read().decode(errors="replace")
        except OSError as exc:
            return f"(no dump: {exc!r})"
        frames: list[str] = []
        lines = dump.splitlines()
        for line, code in zip(lines, [*lines[1:], ""], strict=True):
            if line.lstrip().startswith("File") and ("calsync/" in line or "aiokafka/" in line):
                frame = f"{line.strip()} :: {code.strip()}"
                if frame not in frames:
                    frames.append(frame)
        return "\n".join(frames[:limit]) or "(no calsync or aiokafka frames in the dump)"

    def kill(self) -> None:
        """SIGKILL the worker, as a crash would."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    def stop(self, *, timeout: float = 20.0) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            # Faust can hang in shutdown; the kill below is the fallback.
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        self.kill()
        self._process = None
