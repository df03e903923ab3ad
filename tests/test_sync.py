"""The sync algorithm against the in-memory provider (no Kafka)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from calsync.model import ChangeKind, Occurrence, StatusIntent, Transparency, UnifiedEvent
from calsync.providers.base import Window
from calsync.sync import sync_resource
from calsync.testing.memory_provider import MemoryProvider

T0 = datetime(2026, 12, 1, 9, tzinfo=UTC)
WINDOW = Window(T0 - timedelta(days=30), T0 + timedelta(days=365))


def occurrence(n: int, *, hours: int = 1, offset_days: int = 0) -> Occurrence:
    start = T0 + timedelta(days=offset_days, hours=n % 48)
    return Occurrence(
        native_event_id=f"ev{n}",
        start_utc=start,
        end_utc=start + timedelta(hours=hours),
        is_all_day=False,
        transparency=Transparency.OPAQUE,
        status_intent=StatusIntent.BUSY,
    )


class Sink:
    def __init__(self) -> None:
        self.batches: list[list[UnifiedEvent]] = []

    async def __call__(self, events: list[UnifiedEvent]) -> None:
        self.batches.append(events)

    @property
    def events(self) -> list[UnifiedEvent]:
        return [e for batch in self.batches for e in batch]


async def run(provider: MemoryProvider, cursor: str | None, index: dict[str, str], sink: Sink):
    return await sync_resource(
        provider,
        resource_id="r1",
        cursor=cursor,
        index=index,
        window=WINDOW,
        emit=sink,
        now=lambda: T0 + timedelta(seconds=1),
        caused_at=T0,
    )


async def test_full_then_incremental() -> None:
    provider = MemoryProvider(page_size=7)
    for n in range(20):
        provider.put(occurrence(n))
    sink = Sink()
    first = await run(provider, None, {}, sink)
    assert first.full and first.upserts == 20 and len(sink.batches) == 3
    assert {e.native_event_id for e in sink.events} == {f"ev{n}" for n in range(20)}
    assert all(e.latency_ms == 1000 for e in sink.events)

    provider.put(occurrence(3, hours=2))  # edit
    provider.remove("ev4")
    provider.put(occurrence(99))
    provider.remove("never-known")
    sink2 = Sink()
    second = await run(provider, first.cursor, first.index, sink2)
    assert not second.full
    changes = {(e.native_event_id, e.change) for e in sink2.events}
    assert changes == {
        ("ev3", ChangeKind.UPSERT),
        ("ev4", ChangeKind.DELETE),
        ("ev99", ChangeKind.UPSERT),
    }


async def test_unchanged_items_are_not_re_emitted() -> None:
    provider = MemoryProvider()
    provider.put(occurrence(1))
    first = await run(provider, None, {}, Sink())
    provider.put(occurrence(1))  # same content, new log entry
    sink = Sink()
    await run(provider, first.cursor, first.index, sink)
    assert sink.events == []


async def test_expired_cursor_resyncs_and_emits_vanished_deletes() -> None:
    provider = MemoryProvider(page_size=5)
    for n in range(12):
        provider.put(occurrence(n))
    first = await run(provider, None, {}, Sink())
    provider.invalidate_cursors()
    for n in (2, 5, 7):
        provider.items.pop(f"ev{n}")  # deleted while the token was invalid: no log entry
    sink = Sink()
    outcome = await run(provider, first.cursor, first.index, sink)
    assert outcome.cursor_expired and outcome.full
    assert [(e.native_event_id, e.change) for e in sink.events] == [
        ("ev2", ChangeKind.DELETE),
        ("ev5", ChangeKind.DELETE),
        ("ev7", ChangeKind.DELETE),
    ]
    assert set(outcome.index) == {f"ev{n}" for n in range(12)} - {"ev2", "ev5", "ev7"}


async def test_occurrence_leaving_the_window_is_a_delete() -> None:
    provider = MemoryProvider()
    provider.put(occurrence(1))
    first = await run(provider, None, {}, Sink())
    provider.put(occurrence(1, offset_days=400))
    sink = Sink()
    await run(provider, first.cursor, first.index, sink)
    assert [(e.native_event_id, e.change) for e in sink.events] == [("ev1", ChangeKind.DELETE)]


async def test_a_failing_emit_leaves_no_cursor_behind() -> None:
    provider = MemoryProvider(page_size=2)
    for n in range(6):
        provider.put(occurrence(n))

    async def broken(events: list[UnifiedEvent]) -> None:
        raise RuntimeError("broker down")

    with pytest.raises(RuntimeError):
        await sync_resource(
            provider,
            resource_id="r1",
            cursor=None,
            index={},
            window=WINDOW,
            emit=broken,
            now=lambda: T0,
            caused_at=T0,
        )


async def test_a_page_that_deletes_and_restores_an_id_keeps_the_order() -> None:
    provider = MemoryProvider()
    provider.put(occurrence(0))
    first = await run(provider, None, {}, Sink())
    provider.remove("ev0")
    provider.put(occurrence(0))
    sink = Sink()
    await run(provider, first.cursor, first.index, sink)
    assert [e.change for e in sink.events] == [ChangeKind.DELETE, ChangeKind.UPSERT]


@example(ops=[("put", 0), ("sync", 0), ("remove", 0), ("put", 0)])
@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["put", "edit", "remove", "sync", "expire"]), st.integers(0, 15)),
        max_size=40,
    )
)
async def test_consumer_view_matches_provider_truth(ops: list[tuple[str, int]]) -> None:
    """Whatever happens, folding the emitted events gives the provider's current state."""
    provider = MemoryProvider(page_size=4)
    view: dict[str, str] = {}
    cursor: str | None = None
    index: dict[str, str] = {}

    async def sync() -> None:
        nonlocal cursor, index
        sink = Sink()
        outcome = await run(provider, cursor, index, sink)
        cursor, index = outcome.cursor, outcome.index
        for e in sink.events:
            if e.change is ChangeKind.UPSERT:
                view[e.native_event_id] = e.version
            else:
                view.pop(e.native_event_id, None)

    for op, n in ops:
        if op == "put":
            provider.put(occurrence(n))
        elif op == "edit":
            provider.put(occurrence(n, hours=1 + n % 3, offset_days=n % 2))
        elif op == "remove":
            provider.remove(f"ev{n}")
        elif op == "expire":
            provider.invalidate_cursors()
        else:
            await sync()
    await sync()
    assert view == {k: o.version for k, o in provider.items.items()}
