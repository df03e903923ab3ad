"""The availability index value: what the sync writes, what queries read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calsync.availability.index import BusyIndex, Entry, timeline_of
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
