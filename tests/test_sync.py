"""The sync algorithm against the in-memory provider (no Kafka)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from calsync.errors import CursorExpired, RateLimited
from calsync.model import ChangeKind, Occurrence, StatusIntent, Transparency, UnifiedEvent, Window
from calsync.providers.base import ChangePage
from calsync.sync import MAX_BATCH_PAGES, sync_resource
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


class ThrottledProvider(MemoryProvider):
    """Raises ``RateLimited`` instead of page ``throttle_at`` (1-based) of the next walk."""

    def __init__(self, *, page_size: int = 100) -> None:
        super().__init__(page_size=page_size)
        self.throttle_at: int | None = None

    async def fetch_changes(self, cursor: str | None, window: Window) -> AsyncIterator[ChangePage]:
        throttle_at, self.throttle_at = self.throttle_at, None
        number = 0
        async for page in super().fetch_changes(cursor, window):
            number += 1
            if number == throttle_at:
                raise RateLimited("slow down", retry_after=1.0, status=429)
            yield page


async def run(
    provider: MemoryProvider,
    cursor: str | None,
    index: dict[str, str],
    sink: Sink,
    **options: object,
):
    return await sync_resource(
        provider,
        resource_id="r1",
        cursor=cursor,
        index=index,
        window=WINDOW,
        emit=sink,
        now=lambda: T0 + timedelta(seconds=1),
        caused_at=T0,
        **options,  # type: ignore[arg-type]
    )


async def test_full_then_incremental() -> None:
    provider = MemoryProvider(page_size=7)
    for n in range(20):
        provider.put(occurrence(n))
    sink = Sink()
    first = await run(provider, None, {}, sink)
    assert first.full and first.upserts == 20
    assert [len(batch) for batch in sink.batches] == [7, 13]  # page 1, then pages 2 and 3
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


async def test_expired_cursor_can_be_left_to_the_caller() -> None:
    provider = MemoryProvider()
    provider.put(occurrence(1))
    first = await run(provider, None, {}, Sink())
    provider.invalidate_cursors()
    fetches = provider.fetches
    with pytest.raises(CursorExpired):
        await run(provider, first.cursor, first.index, Sink(), full_on_expiry=False)
    assert provider.fetches == fetches + 1  # the delta attempt only, no full listing


async def test_a_throttled_first_sync_resumes_without_re_emitting() -> None:
    provider = ThrottledProvider(page_size=50)
    for n in range(350):
        provider.put(occurrence(n, offset_days=n // 48))
    provider.throttle_at = 4  # page 1 was emitted; pages 2 and 3, one batch, were not
    sink = Sink()
    progress: dict[str, str] = {}
    with pytest.raises(RateLimited):
        await run(provider, None, {}, sink, progress=progress)
    assert len(sink.events) == 50 and set(progress) == {e.native_event_id for e in sink.events}
    # meanwhile: one emitted event is deleted, one edited, one added
    provider.items.pop("ev10")
    provider.put(occurrence(20, hours=3, offset_days=20 // 48))
    provider.put(occurrence(999))
    outcome = await run(provider, None, progress, sink, progress=progress)
    emitted = [(e.native_event_id, e.change) for e in sink.events]
    assert len(emitted) == 350 + 3  # every event once, then the three changes
    assert emitted[50:].count(("ev20", ChangeKind.UPSERT)) == 1
    assert ("ev10", ChangeKind.DELETE) in emitted[50:]
    view: dict[str, str] = {}
    for e in sink.events:
        if e.change is ChangeKind.UPSERT:
            view[e.native_event_id] = e.version
        else:
            view.pop(e.native_event_id)
    assert view == {k: o.version for k, o in provider.items.items()} == outcome.index


async def test_progress_holds_only_acknowledged_pages() -> None:
    provider = MemoryProvider(page_size=2)
    for n in range(6):
        provider.put(occurrence(n))
    calls = 0

    async def fails_second_time(events: list[UnifiedEvent]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("broker down")

    progress: dict[str, str] = {"old": "v"}
    with pytest.raises(RuntimeError):
        await run(provider, None, {"old": "v"}, fails_second_time, progress=progress)  # type: ignore[arg-type]
    assert set(progress) == {"old", "ev0", "ev1"}  # no deletes: the listing never completed


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
        st.tuples(
            st.sampled_from(["put", "edit", "remove", "sync", "expire", "throttle"]),
            st.integers(0, 15),
        ),
        max_size=40,
    )
)
async def test_consumer_view_matches_provider_truth(ops: list[tuple[str, int]]) -> None:
    """Whatever happens, folding the emitted events gives the provider's current state;
    a walk throttled midway keeps its progress (as the service does) and the next one
    re-emits nothing it already emitted."""
    provider = ThrottledProvider(page_size=4)
    view: dict[str, str] = {}
    cursor: str | None = None
    index: dict[str, str] = {}

    async def sync(throttle_at: int | None = None) -> None:
        nonlocal cursor, index
        sink = Sink()
        provider.throttle_at = throttle_at
        progress: dict[str, str] = {}
        try:
            outcome = await run(provider, cursor, index, sink, progress=progress)
        except RateLimited:
            index = progress  # the cursor stays
        else:
            cursor, index = outcome.cursor, outcome.index
        for e in sink.events:
            if e.change is ChangeKind.UPSERT:
                assert view.get(e.native_event_id) != e.version, "re-emitted"
                view[e.native_event_id] = e.version
            else:
                view.pop(e.native_event_id, None)
        assert view == index

    for op, n in ops:
        if op == "put":
            provider.put(occurrence(n))
        elif op == "edit":
            provider.put(occurrence(n, hours=1 + n % 3, offset_days=n % 2))
        elif op == "remove":
            provider.remove(f"ev{n}")
        elif op == "expire":
            provider.invalidate_cursors()
        elif op == "throttle":
            await sync(throttle_at=2 + n % 2)
        else:
            await sync()
    await sync()
    assert view == {k: o.version for k, o in provider.items.items()}


async def test_each_batch_is_prepared_before_it_is_emitted_and_the_next_overlaps() -> None:
    """``prepare`` (the service's write-ahead of new ids) sees every batch before it is
    emitted, and the next batch's runs while the previous batch is still in flight:
    its wait for the broker overlaps the emission's. Batches are whole pages, the
    first page alone, then twice as many pages each time."""
    provider = MemoryProvider(page_size=2)
    for n in range(14):
        provider.put(occurrence(n))
    log: list[tuple[str, tuple[str, ...]]] = []
    release = asyncio.Event()

    async def prepare(events: list[UnifiedEvent]) -> None:
        log.append(("prepare", tuple(e.native_event_id for e in events)))

    async def emit(events: list[UnifiedEvent]) -> None:
        ids = tuple(e.native_event_id for e in events)
        log.append(("emit", ids))
        if ids == ("ev0", "ev1"):
            await release.wait()  # the first batch waits for its acks
        log.append(("acked", ids))

    walk = asyncio.ensure_future(run(provider, None, {}, emit, prepare=prepare))
    for _ in range(20):
        await asyncio.sleep(0)
    ids = sorted((f"ev{n}" for n in range(14)), key=lambda i: int(i[2:]))
    first, second, third = tuple(ids[:2]), tuple(ids[2:6]), tuple(ids[6:])
    assert log == [("prepare", first), ("emit", first), ("prepare", second)]
    release.set()
    outcome = await walk
    assert sorted(outcome.index) == sorted(ids)
    emitted = [ids for kind, ids in log if kind == "emit"]
    assert emitted == [first, second, third]
    for ids in emitted:  # prepared, then emitted; the next emitted only once acked
        assert log.index(("prepare", ids)) < log.index(("emit", ids))
    for earlier, later in itertools.pairwise(emitted):
        assert log.index(("acked", earlier)) < log.index(("emit", later))


async def test_batches_double_up_to_the_cap() -> None:
    """A first sync of n pages emits (and the service stores its announced ids)
    O(log n + n / MAX_BATCH_PAGES) times, not n times."""
    provider = MemoryProvider(page_size=1)
    for n in range(200):
        provider.put(occurrence(n, offset_days=n // 48))
    sink = Sink()
    outcome = await run(provider, None, {}, sink)
    assert [len(batch) for batch in sink.batches] == [
        1,
        2,
        4,
        8,
        16,
        16,
        16,
        16,
        16,
        16,
        16,
        16,
        16,
        16,
        16,
        9,
    ]
    assert MAX_BATCH_PAGES == 16 and len(outcome.index) == 200


async def test_a_batch_whose_preparation_fails_is_never_emitted() -> None:
    """A failing ``prepare`` (a calendar over its size limit) stops the walk before
    that batch goes out; what was emitted before it stays acknowledged in ``progress``."""
    provider = MemoryProvider(page_size=2)
    for n in range(6):
        provider.put(occurrence(n))
    sink = Sink()

    async def prepare(events: list[UnifiedEvent]) -> None:
        if events[0].native_event_id == "ev2":
            raise RuntimeError("too large")

    progress: dict[str, str] = {}
    with pytest.raises(RuntimeError, match="too large"):
        await run(provider, None, {}, sink, prepare=prepare, progress=progress)
    assert [e.native_event_id for e in sink.events] == ["ev0", "ev1"]
    assert sorted(progress) == ["ev0", "ev1"]
