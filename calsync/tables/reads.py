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
    since the previous scan.

    For a worker's periodic walks over a whole table (the timer dispatcher's rebuild
    of its heap): at 10,000 resources, decoding every ``Timer`` record again took
    most of a second of the event loop every two seconds. The memo holds the bytes
    and value of every key seen by the last complete scan. Values are shared: callers
    must not mutate them. Anything but a Faust store (a dict in unit tests, Faust's
    memory store) is iterated as it is.

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
        self._store: Any = store if hasattr(store, "_iteritems") else None
        #: encoded key -> (stored bytes or their digest, key, value or its projection), as
        #: of the last complete scan
        self._memo: dict[bytes, tuple[bytes, str, V]] = {}

    def items(self) -> Iterator[tuple[str, V]]:
        """The table's entries now; abandoning the walk keeps the previous memo."""
        store, project = self._store, self._project
        if store is None:
            for key, value in list(self._table.items()):
                yield key, (value if project is None else project(value))
            return
        memo, seen = self._memo, {}
        for raw_key, raw in store._iteritems():
            mark = raw if project is None else hashlib.blake2b(raw, digest_size=16).digest()
            entry = memo.get(raw_key)
            if entry is None or entry[0] != mark:
                value = store._decode_value(raw)
                kept = value if project is None else project(value)
                entry = (mark, store._decode_key(raw_key), kept)
            seen[raw_key] = entry
            yield entry[1], entry[2]
        self._memo = seen
