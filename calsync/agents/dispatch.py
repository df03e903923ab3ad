"""The in-process dispatcher of every topic a worker consumes (``calsync.notifications``,
``calsync.commands``, ``calsync.retries``, ``calsync.hold-requests``): lanes,
per-resource order, and offsets committed only over finished work.

One Faust agent reads the topic with Faust's acks off and hands every record to
:meth:`NotificationDispatcher.submit`, which returns at once (unless ``max_pending``
records are waiting). Faust's own acks lose records around a rebalance (its agent
channels drop queued records, and its gap handling then commits past them:
``docs/architecture.md``, "Failover"). A registration lost that way never syncs, a
retry lost that way leaves a calendar behind until its reconciliation, and a hold
request lost that way is never decided; so each of those topics goes through a
dispatcher of its own too (``record_type`` :class:`~calsync.streams.records.Command`,
:class:`~calsync.streams.records.RetryEnvelope` or
:class:`~calsync.streams.records.HoldRequest`, one lane). The dispatcher

* runs each record as its own task, one at a time per resource (FIFO), on a *live*
  lane (pushes needing a delta, renewals: ``live_slots`` at a time) or a *bulk*
  lane (full syncs, reconciliations, polls: ``bulk_slots`` at a time *per provider*),
  so a backfill never holds up a live push, and one provider's backlog (10,000 Google
  calendars registered at once, a provider's quota waits or slow answers) never holds
  up another provider's full syncs: they are different services with their own limits.
  Within a provider's bulk lane, work on calendars already in step goes before first
  syncs (:class:`BulkSlots`);
* keeps a :class:`~calsync.agents.offsets.PartitionLedger` per partition and
  commits, every ``commit_interval``, the offset below which every record has
  finished: never over a hole, never over unfinished work;
* repairs holes: a record later than the next expected one, or a partition whose
  highwater is past the next expected offset while nothing arrived for
  ``stall_after`` seconds, seeks the partition back to the next expected offset;
* on a rebalance (Faust revokes every partition first) stops starting runs, lets
  running ones finish for ``revoke_grace`` seconds, cancels the rest, commits what
  finished and forgets its ledgers: each partition's new owner (perhaps this
  worker again) starts over from the committed offset.

Replays are harmless by design (covered pushes are skipped, full syncs compare
content versions), so the price of a seek or a cancelled run is repeated work,
never a lost or different event.

Each run executes in the :mod:`contextvars` context of the record it came from and
keeps a strong reference to its Faust event: Faust finds the partition of a table
write through a weak reference to the current event.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from calsync.agents.offsets import OffsetsUnavailable, PartitionLedger, Receipt
from calsync.agents.quarantine import Malformed, Quarantine, decode_record
from calsync.agents.service import Lane, lane_of
from calsync.providers.registry import REGISTRY
from calsync.streams.records import Notification, Reason

log = logging.getLogger(__name__)

Handler = Callable[[Any, Lane], Awaitable[None]]

#: An upkeep round (commit and repair) slower than this, in seconds, is logged.
SLOW_UPKEEP = 5.0


class OffsetsPort(Protocol):
    """What the dispatcher needs from the consumer (see :class:`ConsumerOffsets`)."""

    def assignment(self) -> set[Any]: ...

    def highwater(self, tp: Any) -> int | None: ...

    async def committed(self, tp: Any) -> int: ...

    async def commit(self, offsets: Mapping[Any, int]) -> bool: ...

    async def seek(self, tp: Any, offset: int) -> None: ...

    async def log_start(self, tp: Any) -> int | None: ...


@dataclass(slots=True)
class _Run:
    tp: Any
    offset: int
    record: Any  # a Notification, or the dispatcher's record_type
    lane: Lane
    epoch: int
    ledger: PartitionLedger
    keep: object  # the Faust event: Faust's current_event() is a weak reference to it


def _resource_id(record: Any) -> str:
    return str(record.resource_id)


class BulkSlots:
    """At most ``size`` holders at once, with two kinds of waiter: *first* (work on a
    calendar already in step: a resync handed over by the live lane, a poll, a
    reconciliation, a reconnected calendar's delta) is let in before *backfill* (first
    syncs and other full listings asked for by commands), oldest first within a
    kind. So a calendar whose cursor expired does not wait behind thousands of first
    syncs. Backfill cannot starve: after ``fairness`` grants in a row to *first* while
    backfill waits, the next slot goes to backfill.

    A waiter cancelled after it was handed a slot passes the slot on.
    """

    FIRST, BACKFILL = 0, 1

    def __init__(self, size: int, *, fairness: int = 4) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, not {size!r}")
        self._free = size
        self._fairness = fairness
        self._streak = 0  # grants to FIRST in a row while BACKFILL waited
        self._waiting: tuple[deque[asyncio.Future[None]], ...] = (deque(), deque())

    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self._waiting)

    @contextlib.asynccontextmanager
    async def hold(self, kind: int) -> AsyncIterator[None]:
        """Wait for a slot as ``kind`` (:attr:`FIRST` or :attr:`BACKFILL`); hold it
        inside the ``async with``."""
        await self._acquire(kind)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, kind: int) -> None:
        if self._free > 0 and not self.waiting:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[kind].append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot as it was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):  # a release may have dropped it
                    self._waiting[kind].remove(waiter)
            raise

    def _release(self) -> None:
        first, backfill = self._waiting
        order = (
            (backfill, first) if backfill and self._streak >= self._fairness else (first, backfill)
        )
        for queue in order:
            while queue:
                waiter = queue.popleft()
                if waiter.done():
                    continue  # cancelled while waiting: its task finds it gone
                waiter.set_result(None)  # the slot passes straight to the waiter
                self._streak = self._streak + 1 if queue is first and backfill else 0
                return
        self._free += 1


def _being_cancelled() -> bool:
    """Whether the current task itself is being cancelled (not just an awaited future)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class NotificationDispatcher:
    """Runs notifications off the agent, commits their offsets itself (module docstring)."""

    def __init__(
        self,
        handler: Handler,
        offsets: OffsetsPort,
        *,
        topic: str,
        live_slots: int = 8,
        bulk_slots: int = 1,
        max_pending: int = 10_000,
        commit_interval: float = 0.5,
        stall_after: float = 1.0,
        revoke_grace: float = 1.0,
        ready: Callable[[], bool] = lambda: True,
        on_fatal: Callable[[BaseException], None] | None = None,
        quarantine: Quarantine | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        record_type: type[Any] = Notification,
        lane_for: Callable[[Any], Lane] = lane_of,
        resource_of: Callable[[Any], str] | None = None,
    ) -> None:
        """``record_type`` is what the topic's values decode to (a Faust record),
        ``resource_of`` the resource each is about (runs of one resource go one at a
        time, in offset order; by default its ``resource_id``), and ``lane_for`` the
        lane of each (:func:`~calsync.agents.service.lane_of` for notifications)."""
        self._handler = handler
        self._record_type = record_type
        self._lane_for = lane_for
        self._resource_of = resource_of or _resource_id
        self._offsets = offsets
        self._topic = topic
        self._live_slots = asyncio.Semaphore(live_slots)
        self._bulk_size = bulk_slots
        #: provider -> its bulk lane's slots (records of no known provider share "")
        self._bulk_slots: dict[str, BulkSlots] = {}
        self._max_pending = max_pending
        self._commit_interval = commit_interval
        self._stall_after = stall_after
        self._revoke_grace = revoke_grace
        self._ready = ready
        self._on_fatal = on_fatal
        self._quarantine = quarantine
        self._monotonic = monotonic
        self._wall = wall
        self._epoch = 0
        self._ledgers: dict[Any, PartitionLedger] = {}
        self._inits: dict[Any, asyncio.Task[PartitionLedger]] = {}
        self._committed: dict[Any, int] = {}
        self._last_seen: dict[Any, float] = {}
        self._last_seek: dict[Any, float] = {}
        self._last_seek_wall: dict[Any, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._resources: dict[str, tuple[asyncio.Lock, int]] = {}
        #: runs submitted and not over (waiting for their resource or slot, or running)
        self._pending: dict[Any, dict[Lane, int]] = {}
        self._room = asyncio.Event()
        self._room.set()
        self._blocked = False
        self.failure: BaseException | None = None
        self.counts = {
            "runs": 0,
            "duplicates": 0,
            "holes": 0,
            "seeks": 0,
            "lost_to_retention": 0,
            "commits": 0,
            "undecodable": 0,
        }

    # -- intake ------------------------------------------------------------------

    async def submit(
        self,
        tp: Any,
        offset: int,
        value: Any,
        keep: object,
        *,
        key: bytes | None = None,
    ) -> None:
        """Take the record at ``offset`` of ``tp`` (called by the agent, in the record's
        context). Returns once it is running or refused; raises the dispatcher's fatal
        failure, if any, so the agent dies with it. A malformed record is quarantined
        (:mod:`calsync.agents.quarantine`) and finished at once: it never blocks its
        partition."""
        if self.failure is not None:
            raise self.failure
        epoch = self._epoch
        ledger = await self._ledger(tp)
        if ledger is None or epoch != self._epoch:
            return  # not ours (any more): its owner reads it from the committed offset
        self._last_seen[tp] = self._monotonic()
        receipt = ledger.receive(offset)
        if receipt is Receipt.DUPLICATE:
            self.counts["duplicates"] += 1
            return
        if receipt is Receipt.HOLE:
            self.counts["holes"] += 1
            await self._seek_back(tp, ledger, force=False)
            return
        record = await self._decode(tp, offset, value, key)
        if record is None:
            ledger.finish(offset)
            return
        while len(self._tasks) >= self._max_pending:
            self._room.clear()
            self._blocked = True
            try:
                await self._room.wait()
            finally:
                self._blocked = False
            if epoch != self._epoch:
                return
        run = _Run(tp, offset, record, self._lane_for(record), epoch, ledger, keep)
        pending = self._pending.setdefault(tp, dict.fromkeys(Lane, 0))
        pending[run.lane] += 1
        task = asyncio.create_task(self._execute(run), context=contextvars.copy_context())
        self._tasks.add(task)
        task.add_done_callback(self._done)

    async def _decode(self, tp: Any, offset: int, value: Any, key: bytes | None) -> Any | None:
        if isinstance(value, self._record_type):
            return value
        record: Any | None
        if self._quarantine is not None:
            record = await self._quarantine.decode(
                self._record_type,
                value,
                topic=tp.topic,
                partition=tp.partition,
                offset=offset,
                key=key,
            )
        else:
            try:
                record = decode_record(self._record_type, value)
            except Malformed as exc:
                log.warning("malformed record at %s@%d skipped: %s", tp, offset, exc)
                record = None
        if record is None:
            self.counts["undecodable"] += 1
        return record

    async def _ledger(self, tp: Any) -> PartitionLedger | None:
        ledger = self._ledgers.get(tp)
        if ledger is not None:
            return ledger
        if tp not in self._offsets.assignment():
            return None
        init = self._inits.get(tp)
        if init is None:
            init = asyncio.ensure_future(self._new_ledger(tp, self._epoch))
            self._inits[tp] = init
        try:
            return await asyncio.shield(init)
        except OffsetsUnavailable as exc:
            log.warning("%s", exc)
            self._inits.pop(tp, None)
            return None
        except asyncio.CancelledError:
            if init.cancelled() and not _being_cancelled():
                # on_revoked cancelled the lookup (a rebalance), not this task: the
                # partition is not ours for now. Raising here killed the upkeep task
                # for good (a CancelledError ends it silently): moved partitions never
                # opened and nothing was committed again.
                return None
            raise

    async def _new_ledger(self, tp: Any, epoch: int) -> PartitionLedger:
        base = await self._offsets.committed(tp)
        ledger = PartitionLedger(base)
        if epoch == self._epoch:
            log.info("%s: reading from the committed offset %d", tp, base)
            self._ledgers[tp] = ledger
            self._committed[tp] = base
            self._last_seen[tp] = self._monotonic()
        return ledger

    # -- runs ----------------------------------------------------------------------

    async def _execute(self, run: _Run) -> None:
        rid = self._resource_of(run.record)
        lock, users = self._resources.get(rid) or (asyncio.Lock(), 0)
        self._resources[rid] = (lock, users + 1)
        try:
            async with lock, self._slots(run):
                if run.epoch != self._epoch:
                    return  # revoked before it started: the partition's owner replays it
                await self._handler(run.record, run.lane)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # SyncService turns provider trouble into retries; what reaches here is a
            # broken table or producer. Stopping is better than a stuck partition.
            log.exception("%s for %s failed; the worker stops", self._topic, rid)
            self._fail(exc)
            return
        finally:
            pending = self._pending.get(run.tp)
            if pending is not None and run.epoch == self._epoch:
                pending[run.lane] -= 1
            lock, users = self._resources[rid]
            if users <= 1:
                del self._resources[rid]
            else:
                self._resources[rid] = (lock, users - 1)
        self.counts["runs"] += 1
        run.ledger.finish(run.offset)  # committed by on_revoked too, if it finished in the grace

    def _slots(self, run: _Run) -> contextlib.AbstractAsyncContextManager[Any]:
        """The slot ``run`` waits for: the live lane's, or its provider's bulk lane's,
        where the full listings commands ask for (first syncs, an operator's resync) are
        backfill. A command's delta (a reconnected calendar resuming from its cursor) is
        work on a calendar already in step."""
        if run.lane is Lane.LIVE:
            return self._live_slots
        provider = getattr(run.record, "provider", "")
        if provider not in REGISTRY:
            provider = ""
        slots = self._bulk_slots.get(provider)
        if slots is None:
            slots = self._bulk_slots[provider] = BulkSlots(self._bulk_size)
        backfill = getattr(run.record, "reason", None) == Reason.COMMAND.value and bool(
            getattr(run.record, "full", False)
        )
        return slots.hold(BulkSlots.BACKFILL if backfill else BulkSlots.FIRST)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if len(self._tasks) < self._max_pending:
            self._room.set()

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
            if self._on_fatal is not None:
                self._on_fatal(exc)

    # -- upkeep ----------------------------------------------------------------------

    async def run(self) -> None:
        """Commit and repair forever (a worker task)."""
        while True:
            await asyncio.sleep(self._commit_interval)
            started = self._monotonic()
            try:
                await self.commit()
                await self.repair()
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise
                # a cancellation from below (not of this task) must not end the upkeep
                log.warning("dispatcher upkeep round cancelled; retrying")
            except Exception:
                log.exception("dispatcher upkeep failed; retrying")
            took = self._monotonic() - started
            if took > SLOW_UPKEEP:
                # Every broker call is bounded (ConsumerOffsets): a round this slow
                # says the broker or the consumer's thread is struggling.
                log.warning("dispatcher upkeep took %.1f s", took)

    async def commit(self) -> None:
        """Commit every partition's finished run of offsets that moved since the last commit."""
        offsets = {
            tp: ledger.committable
            for tp, ledger in self._ledgers.items()
            if ledger.committable > self._committed.get(tp, -1)
        }
        if offsets and await self._offsets.commit(offsets):
            self._committed.update(offsets)
            self.counts["commits"] += 1

    async def repair(self) -> None:
        """Open ledgers for assigned partitions; seek back partitions that stalled on a hole."""
        if not self._ready():
            return
        now = self._monotonic()
        for tp in self._offsets.assignment():
            if tp.topic != self._topic:
                continue
            ledger = await self._ledger(tp)
            if ledger is None or self._blocked:
                continue
            highwater = self._offsets.highwater(tp)
            quiet = now - max(self._last_seen.get(tp, now), self._last_seek.get(tp, 0.0))
            if highwater is not None and highwater > ledger.expected and quiet >= self._stall_after:
                await self._seek_back(tp, ledger, force=True)

    async def _seek_back(self, tp: Any, ledger: PartitionLedger, *, force: bool) -> None:
        now = self._monotonic()
        if not force and now - self._last_seek.get(tp, float("-inf")) < 0.2:
            return  # one seek covers the rest of a batch that was already fetched
        self._last_seek[tp] = now
        self._last_seek_wall[tp] = self._wall()
        self.counts["seeks"] += 1
        # A hole is repaired by reading it again, never by jumping it; only offsets
        # the broker has deleted (retention) are given up, loudly.
        missing_from = ledger.expected
        log_start = await self._offsets.log_start(tp)
        if log_start is not None and ledger.skip_to(log_start):
            self.counts["lost_to_retention"] += log_start - missing_from
            log.error(
                "%s: offsets %d..%d were deleted by retention before they were processed",
                tp,
                missing_from,
                log_start - 1,
            )
        log.info("seeking %s back to offset %d (hole or stall)", tp, ledger.expected)
        try:
            await self._offsets.seek(tp, ledger.expected)
        except OffsetsUnavailable as exc:
            # moved in a rebalance (its owner reads it), or no answer: the stall repair
            # seeks again while the records below the highwater stay missing
            log.warning("%s", exc)

    async def on_revoked(self) -> None:
        """A rebalance began: finish or cancel every run, commit, forget all partitions."""
        self._epoch += 1
        self._room.set()
        running = list(self._tasks)
        if running:
            _, late = await asyncio.wait(running, timeout=self._revoke_grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
        try:
            await self.commit()
        finally:
            for init in self._inits.values():
                init.cancel()
            self._inits.clear()
            self._ledgers.clear()
            self._committed.clear()
            self._last_seen.clear()
            self._last_seek.clear()
            self._last_seek_wall.clear()
            self._pending.clear()

    def describe(self) -> dict[str, Any]:
        """Counters, and per partition of the topic this worker owns: ``committed`` (the
        offset last committed; None until its ledger is open), ``expected`` (the next
        offset to accept), ``finished_uncommitted`` (finished runs the next commit
        covers or that wait behind an unfinished one), ``pending`` (runs not over, per
        lane) and ``last_seek_back`` (epoch seconds of the last hole repair, or None).
        For ``/api/status``; JSON-ready."""
        owned = {tp for tp in self._offsets.assignment() if tp.topic == self._topic}
        partitions: dict[str, dict[str, Any]] = {}
        for tp in sorted(owned | set(self._ledgers), key=lambda tp: tp.partition):
            ledger = self._ledgers.get(tp)
            committed = self._committed.get(tp)
            pending = self._pending.get(tp) or dict.fromkeys(Lane, 0)
            partitions[f"{tp.topic}:{tp.partition}"] = {
                "committed": committed,
                "expected": ledger.expected if ledger is not None else None,
                "committable": ledger.committable if ledger is not None else None,
                "finished_uncommitted": (
                    ledger.committable - committed + ledger.finished_ahead
                    if ledger is not None and committed is not None
                    else 0
                ),
                "in_flight": ledger.in_flight if ledger is not None else 0,
                "pending": {lane.value: pending[lane] for lane in Lane},
                "last_seek_back": self._last_seek_wall.get(tp),
            }
        return {**self.counts, "running": len(self._tasks), "partitions": partitions}
