"""The heartbeat task: one acknowledged heartbeat per beat, and the resource summaries
queued in windows (pipelined), every one acknowledged before the beat ends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from calsync.web import heartbeat as heartbeat_module
from calsync.web.fleet import WORKER_PREFIX
from calsync.web.heartbeat import SUMMARY_WINDOW, Heartbeat


class FakeStatusTopic:
    """A :data:`~calsync.web.heartbeat.Send`: queues records and acknowledges them 10 ms
    later (a producer's round trip to the broker), or fails
    the ones named in ``fail``. Remembers how many were queued and not yet acknowledged
    at most."""

    def __init__(self, fail: frozenset[str] = frozenset()) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []
        self.acknowledged: list[str] = []
        self.outstanding = 0
        self.most_outstanding = 0
        self._fail = fail

    async def send(self, key: str, value: bytes) -> Awaitable[Any]:
        self.records.append((key, json.loads(value)))
        self.outstanding += 1
        self.most_outstanding = max(self.most_outstanding, self.outstanding)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def settle() -> None:
            self.outstanding -= 1
            if key in self._fail:
                future.set_exception(ConnectionError(f"no ack for {key}"))
            else:
                self.acknowledged.append(key)
                future.set_result(None)

        asyncio.get_running_loop().call_later(0.01, settle)
        return future


def heartbeat(
    topic: FakeStatusTopic,
    resources: int,
    clock: list[float],
    states: dict[str, str] | None = None,
    *,
    walking: Callable[[int], None] = lambda n: None,
    dashboard: dict[str, str] | None = None,
) -> Heartbeat:
    """Resources ``r0``... whose summary holds ``states[rid]`` (default ``"ok"``), ``rN``
    in partition ``N % 2``, shown by the dashboard on the worker ``dashboard[rid]``;
    ``walking(n)`` is called as the summaries' walk reaches resource ``n``."""
    shown = states if states is not None else {}

    async def describe() -> dict[str, Any]:
        return {"resources": resources}

    def summaries() -> Iterator[tuple[str, dict[str, Any]] | None]:
        for n in range(resources):
            walking(n)
            rid = f"r{n}"
            yield None if n % 7 == 3 else (rid, {"n": n, "state": shown.get(rid, "ok")})

    return Heartbeat(
        "w1",
        topic.send,
        describe,
        summaries,
        interval=5.0,
        summary_interval=60.0,
        summary_refresh=600.0,
        partition_of=lambda rid: int(rid[1:]) % 2,
        shown=(dashboard if dashboard is not None else {}).get,
        clock=lambda: clock[0],
    )


def summarized(topic: FakeStatusTopic) -> list[str]:
    """The resources summarized so far, in order (the heartbeats left out)."""
    return [key for key, _ in topic.records if not key.startswith(WORKER_PREFIX)]


async def test_summaries_are_pipelined_in_windows_and_all_acknowledged() -> None:
    topic, clock = FakeStatusTopic(), [1000.0]
    resources = 2 * SUMMARY_WINDOW + 321
    await heartbeat(topic, resources, clock).beat()
    expected = [f"r{n}" for n in range(resources) if n % 7 != 3]
    keys = [key for key, _ in topic.records]
    assert keys[0] == f"{WORKER_PREFIX}w1"
    assert topic.records[0][1]["data"] == {"resources": resources}
    assert keys[1:] == expected
    assert sorted(topic.acknowledged) == sorted(keys)  # every one, before beat() returned
    assert topic.outstanding == 0
    # pipelined (not one round trip per summary), and never more than a window
    assert 1 < topic.most_outstanding <= SUMMARY_WINDOW


async def test_summaries_only_when_due() -> None:
    topic, clock, states = FakeStatusTopic(), [1000.0], {"r0": "active"}
    beat = heartbeat(topic, 10, clock, states)
    await beat.beat()
    clock[0] += 30.0
    states["r0"] = "paused"
    await beat.beat()  # a heartbeat only: the summaries are not due
    clock[0] += 31.0
    await beat.beat()
    keys = [key for key, _ in topic.records]
    assert keys.count(f"{WORKER_PREFIX}w1") == 3
    assert keys.count("r0") == 2
    assert [data["data"]["state"] for key, data in topic.records if key == "r0"] == [
        "active",
        "paused",
    ]


async def test_unchanged_summaries_wait_for_the_refresh_and_a_rebalance_sends_all() -> None:
    topic, clock, states = FakeStatusTopic(), [1000.0], {}
    beat = heartbeat(topic, 10, clock, states)
    everyone = [f"r{n}" for n in range(10) if n % 7 != 3]
    await beat.beat()
    assert summarized(topic) == everyone
    clock[0] += 60.0
    states["r5"] = "reauth_required"
    await beat.beat()
    assert summarized(topic)[len(everyone) :] == ["r5"]  # only what changed
    clock[0] += 60.0
    await beat.beat()
    assert len(summarized(topic)) == len(everyone) + 1  # nothing changed: nothing sent
    beat.forget()  # a rebalance
    clock[0] += 60.0
    await beat.beat()
    assert summarized(topic)[len(everyone) + 1 :] == everyone
    clock[0] += 600.0  # the refresh: every summary again, changed or not
    await beat.beat()
    assert summarized(topic)[2 * len(everyone) + 1 :] == everyone


async def test_a_rebalance_sends_again_only_the_resources_of_the_partitions_gained() -> None:
    topic, clock = FakeStatusTopic(), [1000.0]
    beat = heartbeat(topic, 10, clock)
    everyone = [f"r{n}" for n in range(10) if n % 7 != 3]
    await beat.beat()
    beat.forget(set())  # a worker joined and took partitions away: nothing to announce
    clock[0] += 60.0
    await beat.beat()
    assert summarized(topic) == everyone
    beat.forget({1})  # partition 1 came (back) to this worker
    clock[0] += 60.0
    await beat.beat()
    odd = [rid for rid in everyone if int(rid[1:]) % 2 == 1]
    assert summarized(topic)[len(everyone) :] == odd
    clock[0] += 60.0
    await beat.beat()  # announced once: not again
    assert len(summarized(topic)) == len(everyone) + len(odd)


async def test_a_resource_the_dashboard_shows_on_another_worker_is_announced_again() -> None:
    """The worker missed the rebalances that moved a resource away and back (stalled past
    its session timeout): nothing was gained, but the dashboard names the other worker."""
    topic, clock, shown = FakeStatusTopic(), [1000.0], {}
    beat = heartbeat(topic, 10, clock, dashboard=shown)
    everyone = [f"r{n}" for n in range(10) if n % 7 != 3]
    await beat.beat()
    shown.update({rid: "w1" for rid in everyone})
    shown["r2"] = "w2"
    clock[0] += 60.0
    await beat.beat()
    assert summarized(topic)[len(everyone) :] == ["r2"]


async def test_a_lost_summary_fails_the_beat_after_the_rest_are_acknowledged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(heartbeat_module, "SUMMARY_WINDOW", 4)
    topic, clock = FakeStatusTopic(fail=frozenset({"r1"})), [1000.0]
    beat = heartbeat(topic, 10, clock)
    with pytest.raises(ConnectionError, match="r1"):
        await beat.beat()
    # the window holding r1 was awaited whole; the next windows were never queued
    assert topic.outstanding == 0
    assert summarized(topic) == ["r0", "r1", "r2", "r4"]
    # the failed pass counts as not sent: the next one sends everything
    topic._fail = frozenset()
    clock[0] += 60.0
    await beat.beat()
    assert summarized(topic)[4:] == [f"r{n}" for n in range(10) if n % 7 != 3]


async def test_a_rebalance_during_a_pass_makes_the_next_pass_send_everything() -> None:
    topic, clock = FakeStatusTopic(), [1000.0]
    everyone = [f"r{n}" for n in range(10) if n % 7 != 3]

    def walking(n: int) -> None:
        if n == 5 and clock[0] == 1060.0:
            beat.forget()  # the partitions moved while the second pass ran

    beat = heartbeat(topic, 10, clock, walking=walking)
    await beat.beat()
    assert summarized(topic) == everyone
    clock[0] += 60.0
    await beat.beat()  # forgets halfway: what it had already skipped is not remembered
    clock[0] += 60.0
    await beat.beat()
    assert summarized(topic)[len(everyone) :] == everyone
