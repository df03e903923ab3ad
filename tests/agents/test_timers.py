"""The timer dispatcher: due timers are released once, recovered timers are found."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Mapping

import pytest

from calsync.agents import timers as timers_module
from calsync.agents.timers import TimerDispatcher
from calsync.pacing import paced
from calsync.streams.records import Notification
from calsync.tables.records import Channel, Timer
from calsync.testing.outbox import ListOutbox
from tests.conftest import RocksdbTableFactory, recording


def timer(due: float, rid: str = "r1", provider: str = "google") -> Timer:
    notification = Notification(provider=provider, resource_id=rid, reason="push", received_at=0)
    return Timer(due_at=due, notification=notification)


def make(timers: Mapping[str, Timer], channels: dict[str, Channel] | None = None):
    clock = [100.0]
    outbox = ListOutbox()
    dispatcher = TimerDispatcher(
        timers=timers,
        channels=channels or {},
        outbox=outbox,
        clock=lambda: clock[0],
        monotonic=lambda: clock[0],
        rebuild_every=5.0,
        refire_after=30.0,
    )
    return dispatcher, outbox, clock


async def test_recovered_timers_fire_when_due_and_only_once() -> None:
    timers = {f"retry:{n}": timer(100.0 + n) for n in range(1000)}
    dispatcher, outbox, clock = make(timers)
    assert await dispatcher.tick() == 1  # only the one due at 100.0
    clock[0] = 110.0
    assert await dispatcher.tick() == 10
    del timers["retry:0"]  # the agent consumed the first one
    clock[0] = 1100.0  # 989 newly due + 10 unconsumed past refire_after; retry:0 is gone
    assert await dispatcher.tick() == 999
    assert await dispatcher.tick() == 0  # released already; waiting for the agent
    clock[0] = 1106.0  # a rebuild still finds them in the table, but does not re-fire yet
    assert await dispatcher.tick() == 0
    clock[0] = 1140.0  # unconsumed for longer than refire_after: released again
    assert await dispatcher.tick() == 999
    released = {n.resource_id for n in outbox.notifications}
    assert released == {"r1"} and len(outbox.notifications) == 1 + 10 + 999 + 999


async def test_a_new_timer_fires_without_waiting_for_a_rebuild() -> None:
    timers: dict[str, Timer] = {}
    dispatcher, _, clock = make(timers)
    await dispatcher.tick()
    timers["retry:x"] = timer(100.2)
    dispatcher.schedule("retry:x", timers["retry:x"])
    assert await dispatcher.tick() == 0
    clock[0] = 100.21
    assert await dispatcher.tick() == 1


async def test_expired_channel_asks_for_a_reconciliation() -> None:
    channels = {
        "dead": Channel(
            channel_id="a", provider_resource_id="x", expires_at_ms=50_000, created_at=0
        ),
        "alive": Channel(
            channel_id="b", provider_resource_id="y", expires_at_ms=10**13, created_at=0
        ),
    }
    dispatcher, outbox, _ = make({}, channels)
    await dispatcher.tick()
    assert [(n.resource_id, n.reason, n.full) for n in outbox.notifications] == [
        ("dead", "reconcile", True)
    ]


async def test_an_early_release_pulls_in_only_that_providers_waiting_retries() -> None:
    timers = {
        **{f"retry:g{n}": timer(160.0 + n, f"g{n}") for n in range(20)},
        **{f"retry:m{n}": timer(160.0 + n, f"m{n}", "microsoft") for n in range(20)},
        "reconcile:g-rec": timer(150.0, "g-rec"),
        "retry:soon": timer(101.0, "g-soon"),  # due within the spread anyway
    }
    dispatcher, outbox, clock = make(timers)
    assert await dispatcher.tick() == 0
    moved = dispatcher.release_early("google", spread=5.0, rng=random.Random(1))
    assert moved == 20
    assert dispatcher.release_early("google", spread=5.0, rng=random.Random(1)) == 0
    clock[0] = 103.0  # a rebuild (every 5 s here) keeps what was pulled in
    await dispatcher.tick()
    clock[0] = 106.0
    await dispatcher.tick()
    clock[0] = 106.01
    await dispatcher.tick()
    released = {n.resource_id for n in outbox.notifications}
    assert released == {f"g{n}" for n in range(20)} | {"g-soon"}
    # each once, and the originals at their due times are not released again
    assert len(outbox.notifications) == 21
    for key in [k for k, t in timers.items() if t.notification.resource_id in released]:
        del timers[key]  # the agent consumed them
    clock[0] = 185.0
    await dispatcher.tick()
    later = {n.resource_id for n in outbox.notifications[21:]}
    assert later == {f"m{n}" for n in range(20)} | {"g-rec"}


async def test_a_timer_written_while_the_heap_is_rebuilt_is_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # every item of the rebuild's walk gives the loop a turn (no time budget)
    monkeypatch.setattr(timers_module, "paced", functools.partial(paced, budget=0.0))
    timers = {f"reconcile:r{n}": timer(10_000.0, f"r{n}") for n in range(50)}
    dispatcher, outbox, clock = make(timers)

    async def write_during_the_walk() -> None:
        await asyncio.sleep(0)  # the rebuild has begun its walk
        timers["retry:x"] = timer(100.5, "x")
        dispatcher.schedule("retry:x", timers["retry:x"])

    writer = asyncio.create_task(write_during_the_walk())
    assert await dispatcher.tick() == 0  # the first tick rebuilds
    await writer
    clock[0] = 101.0  # before the next rebuild: only the fast path knows of it
    assert await dispatcher.tick() == 1
    assert [n.resource_id for n in outbox.notifications] == ["x"]


async def test_over_rocksdb_an_unchanged_table_is_not_walked_and_timers_still_refire(
    rocksdb_table: RocksdbTableFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Faust's RocksDB store, the rebuild reads the table's database only when it was
    written to; a fired timer the agent never cleared is still released again after
    ``refire_after``, and a timer that reaches the table without the fast path (a
    changelog restore) is still found by the next rebuild."""
    table = rocksdb_table("timers", Timer, partitions=1)
    store = table.data
    db = store._db_for_partition(0)

    def restore(key: str, value: Timer) -> None:  # as a changelog restore writes it
        db[store._encode_key(key)] = store._encode_value(value)

    reads = recording(monkeypatch, store, "_visible_items")
    restore("reconcile:r1", timer(150.0, "r1"))
    dispatcher, outbox, clock = make(table)
    assert await dispatcher.tick() == 0 and len(reads) == 1
    clock[0] = 120.0
    assert await dispatcher.tick() == 0
    clock[0] = 150.0
    assert await dispatcher.tick() == 1  # fired, and the agent never clears it
    for now in (160.0, 170.0):
        clock[0] = now
        assert await dispatcher.tick() == 0
    assert len(reads) == 1  # rebuilt three times, nothing written: not read again
    restore("retry:x", timer(175.0, "x"))
    clock[0] = 176.0
    assert await dispatcher.tick() == 1 and len(reads) == 2  # found by the rebuild
    clock[0] = 185.0  # the first one, unconsumed for longer than refire_after
    assert await dispatcher.tick() == 1
    assert [n.resource_id for n in outbox.notifications] == ["r1", "x", "r1"]
