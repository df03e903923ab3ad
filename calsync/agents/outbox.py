"""Where the sync logic writes: an :class:`Outbox` whose every method returns after the
broker acknowledged (so callers can store cursors and ack inputs afterwards)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from calsync.codecs.avro import encode_events
from calsync.model import UnifiedEvent
from calsync.settings import Settings
from calsync.streams.records import (
    Command,
    HoldRequest,
    Notification,
    RetryEnvelope,
    StatusEvent,
)

#: ``send(topic, key, value)`` schedules a record and returns its delivery future.
Send = Callable[[str, bytes, bytes], Awaitable[Awaitable[Any]]]
#: Queues several values under one key, in order; returns one future for them all.
SendMany = Callable[[str, bytes, list[bytes]], Awaitable[Awaitable[Any]]]


class Outbox(Protocol):
    async def events(self, resource_id: str, events: list[UnifiedEvent]) -> None: ...
    async def notify(self, notification: Notification) -> None: ...
    async def notify_all(self, notifications: list[Notification]) -> None: ...
    async def retry(self, envelope: RetryEnvelope) -> None: ...
    async def command(self, command: Command) -> None: ...
    async def status(self, event: StatusEvent) -> None: ...
    async def deadletter(self, resource_id: str, payload: dict[str, Any]) -> None: ...
    async def holds(self, records: list[tuple[str, bytes]]) -> None:
        """Avro hold events (:mod:`calsync.codecs.holds`), each with its resource id."""
        ...

    async def hold_requests(self, requests: list[HoldRequest]) -> None: ...


class KafkaOutbox:
    """An :class:`Outbox` on a pipelined producer: batches are sent, then awaited together.

    Events are Avro-encoded with fastavro here, on the hot path, instead of going
    through a Faust topic's per-message serializer machinery.
    """

    def __init__(self, settings: Settings, send: Send, send_many: SendMany) -> None:
        self._send = send
        self._send_many = send_many
        self._events = settings.topic("events")
        self._notifications = settings.topic("notifications")
        self._retries = settings.topic("retries")
        self._commands = settings.topic("commands")
        self._status = settings.topic("status")
        self._deadletter = settings.topic("deadletter")
        self._holds = settings.topic("holds")
        self._hold_requests = settings.topic("hold-requests")

    async def _send_all(self, topic: str, key: str, values: list[bytes]) -> None:
        await self._send_keyed(topic, [(key, value) for value in values])

    async def _send_keyed(self, topic: str, records: list[tuple[str, bytes]]) -> None:
        futures = [await self._send(topic, key.encode(), value) for key, value in records]
        await asyncio.gather(*futures)

    async def events(self, resource_id: str, events: list[UnifiedEvent]) -> None:
        values = encode_events(events)
        await (await self._send_many(self._events, resource_id.encode(), values))

    async def notify(self, notification: Notification) -> None:
        await self._send_all(self._notifications, notification.resource_id, [notification.dumps()])

    async def notify_all(self, notifications: list[Notification]) -> None:
        """Several notifications, pipelined: sent together, then awaited together."""
        records = [(n.resource_id, n.dumps()) for n in notifications]
        await self._send_keyed(self._notifications, records)

    async def retry(self, envelope: RetryEnvelope) -> None:
        key = envelope.notification.resource_id
        await self._send_all(self._retries, key, [envelope.dumps()])

    async def command(self, command: Command) -> None:
        await self._send_all(self._commands, command.resource_id, [command.dumps()])

    async def status(self, event: StatusEvent) -> None:
        await self._send_all(self._status, event.resource_id, [event.dumps()])

    async def deadletter(self, resource_id: str, payload: dict[str, Any]) -> None:
        value = json.dumps(payload, sort_keys=True).encode()
        await self._send_all(self._deadletter, resource_id, [value])

    async def holds(self, records: list[tuple[str, bytes]]) -> None:
        await self._send_keyed(self._holds, records)

    async def hold_requests(self, requests: list[HoldRequest]) -> None:
        await self._send_keyed(self._hold_requests, [(r.resource_id, r.dumps()) for r in requests])
