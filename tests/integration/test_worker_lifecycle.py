"""A worker's first start and its stop, as an operator sees them: exit codes and the log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from calsync.settings import Settings
from calsync.testing.worker import WorkerProcess
from tests.conftest import ADMIN_TOKEN, free_port


@contextmanager
def worker_process(settings: Settings, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``calsync worker`` with its log outside the data dir, ready (``/healthz``) on entry.

    Unlike :class:`~calsync.testing.worker.WorkerProcess` this neither creates the data
    dir (it writes its log there) nor hides the exit code.
    """
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "calsync.cli", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise AssertionError(f"worker exited with {process.returncode}:\n{tail(log_path)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker not ready:\n{tail(log_path)}")
            try:
                url = f"http://127.0.0.1:{settings.web_port}/healthz"
                if httpx.get(url, timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def tail(log_path: Path, lines: int = 60) -> str:
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


def test_first_start_creates_a_missing_data_dir(kafka_settings, tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "yet" / "calsync-data"
    settings = kafka_settings(data_dir=data_dir)
    with worker_process(settings, tmp_path / "worker.log"):
        assert data_dir.is_dir()
        assert data_dir.stat().st_mode & 0o777 == 0o700  # credentials' ciphertext lives here


@pytest.mark.parametrize("admin_bind", [False, True])
def test_sigterm_stops_the_worker_cleanly(kafka_settings, tmp_path: Path, admin_bind: bool) -> None:
    admin_port = free_port()
    settings = kafka_settings(admin_bind=f"127.0.0.1:{admin_port}" if admin_bind else "")
    settings.data_dir.mkdir(parents=True)  # not what this test is about
    log_path = tmp_path / "worker.log"
    with worker_process(settings, log_path) as process:
        # a command through the gateway starts the worker's own producer (it is lazy)
        port = admin_port if admin_bind else settings.web_port
        response = httpx.delete(
            f"http://127.0.0.1:{port}/api/resources/nobody",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running 60 s after SIGTERM:\n{tail(log_path)}") from None
    log = log_path.read_text(errors="replace")
    assert code == 0, tail(log_path)
    assert "Unclosed AIOKafkaProducer" not in log, tail(log_path)
    assert "Unclosed" not in log, tail(log_path)


def test_a_running_worker_says_where_its_tasks_wait(kafka_settings, tmp_path: Path) -> None:
    """SIGUSR1 dumps every thread and task (mode's worker); WorkerProcess.stacks cuts it
    down to calsync's and aiokafka's frames for a failure report."""
    settings = kafka_settings()
    worker = WorkerProcess(settings, log_path=tmp_path / "worker.log").start()
    try:
        stacks = worker.stacks()
        assert "calsync/agents/dispatch.py" in stacks, stacks  # the upkeep task's sleep
        assert "in run" in stacks, stacks
        assert worker.running, "SIGUSR1 must not stop the worker"
    finally:
        worker.kill()
    assert worker.stacks() == "(not running)"
