"""No half-dead workers: a dead agent stops the worker, and ``/healthz`` says so first.

A Faust agent whose body raises is gone for good (its partitions' records go
nowhere) while the worker, its web server and its heartbeats carry on: the group
keeps the partitions assigned to a worker that cannot serve them. calsync does not
try to revive agents in place (the records a dead agent held are lost to Faust's
bookkeeping); it stops the whole worker with a non-zero exit code, so the process
supervisor restarts it and the group rebalances, and the restarted worker replays
from the committed offsets. :class:`Health` turns ``/healthz`` to 503 the moment a
failure is known, before the process is gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

#: Exit code of a worker stopped because an agent or the dispatcher died.
EXIT_AGENT_DIED = 70

#: If Faust's own crash handling has not ended the process after this many seconds,
#: the process exits hard: a supervisor must see it go.
HARD_EXIT_AFTER = 20.0


class Health:
    """What is wrong with this worker, if anything; read by ``/healthz``."""

    def __init__(self) -> None:
        self.problems: dict[str, str] = {}
        self.tasks: set[asyncio.Task[None]] = set()  # strong references to crash tasks
        #: whether the tables are ready to answer (assigned and restored); ``None``: no tables
        self.tables_ready: Callable[[], bool] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, name: str, reason: str) -> None:
        self.problems.setdefault(name, reason)

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Answer ``/healthz`` with 503 and the problems while there are any; else 200,
        with ``"tables": "ready"`` or ``"restoring"`` on a worker.

        Liveness, not readiness: a worker whose tables are being restored (after a start
        or a rebalance) still takes webhooks, so it stays 200; what reads tables (the
        availability API) answers 503 meanwhile, and ``"tables"`` says when it will not.
        """
        if request.path != "/healthz":
            return await handler(request)
        if self.problems:
            return web.json_response({"status": "unhealthy", "problems": self.problems}, status=503)
        if self.tables_ready is None:
            return await handler(request)
        tables = "ready" if self.tables_ready() else "restoring"
        return web.json_response({"status": "ok", "tables": tables})


def fatal(app: Any, health: Health, name: str, exc: BaseException) -> None:
    """``name`` died of ``exc``: mark the worker unhealthy and stop it with an error.

    Faust's crash path (``app.crash``) stops the worker and re-raises, so the process
    exits non-zero; a hard exit after :data:`HARD_EXIT_AFTER` makes sure of it.
    """
    if name in health.problems:
        return
    health.fail(name, f"{type(exc).__name__}: {exc}")
    log.critical("%s died (%r): stopping the worker so that it is restarted", name, exc)
    loop = asyncio.get_event_loop()
    loop.call_later(HARD_EXIT_AFTER, os._exit, EXIT_AGENT_DIED)
    task = loop.create_task(app.crash(exc))
    health.tasks.add(task)


def supervised(
    app: Any, health: Health, name: str, body: Callable[[Any], Awaitable[None]]
) -> Callable[[Any], Awaitable[None]]:
    """An agent body that stops the worker (:func:`fatal`) if ``body`` raises or returns."""

    async def agent(stream: Any) -> None:
        try:
            await body(stream)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            fatal(app, health, name, exc)
            raise
        if not app.should_stop:
            fatal(app, health, name, RuntimeError(f"agent {name} returned"))

    agent.__name__ = agent.__qualname__ = name.replace(".", "_")
    return agent


class InjectedFault(RuntimeError):
    """Raised by an agent named in ``CALSYNC_FAIL_AGENT`` (tests of supervision only)."""


def install_agent(
    app: Any,
    health: Health,
    topic: Any,
    name: str,
    fail_agent: str,
    handle: Callable[[Any], Awaitable[None]],
    records: Callable[[Any], AsyncIterator[Any]],
) -> None:
    """Register the supervised agent ``name`` on ``topic``: for each item of
    ``records(stream)`` it calls ``handle``; the agent named by ``fail_agent``
    (``CALSYNC_FAIL_AGENT``) raises :class:`InjectedFault` instead."""

    async def body(stream: Any) -> None:
        async for record in records(stream):
            if fail_agent == name:
                raise InjectedFault(f"CALSYNC_FAIL_AGENT={name}")
            await handle(record)

    app.agent(topic, name=name)(supervised(app, health, name, body))
