"""The partition ledger (pure), ConsumerOffsets' bounded calls, and the Faust
internals that ConsumerOffsets relies on."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import faust
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.threads import QueueServiceThread, ServiceThread

from calsync.agents.offsets import ConsumerOffsets, OffsetsUnavailable, PartitionLedger, Receipt
from calsync.tables.declare import TableWrites, TableWritesLost


def test_commits_only_over_an_unbroken_run_of_finished_offsets() -> None:
    ledger = PartitionLedger(10)
    assert [ledger.receive(o) for o in (10, 11, 12)] == [Receipt.ACCEPTED] * 3
    ledger.finish(11)
    ledger.finish(12)
    assert ledger.committable == 10  # 10 is still running: nothing moves past it
    ledger.finish(10)
    assert ledger.committable == 13
    assert ledger.in_flight == 0


def test_a_later_offset_is_a_hole_and_replays_are_duplicates() -> None:
    ledger = PartitionLedger(0)
    assert ledger.receive(0) is Receipt.ACCEPTED
    assert ledger.receive(2) is Receipt.HOLE  # 1 was dropped on the way in
    assert ledger.expected == 1  # the caller seeks back here
    assert ledger.receive(0) is Receipt.DUPLICATE
    assert ledger.receive(1) is Receipt.ACCEPTED
    assert ledger.receive(2) is Receipt.ACCEPTED
    ledger.finish(0)
    ledger.finish(2)
    assert ledger.committable == 1  # never over the unfinished 1


def test_a_hole_is_never_jumped_however_many_later_records_arrive() -> None:
    # One fetched batch can hold hundreds of records past a hole; counting them must
    # not make the ledger give the hole up (that skipped real notifications).
    ledger = PartitionLedger(5)
    assert ledger.receive(5) is Receipt.ACCEPTED
    for offset in range(9, 500):
        assert ledger.receive(offset) is Receipt.HOLE
    assert ledger.expected == 6
    assert ledger.receive(6) is Receipt.ACCEPTED


def test_only_offsets_below_the_log_start_are_given_up() -> None:
    ledger = PartitionLedger(5)
    assert ledger.receive(5) is Receipt.ACCEPTED
    assert not ledger.skip_to(3)  # the log still has everything from 6 on
    assert ledger.skip_to(9)  # 6..8 were deleted by retention
    assert ledger.receive(9) is Receipt.ACCEPTED
    ledger.finish(9)
    assert ledger.committable == 5
    ledger.finish(5)
    assert ledger.committable == 10
    assert ledger.in_flight == 0


def test_faust_internals_the_dispatcher_relies_on() -> None:
    """Pins faust-streaming 0.15.3 behaviour calsync depends on (docs/architecture.md)."""
    assert faust.__version__ == "0.15.3"
    # ConsumerOffsets runs broker calls on the consumer's own thread and loop.
    assert faust_aiokafka.Consumer._new_consumer_thread is not None
    assert issubclass(faust_aiokafka.AIOKafkaConsumerThread, ServiceThread)
    assert callable(faust_aiokafka.AIOKafkaConsumerThread._ensure_consumer)
    assert issubclass(faust_aiokafka.AIOKafkaConsumerThread, QueueServiceThread)
    assert callable(QueueServiceThread.call_thread)
    # With acks off for a topic, Faust neither records acks nor gap-fills it, so it
    # never commits it (calsync does).
    ack = inspect.getsource(faust_consumer.Consumer.ack)
    assert "acks_enabled_for(message.topic)" in ack
    drain = inspect.getsource(faust_consumer.Consumer._drain_messages)
    assert "if acks_enabled:" in drain and "_add_gap" in drain
    # ConsumerOffsets.seek does on the consumer's thread what Faust's seek does on the
    # caller's (which races the fetcher), then moves Faust's read offset back as it does.
    assert "self._read_offset[ensure_TP(partition)]" in inspect.getsource(
        faust_consumer.Consumer.seek
    )
    # The rebalance bug the design works around is still there: agent channels clear
    # their queue on resume (records dropped without being acked).
    assert "clear_on_resume=True" in inspect.getsource(faust.Channel)


class HangingConsumer:
    """aiokafka's consumer where every broker call waits forever (a coordinator
    lookup that never ends): what ConsumerOffsets must not wait for."""

    def __init__(self) -> None:
        self.cancelled = 0

    async def _forever(self) -> Any:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def committed(self, tp: Any) -> int:
        return await self._forever()  # type: ignore[no-any-return]

    async def beginning_offsets(self, tps: Any) -> dict[Any, int]:
        return await self._forever()  # type: ignore[no-any-return]

    async def commit(self, offsets: Any) -> None:
        await self._forever()

    def assignment(self) -> set[Any]:
        return {TP("t", 0)}


class SameLoopThread(QueueServiceThread):
    """mode's QueueServiceThread, with its method queue on the caller's loop (the
    real one runs it on the consumer's thread; the queue and its two workers are
    mode's own)."""

    def __init__(self, consumer: HangingConsumer) -> None:
        loop = asyncio.get_running_loop()
        super().__init__(loop=loop, thread_loop=loop)
        self.consumer = consumer

    def _ensure_consumer(self) -> HangingConsumer:
        return self.consumer


class App:
    def __init__(self, thread: SameLoopThread) -> None:
        self.consumer = type("Consumer", (), {"_thread": thread})()


async def test_a_broker_call_that_never_returns_is_given_up_and_frees_the_thread() -> None:
    hanging = HangingConsumer()
    thread = SameLoopThread(hanging)
    await thread.method_queue.start()
    offsets = ConsumerOffsets(App(thread), TableWrites(), timeout=0.2)
    try:
        try:
            await offsets.committed(TP("t", 0))
        except OffsetsUnavailable:
            pass
        else:
            raise AssertionError("a committed offset out of nowhere")
        assert await offsets.commit({TP("t", 0): 5}) is False
        assert await offsets.log_start(TP("t", 0)) is None
        # Three calls, more than the method queue's two workers: each was cancelled
        # on the thread, so none held a worker for the next.
        assert hanging.cancelled == 3
    finally:
        await thread.method_queue.stop()


class NeverCommitted(HangingConsumer):
    """A partition nobody committed yet; asking its leader for the log start would
    wait (a ListOffsets queued behind the fetcher's long poll)."""

    async def committed(self, tp: Any) -> Any:
        return None


async def test_a_never_committed_partition_opens_at_zero_without_asking_its_leader() -> None:
    consumer = NeverCommitted()
    thread = SameLoopThread(consumer)
    await thread.method_queue.start()
    offsets = ConsumerOffsets(App(thread), TableWrites(), timeout=5.0)
    try:
        assert await asyncio.wait_for(offsets.committed(TP("t", 0)), 1.0) == 0
        assert consumer.cancelled == 0
    finally:
        await thread.method_queue.stop()


class Seeking(HangingConsumer):
    """Records seeks; aiokafka's seek is synchronous."""

    def __init__(self) -> None:
        super().__init__()
        self.seeks: list[tuple[Any, int]] = []

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))


async def test_a_seek_runs_on_the_consumer_thread_and_moves_the_read_offset_back() -> None:
    consumer = Seeking()
    thread = SameLoopThread(consumer)
    app = App(thread)
    app.consumer._read_offset = {TP("t", 3): 120}  # Faust's: records below it are dropped
    await thread.method_queue.start()
    try:
        await ConsumerOffsets(app, TableWrites(), timeout=1.0).seek(TP("t", 3), 100)
    finally:
        await thread.method_queue.stop()
    ((tp, offset),) = consumer.seeks
    assert (tp.topic, tp.partition, offset) == ("t", 3, 100)
    assert app.consumer._read_offset[TP("t", 3)] == 100


class Committing(HangingConsumer):
    """Records commits, and how many table writes were unacknowledged at each."""

    def __init__(self, writes: TableWrites) -> None:
        super().__init__()
        self.writes = writes
        self.commits: list[tuple[dict[Any, Any], int]] = []

    async def commit(self, offsets: Any) -> None:
        self.commits.append((dict(offsets), self.writes.outstanding))


async def test_a_commit_waits_until_the_table_writes_before_it_are_acknowledged() -> None:
    """Each future stands for one changelog record's acknowledgement by the broker
    (what Faust's ``send_changelog`` returns)."""
    writes = TableWrites()
    consumer = Committing(writes)
    thread = SameLoopThread(consumer)
    await thread.method_queue.start()
    offsets = ConsumerOffsets(App(thread), writes, timeout=0.3)
    loop = asyncio.get_running_loop()
    try:
        first, second = loop.create_future(), loop.create_future()
        writes.add(first)  # a run's table writes, not acknowledged yet
        writes.add(second)
        # never acknowledged in time: nothing is committed (the next round tries again)
        assert await offsets.commit({TP("t", 0): 7}) is False
        assert consumer.commits == []
        committing = asyncio.create_task(offsets.commit({TP("t", 0): 7}))
        first.set_result(None)
        await asyncio.sleep(0.05)
        assert not committing.done() and consumer.commits == []  # one still outstanding
        later = loop.create_future()
        writes.add(later)  # made after the commit began: not waited for
        second.set_result(None)
        assert await committing is True
        ((committed, outstanding),) = consumer.commits
        assert outstanding == 1
        assert [(tp.partition, o.offset) for tp, o in committed.items()] == [(0, 7)]
        later.set_result(None)
    finally:
        await thread.method_queue.stop()


async def test_after_a_lost_table_write_nothing_is_committed_and_the_worker_is_told() -> None:
    lost: list[Exception] = []
    writes = TableWrites(on_lost=lost.append)
    consumer = Committing(writes)
    thread = SameLoopThread(consumer)
    await thread.method_queue.start()
    offsets = ConsumerOffsets(App(thread), writes, timeout=0.3)
    try:
        refused = asyncio.get_running_loop().create_future()
        writes.add(refused)
        refused.set_exception(RuntimeError("NotLeaderForPartition, retries exhausted"))
        await asyncio.sleep(0)  # done callbacks run on the loop
        assert [type(exc) for exc in lost] == [TableWritesLost]
        assert await offsets.commit({TP("t", 0): 7}) is False
        assert await offsets.commit({TP("t", 0): 7}) is False  # not the next round either
        assert consumer.commits == []
    finally:
        await thread.method_queue.stop()
