"""A record of a partition the conductor does not route is skipped, not fatal."""

from __future__ import annotations

import faust
import pytest
from faust.types import TP
from faust.types.tuples import Message

from calsync.app import create_app
from tests.conftest import SettingsFactory


def record(topic: str, partition: int, offset: int = 7) -> Message:
    tp = TP(topic, partition)
    return Message(topic, partition, offset, 0.0, 0, None, b"r1", b"{}", None, tp=tp)


async def test_faust_conductor_raises_on_an_unrouted_partition() -> None:
    """The Faust behaviour that stopped a worker in the 10,000-calendar run (if this
    fails, Faust fixed it and :mod:`calsync.streams.routing` can go)."""
    app = faust.App("routing-probe", broker="kafka://127.0.0.1:1", autodiscover=False)
    with pytest.raises(KeyError):
        await app.topics.on_message(record("t.notifications", 0))


async def test_the_workers_conductor_skips_it_and_still_routes_the_rest(
    make_settings: SettingsFactory,
) -> None:
    app = create_app(make_settings())
    conductor = app.topics
    seen: list[int] = []

    async def callback(message: Message) -> None:
        seen.append(message.offset)

    routed = TP(app.settings.topic("notifications"), 1)
    conductor._tp_to_callback[routed] = callback  # what a rebalance's assignment builds
    assert await conductor.on_message(record(routed.topic, 0, 5)) is None  # not routed
    await conductor.on_message(record(routed.topic, 1, 6))
    assert seen == [6]
    # the consumer is built with the tolerant handler
    assert app.consumer.callback is conductor.on_message
