"""calsync's topics, all keyed by resource id with one partition count (DESIGN §3).

:func:`declare_topics` declares the ones the worker's agents consume on the Faust app.

:func:`ensure_topics` also creates the topics Faust would otherwise create itself
on first use (each table's compacted changelog, the assignor's leader topic): two
workers starting at the same instant then never race to create them, and never see
a just-created changelog with no partitions yet (Faust's ``PartitionsMismatch``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from calsync.errors import ConfigurationError
from calsync.settings import Settings

#: The short names of calsync's topics; ``Settings.topic(name)`` gives the full name.
TOPICS = (
    "notifications",
    "retries",
    "commands",
    "events",
    "status",
    "deadletter",
    "holds",
    "hold-requests",
)

#: The worker's tables (:mod:`calsync.tables.declare`); each has a changelog topic in Kafka.
TABLES = ("resources", "sync_state", "channels", "timers", "busy", "holds")


async def topic_partitions(
    consumer: AIOKafkaConsumer, topic: str, *, timeout: float = 10.0
) -> list[TopicPartition]:
    """``topic``'s partitions, in order, once each has an elected leader, as seen by a
    started ``consumer``; raises :class:`TimeoutError` after ``timeout`` seconds (the
    topic does not exist, or its leaders are not elected).

    A consumer that subscribes to nothing knows no topic's partitions until its
    metadata is refreshed, and aiokafka refreshes it on its own only every 5 minutes;
    a topic created a moment ago may list partitions with no leader yet, whose
    positions aiokafka cannot find until that refresh either.
    """
    client = consumer._client  # aiokafka has no public call that refreshes metadata

    def elected() -> list[TopicPartition]:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        led = all(client.cluster.leader_for_partition(tp) not in (None, -1) for tp in tps)
        return tps if led else []

    pause = 0.0  # the first refresh at once, then every 0.1 s
    async with asyncio.timeout(timeout):
        while not (tps := elected()):
            await asyncio.sleep(pause)
            await client.force_metadata_update()
            pause = 0.1
    return tps


def changelog_topic(settings: Settings, table: str) -> str:
    """The name Faust gives ``table``'s changelog topic."""
    return f"{settings.app_id}-{table}-changelog"


def record_limit(settings: Settings) -> int:
    """The largest record batch a worker's producer sends and a changelog accepts: a
    table value of ``max_table_value_bytes`` plus room for its key and the batch."""
    return settings.max_table_value_bytes + 64 * 1024


def leader_topic(settings: Settings) -> str:
    """The name of the Faust assignor's leader-election topic (one partition)."""
    return f"{settings.app_id}-__assignor-__leader"


def ensure_topics(settings: Settings, *, timeout: float = 60.0) -> None:
    """Create any missing calsync topic, table changelog and the leader topic; wait
    until the broker reports their partitions; fail if one exists with another
    partition count.

    Safe to run from several workers at once (a topic another worker created first
    is taken as it is). Co-partitioning is what makes one worker the single owner of
    a resource, so a mismatch is refused at start instead of silently mixing
    resources.
    """
    changelogs = [changelog_topic(settings, table) for table in TABLES]
    names = [settings.topic(name) for name in TOPICS] + changelogs
    # The broker's default record limit (1 MiB) is below a large calendar's table
    # values; the changelogs take what the producer may send (Settings).
    compacted = {
        "cleanup.policy": "compact",
        "max.message.bytes": str(record_limit(settings)),
    }
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
            NewTopic(
                name,
                settings.topic_partitions,
                settings.replication_factor,
                topic_configs=compacted if name in changelogs else {},
            )
            for name in names
            if name not in existing
        ]
        leader = leader_topic(settings)
        if leader not in existing:
            missing.append(NewTopic(leader, 1, settings.replication_factor))
        for topic in missing:  # one by one: another worker may have created some
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([topic])
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


@dataclass(frozen=True, slots=True)
class WorkerTopics:
    """The topics a worker's agents consume (the others are written by the outbox and
    the gateway through a plain producer, :mod:`calsync.agents.outbox`)."""

    notifications: faust.TopicT
    retries: faust.TopicT
    commands: faust.TopicT
    hold_requests: faust.TopicT


def declare_topics(app: faust.App, settings: Settings) -> WorkerTopics:
    """Declare the consumed topics on ``app``, all with ``settings.topic_partitions``.

    Every one is read as raw bytes: the agents decode through the quarantine
    (:mod:`calsync.agents.quarantine`), so a record Faust could not decode never raises
    inside an agent (and again after every restart). Every one also has Faust's acks
    off: their dispatchers commit the offsets themselves, only over finished work
    (:mod:`calsync.agents.dispatch`).
    """
    partitions = settings.topic_partitions
    return WorkerTopics(
        notifications=app.topic(
            settings.topic("notifications"),
            value_serializer="raw",
            partitions=partitions,
            acks=False,
        ),
        retries=app.topic(
            settings.topic("retries"), value_serializer="raw", partitions=partitions, acks=False
        ),
        commands=app.topic(
            settings.topic("commands"), value_serializer="raw", partitions=partitions, acks=False
        ),
        hold_requests=app.topic(
            settings.topic("hold-requests"),
            value_serializer="raw",
            partitions=partitions,
            acks=False,
        ),
    )
