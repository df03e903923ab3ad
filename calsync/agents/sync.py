"""The agents of a worker: every record, handed to a dispatcher that commits its offset.

Each agent takes every record off its topic at once (raw bytes, Faust's acks off); a
:class:`~calsync.agents.dispatch.NotificationDispatcher` runs each in its resource's
order and commits its offset when it has finished:

* ``calsync.sync``: ``calsync.notifications``, on its lane
  (:meth:`~calsync.agents.service.SyncService.on_notification`);
* ``calsync.commands``: ``calsync.commands``
  (:meth:`~calsync.agents.service.SyncService.on_command`);
* ``calsync.retry``: ``calsync.retries``, each envelope kept as a timer until it is due
  (:meth:`~calsync.agents.service.SyncService.on_retry`);
* ``calsync.holds``: ``calsync.hold-requests``
  (:meth:`~calsync.agents.holds.HoldService.on_request`).
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
RETRIES = "calsync.retry"
HOLDS = "calsync.holds"


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
