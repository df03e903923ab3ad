"""Failover with several worker processes, as deployed: a standalone gateway is the
public webhook URL, each worker has its own data directory, one is SIGKILLed (or
added, or broken) while calendars change. Nothing pushed may be lost, nothing emitted
twice with different content, and the killed worker's calendars resume quickly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import httpx

from calsync.model import ChangeKind
from tests.conftest import ADMIN_TOKEN
from tests.integration.conftest import Cluster, View, cluster

#: From the kill to the last pushed change on calsync.events (the requirement).
DEADLINE = 15.0
#: From the kill to the end of a 20 x 500 backfill: a bound on a crowded machine, not
#: a target (the target and its figures live in the takeover benchmark).
BACKFILL_BOUND = 180.0
#: SIGKILL rounds in the main test: an intermittent loss must not hide.
ROUNDS = int(os.environ.get("CALSYNC_FAILOVER_ROUNDS", "10"))


def agree_with_any(world: Cluster, mark: int, states: list[View]) -> None:
    """Every event emitted since ``mark`` carries content the emulator had in one of
    ``states`` (snapshots taken before and after each change): a replay or a late
    listing may repeat older content, never invent any."""
    for e in world.events.events()[mark:]:
        key = (e.resource_id, e.native_event_id)
        assert e.change is ChangeKind.UPSERT, e
        state = (e.start_utc, e.status_intent.value if e.status_intent else None)
        seen = [s.get(key) for s in states]
        assert state in seen, f"{key}: emitted {state}, the emulator had {seen}"


async def owned_partitions(world: Cluster) -> list[list[int]]:
    """Each worker's partitions of calsync.notifications, as its ``/api/status`` says
    (the dispatcher's; [] for a worker that is down or does not answer)."""
    owned: list[list[int]] = []
    async with httpx.AsyncClient(timeout=5.0) as client:
        for worker in world.workers.workers:
            partitions: list[int] = []
            if worker.running:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    answer = await client.get(
                        f"{worker.url}/api/status",
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                    )
                    described = answer.json()["notifications"]["partitions"]
                    partitions = sorted(int(key.rsplit(":", 1)[1]) for key in described)
            owned.append(partitions)
    return owned


async def kill_and_change(
    world: Cluster,
    names: list[str],
    victim: int,
    round_: int,
    *,
    deadline: float = DEADLINE,
    in_flight: bool = False,
) -> float:
    """SIGKILL ``victim``, push one change per calendar, wait for all of them; returns
    the seconds from the kill to convergence (asserted within ``deadline``).

    ``in_flight``: syncs were running at the kill, so events listed before the change
    may still arrive after it (then the change follows): each event must carry the
    content before or after the change, and the last one the content after it."""
    earlier = world.truth() if in_flight else None
    mark = len(world.events.values)
    world.workers.workers[victim].kill()
    killed = time.monotonic()
    world.change(names, round_)
    await world.converge(deadline=killed + deadline + 30)  # the report below says by how much
    took = time.monotonic() - killed
    assert took <= deadline, f"round {round_}: converged {took:.1f}s after the kill"
    world.agree_since(mark, earlier=earlier)
    return took


async def test_sigkill_one_of_two_workers_loses_no_pushed_change(kafka_settings) -> None:
    async with cluster(kafka_settings) as world:
        names = world.add_calendars(20, 3)
        await world.register(names)
        await world.converge(deadline=time.monotonic() + 90)
        await asyncio.to_thread(world.workers.wait_balanced)
        took = []
        for round_ in range(ROUNDS):
            # each in turn: the seeded random choice this replaced picked worker 0 in
            # all ten rounds, so worker 1 (which had taken every partition) never died
            victim = round_ % 2
            took.append(await kill_and_change(world, names, victim, round_))
            await asyncio.to_thread(world.workers.start, victim)
            await asyncio.to_thread(world.workers.wait_balanced)
        print(f"kill -> converged, {ROUNDS} rounds: {[round(t, 1) for t in took]}")


async def test_sigkill_during_an_initial_sync_loses_nothing(kafka_settings) -> None:
    async with cluster(kafka_settings) as world:
        names = world.add_calendars(20, 500)
        await world.register(names)
        await world.events.wait_for(lambda r: len(r.values) >= 1000, timeout=90)
        assert len(world.events.values) < 20 * 500, "the sync finished before the kill: void"
        # The pushed changes land with the backfill (a calendar without a cursor needs
        # its full sync first), and the whole backfill must finish too: the takeover
        # (about 8 s) plus the survivor's share of 10,000 events, which is CPU-bound:
        # 10-17 s on the 2-core machine alone or next to a CPU hog, and over 60 s once
        # when CI shared it with a second test session and two hogs. What this test
        # owes users is that nothing is lost, so it allows what a crowded machine
        # needs; the time is a benchmark figure (`benchmarks.run takeover`).
        took = await kill_and_change(world, names, 0, 0, deadline=BACKFILL_BOUND, in_flight=True)
        print(f"kill during initial sync -> converged in {took:.1f}s")


async def test_a_cleanly_stopped_workers_partitions_move_at_once(kafka_settings) -> None:
    """SIGTERM: the worker leaves the group on its way out (dynamic membership, aiokafka
    sends LeaveGroup), so its partitions move without waiting for its session to
    expire. The session timeout is long here so that the two cannot be confused."""
    session = 30.0
    async with cluster(kafka_settings, kafka_session_timeout=session) as world:
        names = world.add_calendars(20, 3)
        await world.register(names)
        await world.converge(deadline=time.monotonic() + 90)
        await asyncio.to_thread(world.workers.wait_balanced)
        mark = len(world.events.values)
        victim = world.workers.workers[1]
        stopped = time.monotonic()
        stopping = asyncio.ensure_future(asyncio.to_thread(victim.stop))
        world.change(names, 0)
        await world.converge(deadline=stopped + session + 30)
        took = time.monotonic() - stopped
        await stopping
        assert took < session / 2, f"converged {took:.1f}s after SIGTERM"
        world.agree_since(mark)
        print(f"SIGTERM -> converged in {took:.1f}s")


async def test_sigkill_while_retries_wait_on_timers_loses_nothing(kafka_settings) -> None:
    async with cluster(kafka_settings, retry_base_delay=1.0, retry_max_delay=3.0) as world:
        names = world.add_calendars(20, 3)
        await world.register(names)
        await world.converge(deadline=time.monotonic() + 90)
        await asyncio.to_thread(world.workers.wait_balanced)
        # every delta fetch fails once or twice: the changes wait on retry timers
        world.emulator.faults.add("unavailable_503", probability=0.7, path="/events$")
        world.change(names, 0)
        earlier = world.truth()
        await asyncio.sleep(1.0)
        mark = len(world.events.values)
        world.workers.workers[1].kill()
        killed = time.monotonic()
        world.emulator.faults.rules.clear()
        world.change(names, 1)
        await world.converge(deadline=killed + DEADLINE + 30)
        took = time.monotonic() - killed
        assert took <= DEADLINE, f"converged {took:.1f}s after the kill"
        world.agree_since(mark, earlier=earlier)


async def test_two_workers_started_at_the_same_instant_on_fresh_topics(kafka_settings) -> None:
    async with cluster(kafka_settings, start=False) as world:
        await asyncio.to_thread(world.workers.start)  # both at once, topics just created
        names = world.add_calendars(8, 5)
        await world.register(names)
        await world.converge(deadline=time.monotonic() + 90)
        await asyncio.to_thread(world.workers.wait_balanced)
        world.change(names, 0)
        await world.converge(deadline=time.monotonic() + 30)
        assert all(w.running for w in world.workers.workers)


async def test_a_third_worker_joins_while_the_others_sync(kafka_settings) -> None:
    async with cluster(kafka_settings) as world:
        names = world.add_calendars(20, 200)
        await world.register(names)
        await world.events.wait_for(lambda r: len(r.values) >= 500, timeout=90)
        world.workers.add()
        await asyncio.to_thread(world.workers.start, 2)
        for round_ in range(3):
            world.change(names, round_)
            await world.converge(deadline=time.monotonic() + 60)
        await asyncio.to_thread(world.workers.wait_balanced)
        world.change(names, 9)
        started = time.monotonic()
        await world.converge(deadline=started + DEADLINE)


async def test_a_worker_whose_agent_dies_exits_non_zero(kafka_settings) -> None:
    async with cluster(kafka_settings, workers=1, fail_agent="calsync.commands") as world:
        (worker,) = world.workers.workers
        names = world.add_calendars(1, 1)
        await world.register(names)  # the command kills the command agent
        deadline = time.monotonic() + 60
        unhealthy = False
        while worker.running:
            assert time.monotonic() < deadline, "the worker stayed up without its agent"
            with contextlib.suppress(httpx.HTTPError):
                async with httpx.AsyncClient() as client:
                    response = await client.get(f"{worker.url}/healthz", timeout=1.0)
                unhealthy = unhealthy or response.status_code == 503
                assert response.status_code in (200, 503)
            await asyncio.sleep(0.1)
        assert worker.returncode not in (None, 0), worker.tail()
        assert "calsync.commands died" in worker.tail(200)
        del unhealthy  # seen or not: the window between failure and exit is short


async def test_a_restarted_worker_with_static_membership_resumes_before_the_session_timeout(
    kafka_settings,
) -> None:
    """A crashed worker that comes back with its ``CALSYNC_GROUP_INSTANCE_ID`` takes its
    partitions back at once; a dynamic member would wait for the dead one's session
    (30 s here) to expire before the group rebalances."""
    session = 30.0
    async with cluster(
        kafka_settings, workers=1, group_instance_id="worker-a", kafka_session_timeout=session
    ) as world:
        (worker,) = world.workers.workers
        names = world.add_calendars(4, 3)
        await world.register(names)
        await world.converge(deadline=time.monotonic() + 90)
        worker.kill()
        restarted = time.monotonic()
        await asyncio.to_thread(worker.start)
        world.change(names, 0)
        await world.converge(deadline=restarted + session + 30)
        took = time.monotonic() - restarted
        assert took < session / 2, f"resumed {took:.1f}s after the restart"


async def test_a_worker_added_mid_sync_takes_partitions_and_loses_nothing(kafka_settings) -> None:
    """Rebalance under load: one worker runs the initial sync of 20 x 200 events, a
    second one joins in the middle while every calendar keeps changing. The newcomer
    ends up owning partitions (disjoint from the first's, together all of them),
    everything converges, and nothing emitted carries content the calendar never had."""
    async with cluster(kafka_settings, workers=1) as world:
        names = world.add_calendars(20, 200)
        states = [world.truth()]
        await world.register(names)
        await world.events.wait_for(lambda r: len(r.values) >= 800, timeout=90)
        assert len(world.events.values) < 20 * 200, "the sync finished before the join: void"
        world.workers.add()
        joined = time.monotonic()
        joining = asyncio.ensure_future(asyncio.to_thread(world.workers.start, 1))
        round_ = 0
        while not joining.done() or round_ < 6:  # changes during the join and rebalance
            world.change(names, round_)
            states.append(world.truth())
            round_ += 1
            await asyncio.sleep(1.0)
        await joining
        await asyncio.to_thread(world.workers.wait_balanced, timeout=120)
        await world.converge(deadline=joined + BACKFILL_BOUND)
        took = time.monotonic() - joined
        world.change(names, round_)  # and one more, handled by the new owners
        states.append(world.truth())
        changed = time.monotonic()
        await world.converge(deadline=changed + 60)
        after = time.monotonic() - changed
        agree_with_any(world, 0, states)
        deadline = time.monotonic() + 60
        while True:
            first, second = await owned_partitions(world)
            partitions = world.settings.topic_partitions
            if second and not set(first) & set(second) and len(first + second) == partitions:
                break
            assert time.monotonic() < deadline, f"partitions {first} / {second}"
            await asyncio.sleep(0.5)
        assert all(w.running for w in world.workers.workers)
        print(
            f"worker added mid-sync: partitions {first} / {second}; join -> converged "
            f"in {took:.1f}s ({round_} change rounds), a later change in {after:.1f}s"
        )
