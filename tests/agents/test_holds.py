"""HoldService: hold requests decided against the busy time the sync indexed."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from calsync.agents.context import ServiceContext
from calsync.agents.holds import HoldService
from calsync.agents.timers import Scheduler
from calsync.availability.holds import HoldEventKind, fingerprint, new_hold_id
from calsync.availability.index import BusyIndex, Entry
from calsync.codecs.holds import decode_hold_event
from calsync.streams.records import HoldRequest, HoldRequestKind
from calsync.tables.records import Resource
from calsync.testing.outbox import ListOutbox

T0 = 1_800_000_000
BUSY = 1


class NoProviders:
    def get(self, resource_id: str, resource: Resource) -> Any:
        raise AssertionError("a hold decision never calls a provider")

    def forget(self, resource_id: str) -> None:
        pass

    def adopt(self, resource_id: str, resource: Resource) -> None:
        pass


@pytest.fixture
def make_holds(make_settings: Any) -> Callable[[list[Entry]], tuple[HoldService, ListOutbox]]:
    """A factory: a HoldService owning resource ``room`` whose stored index holds ``entries``."""

    def factory(entries: list[Entry]) -> tuple[HoldService, ListOutbox]:
        outbox = ListOutbox()
        resources = {
            "room": Resource(
                provider="google", calendar_id="room", registered_at=0.0, credentials={}
            )
        }
        context = ServiceContext(
            settings=make_settings(),
            resources=resources,
            sync_state={},
            channels={},
            outbox=outbox,
            providers=NoProviders(),
            clock=lambda: T0 - 100.0,
            rng=random.Random(1),
        )
        service = HoldService(
            busy={"room": BusyIndex({e.native_event_id: e for e in entries}).encode()},
            holds={},
            resources=resources,
            outbox=outbox,
            scheduler=Scheduler(context, {}),
            clock=lambda: T0 - 100.0,
        )
        return service, outbox

    return factory


def prepare(start: int, end: int, key: str) -> HoldRequest:
    return HoldRequest(
        kind=HoldRequestKind.PREPARE.value,
        hold_id=new_hold_id(key, ["room"]),
        resource_id="room",
        issued_at=T0 - 100.0,
        home="room",
        participants=["room"],
        start=start,
        end=end,
        ttl=600.0,
        fingerprint=fingerprint(["room"], start, end, 600.0),
    )


async def decided(service: HoldService, outbox: ListOutbox, request: HoldRequest) -> Any:
    """The hold event the service wrote for ``request``."""
    await service.on_request(request)
    event = decode_hold_event(outbox.hold_events[-1][1])
    assert event.hold_id == request.hold_id
    return event


async def test_a_hold_on_busy_time_is_refused_with_the_event_it_conflicts_with(
    make_holds,
) -> None:
    entries = [Entry(f"ev{i}", T0 + 7200 * i, T0 + 7200 * i + 1800, BUSY, 0) for i in range(3)]
    service, outbox = make_holds(entries)
    refused = await decided(service, outbox, prepare(T0 + 7200 + 900, T0 + 7200 + 2700, "a"))
    assert refused.kind is HoldEventKind.REJECTED
    assert refused.conflict is not None and refused.conflict.source == "busy"
    assert (refused.conflict.start, refused.conflict.end) == (T0 + 7200, T0 + 7200 + 1800)
    accepted = await decided(service, outbox, prepare(T0 + 1800, T0 + 7200, "b"))  # in between
    assert accepted.kind is HoldEventKind.ACCEPTED


async def test_a_zero_duration_event_blocks_no_hold(make_holds) -> None:
    """Free-slot answers (the timeline) offer the time around such an event as free; a
    hold on it is accepted, not refused as busy at the provider."""
    service, outbox = make_holds([Entry("reminder", T0 + 900, T0 + 900, BUSY, 0)])
    event = await decided(service, outbox, prepare(T0, T0 + 1800, "a"))
    assert event.kind is HoldEventKind.ACCEPTED
