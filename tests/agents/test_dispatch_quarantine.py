"""The one decoder of the agents' raw records: malformed ones are quarantined with a
status event naming where they are, never what they contain."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

import pytest

from calsync.agents.dispatch import NotificationDispatcher
from calsync.agents.quarantine import Malformed, Quarantine, decode_record
from calsync.agents.service import Lane
from calsync.streams.records import Command, Notification, RetryEnvelope, StatusEvent
from tests.agents.test_dispatch_status import Offsets

NOTE = Notification(provider="google", resource_id="r1", reason="push", received_at=1.0)
ENVELOPE = RetryEnvelope(notification=NOTE, attempt=2, due_at=5.0, last_error="503", key="k")


@pytest.mark.parametrize(
    "value",
    [
        b"\xff\xfe secret",
        b"{not json",
        b'["a list"]',
        b'"a string"',
        b'{"secret": "x"}',
        b'{"notification": "secret", "attempt": 1, "due_at": 1.0, "last_error": ""}',
        b'{"notification": {"provider": "google"}, "attempt": 1, "due_at": 1, "last_error": ""}',
        b'{"notification": ' + NOTE.dumps() + b', "attempt": "1", "due_at": 1, "last_error": ""}',
        b'{"notification": ' + NOTE.dumps() + b', "attempt": true, "due_at": 1, "last_error": ""}',
        None,
    ],
)
def test_malformed_retry_envelopes_are_refused_without_quoting_them(value: bytes | None) -> None:
    with pytest.raises(Malformed) as caught:
        decode_record(RetryEnvelope, value)
    assert "secret" not in str(caught.value)


def test_well_formed_records_decode_whole() -> None:
    envelope = decode_record(RetryEnvelope, ENVELOPE.dumps())
    assert envelope == ENVELOPE and isinstance(envelope.notification, Notification)
    command = Command(kind="register", resource_id="r1", issued_at=3, credentials={"t": "c"})
    assert decode_record(Command, command.dumps()) == command
    with pytest.raises(Malformed, match="resource_id: wrong type"):
        decode_record(Command, b'{"kind": "register", "resource_id": 5, "issued_at": 1}')
    with pytest.raises(Malformed, match="credentials: wrong type"):
        decode_record(
            Command, b'{"kind": "x", "resource_id": "r", "issued_at": 1, "credentials": "s"}'
        )


async def test_quarantine_reports_where_the_record_is_once() -> None:
    sent: list[StatusEvent] = []

    async def report(event: StatusEvent) -> None:
        sent.append(event)

    quarantine = Quarantine(report, clock=lambda: 42.0)
    args = {"topic": "calsync.commands", "partition": 3, "offset": 17}
    assert await quarantine.decode(Command, b'{"secret": 1}', key=b"r9", **args) is None
    assert await quarantine.decode(Command, b"\xff", key=b"\xff", **args) is None
    good = Command(kind="resync", resource_id="r9", issued_at=1.0)
    assert await quarantine.decode(Command, good.dumps(), **args) == good
    assert [(e.resource_id, e.status, e.at, e.data) for e in sent] == [
        ("r9", "quarantined", 42.0, args),
        ("", "quarantined", 42.0, args),
    ]
    assert all("secret" not in e.detail for e in sent)
    assert quarantine.counts == {"calsync.commands": 2}


class TP(NamedTuple):
    topic: str
    partition: int


async def test_a_malformed_notification_is_quarantined_and_does_not_block_its_partition() -> None:
    sent: list[StatusEvent] = []
    ran: list[str] = []

    async def report(event: StatusEvent) -> None:
        sent.append(event)

    async def handler(notification: Notification, lane: Lane) -> None:
        ran.append(notification.resource_id)

    offsets = Offsets()
    dispatcher = NotificationDispatcher(
        handler, offsets, topic="n", quarantine=Quarantine(report, clock=lambda: 1.0)
    )
    tp = TP("n", 1)
    await dispatcher.submit(tp, 0, b'{"resource_id": 7}', None, key=b"r1")
    await dispatcher.submit(tp, 1, NOTE.dumps(), None, key=b"r1")
    await asyncio.sleep(0.01)
    await dispatcher.commit()
    assert ran == ["r1"]
    assert offsets.committed_at[tp] == 2
    assert [e.data for e in sent] == [{"topic": "n", "partition": 1, "offset": 0}]
    assert dispatcher.counts["undecodable"] == 1
