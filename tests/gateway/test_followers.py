"""The boards behind ``?wait=`` and ``POST /api/holds`` take what their follower reads."""

from __future__ import annotations

from calsync.availability.holds import HoldEvent, HoldEventKind
from calsync.codecs.holds import encode_hold_event
from calsync.gateway.holds import HoldFollower
from calsync.gateway.status import StatusFollower
from calsync.streams.records import StatusEvent

EVENT = HoldEvent(
    hold_id="room~" + "1" * 32,
    resource_id="room",
    kind=HoldEventKind.ACCEPTED,
    start=1_800_000_000,
    end=1_800_000_600,
    home="room",
    participants=("room",),
    emitted_at=1_799_999_000.0,
)


def test_a_hold_follower_feeds_its_board_and_skips_what_it_cannot_read() -> None:
    board = HoldFollower("127.0.0.1:9", "t.holds")  # not started: no connection is made
    mark = board.mark()
    board._on_record(b"not avro")
    board._on_record(encode_hold_event(EVENT))
    found = board.find(
        EVENT.hold_id, resource_id="room", kinds={HoldEventKind.ACCEPTED}, after=mark
    )
    assert found == EVENT


def test_a_status_follower_feeds_its_board() -> None:
    board = StatusFollower("127.0.0.1:9", "t.status")
    mark = board.mark()
    board._on_record(b"{")
    event = StatusEvent(resource_id="r", status="registered", at=10.0, data={"issued_at": 10.0})
    board._on_record(event.dumps())
    assert board.mark() > mark
