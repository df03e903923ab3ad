"""Interval arithmetic and the timeline, against a naive set-of-points oracle."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calsync.availability.intervals import (
    DEFAULT_BLOCKING,
    Flag,
    Interval,
    Segment,
    Timeline,
    clip,
    epoch_seconds,
    flags_for,
    intersect,
    normalize,
    overlaps,
    subtract,
    total,
    union,
    widen,
)
from calsync.errors import CodecError
from calsync.model import Occurrence, StatusIntent, Transparency

SPAN = 60  # the oracle's universe: points 0..SPAN-1 (and a margin for widening)

# -- oracle -----------------------------------------------------------------------


def points(intervals: Iterable[Interval]) -> set[int]:
    return {t for s, e in intervals for t in range(s, e)}


def runs(pts: set[int]) -> list[Interval]:
    """The normalized list of a set of points: maximal runs of consecutive points."""
    out: list[Interval] = []
    for t in sorted(pts):
        if out and out[-1][1] == t:
            out[-1] = (out[-1][0], t + 1)
        else:
            out.append((t, t + 1))
    return out


def flag_map(segments: Iterable[Segment]) -> dict[int, int]:
    out: dict[int, int] = {}
    for s, e, f in segments:
        for t in range(s, e):
            out[t] = out.get(t, 0) | f
    return {t: f for t, f in out.items() if f}


def flag_runs(flags: dict[int, int]) -> list[Segment]:
    out: list[Segment] = []
    for t in sorted(flags):
        if out and out[-1][1] == t and out[-1][2] == flags[t]:
            out[-1] = (out[-1][0], t + 1, flags[t])
        else:
            out.append((t, t + 1, flags[t]))
    return out


raw_intervals = st.lists(
    st.tuples(st.integers(0, SPAN), st.integers(0, SPAN)).map(lambda p: (p[0], p[0] + p[1] // 4)),
    max_size=12,
)
normalized = raw_intervals.map(normalize)
flag_values = st.sampled_from([int(f) for f in Flag]) | st.integers(1, 255)
raw_segments = st.lists(
    st.tuples(st.integers(0, SPAN), st.integers(0, 20), flag_values).map(
        lambda p: (p[0], p[0] + p[1], p[2])
    ),
    max_size=15,
)
fast = settings(max_examples=300, deadline=None)

# -- interval lists ---------------------------------------------------------------


@fast
@given(raw_intervals)
def test_normalize_is_the_runs_of_the_union(intervals: list[Interval]) -> None:
    assert normalize(intervals) == runs(points(intervals))


@fast
@given(raw_intervals, raw_intervals)
def test_union(a: list[Interval], b: list[Interval]) -> None:
    assert union(a, b) == runs(points(a) | points(b))


@fast
@given(normalized, normalized)
def test_intersect(a: list[Interval], b: list[Interval]) -> None:
    assert intersect(a, b) == runs(points(a) & points(b))


@fast
@given(normalized, normalized)
def test_subtract(a: list[Interval], b: list[Interval]) -> None:
    assert subtract(a, b) == runs(points(a) - points(b))


@fast
@given(normalized, st.integers(-5, SPAN + 5), st.integers(-5, SPAN + 5))
def test_clip(a: list[Interval], start: int, end: int) -> None:
    assert clip(a, start, end) == runs(points(a) & set(range(start, end)))


@fast
@given(normalized, st.integers(-5, SPAN + 5), st.integers(-5, SPAN + 5))
def test_overlaps(a: list[Interval], start: int, end: int) -> None:
    assert overlaps(a, start, end) == bool(points(a) & set(range(start, end)))


@fast
@given(normalized, st.integers(0, 7), st.integers(0, 7))
def test_widen(a: list[Interval], before: int, after: int) -> None:
    assert widen(a, before, after) == runs(points((s - before, e + after) for s, e in a))


def test_touching_intervals_merge_and_empty_ones_vanish() -> None:
    assert normalize([(5, 7), (1, 3), (3, 5), (9, 9), (8, 6)]) == [(1, 7)]
    assert total([(1, 3), (10, 20)]) == 12
    assert subtract([(0, 10)], [(2, 3), (5, 6)]) == [(0, 2), (3, 5), (6, 10)]
    assert intersect([(0, 10)], [(10, 12)]) == []
    with pytest.raises(ValueError):
        widen([(0, 1)], -1, 0)


# -- flags and occurrences --------------------------------------------------------


def test_every_intent_has_its_own_bit() -> None:
    bits = [flags_for(intent) for intent in StatusIntent]
    assert len(set(bits)) == len(bits)
    assert all(b & (b - 1) == 0 for b in bits)
    assert flags_for(StatusIntent.BUSY, all_day=True) == Flag.BUSY | Flag.ALL_DAY
    assert DEFAULT_BLOCKING == Flag.BUSY | Flag.OUT_OF_OFFICE | Flag.HOLD
    assert not DEFAULT_BLOCKING & Flag.TENTATIVE


def test_epoch_seconds_rounds_outwards_only_when_asked() -> None:
    moment = datetime(2026, 3, 29, 1, 0, 0, 1, tzinfo=UTC)
    assert epoch_seconds(moment) == 1_774_746_000
    assert epoch_seconds(moment, ceil=True) == 1_774_746_001
    assert epoch_seconds(moment.replace(microsecond=0), ceil=True) == 1_774_746_000
    assert epoch_seconds(moment.astimezone(timezone(timedelta(hours=2)))) == 1_774_746_000
    with pytest.raises(ValueError):
        epoch_seconds(datetime(2026, 1, 1))


def test_timeline_from_occurrences_keeps_sub_second_busy_time() -> None:
    start = datetime(2026, 5, 4, 9, 0, 0, 500_000, tzinfo=UTC)
    occurrence = Occurrence(
        "a",
        start,
        start + timedelta(minutes=30),
        is_all_day=False,
        transparency=Transparency.OPAQUE,
        status_intent=StatusIntent.OUT_OF_OFFICE,
    )
    s = epoch_seconds(start)
    assert list(Timeline.from_occurrences([occurrence])) == [(s, s + 1801, Flag.OUT_OF_OFFICE)]


# -- the timeline -----------------------------------------------------------------


@fast
@given(raw_segments)
def test_timeline_is_the_canonical_flag_runs(segments: list[Segment]) -> None:
    timeline = Timeline.from_segments(segments)
    timeline.check()
    assert list(timeline) == flag_runs(flag_map(segments))


@fast
@given(raw_segments)
def test_encode_decode_round_trip(segments: list[Segment]) -> None:
    timeline = Timeline.from_segments(segments)
    data = timeline.encode()
    assert len(data) == 8 + 17 * len(timeline)
    decoded = Timeline.decode(data)
    assert decoded == timeline
    assert decoded.encode() == data
    assert Timeline.decode(bytearray(data)) == timeline


@fast
@given(raw_segments, st.integers(-5, SPAN + 25), st.integers(0, 40), flag_values)
def test_queries_agree_with_the_oracle(
    segments: list[Segment], start: int, length: int, mask: int
) -> None:
    end = start + length
    timeline = Timeline.decode(Timeline.from_segments(segments).encode())
    flags = flag_map(segments)
    inside = {t: f for t, f in flags.items() if start <= t < end}
    assert timeline.segments(start, end) == flag_runs(inside)
    assert list(timeline.window(start, end)) == flag_runs(inside)
    blocked = {t for t, f in inside.items() if f & mask}
    assert timeline.blocking(start, end, mask) == runs(blocked)
    assert timeline.is_free(start, end, mask) == (not blocked)
    for t in range(start, end):
        assert timeline.flags_at(t) == flags.get(t, 0)


def test_overlapping_intents_or_their_flags() -> None:
    timeline = Timeline.from_segments([(0, 10, Flag.BUSY), (5, 15, Flag.TENTATIVE), (15, 20, 2)])
    assert list(timeline) == [(0, 5, 1), (5, 10, 3), (10, 20, 2)]
    assert timeline.blocking(0, 100) == [(0, 10)]
    assert timeline.blocking(0, 100, Flag.BUSY | Flag.TENTATIVE) == [(0, 20)]
    assert timeline.is_free(10, 20)
    assert not timeline.is_free(9, 20)
    assert Timeline.from_segments([(0, 5, 0), (3, 3, 1)]) == Timeline.EMPTY
    with pytest.raises(ValueError):
        Timeline.from_segments([(0, 1, 256)])


def test_a_timeline_is_not_hashable_but_compares() -> None:
    a = Timeline.from_segments([(0, 1, 1)])
    assert a == Timeline.decode(a.encode())
    assert a != Timeline.EMPTY
    assert a != "x"
    with pytest.raises(TypeError):
        hash(a)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"av\x01",
        b"xx\x01\x00\x00\x00\x00\x00",
        b"av\x02\x00\x00\x00\x00\x00",
        b"av\x01\x00\x01\x00\x00\x00" + b"\x00" * 16,
    ],
)
def test_decode_refuses_a_bad_frame(data: bytes) -> None:
    with pytest.raises(CodecError):
        Timeline.decode(data)


def test_the_encoding_is_little_endian_columns() -> None:
    data = Timeline.from_segments([(1, 2, Flag.BUSY), (3, 258, Flag.HOLD)]).encode()
    assert data == (
        b"av\x01\x00\x02\x00\x00\x00"
        + (1).to_bytes(8, "little")
        + (3).to_bytes(8, "little")
        + (2).to_bytes(8, "little")
        + (258).to_bytes(8, "little")
        + bytes([1, 32])
    )


def test_check_names_a_non_canonical_timeline() -> None:
    from array import array

    with pytest.raises(ValueError, match="merge"):
        Timeline(array("q", [0, 1]), array("q", [1, 2]), bytes([1, 1])).check()
    with pytest.raises(ValueError, match="bad segment"):
        Timeline(array("q", [0]), array("q", [0]), bytes([1])).check()
