"""Half-open UTC intervals as integers, and the compact per-resource timeline.

Time is an ``int`` of **seconds since the Unix epoch, UTC**. An interval is a pair
``(start, end)`` meaning every instant ``t`` with ``start <= t < end``; one with
``start >= end`` is empty.

Why seconds and not minutes: providers send seconds (RFC 5545 ``DATE-TIME``, Google
and Graph ``dateTime``), so seconds are exact where minutes would have to round busy
time outwards; an ``int64`` never overflows (``int32`` seconds end in 2038, ``int32``
minutes would save 8 bytes an interval and nothing else). The unit costs nothing at
read time: :meth:`Timeline.decode` does not copy or convert numbers at all, it casts
a ``memoryview`` over the stored bytes, so "one resource, one week" costs a header
check and two bisections whatever the unit.

**Interval lists.** The functions below take and return *normalized* lists: sorted
by start, no empty intervals, no two intervals overlapping *or touching* (``[1, 2)``
and ``[2, 3)`` are one interval ``[1, 3)``). A normalized list is the unique
representation of its set of instants, so equal sets give equal lists.
:func:`normalize` makes one from any iterable; the other functions assume their
inputs are normalized and do not check (checking would cost as much as the work).

**Timelines.** A :class:`Timeline` is one resource's busy picture: a sorted list of
non-overlapping *segments* ``(start, end, flags)``, where ``flags`` is the union of
the :class:`Flag` bits of every occurrence covering the segment (an hour where a
busy meeting overlaps a tentative one is ``BUSY | TENTATIVE``). Its canonical form
has no empty segment, no segment with ``flags == 0``, and no two touching segments
with equal flags, so two timelines of the same instants-to-flags function are equal.
It is stored in a table value with :meth:`Timeline.encode` (format in its docstring).
"""

from __future__ import annotations

import enum
import struct
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import ClassVar, TypeAlias

from calsync.errors import CodecError
from calsync.model import Occurrence, StatusIntent

__all__ = [
    "DEFAULT_BLOCKING",
    "INTENT_FLAGS",
    "Flag",
    "Interval",
    "Segment",
    "Timeline",
    "clip",
    "epoch_seconds",
    "flags_for",
    "intersect",
    "normalize",
    "overlaps",
    "subtract",
    "total",
    "union",
    "widen",
]

#: ``[start, end)`` in epoch seconds, UTC.
Interval = tuple[int, int]
#: ``(start, end, flags)``: an interval and the :class:`Flag` bits that hold in it.
Segment = tuple[int, int, int]


class Flag(enum.IntFlag):
    """What holds during a segment. One bit per :class:`StatusIntent`, plus two more.

    The numeric values are stored in table values: never renumber a bit.
    """

    BUSY = 1
    TENTATIVE = 2
    OUT_OF_OFFICE = 4
    FREE = 8
    CANCELLED = 16
    #: A calsync hold (a slot reserved through the holds API, not yet a provider event).
    HOLD = 32
    #: At least one occurrence covering the segment is an all-day event.
    ALL_DAY = 128


#: The bit of each status intent.
INTENT_FLAGS: Mapping[StatusIntent, Flag] = MappingProxyType(
    {
        StatusIntent.BUSY: Flag.BUSY,
        StatusIntent.TENTATIVE: Flag.TENTATIVE,
        StatusIntent.OUT_OF_OFFICE: Flag.OUT_OF_OFFICE,
        StatusIntent.FREE: Flag.FREE,
        StatusIntent.CANCELLED: Flag.CANCELLED,
    }
)

#: What blocks a booking unless the caller says otherwise: busy, away, and held time.
#: Tentative time is bookable by default (as at Google and Microsoft free/busy).
DEFAULT_BLOCKING: int = int(Flag.BUSY | Flag.OUT_OF_OFFICE | Flag.HOLD)


def flags_for(intent: StatusIntent, *, all_day: bool = False) -> int:
    """The flags of one occurrence with this intent."""
    return _FLAGS_FOR[intent, bool(all_day)]


# flags_for runs once per occurrence applied; IntFlag arithmetic costs more than this
_FLAGS_FOR: Mapping[tuple[StatusIntent, bool], int] = {
    (intent, all_day): int(flag) | (int(Flag.ALL_DAY) if all_day else 0)
    for intent, flag in INTENT_FLAGS.items()
    for all_day in (False, True)
}


def epoch_seconds(moment: datetime, *, ceil: bool = False) -> int:
    """``moment`` (timezone-aware) as epoch seconds, rounded down, or up if ``ceil``.

    Round a busy interval's start down and its end up, so sub-second provider
    times never shrink busy time. Raises :class:`ValueError` for a naive datetime.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime: {moment!r}")
    # integer arithmetic: float timestamps lose microseconds far from the epoch
    delta = moment - _EPOCH
    seconds = delta.days * 86_400 + delta.seconds
    return seconds + 1 if ceil and delta.microseconds else seconds


_EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")


# -- interval lists ---------------------------------------------------------------


def normalize(intervals: Iterable[Interval]) -> list[Interval]:
    """The normalized list of the union of ``intervals`` (any order, empties allowed)."""
    out: list[Interval] = []
    for start, end in sorted(iv for iv in intervals if iv[0] < iv[1]):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def union(*lists: Iterable[Interval]) -> list[Interval]:
    """The normalized union of any number of interval lists (normalized or not)."""
    return normalize(iv for intervals in lists for iv in intervals)


def intersect(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    """The instants in both ``a`` and ``b`` (both normalized); normalized, linear time."""
    out: list[Interval] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start = max(a[i][0], b[j][0])
        end = min(a[i][1], b[j][1])
        if start < end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    """The instants in ``a`` and not in ``b`` (both normalized); normalized, linear time."""
    out: list[Interval] = []
    j = 0
    for start, end in a:
        while j < len(b) and b[j][1] <= start:
            j += 1
        k = j
        cursor = start
        while k < len(b) and b[k][0] < end:
            if b[k][0] > cursor:
                out.append((cursor, b[k][0]))
            cursor = max(cursor, b[k][1])
            k += 1
        if cursor < end:
            out.append((cursor, end))
    return out


def clip(a: Sequence[Interval], start: int, end: int) -> list[Interval]:
    """The part of normalized ``a`` inside ``[start, end)``; bisects, so O(log n + k)."""
    if start >= end:
        return []
    i = bisect_right(a, start, key=_end)
    j = bisect_left(a, end, lo=i, key=_start)
    out = list(a[i:j])
    if out:
        out[0] = (max(out[0][0], start), out[0][1])
        out[-1] = (out[-1][0], min(out[-1][1], end))
    return out


def overlaps(a: Sequence[Interval], start: int, end: int) -> bool:
    """Whether normalized ``a`` shares an instant with ``[start, end)``; O(log n)."""
    if start >= end:
        return False
    i = bisect_right(a, start, key=_end)
    return i < len(a) and a[i][0] < end


def widen(a: Iterable[Interval], before: int, after: int) -> list[Interval]:
    """Each interval ``[s, e)`` as ``[s - before, e + after)``, normalized (``>= 0`` each)."""
    if before < 0 or after < 0:
        raise ValueError("widen takes non-negative amounts")
    return normalize((s - before, e + after) for s, e in a)


def total(a: Iterable[Interval]) -> int:
    """The length of a normalized list, in seconds."""
    return sum(e - s for s, e in a)


def _start(iv: Interval) -> int:
    return iv[0]


def _end(iv: Interval) -> int:
    return iv[1]


# -- the per-resource timeline ----------------------------------------------------

# magic, format version, pad, segment count; the arrays that follow are 8-aligned
_HEADER = struct.Struct("<2sBxI")
_MAGIC = b"av"
_VERSION = 1
_LITTLE = sys.byteorder == "little"
# a column: an array or bytes built here, or a memoryview over a stored value
_Column: TypeAlias = "array[int] | bytes | memoryview"


class Timeline:
    """One resource's segments ``(start, end, flags)``, canonical (see the module doc).

    Immutable. Built by :meth:`from_segments` (which canonicalizes) or
    :meth:`decode` (which trusts the bytes :meth:`encode` wrote and checks only
    their frame). Queries bisect, so their cost is O(log n) plus what they return.
    """

    __slots__ = ("_ends", "_flags", "_starts")
    __hash__ = None  # type: ignore[assignment]  # holds memoryviews: equal, never hashed

    def __init__(self, starts: _Column, ends: _Column, flags: _Column) -> None:
        """Wrap three equal-length columns that are already canonical (not checked)."""
        self._starts = starts
        self._ends = ends
        self._flags = flags

    EMPTY: ClassVar[Timeline]  # assigned below the class

    @classmethod
    def from_segments(cls, segments: Iterable[Segment]) -> Timeline:
        """The canonical timeline of any segments, in any order, overlapping or not.

        Where segments overlap, the flags are or-ed; empty segments and segments
        with ``flags == 0`` add nothing. O(n log n).
        """
        # Each flags value's segments are merged first (one sort and a linear pass):
        # a calendar's thousands of occurrences carry an intent or two, so the sweep
        # below sees a few merged runs, and a calendar with one flags value needs no
        # sweep at all (20,000 occurrences: 15 ms instead of 150 ms).
        by_flags: dict[int, list[Interval]] = {}
        for start, end, flags in segments:
            if start < end and flags:
                if not 0 < flags < 256:
                    raise ValueError(f"flags must fit in one byte: {flags}")
                by_flags.setdefault(flags, []).append((start, end))
        starts, ends, out_flags = array("q"), array("q"), bytearray()
        if len(by_flags) == 1:
            ((only, intervals),) = by_flags.items()
            for start, end in normalize(intervals):
                starts.append(start)
                ends.append(end)
            return cls(starts, ends, bytes([only]) * len(starts))
        events: list[tuple[int, int, int]] = []  # (time, +1/-1, flags)
        for flags, intervals in by_flags.items():
            for start, end in normalize(intervals):
                events.append((start, 1, flags))
                events.append((end, -1, flags))
        events.sort()
        open_count: dict[int, int] = {}  # flags value -> how many open segments carry it
        current = 0
        since = 0
        i = 0
        while i < len(events):
            moment = events[i][0]
            while i < len(events) and events[i][0] == moment:
                _, step, flags = events[i]
                left = open_count.get(flags, 0) + step
                if left:
                    open_count[flags] = left
                else:
                    del open_count[flags]
                i += 1
            new = 0
            for flags in open_count:  # few distinct values: an intent or two, all-day, hold
                new |= flags
            if new == current:
                continue
            if current:
                if out_flags and ends[-1] == since and out_flags[-1] == current:
                    ends[-1] = moment
                else:
                    starts.append(since)
                    ends.append(moment)
                    out_flags.append(current)
            current, since = new, moment
        return cls(starts, ends, bytes(out_flags))

    @classmethod
    def from_occurrences(cls, occurrences: Iterable[Occurrence]) -> Timeline:
        """The timeline of provider occurrences: start rounded down, end up, to seconds."""
        return cls.from_segments(
            (
                epoch_seconds(occ.start_utc),
                epoch_seconds(occ.end_utc, ceil=True),
                flags_for(occ.status_intent, all_day=occ.is_all_day),
            )
            for occ in occurrences
        )

    # -- storage --------------------------------------------------------------------

    def encode(self) -> bytes:
        """The table-value bytes: an 8-byte header, then three columns, little-endian.

        Header ``<2sBxI``: magic ``b"av"``, format version ``1``, a pad byte, the
        segment count ``n``; then ``n`` int64 starts, ``n`` int64 ends, ``n`` uint8
        flags: ``8 + 17 n`` bytes. Columns rather than rows so :meth:`decode` can
        bisect the starts and ends in place.
        """
        starts, ends = array("q", self._starts), array("q", self._ends)
        if not _LITTLE:
            starts.byteswap()
            ends.byteswap()
        header = _HEADER.pack(_MAGIC, _VERSION, len(starts))
        return b"".join((header, starts.tobytes(), ends.tobytes(), bytes(self._flags)))

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Timeline:
        """The timeline :meth:`encode` wrote, without copying the columns (little-endian hosts).

        Checks the frame (magic, version, length) and raises
        :class:`calsync.errors.CodecError` if it is wrong; the content is trusted.
        The result keeps ``data`` alive.
        """
        if len(data) < _HEADER.size:
            raise CodecError(f"timeline value too short: {len(data)} bytes")
        magic, version, count = _HEADER.unpack_from(data)
        if magic != _MAGIC or version != _VERSION:
            raise CodecError(f"not a timeline value (magic {magic!r}, version {version})")
        if len(data) != _HEADER.size + 17 * count:
            raise CodecError(f"timeline value of {len(data)} bytes cannot hold {count} segments")
        view = memoryview(data)
        mid, tail = _HEADER.size + 8 * count, _HEADER.size + 16 * count
        if _LITTLE:
            return cls(view[_HEADER.size : mid].cast("q"), view[mid:tail].cast("q"), view[tail:])
        starts, ends = (
            array("q", bytes(view[_HEADER.size : mid])),
            array("q", bytes(view[mid:tail])),
        )
        starts.byteswap()
        ends.byteswap()
        return cls(starts, ends, bytes(view[tail:]))

    # -- queries --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._starts)

    def __iter__(self) -> Iterator[Segment]:
        return zip(self._starts, self._ends, self._flags, strict=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Timeline):
            return NotImplemented
        return list(self) == list(other)

    def __repr__(self) -> str:
        return f"Timeline({list(self)!r})"

    def _range(self, start: int, end: int) -> tuple[int, int]:
        """Indexes ``[i, j)`` of the segments that share an instant with ``[start, end)``."""
        if start >= end:
            return 0, 0
        i = bisect_right(self._ends, start)
        return i, bisect_left(self._starts, end, i)

    def segments(self, start: int, end: int) -> list[Segment]:
        """The segments inside ``[start, end)``, clipped to it."""
        i, j = self._range(start, end)
        out = list(
            zip(
                _tolist(self._starts, i, j),
                _tolist(self._ends, i, j),
                _tolist(self._flags, i, j),
                strict=True,
            )
        )
        if out:
            out[0] = (max(out[0][0], start), *out[0][1:])
            out[-1] = (out[-1][0], min(out[-1][1], end), out[-1][2])
        return out

    def window(self, start: int, end: int) -> Timeline:
        """The timeline restricted to ``[start, end)`` (still canonical)."""
        segments = self.segments(start, end)
        return Timeline(
            array("q", (s[0] for s in segments)),
            array("q", (s[1] for s in segments)),
            bytes(s[2] for s in segments),
        )

    def blocking(self, start: int, end: int, mask: int = DEFAULT_BLOCKING) -> list[Interval]:
        """The normalized instants in ``[start, end)`` whose flags meet ``mask``."""
        i, j = self._range(start, end)
        mask = int(mask)  # a Flag mask would run enum code on every ``&``
        out: list[Interval] = []
        for s, e, f in zip(
            _tolist(self._starts, i, j),
            _tolist(self._ends, i, j),
            _tolist(self._flags, i, j),
            strict=True,
        ):
            if f & mask:
                if out and out[-1][1] == s:  # touching segments of different flags
                    out[-1] = (out[-1][0], e)
                else:
                    out.append((s, e))
        if out:
            out[0] = (max(out[0][0], start), out[0][1])
            out[-1] = (out[-1][0], min(out[-1][1], end))
        return out

    def is_free(self, start: int, end: int, mask: int = DEFAULT_BLOCKING) -> bool:
        """Whether no instant of ``[start, end)`` has flags meeting ``mask`` (a conflict check)."""
        i, j = self._range(start, end)
        mask = int(mask)
        return not any(f & mask for f in _tolist(self._flags, i, j))

    def flags_at(self, moment: int) -> int:
        """The flags at instant ``moment`` (``0``: nothing there)."""
        i = bisect_right(self._ends, moment)
        return self._flags[i] if i < len(self._starts) and self._starts[i] <= moment else 0

    def check(self) -> None:
        """Raise :class:`ValueError` unless the timeline is canonical (for tests and tools)."""
        previous: Segment | None = None
        for segment in self:
            start, end, flags = segment
            if not start < end or not 0 < flags < 256:
                raise ValueError(f"bad segment {segment}")
            if previous is not None and (
                start < previous[1] or (start == previous[1] and flags == previous[2])
            ):
                raise ValueError(f"segments {previous} and {segment} overlap or should merge")
            previous = segment


def _tolist(column: _Column, i: int, j: int) -> list[int]:
    # slicing and tolist() run in C; indexing a memoryview item by item does not
    part = column[i:j]
    return list(part) if isinstance(part, bytes) else part.tolist()


Timeline.EMPTY = Timeline(array("q"), array("q"), b"")
