"""The worker's producer path against the real broker: ``send_many`` keeps order and
the partition ``send`` would choose, across record batches and an oversized record."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition

from calsync.gateway.publisher import KafkaPublisher
from calsync.streams.topics import ensure_topics


async def read_all(
    bootstrap: str, topic: str, partitions: int, count: int
) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) of the first ``count`` records, in offset order per partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        await consumer.seek_to_beginning()
        seen: list[tuple[int, bytes, bytes]] = []
        async with asyncio.timeout(30):
            while len(seen) < count:
                batches = await consumer.getmany(timeout_ms=500)
                for tp, records in sorted(batches.items()):
                    seen.extend((tp.partition, r.key or b"", r.value or b"") for r in records)
        return seen
    finally:
        await consumer.stop()


async def test_send_many_keeps_order_and_the_keys_partition(kafka_settings) -> None:  # type: ignore[no-untyped-def]
    settings = kafka_settings(topic_partitions=8)
    await asyncio.to_thread(ensure_topics, settings)
    topic = settings.topic("events")
    publisher = KafkaPublisher(settings.kafka_bootstrap, client_id="test-send-many")
    try:
        chosen = {}
        for key in (b"resource-a", b"resource-b", b"resource-c"):
            metadata = await (await publisher.send(topic, key, b"first"))
            chosen[key] = metadata.partition
        assert len(set(chosen.values())) > 1, "keys on one partition: the test is void"
        # 400 values of 300 bytes fill many 16 KiB batches; one 40 KiB value needs its own
        values = {
            key: [f"{key.decode()}-{n:04d}-".encode().ljust(300, b".") for n in range(400)]
            for key in chosen
        }
        values[b"resource-b"].insert(200, b"big".ljust(40_000, b"!"))
        await asyncio.gather(
            *[await publisher.send_many(topic, key, vals) for key, vals in values.items()]
        )
        total = 3 + sum(len(v) for v in values.values())
        records = await read_all(settings.kafka_bootstrap, topic, 8, total)
    finally:
        await publisher.aclose()
    assert len(records) == total
    for key, partition in chosen.items():
        on_key = [(p, v) for p, k, v in records if k == key]
        assert {p for p, _ in on_key} == {partition}
        assert [v for _, v in on_key] == [b"first", *values[key]]
