"""An :class:`~calsync.agents.outbox.Outbox` that keeps what it is given (unit tests)."""

from __future__ import annotations

from typing import Any

from calsync.model import UnifiedEvent
from calsync.streams.records import (
    Command,
    HoldRequest,
    Notification,
    RetryEnvelope,
    StatusEvent,
)


class ListOutbox:
    def __init__(self) -> None:
        self.emitted: list[UnifiedEvent] = []
        self.notifications: list[Notification] = []
        self.retries: list[RetryEnvelope] = []
        self.statuses: list[StatusEvent] = []
        self.dead: list[tuple[str, dict[str, Any]]] = []
        self.commands: list[Command] = []
        self.hold_events: list[tuple[str, bytes]] = []
        self.requests: list[HoldRequest] = []

    async def events(self, resource_id: str, events: list[UnifiedEvent]) -> None:
        self.emitted.extend(events)

    async def notify(self, notification: Notification) -> None:
        self.notifications.append(notification)

    async def notify_all(self, notifications: list[Notification]) -> None:
        self.notifications.extend(notifications)

    async def retry(self, envelope: RetryEnvelope) -> None:
        self.retries.append(envelope)

    async def command(self, command: Command) -> None:
        self.commands.append(command)

    async def status(self, event: StatusEvent) -> None:
        self.statuses.append(event)

    async def deadletter(self, resource_id: str, payload: dict[str, Any]) -> None:
        self.dead.append((resource_id, payload))

    async def holds(self, records: list[tuple[str, bytes]]) -> None:
        self.hold_events.extend(records)

    async def hold_requests(self, requests: list[HoldRequest]) -> None:
        self.requests.extend(requests)

    def status_names(self) -> list[str]:
        return [s.status for s in self.statuses]
