"""NotificationDispatcher.describe: what /api/status shows of each owned partition."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, NamedTuple

from calsync.agents.dispatch import NotificationDispatcher
from calsync.agents.service import Lane
from calsync.streams.records import Notification, Reason


class TP(NamedTuple):
    topic: str
    partition: int


class Offsets:
    """A consumer with two partitions, committed at 10 and 0, highwater far ahead."""

    def __init__(self) -> None:
        self.committed_at = {TP("n", 0): 10, TP("n", 1): 0}
        self.seeks: list[tuple[TP, int]] = []

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
