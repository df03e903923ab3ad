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
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Connect; the producer is made here because aiokafka binds it to the running loop."""
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self._bootstrap,
                client_id=self._client_id,
                acks="all",
                enable_idempotence=True,
                linger_ms=0,
            )
            await producer.start()
            self._producer = producer

    async def publish(self, topic: str, key: str, value: bytes) -> None:
        if self._producer is None:
            raise RuntimeError("KafkaPublisher.start() was not awaited")
        await self._producer.send_and_wait(topic, value, key=key.encode())

    async def aclose(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
