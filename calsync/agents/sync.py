"""The agents whose offsets calsync commits itself: every record, handed to a dispatcher.

``calsync.sync`` takes every notification off ``calsync.notifications`` and
``calsync.commands`` every command off ``calsync.commands``, at once (raw bytes, Faust's
acks off); a :class:`~calsync.agents.dispatch.NotificationDispatcher` runs each (a
notification on its lane, :meth:`~calsync.agents.service.SyncService.on_notification`;
a command in its resource's order, :meth:`~calsync.agents.service.SyncService.on_command`)
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
COMMANDS = "calsync.commands"


def install_dispatched_agent(
    app: faust.App,
    health: Health,
    topic: faust.TopicT,
    dispatcher: NotificationDispatcher,
    settings: Settings,
    *,
    name: str = NAME,
) -> None:
    """Register the agent ``name`` on ``topic`` (declared with ``acks=False``), the
    dispatcher's commit task and its rebalance hook."""

    def on_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> Awaitable[None]:
        return dispatcher.on_revoked()

    app.on_partitions_revoked.connect(on_revoked)

    async def submit(event: faust.EventT[bytes]) -> None:
        message = event.message
        await dispatcher.submit(message.tp, message.offset, event.value, event, key=message.key)

    def events(stream: faust.StreamT[bytes]) -> Any:
        return stream.events()

    install_agent(app, health, topic, name, settings.fail_agent, submit, events)

    async def commit_offsets() -> None:
        await dispatcher.run()

    # one task per dispatcher: Faust names a task by its function's qualified name
    commit_offsets.__qualname__ = commit_offsets.__name__ = f"commit_{name.replace('.', '_')}"
    app.task(commit_offsets)
