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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust
from faust.types.tuples import FutureMessage

from calsync.tables.records import Channel, Resource, SyncState, Timer


class AckedTable(faust.Table[Any, Any]):
    """A table whose writes can be awaited until the broker acknowledged them.

    Faust sends a table write to its changelog later, from a buffer, and commits
    consumer offsets after a flush that gives up when the buffer does not move for
    0.1 s (``ProducerBuffer.flush_atmost``): under load an offset can be committed
    before the write it covers is durable, and a crash then loses the write. Where
    that matters (a hold decision must be durable before anyone hears of it),
    :meth:`written` waits for the changelog record of a key.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sent: dict[Any, FutureMessage] = {}

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
        return future

    async def written(self, key: Any) -> None:
        """Return once the last write of ``key`` is acknowledged by the broker."""
        future = self._sent.pop(key, None)
        if future is not None:
            await future


@dataclass(frozen=True, slots=True)
class WorkerTables:
    """The tables (Faust ``Table``s: mutable mappings, written inside record handling)."""

    resources: Any
    sync_state: Any
    channels: Any
    timers: Any
    busy: Any
    holds: Any


def declare_tables(app: faust.App, partitions: int) -> WorkerTables:
    """Declare the six tables on ``app`` (names as in :data:`calsync.streams.topics.TABLES`)."""

    def acked(name: str, value_type: Any) -> Any:
        table = AckedTable(
            app, name=name, beacon=app.tables.beacon, value_type=value_type, partitions=partitions
        )
        return app.tables.add(table)

    return WorkerTables(
        resources=app.Table("resources", value_type=Resource, partitions=partitions),
        # acked: a sync stores the ids it is about to emit and waits for them (SyncService)
        sync_state=acked("sync_state", SyncState),
        channels=app.Table("channels", value_type=Channel, partitions=partitions),
        timers=app.Table("timers", value_type=Timer, partitions=partitions),
        busy=app.Table("busy", value_type=bytes, partitions=partitions),
        # acked: a hold decision is durable before anyone hears of it (HoldService)
        holds=acked("holds", bytes),
    )
