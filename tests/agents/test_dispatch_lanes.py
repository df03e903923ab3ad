"""The dispatcher's lanes: a live push never waits for bulk work, and each provider's
bulk work has slots of its own, so one provider's backlog never holds up another's."""

from __future__ import annotations

import asyncio

import pytest

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


class Gated:
    """A dispatcher with one bulk slot per provider whose runs record their start and
    then wait until their resource's gate opens."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.started: list[str] = []
        self.dispatcher = NotificationDispatcher(self.handler, Offsets(), topic="n", bulk_slots=1)

    async def handler(self, notification: Notification, lane: Lane) -> None:
        self.started.append(notification.resource_id)
        await self.gates.setdefault(notification.resource_id, asyncio.Event()).wait()

    def open(self, *rids: str) -> None:
        for rid in rids:
            self.gates.setdefault(rid, asyncio.Event()).set()

    async def submit(self, records: list[Notification]) -> None:
        for offset, record in enumerate(records, start=10):
            await self.dispatcher.submit(TP("n", 0), offset, record, None)


async def test_one_providers_backlog_does_not_hold_up_another_providers_full_syncs() -> None:
    gated = Gated()
    started = gated.started
    records = [
        full("google", "g1"),
        full("google", "g2"),
        full("caldav", "d1"),
        full("microsoft", "m1"),
        full("caldav", "d2"),
        push("google", "g3"),
    ]
    await gated.submit(records)
    await asyncio.sleep(0.05)
    # one full sync per provider runs; the push runs on the live lane
    assert sorted(started) == ["d1", "g1", "g3", "m1"]

    gated.open("g1")
    await asyncio.sleep(0.05)
    assert "g2" in started and "d2" not in started  # Google's next, CalDAV's still busy
    gated.open("d1")
    await asyncio.sleep(0.05)
    assert "d2" in started
    gated.open("g2", "d2", "m1", "g3")
    await asyncio.sleep(0.05)
    assert gated.dispatcher.counts["runs"] == len(records)


def resync(provider: str, rid: str) -> Notification:
    """What the live lane hands over when a push meets an expired cursor."""
    return Notification(
        provider=provider, resource_id=rid, reason=Reason.PUSH.value, received_at=1.0, full=True
    )


@pytest.mark.parametrize(
    "in_step",
    [
        # A 410 storm in the middle of 10,000 first syncs: the full resync the live lane
        # handed over waited behind every first sync still queued (up to 400 s in
        # docs/benchmarks.md §7).
        pytest.param(resync("google", "g9"), id="resync-handed-over"),
        # A calendar connected again after its grant was revoked resumes from its
        # cursor (a command's delta): it waited behind them too (revoked grants, §7).
        pytest.param(full("google", "g9").derive(full=False), id="reconnect-delta"),
    ],
)
async def test_a_calendar_in_step_goes_before_queued_first_syncs(in_step: Notification) -> None:
    """Work on a calendar already in step takes the next slot of its provider's bulk
    lane, ahead of queued first syncs (a command's full listings)."""
    gated = Gated()
    records = [full("google", f"g{n}") for n in range(4)] + [in_step]
    await gated.submit(records)
    await asyncio.sleep(0.05)
    assert gated.started == ["g0"]
    gated.open("g0")
    await asyncio.sleep(0.05)
    assert gated.started == ["g0", "g9"]  # ahead of g1..g3, which came first
    gated.open("g9", "g1", "g2", "g3")
    await asyncio.sleep(0.05)
    assert gated.started == ["g0", "g9", "g1", "g2", "g3"]
    assert gated.dispatcher.counts["runs"] == len(records)


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
