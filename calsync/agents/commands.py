"""Commands from the admin API and CLI (``calsync.commands``), and credential rotation.

Register, remove, rotate, resync, pause and resume each change the ``resources`` table and, where
the resource must be synced, write a notification. Credential rotation has one path:
a provider's request seam hands rotated credentials to :meth:`Commands.on_rotated`
(through the provider factory) before the request goes on; they are stored at once
and written as a ``rotate`` command, which is applied again on replay.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from calsync.agents.context import ServiceContext
from calsync.agents.subscriptions import Subscriptions
from calsync.crypto import SecretBox
from calsync.streams.records import Command, CommandKind, Notification, Reason
from calsync.tables.records import Resource, SyncState

log = logging.getLogger(__name__)


def _notification(command: Command, provider: str, *, full: bool = False) -> Notification:
    return Notification(
        provider=provider,
        resource_id=command.resource_id,
        reason=Reason.COMMAND.value,
        received_at=command.issued_at,
        full=full,
    )


def resumes_from_cursor(
    previous: Resource | None, current: Resource, state: SyncState | None
) -> bool:
    """Whether a resource that recovers from ``reauth_required`` with new (or rotated)
    credentials can resume from its stored cursor instead of a full listing.

    A Google ``syncToken``, a Graph delta link and a CalDAV ``sync-token`` belong to
    the calendar, not to the grant: after the owner consents again the cursor still
    works. Only the same provider and calendar qualify, with a cursor that is not
    known to have expired. Should the provider find it expired after all, the sync's
    ``CursorExpired`` path falls back to a full resync by itself; the stored index
    is kept either way, so nothing is emitted twice.
    """
    return (
        previous is not None
        and previous.state == "reauth_required"
        and previous.provider == current.provider
        and previous.calendar_id == current.calendar_id
        and state is not None
        and state.cursor is not None
        and not state.cursor_expired_at
    )


class Commands:
    """Applies commands to the tables of the resources a worker owns."""

    def __init__(
        self, context: ServiceContext, subscriptions: Subscriptions, secrets: SecretBox
    ) -> None:
        self._context = context
        self._subscriptions = subscriptions
        self._secrets = secrets
        self._handlers: dict[str, Callable[[Command], Awaitable[None]]] = {
            CommandKind.REGISTER.value: self._register,
            CommandKind.REMOVE.value: self._remove,
            CommandKind.ROTATE.value: self._rotate,
            CommandKind.RESYNC.value: self._resync,
            CommandKind.PAUSE.value: self._pause,
            CommandKind.RESUME.value: self._resume,
        }

    async def apply(self, command: Command) -> None:
        """Apply ``command`` (the caller holds the resource's lock); an unknown kind
        is logged and ignored."""
        handler = self._handlers.get(command.kind)
        if handler is None:
            log.warning("unknown command %r for %s ignored", command.kind, command.resource_id)
            return
        await handler(command)

    async def _remove(self, command: Command) -> None:
        context, rid = self._context, command.resource_id
        resource = context.resources.get(rid)
        if resource is None:
            return
        await self._subscriptions.unsubscribe(rid, resource)
        context.resources[rid] = resource.derive(state="removed")
        context.providers.forget(rid)
        await context.outbox.notify(_notification(command, resource.provider))
        await context.status(rid, "removed")

    async def _resync(self, command: Command) -> None:
        resource = self._context.resources.get(command.resource_id)
        if resource is not None:
            await self._context.outbox.notify(_notification(command, resource.provider, full=True))

    async def _pause(self, command: Command) -> None:
        """No provider calls for the resource until it is resumed (its channel stays;
        pushes on it are dropped by the sync service, which skips inactive resources)."""
        context, rid = self._context, command.resource_id
        resource = context.resources.get(rid)
        if resource is None or resource.state != "active":
            return
        context.resources[rid] = resource.derive(state="paused")
        await context.status(rid, "paused")

    async def _resume(self, command: Command) -> None:
        """A paused resource becomes active and is resynced in full (changes made while
        it was paused are found by the listing)."""
        context, rid = self._context, command.resource_id
        resource = context.resources.get(rid)
        if resource is None or resource.state != "paused":
            return
        context.resources[rid] = resource.derive(state="active")
        await context.status(rid, "resumed")
        await context.outbox.notify(_notification(command, resource.provider, full=True))

    async def on_rotated(self, rid: str, credentials: dict[str, str]) -> None:
        """A provider rotated its credentials mid-request: store them now, twice over.

        The table write serves this worker at once; the ``rotate`` command on the
        commands topic (acknowledged before the request goes on) survives a crash
        that loses the table write, and is applied again on replay.
        """
        context = self._context
        command = rotate_command(self._secrets, rid, credentials, issued_at=context.clock())
        encrypted = command.credentials or {}
        await context.outbox.command(command)
        resource = context.resources.get(rid)
        if resource is not None:
            updated = resource.derive(credentials={**resource.credentials, **encrypted})
            context.resources[rid] = updated
            context.providers.adopt(rid, updated)

    async def _rotate(self, command: Command) -> None:
        """Apply rotated credentials (again, after a crash); a resource marked
        ``reauth_required`` because it was replayed with the stale token recovers."""
        context, rid = self._context, command.resource_id
        resource = context.resources.get(rid)
        if resource is None or not command.credentials:
            return
        credentials = {**resource.credentials, **command.credentials}
        if credentials != resource.credentials:
            resource = resource.derive(credentials=credentials)
            context.resources[rid] = resource
            context.providers.forget(rid)
        if resource.state == "reauth_required":
            context.resources[rid] = resource.derive(state="active")
            await context.status(rid, "recovered", "rotated credentials applied")
            full = not resumes_from_cursor(resource, resource, context.sync_state.get(rid))
            await context.outbox.notify(_notification(command, resource.provider, full=full))

    async def _register(self, command: Command) -> None:
        """Store the resource; the bulk lane subscribes it and runs the first full sync.

        A reconnect (the same calendar registered again while it waits for new
        credentials) resumes from the stored cursor instead: see
        :func:`resumes_from_cursor`."""
        context, rid = self._context, command.resource_id
        if not (command.provider and command.calendar_id and command.credentials):
            await context.status(rid, "failed", "register command without provider or credentials")
            return
        previous = context.resources.get(rid)
        resource = Resource(
            provider=command.provider,
            calendar_id=command.calendar_id,
            registered_at=command.issued_at,
            credentials=dict(command.credentials),
            time_zone=command.time_zone,
            busy_policy=dict(command.busy_policy) if command.busy_policy is not None else None,
            own_address=command.own_address,
        )
        context.resources[rid] = resource
        context.providers.forget(rid)
        if previous is not None:
            await self._subscriptions.unsubscribe_previous(rid, previous, resource)
        state = context.sync_state.get(rid)
        if state is not None and (state.not_before or state.subscribe_retry_at):
            # New credentials may fix what held or refused the old ones: try at once.
            context.sync_state[rid] = state.derive(
                not_before=0.0, subscribe_failures=0, subscribe_retry_at=0.0
            )
        full = not resumes_from_cursor(previous, resource, state)
        if previous is not None and previous.state == "reauth_required":
            await context.status(rid, "recovered", "new credentials", resumed=not full)
        await context.outbox.notify(_notification(command, resource.provider, full=full))
        await context.status(
            rid,
            "registered",
            provider=resource.provider,
            calendar_id=resource.calendar_id,
            issued_at=command.issued_at,
        )


def rotate_command(
    secrets: SecretBox, rid: str, credentials: dict[str, str], *, issued_at: float
) -> Command:
    """The ``rotate`` command that stores credentials a provider rotated, encrypted
    (written by the worker that saw the rotation, and by ``calsync verify``)."""
    return Command(
        kind=CommandKind.ROTATE.value,
        resource_id=rid,
        issued_at=issued_at,
        credentials={k: secrets.encrypt(v) for k, v in credentials.items()},
    )
