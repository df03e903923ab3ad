"""Fast reads of a Faust table for the web side: one store lookup, decoded once.

A Faust table read (``table.get(key)``) asks the RocksDB store twice (``key in data``,
then ``data[key]``) and decodes the value every time: a :class:`SyncState` with its
occurrence index is a JSON document of some kilobytes. An availability query over
ten resources reads five tables for each, and profiling the query benchmark found
those reads to be most of its cost (``docs/benchmarks.md``, section 6).

:class:`DecodedReads` reads the stored bytes once per call and keeps, per key, the
last bytes it decoded and the value they gave: when the bytes are the same (the
common case: most resources do not change between two queries), the value is
reused without decoding. Comparing bytes is exact, so a read never returns a value
older than the store's, whichever way the store changed (a write by this worker, a
changelog restore, a rebalance).

When the key's partition is known, the read itself is skipped while nothing at all was
written to that partition's database: RocksDB numbers every write (put, delete, a
changelog batch) with the database's next sequence number, so an unchanged
``latest_sequence_number()`` of the same open database means every value in it is
as it was, absent keys included. An availability query over ten resources then
costs ten such checks instead of fifty lookups, each copying a value of kilobytes.

Values are shared between readers: callers must not mutate them (the web side only
reads; the agents write through the table itself, never through this view).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar, cast, overload

from calsync.pacing import paced

__all__ = ["DecodedReads", "DecodedScan"]

V = TypeVar("V")


class DecodedReads(Generic[V]):
    """A read-only view of ``table`` (a Faust table, or any mapping in tests) with a
    decode cache of at most ``capacity`` keys (least recently read dropped first)."""

    def __init__(
        self,
        table: Mapping[str, V],
        *,
        capacity: int = 4096,
        partition_of: Callable[[str], int] | None = None,
    ) -> None:
        self._table = table
        self._capacity = capacity
        self._partition_of = partition_of
        #: key -> [encoded key, partition it was last found in, raw bytes (None: absent),
        #: value, the database read (known partition only), its sequence number then]
        self._memo: OrderedDict[str, list[Any]] = OrderedDict()
        # A Faust table's store: read raw bytes and decode here. Anything else (a dict
        # in unit tests, Faust's memory store) is read as it is.
        store = getattr(table, "data", None)
        self._store: Any = store if hasattr(store, "_get") else None

    def get(self, key: str) -> V | None:
        """The value stored under ``key`` now, or None."""
        store = self._store
        if store is None:
            return self._table.get(key)
        known = self._partition_of is not None
        memo = self._memo.get(key)
        if memo is None:
            partition = self._partition_of(key) if self._partition_of is not None else None
            memo = [store._encode_key(key), partition, None, None, None, None]
        else:
            db = memo[4]
            # the same open database, and not one write to it since: as read then
            if (
                db is not None
                and store._dbs.get(memo[1]) is db
                and db.latest_sequence_number() == memo[5]
            ):
                self._memo.move_to_end(key)
                return cast("V | None", memo[3])
        raw = self._read(store, memo, known=known)
        if raw is None:
            if memo[4] is None:  # absent from every partition: nothing to remember
                self._memo.pop(key, None)
                return None
            memo[2] = memo[3] = None
        elif memo[2] is None or memo[2] != raw:
            memo[2], memo[3] = raw, store._decode_value(raw)
        self._memo[key] = memo
        self._memo.move_to_end(key)
        if len(self._memo) > self._capacity:
            self._memo.popitem(last=False)
        return cast("V | None", memo[3])

    @staticmethod
    def _read(store: Any, memo: list[Any], *, known: bool) -> bytes | None:
        """The stored bytes of ``memo``'s key. The RocksDB store keeps one database per
        partition (``_dbs``) and, asked outside an event, looks the key up in each
        through a locked LRU and a bloom-filter probe. Here the key's partition is
        asked alone when ``known`` (``partition_of``: the tables are co-partitioned
        with the topics, so a key is written to, and restored into, the partition the
        producer gives it); otherwise the partition it was last found in first, then
        the others (a key lives in exactly one). Stores without ``_dbs`` are asked
        through ``_get``."""
        encoded = memo[0]
        memo[4] = memo[5] = None
        dbs = getattr(store, "_dbs", None)
        if not isinstance(dbs, dict):
            return cast("bytes | None", store._get(encoded))
        last = memo[1]
        if last is not None:
            db = dbs.get(last)
            if db is not None:
                sequence = db.latest_sequence_number() if known else None
                value = db.get(encoded)
                if known:  # the key lives here or nowhere: remember what was read
                    memo[4], memo[5] = db, sequence
                if value is not None:
                    return cast(bytes, value)
        if known:
            return None
        for partition, db in list(dbs.items()):
            if partition != last:
                value = db.get(encoded)
                if value is not None:
                    memo[1] = partition
                    return cast(bytes, value)
        return None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None


class DecodedScan(Generic[V]):
    """Every ``(key, value)`` of ``table`` (a Faust table: its active partitions, as
    iterating the table gives), each value decoded only when its stored bytes changed
    since the previous scan, and a partition not read at all while nothing was written
    to its database.

    For a worker's periodic walks over a whole table (the timer dispatcher's rebuild
    of its heap every two seconds, the resource summaries, the heartbeat's count): at
    10,000 resources, decoding every ``Timer`` record again took most of a second of
    the event loop every two seconds, and even reading the unchanged bytes back out of
    RocksDB kept the loop in paced slices for tens of milliseconds, during which the
    availability API's answers waited (``docs/benchmarks.md``, section 6). The memo
    holds, per partition, the entries of the last complete walk of it and the
    database's ``latest_sequence_number()`` before that walk: RocksDB numbers every
    write, so the same open database at the same number holds the same entries (the
    reasoning of :class:`DecodedReads`). Values are shared: callers must not mutate
    them. Anything but a Faust RocksDB store (a dict in unit tests, Faust's memory
    store) is iterated as it is.

    With ``project``, the scan yields ``project(value)`` and its memo holds that and a
    BLAKE2b-128 digest of the stored bytes instead of the bytes and the value: for big
    values of which a walk needs a few fields (the resource summaries read three fields
    of each sync state, whose occurrence index is kilobytes).
    """

    @overload
    def __init__(self: DecodedScan[V], table: Mapping[str, V]) -> None: ...

    @overload
    def __init__(self, table: Mapping[str, Any], project: Callable[[Any], V]) -> None: ...

    def __init__(self, table: Mapping[str, Any], project: Callable[[Any], V] | None = None) -> None:
        self._table = table
        self._project = project
        store = getattr(table, "data", None)
        rocksdb = hasattr(store, "_dbs_for_actives") and isinstance(
            getattr(store, "_dbs", None), dict
        )
        self._store: Any = store if rocksdb else None
        #: partition -> (its database, the sequence number before the walk, and of each
        #: encoded key: (stored bytes or their digest, key, value or its projection)), as
        #: of the last complete walk of that partition
        self._parts: dict[int, tuple[Any, int, dict[bytes, tuple[bytes, str, V]]]] = {}

    def items(self) -> Iterator[tuple[str, V]]:
        """The table's entries now; a walk abandoned midway keeps the previous memo of
        the partition it was in."""
        store, project = self._store, self._project
        if store is None:
            for key, value in list(self._table.items()):
                yield key, (value if project is None else project(value))
            return
        actives = self._actives()
        self._forget_inactive(actives)
        for partition, db, sequence, fresh in actives:
            if fresh is not None:
                for entry in fresh.values():
                    yield entry[1], entry[2]
            else:
                for entry in self._walk(partition, db, sequence):
                    yield entry[1], entry[2]

    async def count(self) -> int:
        """How many entries the table's active partitions hold; only the partitions
        written to since their last walk are walked (:func:`~calsync.pacing.paced`)."""
        if self._store is None:
            return len(list(self._table.items()))
        n = 0
        actives = self._actives()
        self._forget_inactive(actives)
        for partition, db, sequence, fresh in actives:
            if fresh is not None:
                n += len(fresh)
            else:
                async for _ in paced(self._walk(partition, db, sequence)):
                    n += 1
        return n

    def _actives(
        self,
    ) -> list[tuple[int, Any, int, dict[bytes, tuple[bytes, str, V]] | None]]:
        """``(partition, database, its sequence number now, the memo of its entries if
        nothing was written to it since they were read, else None)`` for each active
        partition (Faust's own choice: ``_dbs_for_actives``)."""
        store = self._store
        actives = {id(db) for db in store._dbs_for_actives()}
        out: list[tuple[int, Any, int, dict[bytes, tuple[bytes, str, V]] | None]] = []
        for partition, db in list(store._dbs.items()):
            if id(db) not in actives:
                continue
            sequence = db.latest_sequence_number()
            part = self._parts.get(partition)
            fresh = part[2] if part is not None and part[0] is db and part[1] == sequence else None
            out.append((partition, db, sequence, fresh))
        return out

    def _forget_inactive(self, actives: list[tuple[int, Any, int, Any]]) -> None:
        for gone in self._parts.keys() - {partition for partition, *_ in actives}:
            del self._parts[gone]

    def unchanged(self) -> bool:
        """Whether the table's active entries are exactly those of the last walk: every
        active partition was walked in full and not written to since, and no partition
        walked then has stopped being active. Always False but for a RocksDB store."""
        if self._store is None:
            return False
        actives = self._actives()
        return all(fresh is not None for *_, fresh in actives) and len(actives) == len(self._parts)

    def _walk(self, partition: int, db: Any, sequence: int) -> Iterator[tuple[bytes, str, V]]:
        """Read ``db`` (``partition``'s database, at ``sequence`` before this read): each
        entry, decoded only when its bytes differ from the memo's; the memo of the
        partition is replaced once the walk completes."""
        store, project = self._store, self._project
        part = self._parts.get(partition)
        memo = part[2] if part is not None else {}
        seen: dict[bytes, tuple[bytes, str, V]] = {}
        for raw_key, raw in store._visible_items(db):
            mark = raw if project is None else hashlib.blake2b(raw, digest_size=16).digest()
            entry = memo.get(raw_key)
            if entry is None or entry[0] != mark:
                value = store._decode_value(raw)
                kept = value if project is None else project(value)
                entry = (mark, store._decode_key(raw_key), kept)
            seen[raw_key] = entry
            yield entry
        self._parts[partition] = (db, sequence, seen)
