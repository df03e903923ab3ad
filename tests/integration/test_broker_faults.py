"""The Kafka broker goes away in the middle of a run, as deployed: a standalone gateway
is the public webhook URL, two workers with their own data directories, calendars
changing and pushing. Each test has its own broker (the session's is shared by the
whole suite), restarted on the same port and data directory.

What users depend on: a webhook the gateway acknowledged with 202 is never lost, a
webhook it could not write is refused with a status the provider retries (5xx), the
workers survive and resume by themselves, and once the broker is back every change
reaches calsync.events with the provider's content (nothing stale)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from calsync.emulators.google import DeliveryRecord
from calsync.settings import Settings
from calsync.testing.broker import KafkaBroker
from tests.integration.conftest import BASE, Cluster, cluster
from tests.integration.test_availability import decided_holds, hold
from tests.integration.test_failover import agree_with_any

#: How long the broker stays away: longer than the session timeout (6 s) and than a
#: provider's push timeout (the emulator's 10 s), short enough for CI.
DOWN = 20.0
#: From the broker's return to every change on calsync.events: a bound on a crowded
#: 2-core machine (the workers reconnect, rejoin the group and replay), not a target.
RECOVERY_BOUND = 120.0
#: How long the broker stays away while holds are asked.
HOLDS_DOWN = 12.0
#: Calendars x events whose initial sync is running when the broker goes.
BACKFILL = (6, 300)


@pytest.fixture
async def own_broker() -> AsyncIterator[KafkaBroker]:
    """A broker for this test alone, so that stopping it disturbs no other test."""
    broker = KafkaBroker()
    await asyncio.to_thread(broker.start)
    try:
        yield broker
    finally:
        await asyncio.to_thread(broker.stop)


@pytest.fixture
def own_settings(make_settings, own_broker: KafkaBroker) -> Callable[..., Settings]:  # type: ignore[no-untyped-def]
    bootstrap = own_broker.bootstrap

    def factory(**overrides: Any) -> Settings:
        return make_settings(kafka_bootstrap=bootstrap, **overrides)  # type: ignore[no-any-return]

    return factory


def calendar_of(world: Cluster, record: DeliveryRecord) -> str | None:
    channel = world.emulator.channels.get(record.channel_id)
    return channel.calendar_id.split("@")[0] if channel is not None else None


async def settle_pushes(world: Cluster, timeout: float) -> None:
    """Wait until the emulator delivered (or gave up on) every push queued so far."""
    await asyncio.wait_for(world.emulator.flush_pushes(), timeout)


async def steady(world: Cluster, names: list[str]) -> None:
    await world.register(names)
    await world.converge(deadline=time.monotonic() + 90)
    await asyncio.to_thread(world.workers.wait_balanced)


def last_pushes(world: Cluster, records: list[DeliveryRecord]) -> dict[str, list[DeliveryRecord]]:
    """Per calendar, the attempts of the last push it was sent among ``records``."""
    last: dict[str, int] = {}
    for r in records:
        name = calendar_of(world, r)
        if name is not None:
            last[name] = max(last.get(name, -1), r.message_number)
    return {
        name: [r for r in records if calendar_of(world, r) == name and r.message_number == n]
        for name, n in last.items()
    }


async def converge_after_outage(
    world: Cluster, names: list[str], outage: list[DeliveryRecord], back: float
) -> tuple[float, list[str]]:
    """After the broker is back: calendars whose last push during the outage was
    acknowledged (202) must converge with no help; the others get one more change (a
    provider retries a refused push: Google for hours, the emulator for under a
    second). Returns the seconds from ``back`` to convergence and the re-pushed names."""
    last = last_pushes(world, outage)
    acked = {name for name, attempts in last.items() if any(r.status == 202 for r in attempts)}
    refused = [name for name in names if name not in acked]
    if acked:
        deadline = back + RECOVERY_BOUND
        while True:
            view, truth = world.view(), world.truth()
            missing = sorted(k for k, v in truth.items() if k[0] in acked and view.get(k) != v)
            if not missing:
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"acknowledged pushes lost: {missing[:8]}\n{await world.workers_status()}\n"
                    + "\n".join(w.tail(40) for w in world.workers.workers)
                )
            await world.events.poll(0.2)
    world.change(refused, 7)
    await world.converge(deadline=back + RECOVERY_BOUND)
    return time.monotonic() - back, refused


def summary(records: list[DeliveryRecord]) -> Counter[str]:
    return Counter(
        str(r.status) if r.status is not None else (r.error or "?")[:40] for r in records
    )


@pytest.mark.parametrize("fault", ["restart", "freeze"])
async def test_a_broker_outage_loses_no_acknowledged_push(  # type: ignore[no-untyped-def]
    own_broker, own_settings, fault: str
) -> None:
    """The broker goes away for ``DOWN`` seconds while calendars change: ``restart``
    stops it (SIGTERM: connections refused) and starts it again on the same port and
    data; ``freeze`` SIGSTOPs it (unreachable: connections open, nothing answers) and
    SIGCONTs it. The gateway answers every push (503 while it cannot write, within
    its publish timeout: never a hung webhook), loses nothing it acknowledged, and the
    workers carry on by themselves."""
    async with cluster(own_settings) as world:
        names = world.add_calendars(20, 3)
        await steady(world, names)
        mark = len(world.events.values)
        states = [world.truth()]
        # work in flight when the broker goes: initial syncs of larger calendars (their
        # events and table writes half done) and a delta per small calendar
        backfill = world.add_calendars(BACKFILL[0], BACKFILL[1])
        await world.register(backfill)
        await world.events.wait_for(lambda r: len(r.values) >= mark + 300, timeout=90)
        world.change(names, 0)
        states.append(world.truth())
        await asyncio.sleep(0.3)
        assert len(world.events.values) < mark + BACKFILL[0] * BACKFILL[1], "backfill done: void"
        pushed = len(world.emulator.delivery_log)
        if fault == "restart":
            await asyncio.to_thread(own_broker.halt)
        else:
            own_broker.freeze()
        away = time.monotonic()
        at_halt = len(world.events.values) - mark
        world.change(names, 1)
        states.append(world.truth())
        with contextlib.suppress(TimeoutError):
            await settle_pushes(world, DOWN)
        await asyncio.sleep(max(0.0, away + DOWN - time.monotonic()))
        during = world.emulator.delivery_log[pushed:]
        if fault == "restart":
            await asyncio.to_thread(own_broker.start)
        else:
            own_broker.thaw()
        back = time.monotonic()
        await settle_pushes(world, 60)
        outage = world.emulator.delivery_log[pushed:]
        print(
            f"{fault}: broker away {back - away:.1f}s; pushes while away {dict(summary(during))}, "
            f"in all {dict(summary(outage))}"
        )
        # The gateway answered every attempt: 503 (Retry-After, the provider retries)
        # while it could not write, 202 once it could; never a timeout
        # (a new channel's "sync" handshake is answered 200 without a write)
        assert all(r.status is not None for r in outage), dict(summary(outage))
        assert {r.status for r in outage if r.state != "sync"} <= {202, 503}, dict(summary(outage))
        assert any(r.status == 503 for r in during), "the outage refused nothing: void"
        took, refused = await converge_after_outage(world, names, outage, back)
        total = len(world.events.values) - mark
        states.append(world.truth())
        agree_with_any(world, mark, states)
        print(
            f"{fault}: broker back -> converged in {took:.1f}s ({len(refused)} calendars "
            f"re-pushed; {at_halt} of {total} events emitted before the broker went)"
        )
        assert all(w.running for w in world.workers.workers), [
            w.tail(40) for w in world.workers.workers
        ]


async def test_holds_asked_across_a_broker_restart_are_never_double_accepted(  # type: ignore[no-untyped-def]
    own_broker, own_settings
) -> None:
    """Overlapping holds on one resource (some across three) are asked of both
    workers while the broker restarts; each client retries its own idempotency key
    until it gets a decision. Afterwards every ask is decided, no resource has two
    overlapping holds, and every accepted hold is on all of its resources."""
    async with cluster(own_settings) as world:
        names = world.add_calendars(4, 1)
        await steady(world, names)
        workers = world.workers.workers
        contended = names[0]
        slot0 = BASE + timedelta(days=10)
        asks: list[tuple[list[str], datetime, str]] = []
        for n in range(40):
            group = sorted({contended, names[1 + n % 3]}) if n % 3 == 0 else [contended]
            asks.append((group, slot0 + timedelta(minutes=20 * (n % 7)), uuid.uuid4().hex))
        outcomes: dict[str, int] = {}
        accepted: dict[str, str] = {}
        answers: Counter[str] = Counter()

        async def ask(client: httpx.AsyncClient, index: int) -> None:
            group, at, key = asks[index]
            await asyncio.sleep(index * 0.15)  # spread over the 6 s around the halt
            url = workers[index % 2].url
            deadline = time.monotonic() + 240
            while True:
                try:
                    response = await hold(client, url, group, at, minutes=30, ttl=3600, key=key)
                    answers[str(response.status_code)] += 1
                    if response.status_code in (201, 409):
                        outcomes[key] = response.status_code
                        if response.status_code == 201:
                            accepted[key] = response.json()["hold_id"]
                        return
                except httpx.HTTPError as exc:
                    answers[type(exc).__name__] += 1
                assert time.monotonic() < deadline, f"no decision for {key}: {dict(answers)}"
                await asyncio.sleep(0.5)  # the same key again: idempotent

        async with httpx.AsyncClient(timeout=60.0) as client:
            tasks = [asyncio.ensure_future(ask(client, n)) for n in range(len(asks))]
            await asyncio.sleep(2.0)
            await asyncio.to_thread(own_broker.halt)
            halted = time.monotonic()
            await asyncio.sleep(HOLDS_DOWN)
            await asyncio.to_thread(own_broker.start)
            back = time.monotonic()
            await asyncio.gather(*tasks)
            decided = time.monotonic() - back
            assert len(outcomes) == len(asks)
            assert accepted, "some holds were accepted"

            on = await decided_holds(client, workers[0].url, names)
        for key, hold_id in accepted.items():
            group = next(g for g, _, k in asks if k == key)
            assert all(hold_id in on[n] for n in group), f"accepted {hold_id} of {group}: {on}"
        every = {h for ids in on.values() for h in ids}
        assert every == set(accepted.values()), "a hold no client was told about"
        assert all(w.running for w in world.workers.workers)
        print(
            f"holds across a broker restart ({back - halted:.1f}s down): answers "
            f"{dict(answers)}; {len(accepted)} accepted of {len(asks)}; all decided "
            f"{decided:.1f}s after the broker was back"
        )
