"""TopicReader on the real test broker: settle() reads everything there is, and a topic
that never goes quiet ends the wait with TimeoutError instead of waiting forever."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from calsync.testing.topics import TopicReader


async def _producer(bootstrap: str) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    return producer


async def test_settle_reads_everything_written_before_it_went_quiet(
    kafka_bootstrap: str,
) -> None:
    topic = f"test-topics-{uuid.uuid4().hex}"
    producer = await _producer(kafka_bootstrap)
    try:
        for n in range(20):
            await producer.send_and_wait(topic, str(n).encode(), key=b"k")
    finally:
        await producer.stop()
    reader = await TopicReader(kafka_bootstrap, topic).start()
    try:
        await reader.settle(quiet=0.5, timeout=60)
        assert reader.values == [str(n).encode() for n in range(20)]
    finally:
        await reader.aclose()


async def test_settle_on_a_topic_that_keeps_growing_raises_timeout(
    kafka_bootstrap: str,
) -> None:
    topic = f"test-topics-{uuid.uuid4().hex}"
    producer = await _producer(kafka_bootstrap)
    await producer.send_and_wait(topic, b"first", key=b"k")

    async def keep_writing() -> None:
        n = 0
        while True:
            n += 1
            await producer.send_and_wait(topic, str(n).encode(), key=b"k")
            await asyncio.sleep(0.05)

    writer = asyncio.create_task(keep_writing())
    reader = await TopicReader(kafka_bootstrap, topic).start()
    try:
        # quiet=30 s can never be seen while a record arrives every ~50 ms, so only the
        # timeout can end the wait (a busy machine slows the writer, not this outcome;
        # it may end in either step, so the message is matched by the topic only).
        with pytest.raises(TimeoutError, match=topic):
            await reader.settle(quiet=30, timeout=3)
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        await reader.aclose()
        await producer.stop()
