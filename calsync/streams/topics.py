"""calsync's topics, all keyed by resource id with one partition count (DESIGN §3)."""

from __future__ import annotations

import contextlib
import time

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from calsync.errors import ConfigurationError
from calsync.settings import Settings

#: The short names of calsync's topics; ``Settings.topic(name)`` gives the full name.
TOPICS = ("notifications", "retries", "commands", "events", "status", "deadletter")


def ensure_topics(settings: Settings, *, timeout: float = 60.0) -> None:
    """Create any missing calsync topic; fail if one exists with another partition count.

    Co-partitioning is what makes one worker the single owner of a resource, so a
    mismatch is refused at start instead of silently mixing resources.
    """
    names = [settings.topic(name) for name in TOPICS]
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=settings.kafka_bootstrap, client_id=f"{settings.app_id}-admin"
            )
            break
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}"
                ) from exc
            time.sleep(0.5)
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, settings.topic_partitions, settings.replication_factor)
            for name in names
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker was first
                admin.create_topics(missing)
        while True:
            described = admin.describe_topics(names)
            # A just-created topic may show no partitions until its metadata spreads.
            if all(meta.get("partitions") for meta in described) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for meta in described:
            count = len(meta.get("partitions") or [])
            if count != settings.topic_partitions:
                raise ConfigurationError(
                    f"topic {meta['topic']} has {count} partitions, calsync is configured "
                    f"for {settings.topic_partitions} (CALSYNC_TOPIC_PARTITIONS)"
                )
    finally:
        admin.close()
