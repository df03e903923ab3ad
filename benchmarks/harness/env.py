"""The broker, work dir and secrets one run shares; raw-baseline producers and topics."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from calsync.settings import Settings
from calsync.testing.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-client-secret"  # noqa: S105 - the emulator's test client, not a secret


@dataclass(slots=True)
class Env:
    """What every benchmark shares: the broker, a work dir and the secrets of this run."""

    bootstrap: str
    workdir: Path
    partitions: int
    secret_key: str = field(default_factory=lambda: secrets.token_hex(16))
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    #: the run's :class:`~calsync.testing.broker.KafkaBroker`, for the faults that
    #: restart or freeze it (``benchmarks.scale --fault broker-*``)
    broker: Any = None

    def settings(self, name: str, **overrides: Any) -> Settings:
        """Settings with their own app id, topic prefix, data dir and web port.

        The session timeout is 10 s unless overridden (the takeover benchmark keeps the
        production default)."""
        unique = uuid.uuid4().hex[:8]
        port = free_port()
        values: dict[str, Any] = {
            "secret_key": self.secret_key,
            "admin_token": self.admin_token,
            "kafka_bootstrap": self.bootstrap,
            "app_id": f"bench-{name}-{unique}",
            "topic_prefix": f"bench{unique}.",
            "topic_partitions": self.partitions,
            "data_dir": self.workdir / f"{name}-{unique}",
            "web_port": port,
            "public_url": f"http://127.0.0.1:{port}",
            "google_client_id": CLIENT_ID,
            "google_client_secret": CLIENT_SECRET,
            "kafka_session_timeout": 10.0,
        }
        values.update(overrides)
        return Settings(**values)

    def create_topic(self, name: str) -> None:
        """A fresh topic with the run's partition count (blocking; call in a thread)."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="bench-admin")
        try:
            admin.create_topics([NewTopic(name, self.partitions, 1)])
            deadline = time.monotonic() + 30
            while not all(m.get("partitions") for m in admin.describe_topics([name])):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"topic {name} has no partitions after 30 s")
                time.sleep(0.1)
        finally:
            admin.close()


@asynccontextmanager
async def raw_producer(env: Env, purpose: str) -> AsyncIterator[tuple[AIOKafkaProducer, str]]:
    """A raw baseline's producer (what :class:`KafkaPublisher` and the worker configure) and
    a fresh topic ``bench-raw-<purpose>-…`` with the run's partition count, its metadata
    already loaded."""
    topic = f"bench-raw-{purpose}-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(env.create_topic, topic)
    producer = AIOKafkaProducer(
        bootstrap_servers=env.bootstrap,
        client_id="bench-raw",
        acks="all",
        enable_idempotence=True,
        linger_ms=0,
    )
    await producer.start()
    try:
        await producer.partitions_for(topic)
        yield producer, topic
    finally:
        await producer.stop()
