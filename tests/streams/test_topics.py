"""Finding a topic's partitions with a consumer that subscribes to nothing."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic

from calsync.streams.topics import topic_partitions


async def test_a_topic_created_after_the_consumer_started_is_found(kafka_bootstrap: str) -> None:
    # aiokafka's consumer learns of a topic created after its start only at its next
    # metadata refresh, 5 minutes later; the benchmark that waited for that hung.
    topic = f"t-partitions-{uuid.uuid4().hex[:8]}"
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    try:
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            await asyncio.to_thread(
                admin.create_topics, [NewTopic(topic, num_partitions=3, replication_factor=1)]
            )
        finally:
            admin.close()
        tps = await topic_partitions(consumer, topic, timeout=30.0)
        assert [(tp.topic, tp.partition) for tp in tps] == [(topic, 0), (topic, 1), (topic, 2)]
        ends = await consumer.end_offsets(tps)  # each has a leader to ask
        assert set(ends.values()) == {0}
    finally:
        await consumer.stop()


async def test_a_missing_topic_times_out_in_the_time_given(kafka_bootstrap: str) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    try:
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            await topic_partitions(consumer, f"t-missing-{uuid.uuid4().hex[:8]}", timeout=1.0)
        assert time.monotonic() - began < 10.0
    finally:
        await consumer.stop()
