"""Where the gateway writes: a :class:`Publisher` that returns after the broker acked."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner


class Publisher(Protocol):
    """Writes one record and returns only after the broker acknowledged it.

    Raises any exception on failure; the caller answers 503 and the provider retries.
    """

    async def publish(self, topic: str, key: str, value: bytes) -> None: ...


class KafkaPublisher:
    """A :class:`Publisher` on its own idempotent ``acks=all`` aiokafka producer.

    The worker writes through one too (not through Faust's producer, whose per-record
    bookkeeping costs more than the encoding): :meth:`send` queues a record and returns
    its delivery future, so a batch is sent at once and awaited together.
    """

    def __init__(self, bootstrap: str, *, client_id: str = "calsync-gateway") -> None:
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        """Connect; the producer is made here because aiokafka binds it to the running loop.

        Idempotent and safe to call concurrently.
        """
        async with self._starting:
            if self._producer is not None:
                return
            producer = AIOKafkaProducer(
                bootstrap_servers=self._bootstrap,
                client_id=self._client_id,
                acks="all",
                enable_idempotence=True,
                linger_ms=0,
            )
            await producer.start()
            self._producer = producer

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            await self.start()
        assert self._producer is not None
        return self._producer

    async def send(self, topic: str, key: bytes, value: bytes) -> Awaitable[Any]:
        """Queue one record (starting the producer on first use); returns its future."""
        producer = await self._started()
        future: Awaitable[Any] = await producer.send(topic, value, key=key)
        return future

    async def send_many(self, topic: str, key: bytes, values: list[bytes]) -> Awaitable[Any]:
        """Queue ``values`` under one ``key``, in order; returns one future for them all.

        The partition is chosen once, by the producer's own partitioner over the key
        (murmur2, as :meth:`send` chooses it for every record), and the records are
        appended to record batches built here (``create_batch``/``send_batch``), not
        passed one by one through ``send`` (a metadata wait, the partitioner, the
        accumulator and a future per record): a page of a full sync is one resource's
        events (docs/benchmarks.md §3).
        """
        producer = await self._started()
        partitions = sorted(await producer.partitions_for(topic))
        partition = DefaultPartitioner()(key, partitions, partitions)
        futures: list[Awaitable[Any]] = []
        batch = producer.create_batch()
        for value in values:
            if batch.append(key=key, value=value, timestamp=None) is None:
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                # a batch takes its first record whatever its size (the broker decides)
                batch.append(key=key, value=value, timestamp=None)
        if batch.record_count():
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        return asyncio.gather(*futures)

    async def publish(self, topic: str, key: str, value: bytes) -> None:
        await (await self.send(topic, key.encode(), value))

    async def aclose(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
