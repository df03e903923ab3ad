"""Where the gateway writes: a :class:`Publisher` that returns after the broker acked."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer


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

    async def send(self, topic: str, key: bytes, value: bytes) -> Awaitable[Any]:
        """Queue one record (starting the producer on first use); returns its future."""
        if self._producer is None:
            await self.start()
        assert self._producer is not None
        future: Awaitable[Any] = await self._producer.send(topic, value, key=key)
        return future

    async def publish(self, topic: str, key: str, value: bytes) -> None:
        await (await self.send(topic, key.encode(), value))

    async def aclose(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
