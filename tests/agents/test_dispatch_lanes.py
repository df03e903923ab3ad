"""The dispatcher's lanes: a live push never waits for bulk work, and each provider's
bulk work has slots of its own, so one provider's backlog never holds up another's."""

from __future__ import annotations

import asyncio

from calsync.agents.dispatch import BulkSlots, NotificationDispatcher
from calsync.agents.service import Lane
from calsync.streams.records import Notification, Reason
from tests.agents.test_dispatch_status import TP, Offsets


def full(provider: str, rid: str) -> Notification:
    return Notification(
        provider=provider, resource_id=rid, reason=Reason.COMMAND.value, received_at=1.0, full=True
    )


def push(provider: str, rid: str) -> Notification:
    return Notification(
        provider=provider, resource_id=rid, reason=Reason.PUSH.value, received_at=1.0
    )


async def test_one_providers_backlog_does_not_hold_up_another_providers_full_syncs() -> None:
    gates: dict[str, asyncio.Event] = {}
    started: list[str] = []

    async def handler(notification: Notification, lane: Lane) -> None:
        started.append(notification.resource_id)
        await gates.setdefault(notification.resource_id, asyncio.Event()).wait()

    dispatcher = NotificationDispatcher(handler, Offsets(), topic="n", bulk_slots=1)
    p0 = TP("n", 0)
    records = [
        full("google", "g1"),
        full("google", "g2"),
        full("caldav", "d1"),
        full("microsoft", "m1"),
        full("caldav", "d2"),
        push("google", "g3"),
    ]
    for offset, record in enumerate(records, start=10):
        await dispatcher.submit(p0, offset, record, None)
    await asyncio.sleep(0.05)
    # one full sync per provider runs; the push runs on the live lane
    assert sorted(started) == ["d1", "g1", "g3", "m1"]

    gates.setdefault("g1", asyncio.Event()).set()
    await asyncio.sleep(0.05)
    assert "g2" in started and "d2" not in started  # Google's next, CalDAV's still busy
    gates.setdefault("d1", asyncio.Event()).set()
    await asyncio.sleep(0.05)
    assert "d2" in started
    for rid in ("g2", "d2", "m1", "g3"):
        gates.setdefault(rid, asyncio.Event()).set()
    await asyncio.sleep(0.05)
    assert dispatcher.counts["runs"] == len(records)


def resync(provider: str, rid: str) -> Notification:
    """What the live lane hands over when a push meets an expired cursor."""
    return Notification(
        provider=provider, resource_id=rid, reason=Reason.PUSH.value, received_at=1.0, full=True
    )


async def test_a_calendar_in_step_goes_before_queued_first_syncs() -> None:
    """A 410 storm in the middle of 10,000 first syncs: the full resync of a calendar
    that was already in step waited behind every first sync still queued (up to 400 s
    in docs/benchmarks.md §7). It takes the next slot of its provider's bulk lane."""
    gates: dict[str, asyncio.Event] = {}
    started: list[str] = []

    async def handler(notification: Notification, lane: Lane) -> None:
        started.append(notification.resource_id)
        await gates.setdefault(notification.resource_id, asyncio.Event()).wait()

    dispatcher = NotificationDispatcher(handler, Offsets(), topic="n", bulk_slots=1)
    p0 = TP("n", 0)
    records = [full("google", f"g{n}") for n in range(4)] + [resync("google", "g9")]
    for offset, record in enumerate(records, start=10):
        await dispatcher.submit(p0, offset, record, None)
    await asyncio.sleep(0.05)
    assert started == ["g0"]
    gates.setdefault("g0", asyncio.Event()).set()
    await asyncio.sleep(0.05)
    assert started == ["g0", "g9"]  # ahead of g1..g3, which came first
    for rid in ("g9", "g1", "g2", "g3"):
        gates.setdefault(rid, asyncio.Event()).set()
    await asyncio.sleep(0.05)
    assert started == ["g0", "g9", "g1", "g2", "g3"]
    assert dispatcher.counts["runs"] == len(records)


async def test_bulk_slots_let_backfill_in_after_a_streak_of_first_work() -> None:
    slots = BulkSlots(1, fairness=2)
    order: list[str] = []
    release = asyncio.Event()

    async def use(name: str, kind: int) -> None:
        async with slots.hold(kind):
            order.append(name)
            await release.wait()

    holder = asyncio.create_task(use("held", BulkSlots.FIRST))
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(use(f"b{n}", BulkSlots.BACKFILL)) for n in range(2)]
    waiters += [asyncio.create_task(use(f"f{n}", BulkSlots.FIRST)) for n in range(5)]
    await asyncio.sleep(0)
    release.set()  # every holder leaves at once; the order of grants is what counts
    await asyncio.wait_for(asyncio.gather(holder, *waiters), 5.0)
    assert order == ["held", "f0", "f1", "b0", "f2", "f3", "b1", "f4"]


async def test_a_cancelled_waiter_neither_keeps_nor_loses_a_slot() -> None:
    slots = BulkSlots(1)
    leave = asyncio.Event()
    got: list[str] = []
    tasks: dict[str, asyncio.Task[None]] = {}

    async def use(name: str) -> None:
        async with slots.hold(BulkSlots.FIRST):
            got.append(name)
            await leave.wait()

    async def holder() -> None:
        async with slots.hold(BulkSlots.FIRST):
            await leave.wait()
        # the same step as the release: "handed" was given the slot and has not run
        tasks["handed"].cancel()

    held = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiting = asyncio.create_task(use("waiting"))
    await asyncio.sleep(0)
    waiting.cancel()  # cancelled while waiting: leaves the queue
    await asyncio.gather(waiting, return_exceptions=True)
    assert slots.waiting == 0
    tasks["handed"] = asyncio.create_task(use("handed"))
    tasks["after"] = asyncio.create_task(use("after"))
    await asyncio.sleep(0)
    leave.set()
    await asyncio.wait_for(asyncio.gather(held, tasks["after"]), 5.0)
    await asyncio.gather(tasks["handed"], return_exceptions=True)
    assert tasks["handed"].cancelled() and got == ["after"]  # the slot was passed on
    async with slots.hold(BulkSlots.BACKFILL):  # and it is free again
        assert slots.waiting == 0
