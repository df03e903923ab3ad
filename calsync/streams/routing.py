"""Faust's conductor, made to survive a record of a partition it does not route.

Faust 0.15.3's conductor hands each fetched record to the callback of its partition,
looked up with ``dict[tp]``. Around a rebalance the fetcher can deliver a record of a
partition the conductor's map does not hold (revoked, or assigned but not indexed yet):
the lookup raises ``KeyError``, Faust's fetcher crashes on it, and the worker stops. The
10,000-calendar scale run lost a worker this way (``KeyError(TopicPartition(...
notifications, partition=0))`` in "Drain messages", docs/benchmarks.md §7).

:func:`tolerate_unrouted` replaces the conductor's handler with the same lookup that
skips such a record. Nothing is lost by skipping it: every topic calsync consumes is read
with Faust's acks off through a :class:`~calsync.agents.dispatch.NotificationDispatcher`,
whose ledger finds the missing offset (the next record is a hole, or the partition looks
stalled below its highwater) and reads it again; changelog partitions are read from
offsets the recovery seeks to itself.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def tolerate_unrouted(conductor: Any) -> None:
    """Make ``conductor.on_message`` skip (and log) records of unrouted partitions.

    Must run before the consumer is created (it takes ``on_message`` then). Relies on
    the conductor's ``_tp_to_callback`` and ``_tp_to_callback_lock``
    (``tests/streams/test_routing.py`` pins them).
    """
    routes = conductor._tp_to_callback
    lock = conductor._tp_to_callback_lock

    async def on_message(message: Any) -> None:
        async with lock:
            callback = routes.get(message.tp)
        if callback is None:
            log.info(
                "skipped %s@%d: its partition is not routed here now (a rebalance); "
                "its owner reads it again",
                message.tp,
                message.offset,
            )
            return None
        return await callback(message)  # type: ignore[no-any-return]

    conductor.on_message = on_message
