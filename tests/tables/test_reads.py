"""DecodedReads: one store read per call, a decode only when the stored bytes changed;
DecodedScan: the same for walks over a whole table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import faust
import pytest

from calsync.tables.reads import DecodedReads, DecodedScan
from calsync.tables.records import SyncState
from tests.conftest import RocksdbTableFactory, recording


class SerializedStoreDouble:
    """The three members of Faust's ``SerializedStore`` the view uses, over a dict of
    bytes, counting decodes."""

    def __init__(self) -> None:
        self.raw: dict[bytes, bytes] = {}
        self.decodes = 0

    def _encode_key(self, key: str) -> bytes:
        return json.dumps(key).encode()

    def _get(self, key: bytes) -> bytes | None:
        return self.raw.get(key)

    def _decode_value(self, value: bytes) -> Any:
        self.decodes += 1
        return json.loads(value)

    def put(self, key: str, value: Any) -> None:
        self.raw[self._encode_key(key)] = json.dumps(value).encode()


class TableDouble(dict[str, Any]):
    def __init__(self) -> None:
        super().__init__()
        self.data = SerializedStoreDouble()


def test_unchanged_bytes_are_decoded_once_and_changed_bytes_again() -> None:
    table = TableDouble()
    reads: DecodedReads[Any] = DecodedReads(table)
    table.data.put("a", {"v": 1})
    assert reads.get("a") == {"v": 1}
    assert reads.get("a") == {"v": 1}
    assert table.data.decodes == 1
    table.data.put("a", {"v": 2})
    assert reads.get("a") == {"v": 2}
    assert table.data.decodes == 2


def test_a_deleted_key_reads_as_none_and_is_forgotten() -> None:
    table = TableDouble()
    reads: DecodedReads[Any] = DecodedReads(table)
    table.data.put("a", {"v": 1})
    assert "a" in reads
    table.data.raw.clear()
    assert reads.get("a") is None
    assert "a" not in reads
    table.data.put("a", {"v": 1})
    assert reads.get("a") == {"v": 1}
    assert table.data.decodes == 2


def test_the_cache_keeps_at_most_capacity_keys() -> None:
    table = TableDouble()
    reads: DecodedReads[Any] = DecodedReads(table, capacity=2)
    for key in "abc":
        table.data.put(key, key)
        reads.get(key)
    reads.get("a")  # dropped as the least recently read: decoded again
    assert table.data.decodes == 4
    reads.get("c")
    assert table.data.decodes == 4


def test_a_plain_mapping_is_read_as_it_is() -> None:
    reads: DecodedReads[int] = DecodedReads({"a": 1})
    assert reads.get("a") == 1
    assert reads.get("b") is None


def test_reads_a_faust_rocksdb_table_in_any_of_its_partitions(tmp_path: Path) -> None:
    """Against Faust's own RocksDB store (rocksdict): pins the store members the view
    reads (``_dbs``, ``_encode_key``, ``_encode_value``, ``_decode_value``)."""
    app = faust.App("reads-test", store="rocksdb://", datadir=str(tmp_path))
    table = app.Table("sync_state", value_type=SyncState, partitions=2)
    store = table.data
    reads: DecodedReads[SyncState] = DecodedReads(table)
    key = store._encode_key("cal-1")
    store._db_for_partition(0)[key] = store._encode_value(SyncState(cursor="c1"))
    store._db_for_partition(1)
    first = reads.get("cal-1")
    assert first == SyncState(cursor="c1")
    assert reads.get("cal-1") is first  # unchanged bytes: decoded once
    # the key moves to the other partition's database (the store was rebuilt)
    del store._db_for_partition(0)[key]
    store._db_for_partition(1)[key] = store._encode_value(SyncState(cursor="c2"))
    assert reads.get("cal-1") == SyncState(cursor="c2")
    del store._db_for_partition(1)[key]
    assert reads.get("cal-1") is None
    assert reads.get("nobody") is None


def test_with_the_partition_known_only_that_partition_is_read(tmp_path: Path) -> None:
    app = faust.App("reads-test-2", store="rocksdb://", datadir=str(tmp_path))
    table = app.Table("resources", value_type=SyncState, partitions=2)
    store = table.data
    reads: DecodedReads[SyncState] = DecodedReads(table, partition_of=lambda key: 1)
    store._db_for_partition(0)[store._encode_key("elsewhere")] = store._encode_value(SyncState())
    store._db_for_partition(1)[store._encode_key("here")] = store._encode_value(SyncState())
    assert reads.get("here") == SyncState()
    assert reads.get("elsewhere") is None


def scanned_table(
    rocksdb_table: RocksdbTableFactory,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    *,
    partitions: int,
    active: set[int] | None = None,
) -> tuple[Any, list[bytes]]:
    """A Faust RocksDB table of sync states (:func:`tests.conftest.rocksdb_table`), and
    the list of the values its store decodes (appended to as they are)."""
    table = rocksdb_table(name, SyncState, partitions=partitions, active=active)
    return table, recording(monkeypatch, table.data, "_decode_value")


def test_a_scan_decodes_only_what_changed_and_sees_active_partitions_only(
    rocksdb_table: RocksdbTableFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against Faust's own RocksDB store: pins ``_iteritems`` (the active partitions'
    entries), ``_decode_key`` and ``_decode_value``."""
    table, decoded = scanned_table(rocksdb_table, monkeypatch, "timers", partitions=2)
    store = table.data
    for n in range(3):
        store._db_for_partition(0)[store._encode_key(f"k{n}")] = store._encode_value(
            SyncState(cursor=f"c{n}")
        )
    store._db_for_partition(1)[store._encode_key("standby")] = store._encode_value(SyncState())
    scan: DecodedScan[SyncState] = DecodedScan(table)
    assert dict(scan.items()) == {f"k{n}": SyncState(cursor=f"c{n}") for n in range(3)}
    assert len(decoded) == 3
    assert dict(scan.items())["k1"] == SyncState(cursor="c1")
    assert len(decoded) == 3  # nothing changed: nothing decoded again
    store._db_for_partition(0)[store._encode_key("k1")] = store._encode_value(
        SyncState(cursor="new")
    )
    del store._db_for_partition(0)[store._encode_key("k2")]
    assert dict(scan.items()) == {"k0": SyncState(cursor="c0"), "k1": SyncState(cursor="new")}
    assert len(decoded) == 4


def test_a_scan_of_a_plain_mapping_is_its_items() -> None:
    table = {"a": 1, "b": 2}
    assert dict(DecodedScan(table).items()) == table


class CountingDb:
    """A partition's rocksdict database, counting the lookups made in it."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.gets = 0

    def get(self, key: bytes) -> bytes | None:
        self.gets += 1
        return self.db.get(key)  # type: ignore[no-any-return]

    def latest_sequence_number(self) -> int:
        return self.db.latest_sequence_number()  # type: ignore[no-any-return]


def test_an_unwritten_partition_is_not_read_again_and_any_write_is_seen(tmp_path: Path) -> None:
    """With the partition known, a read is skipped while the partition's database saw no
    write at all; a write to any key of it, a delete, a key that appears, or the
    database replaced (a rebalance reopens it) makes the next read look again."""
    app = faust.App("reads-test-3", store="rocksdb://", datadir=str(tmp_path))
    table = app.Table("sync_state", value_type=SyncState, partitions=1)
    store = table.data
    reads: DecodedReads[SyncState] = DecodedReads(table, partition_of=lambda key: 0)
    real = store._db_for_partition(0)
    db = store._dbs[0] = CountingDb(real)

    def put(key: str, state: SyncState) -> None:
        real[store._encode_key(key)] = store._encode_value(state)

    put("cal-1", SyncState(cursor="c1"))
    first = reads.get("cal-1")
    assert first == SyncState(cursor="c1")
    assert reads.get("nobody") is None
    assert db.gets == 2
    assert reads.get("cal-1") is first and reads.get("nobody") is None
    assert db.gets == 2  # nothing written: neither looked up again
    put("cal-2", SyncState(cursor="other"))  # another key of the same partition
    assert reads.get("cal-1") is first  # looked up, same bytes: not decoded again
    assert db.gets == 3
    put("cal-1", SyncState(cursor="c2"))
    assert reads.get("cal-1") == SyncState(cursor="c2")
    put("nobody", SyncState(cursor="new"))
    assert reads.get("nobody") == SyncState(cursor="new")  # an absent key that appeared
    del real[store._encode_key("cal-1")]
    assert reads.get("cal-1") is None
    # the partition's database closed and another opened in its place (a rebalance)
    other = tmp_path / "other"
    other.mkdir()
    replaced = faust.App("reads-test-4", store="rocksdb://", datadir=str(other))
    fresh = replaced.Table("sync_state", value_type=SyncState, partitions=1).data
    fresh_db = fresh._db_for_partition(0)
    fresh_db[store._encode_key("nobody")] = store._encode_value(SyncState(cursor="moved"))
    store._dbs[0] = CountingDb(fresh_db)
    assert reads.get("nobody") == SyncState(cursor="moved")


def test_a_projected_scan_keeps_only_the_projection_and_decodes_what_changed(
    rocksdb_table: RocksdbTableFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    table, decoded = scanned_table(rocksdb_table, monkeypatch, "sync_state", partitions=1)
    store = table.data
    db = store._db_for_partition(0)
    for n in range(3):
        db[store._encode_key(f"k{n}")] = store._encode_value(
            SyncState(synced_at=float(n), index={f"ev{i}": "v" for i in range(50)})
        )
    scan = DecodedScan(table, project=lambda state: state.synced_at)
    assert dict(scan.items()) == {"k0": 0.0, "k1": 1.0, "k2": 2.0}
    assert len(decoded) == 3
    # the memo holds a 16-byte digest and the projection, not the stored bytes or value
    memo = scan._parts[0][2].values()
    assert all(len(mark) == 16 and isinstance(kept, float) for mark, _, kept in memo)
    assert dict(scan.items()) == {"k0": 0.0, "k1": 1.0, "k2": 2.0}
    assert len(decoded) == 3
    db[store._encode_key("k1")] = store._encode_value(SyncState(synced_at=9.0))
    assert dict(scan.items()) == {"k0": 0.0, "k1": 9.0, "k2": 2.0}
    assert len(decoded) == 4
    assert dict(
        DecodedScan({"a": SyncState(synced_at=5.0)}, project=lambda s: s.synced_at).items()
    ) == {"a": 5.0}


async def test_a_scan_reads_only_the_partitions_written_to_since_it_last_read_them(
    rocksdb_table: RocksdbTableFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RocksDB's sequence number per partition: an unwritten partition is not read again
    (neither by ``items`` nor by ``count``); a write, a write made while a walk of it was
    under way, a database replaced (a rebalance reopens it), a partition gained or lost
    are all seen by the next walk."""
    active = {0, 1}
    table, decoded = scanned_table(
        rocksdb_table, monkeypatch, "timers", partitions=3, active=active
    )
    store = table.data
    databases = recording(monkeypatch, store, "_visible_items")

    def read() -> list[int]:  # the partitions read so far, in order
        return sorted(next(p for p, d in store._dbs.items() if d is db) for db in databases)

    def put(partition: int, key: str, cursor: str) -> None:
        db = store._db_for_partition(partition)
        db[store._encode_key(key)] = store._encode_value(SyncState(cursor=cursor))

    for p in range(3):
        put(p, f"p{p}", "a")
    scan: DecodedScan[SyncState] = DecodedScan(table)
    assert {k: v.cursor for k, v in scan.items()} == {"p0": "a", "p1": "a"}
    assert read() == [0, 1]
    assert await scan.count() == 2
    assert {k: v.cursor for k, v in scan.items()} == {"p0": "a", "p1": "a"}
    assert read() == [0, 1]  # nothing written: nothing read again
    put(1, "p1", "b")
    assert await scan.count() == 2
    assert {k: v.cursor for k, v in scan.items()} == {"p0": "a", "p1": "b"}
    assert read() == [0, 1, 1]
    assert len(decoded) == 3  # only the changed value decoded
    # a write while a walk of its partition is under way: the next walk sees it
    walk = scan.items()
    first = [next(walk)]
    put(0, "p0-late", "c")
    rest = list(walk)
    assert "p0" in dict(first + rest)
    assert {k: v.cursor for k, v in scan.items()}["p0-late"] == "c"
    # a walk abandoned midway: the partition is read in full the next time
    walk = scan.items()
    next(walk)
    put(0, "p0-later", "d")
    walk.close()
    assert {k: v.cursor for k, v in scan.items()}["p0-later"] == "d"
    # partition 2 gained, partition 0 lost
    active.discard(0)
    active.add(2)
    assert {k: v.cursor for k, v in scan.items()} == {"p1": "b", "p2": "a"}
    assert await scan.count() == 2
    assert set(scan._parts) == {1, 2}
    # partition 1's database replaced by another holding other entries
    fresh_db = rocksdb_table("timers", SyncState, partitions=3).data._db_for_partition(1)
    fresh_db[store._encode_key("moved")] = store._encode_value(SyncState(cursor="m"))
    store._dbs[1] = fresh_db
    assert {k: v.cursor for k, v in scan.items()} == {"moved": "m", "p2": "a"}
    assert await DecodedScan({"a": 1, "b": 2}).count() == 2
