"""A topic reader that keeps when each record arrived and the record's CreateTime."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

from calsync.testing.topics import TopicReader


@dataclass(frozen=True, slots=True)
class Seen:
    """One record as a consumer in this process received it."""

    received: float  # time.time() when getmany returned it
    timestamp: float  # the record's CreateTime (the producer's clock), seconds
    key: bytes | None
    value: bytes
    partition: int
    offset: int


class TimedReader(TopicReader):
    """A :class:`TopicReader` that also keeps when each record arrived, and its timestamp."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self.records: list[Seen] = []
        self.per_key: Counter[bytes | None] = Counter()

    async def poll(self, timeout: float = 0.2) -> int:
        batches = await self._consumer.getmany(timeout_ms=int(timeout * 1000))
        received = time.time()
        count = 0
        for messages in batches.values():
            for m in messages:
                self.values.append(m.value)
                self.timestamps.append(m.timestamp / 1000)
                self.records.append(
                    Seen(received, m.timestamp / 1000, m.key, m.value, m.partition, m.offset)
                )
                self.per_key[m.key] += 1
                count += 1
        return count

    async def poll_until(self, stop: asyncio.Event) -> None:
        """Poll continuously (as a background task) until ``stop`` is set."""
        while not stop.is_set():
            await self.poll(0.05)
