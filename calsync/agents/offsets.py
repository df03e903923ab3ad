"""Offsets of ``calsync.notifications`` that calsync, not Faust, decides to commit.

Faust 0.15.3 cannot be trusted with this topic (``docs/architecture.md``, "Failover"):
around a rebalance it drops queued records without releasing them and its gap
handling commits offsets nobody processed. So the topic is consumed with Faust's
acks off, and two pieces here take over:

* :class:`PartitionLedger` (pure): which offsets of one partition were received in
  order, which finished, and how far the committed offset may move: only over an
  unbroken run of finished offsets, never over a hole.
* :class:`ConsumerOffsets`: the few consumer operations the ledger needs (read the
  committed offset, commit, seek, highwater), run on Faust's consumer thread. It is
  the only code in calsync that touches Faust's private consumer API;
  ``tests/agents/test_offsets.py`` pins what it relies on.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

from calsync.tables.declare import TableWrites

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Longest wait, in seconds, for one broker call on the consumer's thread. Without a
#: bound, one call that never returns would hold one of the thread's two method-queue
#: workers and every upkeep round after it.
CALL_TIMEOUT = 10.0


class Receipt(enum.Enum):
    """What the ledger made of a record."""

    #: The next offset: run it.
    ACCEPTED = "accepted"
    #: Already received (a replay after a seek or a rebalance): skip it.
    DUPLICATE = "duplicate"
    #: Later than the next expected offset: records were lost on the way in. Skip
    #: it and seek back to :attr:`PartitionLedger.expected`.
    HOLE = "hole"


class PartitionLedger:
    """The offsets of one partition between the committed offset and the fetch point.

    Records are accepted strictly in offset order: ``base`` ≤ committable ≤ every
    unfinished offset < ``expected``. An offset later than ``expected`` is a hole
    (records the consumer delivered to nobody) and is refused, so per-resource order
    is kept and nothing is skipped; the caller seeks back to ``expected``.

    A hole is never jumped because records keep arriving past it: one fetched batch
    holds many later records, so counting refusals says nothing about whether the
    missing ones exist (an earlier rule that jumped after five refusals skipped real
    notifications). The only offsets given up are those the broker no longer has
    (deleted by retention before anyone processed them): the caller checks the
    partition's log start and calls :meth:`skip_to`. calsync's notifications are
    written without transactions to a topic that is not compacted, so there are no
    other offsets without records.
    """

    def __init__(self, base: int) -> None:
        #: The committable offset: every offset below it is finished.
        self.committable = base
        #: The next offset to accept.
        self.expected = base
        self._finished: set[int] = set()
        #: start -> end of offset ranges the log does not have (jumped holes)
        self._absent: dict[int, int] = {}

    @property
    def in_flight(self) -> int:
        """Accepted offsets not finished yet."""
        absent = sum(end - start for start, end in self._absent.items())
        return self.expected - self.committable - len(self._finished) - absent

    @property
    def finished_ahead(self) -> int:
        """Finished offsets waiting behind an unfinished one (not committable yet)."""
        return len(self._finished)

    def receive(self, offset: int) -> Receipt:
        """Classify a record at ``offset``; an accepted one must later be :meth:`finish`-ed."""
        if offset < self.expected:
            return Receipt.DUPLICATE
        if offset > self.expected:
            return Receipt.HOLE
        self.expected = offset + 1
        return Receipt.ACCEPTED

    def skip_to(self, log_start: int) -> bool:
        """The broker's log of this partition now starts at ``log_start``: offsets
        below it that were never received are gone for good (retention). Returns
        whether anything was skipped; the caller logs it as the loss it is."""
        if log_start <= self.expected:
            return False
        self._absent[self.expected] = log_start
        self.expected = log_start
        self._advance()
        return True

    def finish(self, offset: int) -> None:
        """The run of an accepted ``offset`` is over (successfully or handed to a retry)."""
        if self.committable <= offset < self.expected:
            self._finished.add(offset)
            self._advance()

    def _advance(self) -> None:
        while True:
            if self.committable in self._finished:
                self._finished.discard(self.committable)
                self.committable += 1
            elif self.committable in self._absent:
                self.committable = self._absent.pop(self.committable)
            else:
                return


class ConsumerOffsets:
    """Committed offsets, commits, seeks and highwaters through Faust's aiokafka consumer.

    Faust runs the aiokafka consumer on its own thread and event loop; everything
    that talks to the broker is sent there with ``call_thread``. Errors are returned
    as ``False`` / raised as :class:`OffsetsUnavailable`, never crash the app (Faust's
    own commit crashes the app on a ``CommitFailedError``), and every call is bounded
    by ``timeout`` seconds (:data:`CALL_TIMEOUT`).
    """

    def __init__(self, app: Any, writes: TableWrites, *, timeout: float = CALL_TIMEOUT) -> None:
        self._app = app
        self._writes = writes
        self._timeout = timeout

    def _thread(self) -> Any:
        # faust.transport.drivers.aiokafka.Consumer._thread: AIOKafkaConsumerThread
        return self._app.consumer._thread

    async def _call(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """``work(consumer)`` on the consumer's thread, cancelled there after the
        timeout (which frees the thread's worker) and given up here a little later
        (if the thread cannot even start it). Raises :class:`TimeoutError` then."""
        thread = self._thread()
        timeout = self._timeout

        async def bounded() -> T:
            return await asyncio.wait_for(work(thread._ensure_consumer()), timeout)

        return cast(T, await asyncio.wait_for(thread.call_thread(bounded), timeout + 1.0))

    def assignment(self) -> set[Any]:
        """The partitions assigned to this worker now (empty while not started)."""
        try:
            return set(self._app.consumer.assignment())
        except Exception:  # ConsumerNotStarted and friends: nothing is assigned yet
            return set()

    def highwater(self, tp: Any) -> int | None:
        """The log end offset the fetcher last saw for ``tp`` (None: not known yet)."""
        try:
            value = self._app.consumer.highwater(tp)
        except Exception:
            return None
        return int(value) if value is not None else None

    async def committed(self, tp: Any) -> int:
        """The committed offset of ``tp``; 0 if nothing was committed. Raises
        :class:`OffsetsUnavailable` when the broker cannot say in time.

        0, not the log start: asking the partition leader (ListOffsets) waits behind
        the fetcher's long poll on the same connection (Faust fixes
        ``fetch_max_wait_ms`` at 1,500 ms), once per partition, which made a
        takeover of twelve never-committed partitions 5.7 s slower. If retention has
        already deleted the start of the log, the first record is a hole and the
        dispatcher's repair asks for the log start then (:meth:`log_start`)."""
        from aiokafka.structs import TopicPartition

        ktp = TopicPartition(tp.topic, tp.partition)

        async def read(consumer: Any) -> int:
            offset = await consumer.committed(ktp)
            return int(offset) if offset is not None and offset >= 0 else 0

        try:
            return await self._call(read)
        except Exception as exc:
            raise OffsetsUnavailable(f"cannot read the committed offset of {tp}: {exc!r}") from exc

    async def commit(self, offsets: Mapping[Any, int]) -> bool:
        """Commit ``offsets`` (next offset to read, per partition) in the current
        generation, once the broker acknowledged every table write made before.
        Returns False if those writes were not acknowledged in time (or one was
        lost), or the broker refused the commit (a rebalance is under way, the
        partition moved) or did not answer in time: the new owner starts from the
        last successful commit, or the next round commits again.

        The writes come first because they (Faust's changelog records) leave through
        the producer's buffer and nobody awaits them. A commit before they are
        acknowledged lets a SIGKILL lose them while the record that made them is
        never read again: a rotated refresh token whose ``rotate`` command is behind
        the commit, say. Faust's own commit flushes its producer for the same reason,
        but that flush is no barrier (:class:`~calsync.tables.declare.TableWrites`)."""
        from aiokafka.structs import OffsetAndMetadata, TopicPartition

        try:
            await asyncio.wait_for(self._writes.acknowledged(), self._timeout)
        except Exception as exc:
            log.info(
                "commit of %s postponed, table writes not acknowledged: %r", dict(offsets), exc
            )
            return False

        async def commit(consumer: Any) -> None:
            owned = consumer.assignment()
            await consumer.commit(
                {
                    TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(offset, "")
                    for tp, offset in offsets.items()
                    if tp in owned
                }
            )

        try:
            await self._call(commit)
        except Exception as exc:
            log.info("commit of %s refused: %r", dict(offsets), exc)
            return False
        return True

    async def seek(self, tp: Any, offset: int) -> None:
        """Make the fetcher read ``tp`` from ``offset`` again (on the consumer's thread).

        Not through Faust's ``Consumer.seek``, which calls aiokafka's ``seek`` on the
        caller's thread: that drops the partition's fetched records while the
        consumer's thread may be iterating them, and the race raised ``KeyError`` in
        aiokafka's ``Fetcher.fetched_records``, which stopped a worker (twice in the
        10,000-calendar scale run). Afterwards, what Faust's ``seek`` does next: the
        read offset moves back too, or Faust would drop the records read again as
        already seen. Raises :class:`OffsetsUnavailable` when the seek fails (the
        partition moved, or no answer in time); the stall repair tries again.
        """
        from aiokafka.structs import TopicPartition

        ktp = TopicPartition(tp.topic, tp.partition)

        async def seek(consumer: Any) -> None:
            consumer.seek(ktp, offset)

        try:
            await self._call(seek)
        except Exception as exc:
            raise OffsetsUnavailable(f"cannot seek {tp} to {offset}: {exc!r}") from exc
        # faust.transport.consumer.Consumer.seek, after its _seek
        self._app.consumer._read_offset[tp] = offset if offset else None

    async def log_start(self, tp: Any) -> int | None:
        """The first offset the broker still has for ``tp`` (None: it could not say)."""
        from aiokafka.structs import TopicPartition

        ktp = TopicPartition(tp.topic, tp.partition)

        async def read(consumer: Any) -> int | None:
            beginning = await consumer.beginning_offsets([ktp])
            value = beginning.get(ktp)
            return int(value) if value is not None else None

        try:
            return await self._call(read)
        except Exception as exc:
            log.info("log start of %s unknown: %r", tp, exc)
            return None


class OffsetsUnavailable(Exception):
    """The broker could not tell the committed offset (retried by the caller)."""
