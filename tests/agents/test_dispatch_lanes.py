"""The dispatcher's lanes: a live push never waits for bulk work, and each provider's
bulk work has slots of its own, so one provider's backlog never holds up another's."""

from __future__ import annotations

import asyncio

from calsync.agents.dispatch import NotificationDispatcher
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
