"""NotificationDispatcher.describe: what /api/status shows of each owned partition."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, NamedTuple

from calsync.agents.dispatch import NotificationDispatcher
from calsync.agents.service import Lane
from calsync.streams.records import Command, Notification, Reason, RetryEnvelope


class TP(NamedTuple):
    topic: str
    partition: int


class Offsets:
    """A consumer with two partitions, committed at 10 and 0, highwater far ahead."""

    def __init__(self) -> None:
        self.committed_at = {TP("n", 0): 10, TP("n", 1): 0}
        self.seeks: list[tuple[TP, int]] = []
        self.log_starts: dict[TP, int] = {}

    def assignment(self) -> set[Any]:
        return set(self.committed_at)

    def highwater(self, tp: Any) -> int | None:
        return 100

    async def committed(self, tp: Any) -> int:
        return self.committed_at[tp]

    async def commit(self, offsets: Mapping[Any, int]) -> bool:
        self.committed_at.update(offsets)
        return True

    async def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def log_start(self, tp: Any) -> int | None:
        return self.log_starts.get(tp, 0)


def note(rid: str, reason: Reason) -> Notification:
    return Notification(provider="google", resource_id=rid, reason=reason.value, received_at=1.0)


async def test_describe_shows_offsets_pending_runs_and_the_last_seek_back() -> None:
    gates = {rid: asyncio.Event() for rid in ("a", "b", "c")}

    async def handler(notification: Notification, lane: Lane) -> None:
        await gates[notification.resource_id].wait()

    offsets = Offsets()
    dispatcher = NotificationDispatcher(
        handler, offsets, topic="n", wall=lambda: 1_700_000_000.0, monotonic=lambda: 50.0
    )
    p0 = TP("n", 0)
    await dispatcher.submit(p0, 10, note("a", Reason.PUSH), None)  # live
    await dispatcher.submit(p0, 11, note("b", Reason.PUSH), None)  # live
    await dispatcher.submit(p0, 12, note("c", Reason.RECONCILE), None)  # bulk
    await dispatcher.submit(p0, 14, note("c", Reason.PUSH), None)  # 13 missing: a hole
    gates["b"].set()  # 11 finishes behind the running 10
    await asyncio.sleep(0.01)

    status = dispatcher.describe()["partitions"]
    assert status["n:0"] == {
        "committed": 10,
        "expected": 13,
        "committable": 10,
        "finished_uncommitted": 1,
        "in_flight": 2,
        "pending": {"live": 1, "bulk": 1},
        "last_seek_back": 1_700_000_000.0,
    }
    assert offsets.seeks == [(p0, 13)]
    # an owned partition with no record yet is listed, its ledger not open
    assert status["n:1"]["committed"] is None
    assert status["n:1"]["pending"] == {"live": 0, "bulk": 0}

    gates["a"].set()
    gates["c"].set()
    await asyncio.sleep(0.01)
    before_commit = dispatcher.describe()["partitions"]["n:0"]
    assert before_commit["finished_uncommitted"] == 3  # 10..12, not committed yet
    assert before_commit["pending"] == {"live": 0, "bulk": 0}
    await dispatcher.commit()
    after = dispatcher.describe()["partitions"]["n:0"]
    assert (after["committed"], after["finished_uncommitted"]) == (13, 0)


async def test_a_batch_past_a_hole_is_refused_until_the_hole_is_read_again() -> None:
    """Many records past a missing one never make the dispatcher skip it (they once
    did, after five): every one of them runs, the missing one first."""
    ran: list[int] = []

    async def handler(notification: Notification, lane: Lane) -> None:
        ran.append(int(notification.resource_id[1:]))

    offsets = Offsets()
    now = [50.0]
    dispatcher = NotificationDispatcher(handler, offsets, topic="n", monotonic=lambda: now[0])
    p1 = TP("n", 1)
    for offset in range(1, 40):  # offset 0 was dropped on the way in
        await dispatcher.submit(p1, offset, note(f"r{offset}", Reason.PUSH), None)
        now[0] += 0.3  # seeks happen, again and again
    assert ran == []
    assert {offset for _, offset in offsets.seeks} == {0}
    for offset in range(0, 40):  # the seek delivers the partition again, in order
        await dispatcher.submit(p1, offset, note(f"r{offset}", Reason.PUSH), None)
    await asyncio.sleep(0.01)
    assert sorted(ran) == list(range(40))
    assert dispatcher.counts["lost_to_retention"] == 0


async def test_only_records_deleted_by_retention_are_given_up() -> None:
    ran: list[str] = []

    async def handler(notification: Notification, lane: Lane) -> None:
        ran.append(notification.resource_id)

    offsets = Offsets()
    p1 = TP("n", 1)
    offsets.log_starts[p1] = 3  # 0..2 are gone from the broker
    dispatcher = NotificationDispatcher(handler, offsets, topic="n")
    await dispatcher.submit(p1, 3, note("late", Reason.PUSH), None)  # a hole: 0..2
    assert offsets.seeks == [(p1, 3)]
    await dispatcher.submit(p1, 3, note("late", Reason.PUSH), None)
    await asyncio.sleep(0.01)
    assert ran == ["late"]
    assert dispatcher.counts["lost_to_retention"] == 3


async def test_a_command_dispatcher_runs_each_resources_commands_in_order_and_commits() -> None:
    """``calsync.commands`` goes through a dispatcher too (Faust's acks lose records
    around a rebalance: a lost registration never syncs). A resource's commands run
    one at a time in offset order; the offset is committed once they have finished."""
    ran: list[tuple[str, str]] = []
    gate = asyncio.Event()

    async def handler(command: Command, lane: Lane) -> None:
        if command.kind == "register":
            await gate.wait()
        ran.append((command.resource_id, command.kind))

    offsets = Offsets()
    dispatcher = NotificationDispatcher(
        handler, offsets, topic="n", record_type=Command, lane_for=lambda _: Lane.LIVE
    )
    p1 = TP("n", 1)
    commands = [("a", "register"), ("a", "remove"), ("b", "pause")]
    for offset, (rid, kind) in enumerate(commands):
        raw = Command(kind=kind, resource_id=rid, issued_at=1.0).dumps()
        await dispatcher.submit(p1, offset, raw, None)
    await asyncio.sleep(0.01)
    assert ran == [("b", "pause")]  # another resource's command does not wait
    await dispatcher.commit()
    assert offsets.committed_at[p1] == 0  # nothing below an unfinished offset
    gate.set()
    await asyncio.sleep(0.01)
    assert ran == [("b", "pause"), ("a", "register"), ("a", "remove")]
    await dispatcher.commit()
    assert offsets.committed_at[p1] == 3


async def test_a_retry_dispatcher_orders_by_the_envelopes_resource_and_commits() -> None:
    """``calsync.retries`` goes through a dispatcher too: a retry lost around a
    rebalance would leave its calendar behind until the next reconciliation. An
    envelope has no ``resource_id`` of its own: ``resource_of`` reads its
    notification's, so a resource's envelopes are kept in offset order."""
    ran: list[tuple[str, int]] = []
    gate = asyncio.Event()

    async def handler(envelope: RetryEnvelope, lane: Lane) -> None:
        if envelope.attempt == 1:
            await gate.wait()
        ran.append((envelope.notification.resource_id, envelope.attempt))

    offsets = Offsets()
    dispatcher = NotificationDispatcher(
        handler,
        offsets,
        topic="n",
        record_type=RetryEnvelope,
        lane_for=lambda _: Lane.LIVE,
        resource_of=lambda envelope: envelope.notification.resource_id,
    )
    p1 = TP("n", 1)
    for offset, (rid, attempt) in enumerate([("a", 1), ("a", 2), ("b", 1)]):
        envelope = RetryEnvelope(
            notification=note(rid, Reason.RETRY),
            attempt=attempt if rid == "a" else 3,
            due_at=2.0,
            last_error="429",
        )
        await dispatcher.submit(p1, offset, envelope.dumps(), None)
    await asyncio.sleep(0.01)
    assert ran == [("b", 3)]  # the other resource's envelope does not wait
    await dispatcher.commit()
    assert offsets.committed_at[p1] == 0
    gate.set()
    await asyncio.sleep(0.01)
    assert ran == [("b", 3), ("a", 1), ("a", 2)]
    await dispatcher.commit()
    assert offsets.committed_at[p1] == 3


class SlowOffsets(Offsets):
    """Committed offsets that answer only when ``answer`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = asyncio.Event()
        self.asked = asyncio.Event()

    async def committed(self, tp: Any) -> int:
        self.asked.set()
        await self.answer.wait()
        return await super().committed(tp)


async def test_a_rebalance_during_a_ledger_lookup_does_not_end_the_upkeep() -> None:
    """on_revoked cancels pending committed-offset lookups; the upkeep round awaiting
    one must go on to the next round. It used to die of the CancelledError, silently:
    after that takeover no moved partition opened and nothing was committed again
    (seen twice in CI as pushes never synced)."""

    async def handler(notification: Notification, lane: Lane) -> None:
        return None

    offsets = SlowOffsets()
    dispatcher = NotificationDispatcher(handler, offsets, topic="n", commit_interval=0.01)
    upkeep = asyncio.create_task(dispatcher.run())
    try:
        await asyncio.wait_for(offsets.asked.wait(), 5)
        await dispatcher.on_revoked()  # the lookup in flight is cancelled
        await asyncio.sleep(0.05)
        assert not upkeep.done(), upkeep
        offsets.answer.set()
        for _ in range(500):
            partitions = dispatcher.describe()["partitions"]
            if all(p["committed"] is not None for p in partitions.values()):
                break
            await asyncio.sleep(0.01)
        partitions = dispatcher.describe()["partitions"]
        assert (partitions["n:0"]["committed"], partitions["n:1"]["committed"]) == (10, 0)
    finally:
        upkeep.cancel()
        await asyncio.gather(upkeep, return_exceptions=True)
    assert upkeep.cancelled()  # cancelling the task itself still stops it
