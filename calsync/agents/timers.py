"""Timers: the :class:`Scheduler` writes them, the :class:`TimerDispatcher` releases them.

Keys of the ``timers`` table: ``retry:<envelope key>``, ``reconcile:<resource id>``,
``renew:<resource id>``, ``poll:<resource id>`` and ``holds:<resource id>``. When
each is due is a plain function of :mod:`calsync.retry` (of the holds, for
``holds:``); the :class:`Scheduler` only stores the notification to release then.

The :class:`TimerDispatcher` runs as a worker task (not a Faust timer: it needs a
50 ms cadence, and it must survive its own errors). It never writes a table: it
produces the timer's notification, and the agent that consumes it clears or
reschedules the timer. Its heap is rebuilt from the table every few seconds, so
timers of partitions gained in a rebalance (or recovered after a crash) are found.
The rebuild walks the table paced (:mod:`calsync.pacing`) and decodes only the timers
whose stored bytes changed (:class:`~calsync.tables.reads.DecodedScan`): at 10,000
resources a full decode held the event loop most of a second every two seconds.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import faust

from calsync.agents.context import ServiceContext
from calsync.agents.outbox import Outbox
from calsync.pacing import paced
from calsync.retry import next_catchup, next_poll, next_reconcile, next_renewal
from calsync.streams.records import Notification, Reason, RetryEnvelope
from calsync.tables.reads import DecodedScan
from calsync.tables.records import Channel, Timer

log = logging.getLogger(__name__)

#: Timers a released notification clears (reconciliations reschedule themselves).
_CLEARED_ON_RELEASE = ("retry:", "renew:", "poll:", "holds:")
RETRY_PREFIX = "retry:"


def retry_timer_key(envelope_key: str) -> str:
    return f"{RETRY_PREFIX}{envelope_key}"


def reconcile_timer_key(resource_id: str) -> str:
    return f"reconcile:{resource_id}"


def renew_timer_key(resource_id: str) -> str:
    return f"renew:{resource_id}"


def poll_timer_key(resource_id: str) -> str:
    return f"poll:{resource_id}"


def holds_timer_key(resource_id: str) -> str:
    return f"holds:{resource_id}"


class Scheduler:
    """Writes the ``timers`` table (inside the handling of a consumed record, Faust's
    rule for table writes); ``on_timer`` hears of each timer at once (the dispatcher's
    fast path)."""

    def __init__(
        self,
        context: ServiceContext,
        timers: MutableMapping[str, Timer],
        on_timer: Callable[[str, Timer], None] | None = None,
    ) -> None:
        self._context = context
        self.timers = timers
        self._on_timer = on_timer

    def _set(self, key: str, due: float, notification: Notification) -> None:
        timer = Timer(due_at=due, notification=notification)
        self.timers[key] = timer
        if self._on_timer is not None:
            self._on_timer(key, timer)

    def _schedule(
        self, reason: Reason, key: str, rid: str, provider: str, due: float, *, full: bool = False
    ) -> None:
        notification = Notification(
            provider=provider,
            resource_id=rid,
            reason=reason.value,
            received_at=due,
            full=full,
            timer_key=key,
        )
        self._set(key, due, notification)

    def reconcile(self, rid: str, provider: str) -> None:
        """The next reconciliation: ``reconcile_period`` ± ``reconcile_jitter`` from now."""
        settings, context = self._context.settings, self._context
        due = next_reconcile(
            context.clock(),
            period=settings.reconcile_period,
            jitter=settings.reconcile_jitter,
            rng=context.rng,
        )
        self._schedule(Reason.RECONCILE, reconcile_timer_key(rid), rid, provider, due, full=True)

    def renewal(self, rid: str, provider: str, expires_at_ms: int) -> None:
        """Renew ``renew_fraction`` of the lifetime before expiry (see :func:`next_renewal`)."""
        context = self._context
        due = next_renewal(
            context.clock(),
            expires_at_ms / 1000,
            fraction=context.settings.renew_fraction,
            rng=context.rng,
        )
        self.renewal_at(rid, provider, due)

    def renewal_at(self, rid: str, provider: str, due: float) -> None:
        """Renew (or try again to subscribe) at ``due``."""
        self._schedule(Reason.RENEW, renew_timer_key(rid), rid, provider, due)

    def poll(self, rid: str, provider: str, previous: float, *, changed: bool) -> float:
        """Poll again soon after a change, backing off while nothing changes (see
        :func:`next_poll`). Returns the interval used."""
        settings, context = self._context.settings, self._context
        due, interval = next_poll(
            context.clock(),
            previous,
            changed=changed,
            low=settings.poll_min_interval,
            high=settings.poll_max_interval,
            rng=context.rng,
        )
        self._schedule(Reason.POLL, poll_timer_key(rid), rid, provider, due)
        return interval

    def catchup(self, rid: str, provider: str) -> None:
        """Ask a pushed calendar for its delta ``catchup_interval`` after its last sync
        (a ``poll:`` timer; see :func:`next_catchup`), whatever pushes arrive meanwhile.

        A timer still due more than half an interval from now is left as it is: a
        calendar pushed to every few seconds would otherwise rewrite it on every sync,
        and the timer still comes at most 1.1 intervals after any sync. ``0`` is off."""
        context = self._context
        interval = context.settings.catchup_interval
        if interval <= 0:
            return
        key, now = poll_timer_key(rid), context.clock()
        current = self.timers.get(key)
        if current is not None and current.due_at >= now + interval / 2:
            return
        due = next_catchup(now, interval=interval, rng=context.rng)
        self._schedule(Reason.POLL, key, rid, provider, due)

    def holds(self, rid: str, provider: str, due: float | None) -> None:
        """Wake the holds of ``rid`` at ``due`` (expiry, a vote deadline); ``None``: never."""
        key = holds_timer_key(rid)
        if due is None:
            self.timers.pop(key, None)
            return
        current = self.timers.get(key)
        if current is None or current.due_at != due:
            self._schedule(Reason.HOLDS, key, rid, provider, due)

    def retry(self, envelope: RetryEnvelope) -> None:
        """Keep a retry envelope as a timer, due when the envelope says."""
        key = retry_timer_key(envelope.key or uuid.uuid4().hex)
        self._set(key, envelope.due_at, envelope.notification.derive(timer_key=key))

    def released(self, key: str | None) -> None:
        """A timer's notification arrived: a one-shot timer is done."""
        if key and key.startswith(_CLEARED_ON_RELEASE):
            self.timers.pop(key, None)

    def forget(self, rid: str) -> None:
        """Drop a removed resource's reconciliation, renewal and poll."""
        for key in (reconcile_timer_key(rid), renew_timer_key(rid), poll_timer_key(rid)):
            self.timers.pop(key, None)


class TimerDispatcher:
    """Fires due timers within ``interval`` of their due time, each once per ``refire_after``."""

    def __init__(
        self,
        *,
        timers: Mapping[str, Timer],
        channels: Mapping[str, Channel],
        outbox: Outbox,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        interval: float = 0.05,
        rebuild_every: float = 2.0,
        refire_after: float = 60.0,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self._timers = DecodedScan(timers)
        self._channels = DecodedScan(channels)
        self._outbox = outbox
        self._clock = clock
        self._monotonic = monotonic
        self._interval = interval
        self._rebuild_every = rebuild_every
        self._refire_after = refire_after
        self._on_tick = on_tick
        self._heap: list[tuple[float, str, Notification]] = []
        self._fired: dict[str, float] = {}
        #: retries pulled in by :meth:`release_early`, by key (kept across rebuilds)
        self._early: dict[str, float] = {}
        self._last_rebuild = float("-inf")
        #: entries pushed while a rebuild walks the table (merged into its new heap)
        self._pushed_meanwhile: list[tuple[float, str, Notification]] | None = None
        #: entries popped off the heap since the last rebuild (which restores them if
        #: their timers are still in the table)
        self._popped = 0
        self.fired_count = 0

    def _push(self, entry: tuple[float, str, Notification]) -> None:
        heapq.heappush(self._heap, entry)
        if self._pushed_meanwhile is not None:
            self._pushed_meanwhile.append(entry)

    def schedule(self, key: str, timer: Timer) -> None:
        """Add a timer written just now (the fast path; the rebuild would find it too)."""
        self._push((timer.due_at, key, timer.notification))
        self._fired.pop(key, None)

    def release_early(self, provider: str, *, spread: float, rng: random.Random) -> int:
        """``provider`` answers again after an outage: fire its waiting retries within
        ``spread`` seconds from now instead of at their backed-off due times (up to
        ``retry_max_delay`` away). Returns how many were pulled in.

        Only the release moves; the timer stays in the table until its notification is
        consumed (then the next rebuild drops its original entry). A retry of a
        rate-limited resource is safe to release: the sync defers it again to the
        provider's ``Retry-After`` (``SyncState.not_before``).
        """
        now = self._clock()
        moved = 0
        for due, key, notification in list(self._heap):
            if (
                key.startswith(RETRY_PREFIX)
                and notification.provider == provider
                and due > now + spread
                and key not in self._fired
                and key not in self._early
            ):
                at = now + rng.uniform(0.0, spread)
                self._early[key] = at
                self._push((at, key, notification))
                moved += 1
        return moved

    async def _rebuild(self, tick: float) -> None:
        """The heap again from the table, walked paced; what :meth:`_push` adds
        meanwhile (a timer written, a retry pulled in) is kept.

        Skipped while the table's active entries are those the heap was built from and
        no entry left the heap since (nothing fired, nothing dropped as fired already):
        the heap holds every timer then, and a walk over 10,000 resources' timers every
        two seconds cost the event loop milliseconds for nothing."""
        if self._popped == 0 and self._timers.unchanged():
            self._last_rebuild = tick
            return
        meanwhile: list[tuple[float, str, Notification]] = []
        self._pushed_meanwhile = meanwhile
        early = self._early
        live: set[str] = set()
        try:
            heap: list[tuple[float, str, Notification]] = []
            async for key, timer in paced(self._timers.items()):
                due, at = timer.due_at, early.get(key)
                heap.append((due if at is None or at >= due else at, key, timer.notification))
                live.add(key)
        finally:
            self._pushed_meanwhile = None
        heap.extend(meanwhile)
        heapq.heapify(heap)
        self._heap = heap
        live.update(key for _, key, _ in meanwhile)
        self._fired = {k: at for k, at in self._fired.items() if k in live}
        self._early = {k: at for k, at in early.items() if k in live}
        self._last_rebuild = tick
        self._popped = 0

    async def tick(self) -> int:
        """Release every due timer; returns how many were released.

        Due times are compared with ``clock`` (which tests may speed up); rebuilds and
        re-fires are paced by ``monotonic`` real time, whatever the clock does.
        """
        now = self._clock()
        tick = self._monotonic()
        if tick - self._last_rebuild >= self._rebuild_every:
            await self._rebuild(tick)
            await self._check_channels(now, tick)
            now = self._clock()  # the walks gave the loop turns
        due: list[tuple[str, Notification]] = []
        while self._heap and self._heap[0][0] <= now:
            _, key, notification = heapq.heappop(self._heap)
            self._popped += 1
            fired_at = self._fired.get(key)
            if fired_at is not None and tick - fired_at < self._refire_after:
                continue  # released already; waiting for the agent to clear it
            due.append((key, notification))
            self._early.pop(key, None)
        if due:
            # If this raises, nothing is marked fired: the next rebuild finds them again.
            await self._outbox.notify_all([n for _, n in due])
            for key, _ in due:
                self._fired[key] = tick
        self.fired_count += len(due)
        return len(due)

    async def _check_channels(self, now: float, tick: float) -> None:
        """A channel past its expiry delivers nothing: reconcile (and resubscribe) now."""
        expired = [
            (rid, channel)
            async for rid, channel in paced(self._channels.items())
            if channel.expires_at_ms and channel.expires_at_ms / 1000 < now
        ]
        for rid, channel in expired:
            key = f"silent:{rid}"
            fired_at = self._fired.get(key)
            if fired_at is not None and tick - fired_at < self._refire_after:
                continue
            self._fired[key] = tick
            await self._outbox.notify(
                Notification(
                    provider=channel.provider,
                    resource_id=rid,
                    reason=Reason.RECONCILE.value,
                    received_at=now,
                    full=True,
                )
            )

    async def run(self) -> None:
        """Tick forever; an error is logged, never allowed to kill the worker."""
        while True:
            try:
                if self._on_tick is not None:
                    self._on_tick()
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("timer dispatcher tick failed; continuing")
            await asyncio.sleep(self._interval)

    def describe(self) -> dict[str, Any]:
        return {"pending": len(self._heap), "released": self.fired_count}


def install_timer_task(app: faust.App, dispatcher: TimerDispatcher) -> None:
    """Run ``dispatcher`` as a worker task (it releases due timers forever)."""

    @app.task  # type: ignore[untyped-decorator]  # faust types task() loosely
    async def release_timers() -> None:
        await dispatcher.run()
