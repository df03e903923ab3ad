"""Replaying ``calsync.deadletter``: the one path the CLI, the admin API and the
dashboard share.

Each dead letter's notification goes back to ``calsync.notifications`` with its
attempts reset. A consumer group (``<app id>-deadletter-replay``) remembers what was
replayed, so each dead letter is replayed once, whoever asks.
"""

from __future__ import annotations

import json
import logging

from aiokafka import AIOKafkaConsumer

from calsync.gateway.publisher import Publisher
from calsync.settings import Settings
from calsync.streams.records import Notification

log = logging.getLogger(__name__)


async def replay_deadletters(
    settings: Settings,
    publisher: Publisher,
    *,
    resource_id: str | None = None,
    idle: float = 1.0,
) -> int:
    """Replay every dead letter not replayed before (only ``resource_id``'s if given);
    stops once nothing arrived for ``idle`` seconds. Returns how many were replayed.

    Entries that do not decode are skipped (and committed past) with a log line.
    """
    consumer = AIOKafkaConsumer(
        settings.topic("deadletter"),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.app_id}-deadletter-replay",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    replayed = 0
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=int(idle * 1000))
            if not batches:
                return replayed
            for messages in batches.values():
                for message in messages:
                    try:
                        entry = json.loads(message.value or b"")
                        notification = Notification.from_data(entry["notification"]).derive(
                            attempt=0, timer_key=None
                        )
                    except Exception as exc:  # a foreign or damaged entry: skip it
                        log.warning("dead letter at offset %d skipped: %r", message.offset, exc)
                        continue
                    if resource_id is None or notification.resource_id == resource_id:
                        await publisher.publish(
                            settings.topic("notifications"),
                            notification.resource_id,
                            notification.dumps(),
                        )
                        replayed += 1
            await consumer.commit()
    finally:
        await consumer.stop()
