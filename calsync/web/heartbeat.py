"""A worker's periodic writes to ``calsync.status`` that the dashboard folds
(:mod:`calsync.web.fleet`): a heartbeat of the worker, and a summary of each resource.

It runs as a worker task, not a Faust timer: it only reads tables and writes through
the producer, and an exception (a table recovering, the broker away) is logged and
the next beat tried; an exception escaping a Faust timer would stop the worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from calsync.pacing import paced
from calsync.streams.records import StatusEvent
from calsync.web.fleet import HEARTBEAT, SUMMARY, WORKER_PREFIX

log = logging.getLogger(__name__)

#: ``send(key, value)`` queues one record for the status topic and returns its delivery
#: future (:meth:`calsync.gateway.publisher.KafkaPublisher.send`).
Send = Callable[[str, bytes], Awaitable[Awaitable[Any]]]

#: Summaries queued before their acknowledgements are awaited. Sent and awaited one at
#: a time, a worker's 5,000 summaries were 5,000 produce requests and as many
#: acknowledgements, each a wake-up of the loop that answers the availability API,
#: and as many one-record fetches on every worker following the status topic
#: (docs/benchmarks.md, section 6).
SUMMARY_WINDOW = 500


class Heartbeat:
    """Every ``interval`` seconds: the worker's heartbeat; every ``summary_interval``:
    a summary of each resource it owns whose summary changed since this worker last sent
    it, or was last sent ``summary_refresh`` seconds ago or more.

    Unchanged summaries are not sent again at every pass: they change nothing in the
    dashboard's fold, and a worker owning 5,000 idle calendars sent 5,000 records a
    minute for nothing, a burst on the loop that answers the availability API. The
    refresh keeps every resource inside the dashboard's lookback
    (``CALSYNC_DASHBOARD_LOOKBACK``). :meth:`forget` (on every rebalance, with the
    partitions this worker gained) makes the next pass send the summaries of those
    partitions' resources, so a resource that comes to this worker is announced with
    this worker's name; the resources it kept are not sent again (a worker joining the
    group made each of the others send all of theirs: a burst of thousands of records
    on the loop that answers the availability API, for nothing). A resource whose
    dashboard picture (``shown(rid)``: the worker the fold names, None if it does not
    know the resource) names another worker is sent too: this worker may have missed
    the rebalances that moved it away and back (stalled past its session timeout).

    ``describe()`` returns the heartbeat's data (JSON-ready; awaited, so that it can
    walk a table :func:`paced`); ``summaries()`` yields ``(resource id, data)`` for
    each owned resource, and may yield ``None`` for work that produced no summary
    (the walk is :func:`paced` on every item). Both are called on the event loop.
    """

    def __init__(
        self,
        name: str,
        send: Send,
        describe: Callable[[], Awaitable[Mapping[str, Any]]],
        summaries: Callable[[], Iterable[tuple[str, dict[str, Any]] | None]],
        *,
        interval: float,
        summary_interval: float,
        summary_refresh: float = 3600.0,
        partition_of: Callable[[str], int] | None = None,
        shown: Callable[[str], str | None] = lambda rid: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self._send = send
        self._describe = describe
        self._summaries = summaries
        self._interval = interval
        self._summary_interval = summary_interval
        self._summary_refresh = summary_refresh
        self._clock = clock
        self._last_summary = 0.0
        #: resource id -> (the data of its last summary sent, when)
        self._sent: dict[str, tuple[dict[str, Any], float]] = {}
        self._partition_of = partition_of
        self._shown = shown
        #: partitions whose resources' summaries the next pass sends, changed or not
        self._gained: set[int] = set()
        self._forgotten = 0  # how many times forget() was called: a pass spans awaits

    def forget(self, partitions: Iterable[int] | None = None) -> None:
        """Send the summaries of the resources of ``partitions`` (by ``partition_of``;
        of every resource: None, or without ``partition_of``) at the next pass, changed
        or not: this worker gained them."""
        if partitions is None or self._partition_of is None:
            self._sent = {}
        else:
            self._gained.update(partitions)
        self._forgotten += 1

    async def beat(self) -> None:
        """One heartbeat, and the summaries if they are due."""
        now = self._clock()
        event = StatusEvent(
            resource_id=f"{WORKER_PREFIX}{self.name}",
            status=HEARTBEAT,
            at=now,
            data=dict(await self._describe()),
        )
        await (await self._send(event.resource_id, event.dumps()))
        if now - self._last_summary >= self._summary_interval:
            self._last_summary = now
            before, after, forgotten = self._sent, {}, self._forgotten
            gained, partition_of = set(self._gained), self._partition_of
            sent: list[Awaitable[Any]] = []
            async for item in paced(self._summaries()):
                if item is None:
                    continue
                rid, data = item
                last = before.get(rid)
                if last is not None and gained and partition_of is not None:
                    last = None if partition_of(rid) in gained else last
                if last is not None and self._shown(rid) not in (None, self.name):
                    last = None
                if last is not None and last[0] == data and now - last[1] < self._summary_refresh:
                    after[rid] = last
                    continue
                summary = StatusEvent(resource_id=rid, status=SUMMARY, at=now, data=data)
                sent.append(await self._send(rid, summary.dumps()))
                after[rid] = (data, now)
                if len(sent) >= SUMMARY_WINDOW:
                    await _acknowledged(sent)
                    sent = []
            await _acknowledged(sent)
            # only now: a failed pass sends everything again, resources gone are dropped,
            # and a rebalance during the pass leaves the next one to send everything
            if forgotten == self._forgotten:
                self._sent = after
                self._gained -= gained
            else:
                self._sent, self._gained = {}, set()

    async def run(self) -> None:
        """Beat forever; never raises but for cancellation."""
        while True:
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("heartbeat %s failed: %r", self.name, exc)
            await asyncio.sleep(self._interval)


async def _acknowledged(sent: list[Awaitable[Any]]) -> None:
    """Wait for every delivery in ``sent``; then raise the first failure, if any (all are
    awaited, so none is left with an exception nobody retrieved)."""
    outcomes = await asyncio.gather(*sent, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
