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

from calsync.tables.records import Channel, Resource, SyncState, Timer


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
    return WorkerTables(
        resources=app.Table("resources", value_type=Resource, partitions=partitions),
        sync_state=app.Table("sync_state", value_type=SyncState, partitions=partitions),
        channels=app.Table("channels", value_type=Channel, partitions=partitions),
        timers=app.Table("timers", value_type=Timer, partitions=partitions),
        busy=app.Table("busy", value_type=bytes, partitions=partitions),
        holds=app.Table("holds", value_type=bytes, partitions=partitions),
    )
