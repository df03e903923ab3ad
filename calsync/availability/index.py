"""The availability index of one resource: its occurrences by native id, and their timeline.

One table value per resource (table ``busy``, raw bytes) holds both halves:

* the **timeline** (:class:`~calsync.availability.intervals.Timeline`): the merged
  segments every query reads. It sits first in the value, so a query decodes a
  12-byte header and casts two ``memoryview``\\ s (:func:`timeline_of`), whatever the
  number of occurrences: a few microseconds for one resource and one week;
* the **entries**: each occurrence in the horizon as ``native id -> (start, end,
  flags, synced_at)``. The sync applies each acknowledged batch of unified events to
  them (:meth:`BusyIndex.apply`); ``explain`` reads them.

The index is written in the same handling that emits the events, from exactly the
events the broker acknowledged (see :meth:`calsync.agents.service.SyncService`): a
crash replays both, so the index never disagrees with ``calsync.events``.

Value format (little-endian): header ``<2sBxII`` (magic ``b"bx"``, version ``1``, pad,
entry count ``n``, timeline length ``t``), the ``t`` timeline bytes, then ``n`` int64
starts, ``n`` int64 ends, ``n`` int64 synced-at seconds, ``n`` uint8 flags, ``n``
uint16 id lengths and the ids, UTF-8, back to back.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from itertools import accumulate, pairwise
from operator import itemgetter
from typing import NamedTuple

from calsync.availability.intervals import Timeline, epoch_seconds, flags_for
from calsync.errors import CodecError
from calsync.model import ChangeKind, UnifiedEvent

__all__ = ["BusyIndex", "Entry", "IndexCache", "timeline_of"]

_HEADER = struct.Struct("<2sBxII")
_MAGIC = b"bx"
_VERSION = 1
_LITTLE = sys.byteorder == "little"
#: A native id longer than this is stored cut (ids are opaque; none comes close).
_MAX_ID_BYTES = 0xFFFF


class Entry(NamedTuple):
    """One occurrence in the index: ``[start, end)`` epoch seconds, its flags, when synced.

    A named tuple: a big calendar's index is tens of thousands of these, built on every
    decode and apply, and a tuple is built several times faster than a dataclass."""

    native_event_id: str
    start: int
    end: int
    flags: int
    synced_at: int


def timeline_of(value: bytes | None) -> Timeline:
    """The timeline of a stored index value, without decoding its entries."""
    if value is None:
        return Timeline.EMPTY
    count, length = _frame(value)
    del count
    return Timeline.decode(memoryview(value)[_HEADER.size : _HEADER.size + length])


def _frame(value: bytes) -> tuple[int, int]:
    if len(value) < _HEADER.size:
        raise CodecError(f"index value too short: {len(value)} bytes")
    magic, version, count, length = _HEADER.unpack_from(value)
    if magic != _MAGIC or version != _VERSION:
        raise CodecError(f"not an index value (magic {magic!r}, version {version})")
    if len(value) < _HEADER.size + length + 27 * count:
        raise CodecError(f"index value of {len(value)} bytes cannot hold {count} entries")
    return count, length


def _column(data: memoryview, at: int, count: int, code: str) -> tuple[list[int], int]:
    size = array(code).itemsize * count
    column = array(code, bytes(data[at : at + size]))
    if not _LITTLE:
        column.byteswap()
    return column.tolist(), at + size


#: the order of entries in a stored value: by start, end, then id
_BY_TIME = itemgetter(1, 2, 0)
#: an entry's fields, one getter each
_FIELDS = tuple(map(itemgetter, range(len(Entry._fields))))


class BusyIndex:
    """One resource's occurrences, mutable; :meth:`encode` gives the table value.

    ``entries`` maps a native event id to its :class:`Entry`. The timeline is
    rebuilt from the entries on :meth:`encode` (O(n log n)), so it is canonical and
    never drifts from them.
    """

    __slots__ = ("entries",)

    def __init__(self, entries: dict[str, Entry] | None = None) -> None:
        self.entries: dict[str, Entry] = entries if entries is not None else {}

    @classmethod
    def decode(cls, value: bytes | None) -> BusyIndex:
        """The index a stored value holds (an empty one for ``None``)."""
        if value is None:
            return cls()
        count, length = _frame(value)
        data = memoryview(value)
        at = _HEADER.size + length
        starts, at = _column(data, at, count, "q")
        ends, at = _column(data, at, count, "q")
        synced, at = _column(data, at, count, "q")
        flags = list(data[at : at + count])
        at += count
        lengths, at = _column(data, at, count, "H")
        if at + sum(lengths) > len(value):
            raise CodecError("index value ends inside its ids")
        raw = bytes(data[at:])
        offsets = [0, *accumulate(lengths)]
        natives = [raw[a:b].decode("utf-8", "replace") for a, b in pairwise(offsets)]
        entries = map(Entry._make, zip(natives, starts, ends, flags, synced, strict=True))
        return cls(dict(zip(natives, entries, strict=True)))

    def encode(self) -> bytes:
        """The table value: the rebuilt timeline first, then the entries (module doc).

        Leaves :attr:`entries` in the stored order (as :meth:`decode` does): a kept
        index that a delta changed in a few places is then nearly sorted, which the
        next encode sorts in about a third of the time (20,000 entries: 4 ms, not 10).
        """
        ordered = sorted(self.entries.values(), key=_BY_TIME)
        # a column at a time: ``zip(*ordered)`` makes an iterator per entry, and the
        # collections those allocations trigger cost a big calendar's worker more
        # than the transposition itself
        natives, starts, ends, flags, synced = (list(map(field, ordered)) for field in _FIELDS)
        self.entries = dict(zip(natives, ordered, strict=True))
        timeline = Timeline.from_segments(zip(starts, ends, flags, strict=True)).encode()
        ids = [native.encode()[:_MAX_ID_BYTES] for native in natives]
        columns = [array("q", starts), array("q", ends), array("q", synced)]
        lengths = array("H", map(len, ids))
        if not _LITTLE:
            for column in columns:
                column.byteswap()
            lengths.byteswap()
        header = _HEADER.pack(_MAGIC, _VERSION, len(ordered), len(timeline))
        return b"".join(
            (
                header,
                timeline,
                *(c.tobytes() for c in columns),
                bytes(flags),
                lengths.tobytes(),
                *ids,
            )
        )

    def apply(self, events: Iterable[UnifiedEvent], *, synced_at: int) -> list[Entry]:
        """Apply unified events in order; returns the entries they added or changed."""
        changed: list[Entry] = []
        for event in events:
            native = event.native_event_id
            if event.change is ChangeKind.DELETE:
                self.entries.pop(native, None)
                continue
            if event.start_utc is None or event.end_utc is None or event.status_intent is None:
                continue  # an upsert always has them (UnifiedEvent.upsert); be safe anyway
            entry = Entry(
                native,
                epoch_seconds(event.start_utc),
                epoch_seconds(event.end_utc, ceil=True),
                flags_for(event.status_intent, all_day=bool(event.is_all_day)),
                synced_at,
            )
            self.entries[native] = entry
            changed.append(entry)
        return changed

    def timeline(self) -> Timeline:
        return Timeline.from_segments((e.start, e.end, e.flags) for e in self.entries.values())

    def covering(self, moment: int) -> list[Entry]:
        """The entries whose interval holds ``moment``, by start (for ``explain``)."""
        found = [e for e in self.entries.values() if e.start <= moment < e.end]
        return sorted(found, key=lambda e: (e.start, e.native_event_id))

    def overlapping(self, start: int, end: int, mask: int) -> Iterator[Entry]:
        """The entries sharing an instant with ``[start, end)`` whose flags meet ``mask``.

        An entry of no length (a zero-duration event) shares no instant with anything
        (nor does an empty window), as in the timeline, which free-slot answers read:
        a hold across it is not refused when the same time is offered as free."""
        for entry in self.entries.values():
            if max(start, entry.start) < min(end, entry.end) and entry.flags & mask:
                yield entry

    def __len__(self) -> int:
        return len(self.entries)


class IndexCache:
    """Decoded indexes of big calendars kept between their syncs, each with the digest
    of the stored value it equals.

    A push to a calendar of 20,000 events used to decode its stored index (about
    35 ms in a busy worker) and encode it again (about 40 ms) on every sync: most of
    the worker's time per push on such a calendar (docs/benchmarks.md §2). The worker that owns a
    resource is its index's only writer, so the object it stored last can serve its
    next sync, provided the stored value is still that one: :meth:`take` hands an
    index out only for the digest of the value stored now, which a write by another
    worker (before a rebalance gave the partition back) or a lost changelog record
    changes.

    :meth:`take` removes the index: the taker mutates it, and a sync cut short (a
    cancellation) must not leave a half-applied index behind. Only indexes of at
    least ``min_entries`` are kept, at most ``max_entries`` entries in all, the least
    recently kept dropped first (about 280 bytes an entry with 26-character ids:
    200,000 is about 56 MB).
    """

    def __init__(self, *, max_entries: int = 200_000, min_entries: int = 1_000) -> None:
        self.max_entries = max_entries
        self.min_entries = min_entries
        self._kept: OrderedDict[str, tuple[str, BusyIndex]] = OrderedDict()
        self._size = 0  # entries held, summed over the kept indexes

    def take(self, key: str, digest: str) -> BusyIndex | None:
        """The index kept for ``key`` if it equals the value of ``digest``; either way,
        ``key`` is no longer kept. An empty digest (no stored value, or one stored
        before digests were) matches nothing."""
        kept = self._kept.pop(key, None)
        if kept is None:
            return None
        self._size -= len(kept[1])
        return kept[1] if digest and kept[0] == digest else None

    def keep(self, key: str, digest: str, index: BusyIndex) -> None:
        """Keep ``index``, equal to the stored value of ``digest``; the caller hands it
        over and changes it no more."""
        self.discard(key)
        if len(index) < self.min_entries or len(index) > self.max_entries:
            return
        self._kept[key] = (digest, index)
        self._size += len(index)
        while self._size > self.max_entries:
            _, (_, dropped) = self._kept.popitem(last=False)
            self._size -= len(dropped)

    def discard(self, key: str) -> None:
        kept = self._kept.pop(key, None)
        if kept is not None:
            self._size -= len(kept[1])

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def entries(self) -> int:
        """Entries held, summed over the kept indexes."""
        return self._size
