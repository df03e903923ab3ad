"""Read calsync's output topics from the beginning (tests, the demo, benchmarks)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer

from calsync.codecs.avro import decode_event
from calsync.model import UnifiedEvent
from calsync.streams.topics import topic_partitions


class TopicReader:
    """Consumes one topic from its beginning, without a group, and keeps every value."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.values: list[bytes] = []
        #: broker timestamps (epoch seconds) of ``values``, index for index
        self.timestamps: list[float] = []
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        self._started = False

    async def start(self) -> TopicReader:
        await self._consumer.start()
        tps = await topic_partitions(self._consumer, self.topic, timeout=60.0)
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        self._started = True
        return self

    async def poll(self, timeout: float = 0.2) -> int:
        """Fetch what is there now; returns how many new values arrived."""
        batches = await self._consumer.getmany(timeout_ms=int(timeout * 1000))
        count = 0
        for messages in batches.values():
            for message in messages:
                self.values.append(message.value)
                self.timestamps.append(message.timestamp / 1000)
                count += 1
        return count

    async def wait_for(
        self, predicate: Callable[[TopicReader], bool], *, timeout: float = 60.0
    ) -> None:
        """Poll until ``predicate(self)`` holds; raises :class:`TimeoutError` otherwise."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.topic}: condition not met after {timeout}s")
            await self.poll()

    async def caught_up(self, *, timeout: float = 60.0) -> None:
        """Poll until every value that was in the topic when called has been read;
        raises :class:`TimeoutError` otherwise."""
        ends = await self._consumer.end_offsets(list(self._consumer.assignment()))
        deadline = time.monotonic() + timeout
        for tp, end in ends.items():
            while await self._consumer.position(tp) < end:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.topic}: not read up to its end after {timeout}s")
                await self.poll()

    async def settle(self, quiet: float = 2.0, *, timeout: float = 300.0) -> None:
        """Read what the topic holds now (:meth:`caught_up`), then poll until nothing
        new arrived for ``quiet`` seconds. Without the first step a busy machine's
        first fetch, slower than ``quiet``, would end the wait with nothing read.

        Raises :class:`TimeoutError` when the topic has not gone quiet ``timeout``
        seconds after the call: a topic that never stops growing is a failure to
        report, not a wait without end."""
        deadline = time.monotonic() + timeout
        await self.caught_up(timeout=timeout)
        last = time.monotonic()
        while time.monotonic() - last < quiet:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.topic}: still growing after {timeout}s")
            if await self.poll():
                last = time.monotonic()

    def events(self) -> list[UnifiedEvent]:
        return [decode_event(v) for v in self.values]

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(v) for v in self.values]

    async def aclose(self) -> None:
        if self._started:
            self._started = False
            await self._consumer.stop()
