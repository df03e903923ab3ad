"""Where the gateway writes: a :class:`Publisher` that returns after the broker acked."""

from __future__ import annotations

from typing import Protocol

from aiokafka import AIOKafkaProducer


class Publisher(Protocol):
    """Writes one record and returns only after the broker acknowledged it.

    Raises any exception on failure; the caller answers 503 and the provider retries.
    """

    async def publish(self, topic: str, key: str, value: bytes) -> None: ...


class KafkaPublisher:
    """A :class:`Publisher` on its own idempotent ``acks=all`` aiokafka producer."""

    def __init__(self, bootstrap: str, *, client_id: str = "calsync-gateway") -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
        )
        self._started = False

    async def start(self) -> None:
        if not self._started:
            await self._producer.start()
            self._started = True

    async def publish(self, topic: str, key: str, value: bytes) -> None:
        await self._producer.send_and_wait(topic, value, key=key.encode())

    async def aclose(self) -> None:
        if self._started:
            self._started = False
            await self._producer.stop()
