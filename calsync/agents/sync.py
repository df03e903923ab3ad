"""The sync agent (``calsync.sync``): every notification, handed to the dispatcher.

One agent takes every notification off ``calsync.notifications`` at once (raw bytes,
Faust's acks off); the :class:`~calsync.agents.dispatch.NotificationDispatcher` runs
each on its lane (live or bulk, :meth:`~calsync.agents.service.SyncService.on_notification`)
and commits its offset when it has finished.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import faust

from calsync.agents.dispatch import NotificationDispatcher
from calsync.agents.supervision import Health, install_agent
from calsync.settings import Settings

NAME = "calsync.sync"


def install_sync_agent(
    app: faust.App,
    health: Health,
    topic: faust.TopicT,
    dispatcher: NotificationDispatcher,
    settings: Settings,
) -> None:
    """Register the sync agent, the dispatcher's commit task and its rebalance hook."""

    def on_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> Awaitable[None]:
        return dispatcher.on_revoked()

    app.on_partitions_revoked.connect(on_revoked)

    async def submit(event: faust.EventT[bytes]) -> None:
        message = event.message
        await dispatcher.submit(message.tp, message.offset, event.value, event, key=message.key)

    def events(stream: faust.StreamT[bytes]) -> Any:
        return stream.events()

    install_agent(app, health, topic, NAME, settings.fail_agent, submit, events)

    @app.task  # type: ignore[untyped-decorator]  # faust types task() loosely
    async def commit_notifications() -> None:
        await dispatcher.run()
