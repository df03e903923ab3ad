"""The availability index value: what the sync writes, what queries read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calsync.availability.index import BusyIndex, Entry, IndexCache, timeline_of
from calsync.availability.intervals import Flag, Timeline
from calsync.errors import CodecError
from calsync.model import Occurrence, ProviderOrigin, StatusIntent, Transparency, UnifiedEvent

NOW = datetime(2026, 12, 2, tzinfo=UTC)

entries = st.dictionaries(
    st.text(min_size=1, max_size=40),
    st.tuples(st.integers(0, 10**6), st.integers(1, 10**5), st.sampled_from([1, 2, 4, 8, 16, 129])),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(entries=entries)
def test_values_round_trip_and_the_timeline_needs_no_entries(entries) -> None:  # type: ignore[no-untyped-def]
    index = BusyIndex({k: Entry(k, s, s + d, f, 1_700_000_000) for k, (s, d, f) in entries.items()})
    value = index.encode()
    again = BusyIndex.decode(value)
    assert again.entries == index.entries
    expected = Timeline.from_segments((e.start, e.end, e.flags) for e in index.entries.values())
    assert timeline_of(value) == expected == index.timeline()
    timeline_of(value).check()


def occurrence(native: str, hours: int, intent: StatusIntent = StatusIntent.BUSY) -> Occurrence:
    start = NOW + timedelta(hours=hours)
    return Occurrence(
        native, start, start + timedelta(minutes=30), False, Transparency.OPAQUE, intent
    )


def test_events_are_applied_in_order() -> None:
    origin = ProviderOrigin.GOOGLE
    upsert = lambda o: UnifiedEvent.upsert(origin, "r", o, emitted_at=NOW)  # noqa: E731
    index = BusyIndex()
    changed = index.apply(
        [
            upsert(occurrence("a", 1)),
            upsert(occurrence("b", 2, StatusIntent.TENTATIVE)),
            UnifiedEvent.delete(origin, "r", "a", emitted_at=NOW),
            upsert(occurrence("a", 3)),
            UnifiedEvent.delete(origin, "r", "never-known", emitted_at=NOW),
        ],
        synced_at=42,
    )
    assert [e.native_event_id for e in changed] == ["a", "b", "a"]
    assert set(index.entries) == {"a", "b"}
    assert index.entries["b"].flags == Flag.TENTATIVE
    at = int((NOW + timedelta(hours=3, minutes=10)).timestamp())
    (entry,) = index.covering(at)
    assert entry.native_event_id == "a" and entry.synced_at == 42
    assert timeline_of(index.encode()).flags_at(at) == Flag.BUSY


def test_a_damaged_value_is_a_codec_error() -> None:
    value = BusyIndex({"a": Entry("a", 1, 2, 1, 0)}).encode()
    for bad in (b"", b"xx" + value[2:], value[:20]):
        with pytest.raises(CodecError):
            BusyIndex.decode(bad)
    assert timeline_of(None) == Timeline.EMPTY


def sized(n: int, offset: int = 0) -> BusyIndex:
    return BusyIndex(
        {
            f"e{i}": Entry(f"e{i}", 3600 * (i + offset), 3600 * (i + offset) + 60, 1, 0)
            for i in range(n)
        }
    )


def test_a_kept_index_is_handed_out_once_and_only_for_its_digest() -> None:
    cache = IndexCache(min_entries=1)
    index = sized(3)
    cache.keep("r1", "d1", index)
    assert cache.take("r1", "d1") is index
    assert cache.take("r1", "d1") is None  # taken: the taker changes it
    cache.keep("r1", "d1", index)
    assert cache.take("r1", "d2") is None  # the stored value is another one now
    assert cache.take("r1", "d1") is None and cache.entries == 0
    cache.keep("r1", "", index)  # kept with the digest of no value: never handed out
    assert cache.take("r1", "") is None


def test_the_cache_keeps_big_indexes_within_its_bound_least_recent_out() -> None:
    cache = IndexCache(max_entries=10, min_entries=3)
    cache.keep("small", "d", sized(2))
    cache.keep("a", "d", sized(4))
    cache.keep("b", "d", sized(4))
    cache.keep("huge", "d", sized(11))
    assert (len(cache), cache.entries) == (2, 8)
    cache.keep("c", "d", sized(4))  # a goes: the least recently kept
    assert cache.take("a", "d") is None and cache.take("small", "d") is None
    assert cache.take("huge", "d") is None
    assert cache.take("b", "d") is not None and cache.take("c", "d") is not None
    assert cache.entries == 0


@settings(max_examples=100, deadline=None)
@given(entries=entries, changes=entries, deleted=st.sets(st.text(min_size=1, max_size=40)))
def test_an_index_changed_after_an_encode_encodes_as_if_built_afresh(  # type: ignore[no-untyped-def]
    entries, changes, deleted
) -> None:
    def build(items):  # type: ignore[no-untyped-def]
        return {k: Entry(k, s, s + d, f, 1) for k, (s, d, f) in items.items()}

    index = BusyIndex(build(entries))
    index.encode()  # leaves the entries in stored order
    index.entries.update(build(changes))
    for key in deleted:
        index.entries.pop(key, None)
    assert index.encode() == BusyIndex(dict(sorted(index.entries.items()))).encode()
    assert index.encode() == BusyIndex.decode(index.encode()).encode()


@settings(max_examples=200, deadline=None)
@given(
    entries=entries,
    window=st.tuples(st.integers(0, 10**6), st.integers(0, 10**5)),
    mask=st.integers(1, 255),
    zero=st.lists(st.integers(0, 10**6), max_size=5),
)
def test_entries_overlap_a_window_exactly_where_the_timeline_is_flagged(  # type: ignore[no-untyped-def]
    entries, window, mask, zero
) -> None:
    """What a hold is checked against (``overlapping``) agrees with what free-slot
    answers read (the timeline), zero-duration events included."""
    built = {k: Entry(k, s, s + d, f, 1) for k, (s, d, f) in entries.items()}
    built.update({f"zero{i}": Entry(f"zero{i}", at, at, 1, 1) for i, at in enumerate(zero)})
    index = BusyIndex(built)
    start, length = window
    found = any(index.overlapping(start, start + length, mask))
    flagged = any(f & mask for _, _, f in index.timeline().segments(start, start + length))
    assert (
        found == flagged == (not timeline_of(index.encode()).is_free(start, start + length, mask))
    )
