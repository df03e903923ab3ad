"""AckedTable: ``written(key)`` waits for the changelog record of a plain table write,
and every table's writes reach the :class:`TableWrites` that commits wait for.

Faust's ``Table.__setitem__`` reaches ``on_key_set``, which calls ``send_changelog``;
this pins that path (an override of ``_send_changelog``, which only Faust's set tables
call, made ``written`` return at once). The changelog topic's ``send_soon`` is
Faust's producer buffer; here it hands back a future this test resolves, standing for
the broker's acknowledgement.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust

from calsync.tables.declare import AckedTable, TableWrites, declare_tables


class _Sent(asyncio.Future[Any]):
    """What ``send_soon`` returns: a future with the message's partition."""

    message = SimpleNamespace(partition=0)


def acked_table(tmp_path: Path, sent: list[_Sent]) -> Any:
    """An :class:`AckedTable` whose changelog writes land in ``sent``."""
    app = faust.App("acked-test", store="memory://", datadir=str(tmp_path))
    table = app.tables.add(
        AckedTable(app, name="t", beacon=app.tables.beacon, value_type=bytes, partitions=1)
    )
    capture_changelog(table, sent)
    return table


def capture_changelog(table: Any, sent: list[_Sent]) -> None:
    """Make ``table``'s changelog writes land in ``sent``, each a future this test
    resolves (standing for the broker's acknowledgement)."""
    table.use_partitioner = True  # no Faust event here to take the partition from

    def send_soon(**kwargs: Any) -> _Sent:
        sent.append(_Sent())
        return sent[-1]

    table.changelog_topic.send_soon = send_soon


async def test_written_waits_for_the_acknowledgement_of_a_plain_write(tmp_path: Path) -> None:
    sent: list[_Sent] = []
    table = acked_table(tmp_path, sent)
    table["k"] = b"v"
    assert len(sent) == 1  # the plain write went to the changelog
    waiting = asyncio.ensure_future(table.written("k"))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # not acknowledged yet
    sent[0].set_result(None)
    await asyncio.wait_for(waiting, 5.0)
    await table.written("k")  # nothing pending: returns at once


async def test_every_table_reports_its_writes_to_the_ones_commits_wait_for(
    tmp_path: Path,
) -> None:
    app = faust.App("acked-all", store="memory://", datadir=str(tmp_path))
    writes = TableWrites()
    tables = declare_tables(app, 1, writes)
    sent: list[_Sent] = []
    every = [getattr(tables, field.name) for field in dataclasses.fields(tables)]
    for table in every:
        capture_changelog(table, sent)
        table["k"] = b"v"
    assert writes.outstanding == len(every) == 6
    waiting = asyncio.ensure_future(writes.acknowledged())
    for future in sent[:-1]:
        future.set_result(None)
    await asyncio.sleep(0.05)
    assert not waiting.done()  # the last table's write is still unacknowledged
    sent[-1].set_result(None)
    await asyncio.wait_for(waiting, 5.0)
    assert writes.outstanding == 0


async def test_an_acknowledged_write_is_not_kept_but_a_failed_one_is(tmp_path: Path) -> None:
    sent: list[_Sent] = []
    table = acked_table(tmp_path, sent)
    table["ok"] = b"v"
    table["bad"] = b"v"
    sent[0].set_result(None)
    sent[1].set_exception(RuntimeError("refused"))
    await asyncio.sleep(0)  # done callbacks run on the loop
    assert "ok" not in table._sent  # nothing left holding the record
    await table.written("ok")
    try:
        await table.written("bad")
    except RuntimeError:
        pass
    else:
        raise AssertionError("a refused write reported as written")


async def test_a_cancelled_wait_leaves_the_write_to_the_commit_barrier(tmp_path: Path) -> None:
    """A sync cut short cancels its wait for the write-ahead of its ids; the write itself
    stays in flight: not cancelled (Faust still sends it and must resolve its future),
    still awaited by commits, and still awaited by the next ``written``."""
    app = faust.App("acked-cancel", store="memory://", datadir=str(tmp_path))
    writes = TableWrites()
    table = app.tables.add(
        AckedTable(
            app, name="t", beacon=app.tables.beacon, value_type=bytes, partitions=1, writes=writes
        )
    )
    sent: list[_Sent] = []
    capture_changelog(table, sent)
    table["k"] = b"v"
    waiting = asyncio.ensure_future(table.written("k"))
    await asyncio.sleep(0.05)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert waiting.cancelled()
    assert not sent[0].done()  # the write is not cancelled with its waiter
    assert writes.outstanding == 1
    barrier = asyncio.ensure_future(writes.acknowledged())
    again = asyncio.ensure_future(table.written("k"))
    await asyncio.sleep(0.05)
    assert not barrier.done() and not again.done()
    sent[0].set_result(None)
    await asyncio.wait_for(asyncio.gather(barrier, again), 5.0)
    assert writes.outstanding == 0
