"""What became of a registration, read from ``calsync.status`` (no tables needed).

The worker that owns a resource writes its state changes to ``calsync.status``
(:class:`~calsync.streams.records.StatusEvent`). A registration's story there is
``registered``, then either ``synced`` (the first full sync went through; a
``resync_finished`` precedes it) or a failure: ``reauth_required`` (the credential
was refused), ``failed`` (the provider refused the calendar, or retries ran out) or
``removed``. On the way there may be ``retry_scheduled``, ``rate_limited``,
``subscription_lost`` (no push: the calendar is still synced by reconciliation) and
``quarantined`` (an item calsync cannot represent), which are reported as warnings.

:class:`StatusBoard` folds status events into a bounded memory of recent
registrations and wakes whoever waits for one; :class:`StatusFollower` is a board fed
by one group-less aiokafka consumer of the status topic, started lazily, one per
process. Both implement :class:`StatusSource`, which is what the gateway uses.

A registration is named by its resource id and the ``issued_at`` of its register
command. The ``registered`` status that belongs to it is the one for the resource
whose ``data.issued_at`` equals it. From workers that do not write ``issued_at``, it
is the first ``registered`` whose ``at`` is no earlier than ``issued_at -
CLOCK_SKEW`` (gateway and worker clocks may differ a little) and, when the caller
took a :meth:`StatusBoard.mark` before writing the command, that was seen after the
mark; without a mark, a registration of the same resource up to ``CLOCK_SKEW``
earlier is taken for this one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from calsync.streams.follower import Followed
from calsync.streams.records import StatusEvent

log = logging.getLogger(__name__)

#: Statuses that end a registration's wait, successfully or not.
SUCCEEDED = frozenset({"synced"})
FAILED = frozenset({"reauth_required", "failed", "removed"})
#: Statuses worth telling whoever registered, though they end nothing.
WARNINGS = frozenset({"subscription_lost", "quarantined", "retry_scheduled", "rate_limited"})
#: Periodic records of the dashboard (:mod:`calsync.web.heartbeat`), not status changes.
PERIODIC = frozenset({"heartbeat", "summary"})
#: Seconds a worker's clock may run behind the gateway's (see the module docstring).
CLOCK_SKEW = 2.0


@dataclass(frozen=True, slots=True)
class Registration:
    """The outcome of one registration as far as the status topic tells it so far.

    ``outcome`` is ``synced``, the failing status (``reauth_required``, ``failed``,
    ``removed``), or ``pending`` while neither has been seen (``done`` is false);
    ``detail`` is the deciding status's detail (the provider's words for a failure).
    """

    resource_id: str
    issued_at: float
    outcome: str = "pending"
    detail: str = ""
    registered: bool = False
    last_status: str | None = None
    at: float | None = None
    data: dict[str, Any] | None = None
    warnings: tuple[tuple[str, str], ...] = ()
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.outcome != "pending"

    @property
    def ok(self) -> bool:
        return self.outcome in SUCCEEDED

    def describe(self) -> str:
        """The outcome in plain words, for people (the CLI prints this)."""
        rid = self.resource_id
        if self.outcome == "synced":
            text = f"{rid} is registered and its first sync finished"
        elif self.outcome == "reauth_required":
            text = f"{rid} is registered, but the provider refused the credentials: {self.detail}"
        elif self.outcome == "failed":
            text = f"{rid} is registered, but its sync failed: {self.detail}"
        elif self.outcome == "removed":
            text = f"{rid} was removed before its first sync finished"
        elif self.registered:
            text = f"{rid} is registered; its first sync has not finished yet"
            if self.last_status:
                text += f" (last status: {self.last_status})"
        else:
            text = f"no worker has taken up {rid} yet (is one running?)"
        for status, detail in self.warnings:
            text += f"\n  {status}: {detail}" if detail else f"\n  {status}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "resource_id": self.resource_id,
            "issued_at": self.issued_at,
            "outcome": self.outcome,
            "done": self.done,
            "ok": self.ok,
            "detail": self.detail,
            "registered": self.registered,
            "last_status": self.last_status,
            "at": self.at,
            "data": self.data,
            "warnings": [{"status": s, "detail": d} for s, d in self.warnings],
            "counts": self.counts,
        }


class StatusSource(Protocol):
    """Where the gateway learns what became of a registration."""

    async def ready(self) -> None:
        """Start following (idempotent); returns once every status written from now on
        will be seen. Raises when the source cannot be reached."""
        ...

    def mark(self) -> int:
        """A position: statuses seen later compare greater (see ``after``)."""
        ...

    async def registration(
        self, resource_id: str, issued_at: float, *, wait: float = 0.0, after: int | None = None
    ) -> Registration:
        """The registration's outcome, waiting up to ``wait`` seconds for it to be done.

        ``after``, a :meth:`mark` taken before the command was written, rules out
        ``registered`` statuses seen before it.
        """
        ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class _Attempt:
    """One ``registered`` status and what followed it (bounded)."""

    registered: StatusEvent
    last: StatusEvent
    seen_at: int
    outcome: StatusEvent | None = None
    warnings: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=8))
    counts: Counter[str] = field(default_factory=Counter)


def _issued_at(event: StatusEvent) -> float | None:
    value = (event.data or {}).get("issued_at")
    return float(value) if isinstance(value, int | float) else None


class StatusBoard:
    """Recent registrations folded from status events, in memory, bounded.

    At most ``per_resource`` registrations of ``max_resources`` resources are kept
    (least recently registered forgotten first); statuses of resources with no
    remembered registration are ignored. Feed it with :meth:`feed`.
    """

    def __init__(self, *, max_resources: int = 10_000, per_resource: int = 4) -> None:
        self._attempts: OrderedDict[str, deque[_Attempt]] = OrderedDict()
        self._max_resources = max_resources
        self._per_resource = per_resource
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._fed = 0

    def mark(self) -> int:
        return self._fed

    async def ready(self) -> None:
        """Nothing to start: a board sees what it is fed."""

    async def aclose(self) -> None:
        """Nothing to stop."""

    def feed(self, event: StatusEvent) -> None:
        """Take one status event (in topic order for its resource) and wake its waiters."""
        rid = event.resource_id
        self._fed += 1
        if event.status in PERIODIC:
            return  # the dashboard's heartbeats and summaries say nothing about a registration
        if event.status == "registered":
            attempts = self._attempts.get(rid)
            if attempts is None:
                attempts = self._attempts[rid] = deque(maxlen=self._per_resource)
                while len(self._attempts) > self._max_resources:
                    self._attempts.popitem(last=False)
            else:
                self._attempts.move_to_end(rid)
            attempts.append(_Attempt(registered=event, last=event, seen_at=self._fed))
        else:
            for attempt in self._attempts.get(rid, ()):
                if attempt.outcome is not None:
                    continue
                attempt.last = event
                attempt.counts[event.status] += 1
                if event.status in SUCCEEDED or event.status in FAILED:
                    attempt.outcome = event
                elif event.status in WARNINGS:
                    attempt.warnings.append((event.status, event.detail))
        for waiter in self._waiters.get(rid, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _find(self, resource_id: str, issued_at: float, after: int | None) -> _Attempt | None:
        found: _Attempt | None = None
        for attempt in self._attempts.get(resource_id, ()):
            stamp = _issued_at(attempt.registered)
            if stamp is not None:
                if abs(stamp - issued_at) < 0.0005:
                    return attempt
                continue
            if attempt.registered.at < issued_at - CLOCK_SKEW:
                continue
            if after is not None and attempt.seen_at <= after:
                continue
            if found is None:
                found = attempt  # the first that qualifies, unless a stamped one matches
        return found

    def lookup(
        self, resource_id: str, issued_at: float, *, after: int | None = None
    ) -> Registration:
        """The registration as known now (``pending`` if its ``registered`` was not seen)."""
        attempt = self._find(resource_id, issued_at, after)
        if attempt is not None:
            deciding = attempt.outcome
            return Registration(
                resource_id=resource_id,
                issued_at=issued_at,
                outcome=deciding.status if deciding is not None else "pending",
                detail=deciding.detail if deciding is not None else "",
                registered=True,
                last_status=attempt.last.status,
                at=attempt.last.at,
                data=deciding.data if deciding is not None else None,
                warnings=tuple(attempt.warnings),
                counts=dict(attempt.counts),
            )
        return Registration(resource_id=resource_id, issued_at=issued_at)

    async def registration(
        self, resource_id: str, issued_at: float, *, wait: float = 0.0, after: int | None = None
    ) -> Registration:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            found = self.lookup(resource_id, issued_at, after=after)
            remaining = deadline - loop.time()
            if found.done or remaining <= 0:
                return found
            waiter: asyncio.Future[None] = loop.create_future()
            waiters = self._waiters.setdefault(resource_id, set())
            waiters.add(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass
            finally:
                waiters.discard(waiter)
                if not waiters:
                    self._waiters.pop(resource_id, None)


def _decode(value: bytes | None) -> StatusEvent | None:
    """A status event, or ``None`` for a record that is not one (a foreign writer)."""
    try:
        event = StatusEvent.loads(value or b"")
    except Exception:  # any decoding failure: the follower must keep following
        return None
    valid = (
        isinstance(event.resource_id, str)
        and isinstance(event.status, str)
        and isinstance(event.at, int | float)
        and isinstance(event.detail, str)
        and (event.data is None or isinstance(event.data, dict))
    )
    return event if valid else None


class StatusFollower(Followed[StatusEvent], StatusBoard):
    """A :class:`StatusBoard` fed by a group-less aiokafka consumer of the status topic.

    :meth:`ready` starts it (once; concurrent callers share the start) at the
    statuses written ``lookback`` seconds ago, so a registration made shortly before
    (through another gateway, or before a restart) can still be looked up; the
    positions are explicit offsets, so no status written after :meth:`ready` returns
    is missed. :meth:`aclose` is idempotent.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        lookback: float = 600.0,
        client_id: str = "calsync-status-follower",
        max_resources: int = 10_000,
        per_resource: int = 4,
    ) -> None:
        StatusBoard.__init__(self, max_resources=max_resources, per_resource=per_resource)
        self._follow(bootstrap, topic, lookback=lookback, client_id=client_id)

    def decode(self, value: bytes | None) -> StatusEvent | None:
        return _decode(value)
