"""Several ``calsync worker`` processes of one app, as on separate machines.

Each worker has its own data directory (its own RocksDB tables) and web port and
the same app id, topics and consumer group; tests kill, stop and restart them.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from calsync.settings import Settings
from calsync.testing.lifecycle import StopOnExit
from calsync.testing.ports import free_port
from calsync.testing.worker import WorkerProcess


class WorkerCluster(StopOnExit):
    """``size`` workers built from ``settings`` (which name the app, topics and broker).

    Worker ``i`` keeps ``data_dir/worker-i`` and one web port across restarts, so a
    restarted worker finds its own tables again.
    """

    def __init__(self, settings: Settings, size: int, **overrides: Any) -> None:
        self.settings = settings
        self.workers: list[WorkerProcess] = []
        for _ in range(size):
            self.add(**overrides)

    def add(self, **overrides: Any) -> WorkerProcess:
        """A new (not yet started) worker of the same app; returns it."""
        index = len(self.workers)
        data_dir: Path = self.settings.data_dir / f"worker-{index}"
        data_dir.mkdir(parents=True, exist_ok=True)
        settings = dataclasses.replace(
            self.settings, data_dir=data_dir, web_port=free_port(), **overrides
        )
        worker = WorkerProcess(settings, log_path=data_dir.parent / f"worker-{index}.log")
        self.workers.append(worker)
        return worker

    def start(self, *indexes: int, timeout: float = 120.0) -> None:
        """Start these workers (all if none given) at the same instant; wait until healthy."""
        chosen = [self.workers[i] for i in indexes] if indexes else self.workers
        with ThreadPoolExecutor(len(chosen)) as pool:
            for future in [pool.submit(w.start, timeout=timeout) for w in chosen]:
                future.result()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    def group_state(self) -> tuple[str, int]:
        """The consumer group's state (``Stable``, ``PreparingRebalance``, ...) and
        how many members it has, as the broker sees them."""
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap)
        try:
            group = admin.describe_groups([self.settings.app_id])[self.settings.app_id]
        finally:
            admin.close()
        return str(group.get("group_state")), len(group.get("members") or [])

    def wait_balanced(self, *, timeout: float = 60.0) -> None:
        """Wait until the group is stable with exactly the running workers in it."""
        deadline = time.monotonic() + timeout
        while True:
            running = sum(1 for w in self.workers if w.running)
            state, members = self.group_state()
            if state == "Stable" and members == running:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"group {state} with {members} of {running} workers")
            time.sleep(0.3)
