"""What the parts of the sync service share: tables, outbox, providers, clock, status.

:class:`~calsync.agents.service.SyncService` builds one :class:`ServiceContext` and
hands it to its parts (:mod:`~calsync.agents.subscriptions`,
:mod:`~calsync.agents.commands`, the timer :class:`~calsync.agents.timers.Scheduler`),
so each part is a small class over the same tables.
"""

from __future__ import annotations

import random
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from calsync.agents.outbox import Outbox
from calsync.providers.base import Provider
from calsync.settings import Settings
from calsync.streams.records import StatusEvent
from calsync.tables.records import Channel, Resource, SyncState


class ProviderSource(Protocol):
    """Hands out the provider of a resource; ``forget`` drops a cached one."""

    def get(self, resource_id: str, resource: Resource) -> Provider: ...

    def forget(self, resource_id: str) -> None: ...

    def adopt(self, resource_id: str, resource: Resource) -> None:
        """``resource`` now holds credentials the cached provider rotated itself: keep it."""
        ...


@dataclass(slots=True)
class ServiceContext:
    """The tables a worker owns the partitions of, and where results go."""

    settings: Settings
    resources: MutableMapping[str, Resource]
    sync_state: MutableMapping[str, SyncState]
    channels: MutableMapping[str, Channel]
    outbox: Outbox
    providers: ProviderSource
    clock: Callable[[], float]
    rng: random.Random

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    async def status(self, resource_id: str, status: str, detail: str = "", **data: Any) -> None:
        """Write one status event for ``resource_id`` (``data`` only when there is some)."""
        event = StatusEvent(
            resource_id=resource_id,
            status=status,
            at=self.clock(),
            detail=detail,
            data=data or None,
        )
        await self.outbox.status(event)
