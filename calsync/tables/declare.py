"""The worker's tables, declared on the Faust app: RocksDB (rocksdict), changelogged.

Every table is keyed by resource id and has ``settings.topic_partitions`` partitions,
co-partitioned with the topics, so the worker that owns a partition is the single
writer of every resource in it.

* ``resources``: :class:`~calsync.tables.records.Resource`;
* ``sync_state``: :class:`~calsync.tables.records.SyncState`;
* ``channels``: :class:`~calsync.tables.records.Channel` (Google channels, Graph
  subscriptions);
* ``timers``: :class:`~calsync.tables.records.Timer` (keys ``retry:``, ``reconcile:``,
  ``renew:``, ``poll:``, ``holds:``);
* ``busy``: the availability index, raw bytes (:mod:`calsync.availability.index`);
* ``holds``: the holds of each resource, raw bytes (:mod:`calsync.availability.holds`).

Every table is an :class:`AckedTable` reporting its writes to one :class:`TableWrites`,
which a commit of offsets waits for (:class:`calsync.agents.offsets.ConsumerOffsets`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faust
from faust.types.tuples import FutureMessage

from calsync.tables.records import Channel, Resource, SyncState, Timer

log = logging.getLogger(__name__)


class TableWritesLost(Exception):
    """A table write (a changelog record) was refused by the broker: the changelog no
    longer holds what the worker did, and a commit past the record that made the
    write would lose it for good."""


class TableWrites:
    """The table writes (changelog records) of a worker that the broker has not
    acknowledged yet: what a commit of offsets must wait for.

    Faust's ``Producer.flush`` is no such barrier. Its buffer flush gives up once
    0.1 s pass without a record leaving the buffer (``ProducerBuffer.flush_atmost``),
    which happens on a busy worker, and a record already taken from the buffer but not
    yet handed to aiokafka is in neither of the buffers it drains. Each write's future
    (what ``send_changelog`` returns) is resolved by the broker's acknowledgement;
    waiting for every one outstanding is the barrier.

    ``on_lost`` is called once with :class:`TableWritesLost` when a write fails: the
    worker should stop, so that a restart replays from the last commit.
    """

    def __init__(self, on_lost: Callable[[TableWritesLost], None] | None = None) -> None:
        #: sequence number -> write, oldest first (writes mostly settle in that order)
        self._pending: OrderedDict[int, asyncio.Future[Any]] = OrderedDict()
        self._added = 0
        self.lost: TableWritesLost | None = None
        self.on_lost = on_lost

    def add(self, write: asyncio.Future[Any]) -> None:
        """Track ``write`` until it is acknowledged (or fails)."""
        self._added += 1
        self._pending[self._added] = write
        write.add_done_callback(functools.partial(self._done, self._added))

    def _done(self, seq: int, write: asyncio.Future[Any]) -> None:
        self._pending.pop(seq, None)
        if write.cancelled() or write.exception() is None or self.lost is not None:
            return
        self.lost = TableWritesLost(f"a table write was not acknowledged: {write.exception()!r}")
        log.error("%s", self.lost)
        if self.on_lost is not None:
            self.on_lost(self.lost)

    @property
    def outstanding(self) -> int:
        """How many writes wait for the broker's acknowledgement."""
        return len(self._pending)

    async def acknowledged(self) -> None:
        """Return once every write made before this call is acknowledged. Raises
        :class:`TableWritesLost` if one was refused, then or before: after a lost
        write nothing may be committed any more.

        Waits for the oldest outstanding write at a time: a commit costs a few waits,
        not one per write in flight."""
        last = self._added
        while self._pending:
            seq, oldest = next(iter(self._pending.items()))
            if seq > last:
                break
            await asyncio.wait([oldest])
        if self.lost is not None:
            raise self.lost


class AckedTable(faust.Table[Any, Any]):
    """A table whose writes can be awaited until the broker acknowledged them.

    Faust sends a table write to its changelog later, from a buffer, and commits
    consumer offsets after a flush that is no barrier (see :class:`TableWrites`):
    under load an offset can be committed before the write it covers is durable, and
    a crash then loses the write. Every write is reported to ``writes``, which the
    commits calsync makes itself wait for; where one key matters (a hold decision
    must be durable before anyone hears of it), :meth:`written` waits for the
    changelog record of that key.
    """

    def __init__(self, *args: Any, writes: TableWrites | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sent: dict[Any, FutureMessage] = {}
        self._writes = writes

    def send_changelog(
        self,
        partition: int | None,
        key: Any,
        value: Any,
        key_serializer: Any = None,
        value_serializer: Any = None,
    ) -> FutureMessage:
        # Every write of a table goes through here (``Table.on_key_set`` calls it; an
        # earlier version overrode ``_send_changelog``, which only Faust's set tables
        # call, so ``written`` never waited: tests/tables/test_declare.py pins this).
        future = super().send_changelog(partition, key, value, key_serializer, value_serializer)
        self._sent[key] = future
        future.add_done_callback(functools.partial(self._settled, key))
        if self._writes is not None:
            self._writes.add(future)
        return future

    def _settled(self, key: Any, future: FutureMessage) -> None:
        # An acknowledged write needs no more waiting: drop it, so that a table nobody
        # calls ``written`` on does not keep its last record of every key. A failed
        # one stays, for ``written`` to raise.
        if self._sent.get(key) is future and not future.cancelled() and future.exception() is None:
            del self._sent[key]

    async def written(self, key: Any) -> None:
        """Return once the last write of ``key`` is acknowledged by the broker; raises
        what refused it. Cancelling the caller leaves the write alone.

        The write's future is shielded: awaited bare, a cancelled caller (a sync walk
        cut short by a 429, a revoke) cancelled Faust's message future too. The record
        was sent all the same, Faust then failed to resolve the future ("Exception in
        callback Topic._on_published", InvalidStateError), and :class:`TableWrites`
        took the cancelled write for a settled one, so a commit could pass a write the
        broker had not acknowledged."""
        future = self._sent.get(key)
        if future is not None:
            await asyncio.shield(future)


@dataclass(frozen=True, slots=True)
class WorkerTables:
    """The tables (Faust ``Table``s: mutable mappings, written inside record handling)."""

    resources: Any
    sync_state: Any
    channels: Any
    timers: Any
    busy: Any
    holds: Any


def declare_tables(app: faust.App, partitions: int, writes: TableWrites) -> WorkerTables:
    """Declare the six tables on ``app`` (names as in :data:`calsync.streams.topics.TABLES`),
    each reporting its writes to ``writes``."""

    def acked(name: str, value_type: Any) -> Any:
        table = AckedTable(
            app,
            name=name,
            beacon=app.tables.beacon,
            value_type=value_type,
            partitions=partitions,
            writes=writes,
        )
        return app.tables.add(table)

    return WorkerTables(
        resources=acked("resources", Resource),
        # a sync stores the ids it is about to emit and waits for them (SyncService)
        sync_state=acked("sync_state", SyncState),
        channels=acked("channels", Channel),
        timers=acked("timers", Timer),
        busy=acked("busy", bytes),
        # a hold decision is durable before anyone hears of it (HoldService)
        holds=acked("holds", bytes),
    )
