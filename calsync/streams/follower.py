"""Following a topic from every partition without a consumer group.

:class:`TopicFollower` is one group-less aiokafka consumer of all partitions of a
topic, started at the records written ``lookback`` seconds ago and kept at the end;
each record's value goes to ``on_record``. The gateway uses it for what happened to
registrations (``calsync.status``) and to holds (``calsync.holds``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from calsync.pacing import paced
from calsync.streams.topics import topic_partitions

log = logging.getLogger(__name__)

R = TypeVar("R")

#: Seconds :meth:`TopicFollower.ready` waits for the look-back to be read.
CATCH_UP_TIMEOUT = 10.0


async def _reached(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


class TopicFollower:
    """Feeds ``on_record`` every record of ``topic`` from ``lookback`` seconds ago on.

    :meth:`ready` starts it (once; concurrent callers share the start) and returns
    when the look-back was read (or after :data:`CATCH_UP_TIMEOUT`); positions are
    explicit offsets, so no record written after :meth:`ready` returns is missed.
    :meth:`aclose` is idempotent. ``on_record`` must not raise.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        on_record: Callable[[bytes | None], None],
        *,
        lookback: float = 600.0,
        client_id: str = "calsync-follower",
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._on_record = on_record
        self._lookback = lookback
        self._client_id = client_id
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        self._caught_up = asyncio.Event()

    async def ready(self) -> None:
        async with self._starting:
            if self._task is not None:
                return
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap,
                client_id=self._client_id,
                group_id=None,
                enable_auto_commit=False,
            )
            await consumer.start()
            try:
                ends = await self._position(consumer)
            except BaseException:
                await consumer.stop()
                raise
            self._consumer = consumer
            self._task = asyncio.create_task(
                self._follow(consumer, ends), name=f"calsync-follow-{self._topic}"
            )
            try:  # the look-back first, so that a lookup right after this finds it
                await asyncio.wait_for(self._caught_up.wait(), CATCH_UP_TIMEOUT)
            except TimeoutError:
                log.warning("%s: still reading the last %gs", self._topic, self._lookback)

    async def _position(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
        """Seek to ``lookback`` ago; returns the end offsets there were then."""
        try:
            tps = await topic_partitions(consumer, self._topic)
        except TimeoutError:
            raise TimeoutError(f"topic {self._topic} has no partitions") from None
        consumer.assign(tps)
        since_ms = int((time.time() - self._lookback) * 1000)
        found = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            at = found.get(tp)
            consumer.seek(tp, at.offset if at is not None else ends[tp])
        return dict(ends)

    async def _follow(self, consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> None:
        while True:
            if not self._caught_up.is_set() and await _reached(consumer, ends):
                self._caught_up.set()
            try:
                batches = await consumer.getmany(timeout_ms=1000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the consumer reconnects by itself; keep following
                log.warning("reading %s failed: %r", self._topic, exc)
                await asyncio.sleep(1.0)
                continue
            # a batch can hold thousands of records: decode them paced
            records = (message for messages in batches.values() for message in messages)
            async for message in paced(records):
                self._on_record(message.value)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        consumer, self._consumer = self._consumer, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if consumer is not None:
            await consumer.stop()


class Followed(Generic[R]):
    """Mixin: a board fed by a :class:`TopicFollower` of one topic.

    The board defines ``feed(record)``; a subclass defines :meth:`decode` (``None`` for
    a record it cannot read, which is logged and skipped) and calls :meth:`_follow`
    from its ``__init__``. List it before the board, so that its :meth:`ready` and
    :meth:`aclose` start and stop the follower.
    """

    _topic: str
    _follower: TopicFollower

    def _follow(self, bootstrap: str, topic: str, *, lookback: float, client_id: str) -> None:
        self._topic = topic
        self._follower = TopicFollower(
            bootstrap, topic, self._on_record, lookback=lookback, client_id=client_id
        )

    def decode(self, value: bytes | None) -> R | None:
        raise NotImplementedError

    if TYPE_CHECKING:  # the board's; not defined here, or it would hide the board's

        def feed(self, record: R) -> None: ...

    def _on_record(self, value: bytes | None) -> None:
        record = self.decode(value)
        if record is None:
            log.warning("undecodable record on %s ignored", self._topic)
            return
        self.feed(record)

    async def ready(self) -> None:
        await self._follower.ready()

    async def aclose(self) -> None:
        await self._follower.aclose()
