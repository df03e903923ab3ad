"""The availability index and holds on two real workers sharing the partitions.

Each worker answers for every resource (it forwards to the owner); holds are decided
in each resource's partition order whichever worker receives them, so concurrent
requests for overlapping time on one resource are accepted at most once, also
across a SIGKILL of the worker that owns it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from calsync.availability.holds import HoldEventKind
from calsync.codecs.holds import decode_hold_event
from calsync.testing.topics import TopicReader
from tests.conftest import ADMIN_TOKEN
from tests.integration.conftest import BASE, Cluster, cluster, event_body

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value)


def truth_intervals(world: Cluster, name: str) -> list[tuple[datetime, datetime]]:
    """The emulator's busy intervals of ``name``, merged as the index merges them."""
    spans = sorted(
        (
            datetime.fromisoformat(e["start"]["dateTime"]).astimezone(UTC),
            datetime.fromisoformat(e["end"]["dateTime"]).astimezone(UTC),
        )
        for e in world.emulator.list_live_events(f"{name}@example.com")
    )
    merged: list[tuple[datetime, datetime]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


async def availability(
    client: httpx.AsyncClient, url: str, name: str, *, days: int = 90
) -> dict[str, Any]:
    start = BASE - timedelta(days=1)
    response = await client.get(
        f"{url}/api/availability/{name}",
        params={"start": iso(start), "end": iso(start + timedelta(days=min(days, 62)))},
        headers=AUTH,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def busy_of(answer: dict[str, Any]) -> list[tuple[datetime, datetime]]:
    return [(parse(b["start"]), parse(b["end"])) for b in answer["busy"]]


async def eventually(check: Any, *, timeout: float = 60.0, every: float = 0.3) -> Any:
    """Call ``check`` until it returns something truthy; its last error otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = await check()
            if result:
                return result
            error: BaseException | None = None
        except (AssertionError, httpx.HTTPError) as exc:
            error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {error!r}")
        await asyncio.sleep(every)


async def hold(
    client: httpx.AsyncClient,
    url: str,
    resources: list[str],
    start: datetime,
    minutes: int = 30,
    *,
    ttl: float = 600.0,
    key: str | None = None,
) -> httpx.Response:
    return await client.post(
        f"{url}/api/holds",
        json={
            "resources": resources,
            "start": iso(start),
            "end": iso(start + timedelta(minutes=minutes)),
            "ttl_seconds": ttl,
            "idempotency_key": key or uuid.uuid4().hex,
        },
        headers=AUTH,
        timeout=60.0,
    )


async def settled_hold(
    client: httpx.AsyncClient, url: str, *args: Any, **kw: Any
) -> httpx.Response:
    """A hold request retried while the answer is 'pending' (202) or a 503 (rebalance)."""
    key = kw.pop("key", None) or uuid.uuid4().hex
    deadline = time.monotonic() + 90
    while True:
        response = await hold(client, url, *args, key=key, **kw)
        if response.status_code not in (202, 503) or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.5)


async def test_every_worker_answers_for_every_resource_and_changes_show_up(kafka_settings) -> None:
    async with cluster(kafka_settings) as world:
        names = world.add_calendars(6, 3)
        await world.register(names)
        await world.converge(deadline=time.monotonic() + 90)
        await asyncio.to_thread(world.workers.wait_balanced)
        urls = [w.url for w in world.workers.workers]
        async with httpx.AsyncClient(timeout=30.0) as client:

            async def all_answer() -> bool:
                for url, name in itertools.product(urls, names):
                    answer = await availability(client, url, name)
                    assert busy_of(answer) == truth_intervals(world, name), (url, name)
                    assert answer["as_of"]["synced_at"], answer
                    assert answer["as_of"]["credentials"] == "ok"
                return True

            await eventually(all_answer, timeout=60)
            owners = set()
            for name in names:
                response = await client.get(f"{urls[0]}/api/availability/{name}", headers=AUTH)
                owners.add(response.headers.get("X-Calsync-Answered-By", "self"))
                for url in urls:  # the sync state is routed the same way
                    response = await client.get(f"{url}/api/resources/{name}", headers=AUTH)
                    assert response.status_code == 200, response.text
                    assert response.json()["resource_id"] == name
            assert len(owners) == 2, "both workers own some resources (routing was exercised)"

            before = (await availability(client, urls[1], names[0]))["as_of"]["synced_at"]
            world.emulator.patch_event(
                f"{names[0]}@example.com", world.ids[names[0]][0], event_body(5, day_offset=20)
            )

            async def changed() -> bool:
                answer = await availability(client, urls[1], names[0])
                return (
                    busy_of(answer) == truth_intervals(world, names[0])
                    and answer["as_of"]["synced_at"] > before
                )

            await eventually(changed, timeout=30)

            moved = BASE + timedelta(days=20, hours=5)
            response = await client.get(
                f"{urls[0]}/api/availability/{names[0]}/explain",
                params={"at": iso(moved + timedelta(minutes=10))},
                headers=AUTH,
            )
            assert response.status_code == 200, response.text
            explained = response.json()
            assert explained["verdict"] == "busy"
            (occurrence,) = explained["occurrences"]
            assert occurrence["provider"] == "google" and occurrence["system_event_id"]
            assert "private" not in response.text  # no titles

            query = {
                "resources": names[:3],
                "start": iso(BASE),
                "end": iso(BASE + timedelta(days=1)),
                "duration_minutes": 30,
                "granularity_minutes": 30,
                "max_slots": 200,
            }
            for url in urls:
                response = await client.post(
                    f"{url}/api/availability/query", json=query, headers=AUTH
                )
                assert response.status_code == 200, response.text
                slots = response.json()["slots"]
                busy = [iv for n in names[:3] for iv in truth_intervals(world, n)]
                assert slots, "a day with three half-hour meetings has free slots"
                for slot in slots:
                    start, end = parse(slot["start"]), parse(slot["end"])
                    assert not any(s < end and start < e for s, e in busy), slot
                    assert slot["as_of"] and slot["fresh"] is True


async def test_holds_on_two_workers(kafka_settings) -> None:
    async with cluster(kafka_settings) as world:
        names = world.add_calendars(4, 2)
        await world.register(names)
        await world.converge(deadline=time.monotonic() + 90)
        await asyncio.to_thread(world.workers.wait_balanced)
        urls = [w.url for w in world.workers.workers]
        holds = await TopicReader(
            world.settings.kafka_bootstrap, world.settings.topic("holds")
        ).start()
        free = BASE + timedelta(days=3, hours=10)  # event_body puts events on days 0 and 1
        async with httpx.AsyncClient(timeout=60.0) as client:
            # 100 requests for overlapping slots on one resource, over both workers
            asks = [
                (urls[n % 2], free + timedelta(minutes=n % 7), uuid.uuid4().hex) for n in range(100)
            ]
            answers = await asyncio.gather(
                *(hold(client, url, [names[0]], at, key=key) for url, at, key in asks)
            )
            codes = [a.status_code for a in answers]
            assert codes.count(201) == 1, codes
            assert set(codes) <= {201, 409}, codes
            (accepted,) = [a.json() for a in answers if a.status_code == 201]
            rejected = [a.json() for a in answers if a.status_code == 409]
            assert all(r["conflict"]["source"] == "hold" for r in rejected)

            # the same idempotency key gives the same answer
            _, at, key = asks[codes.index(201)]
            again = await hold(client, urls[1], [names[0]], at, key=key)
            assert again.status_code == 201 and again.json()["hold_id"] == accepted["hold_id"]

            # several resources: one of them is busy, so none is held
            busy_at = BASE + timedelta(days=5, hours=10)
            world.emulator.insert_event(f"{names[1]}@example.com", event_body(10, day_offset=5))
            await world.converge(deadline=time.monotonic() + 30)
            response = await settled_hold(client, urls[1], [names[1], names[2], names[3]], busy_at)
            assert response.status_code == 409, response.text
            assert response.json()["conflict"]["resource_id"] == names[1]

            async def no_holds_left() -> bool:
                for name in names[1:]:
                    answer = await availability(client, urls[0], name)
                    assert answer["holds"] == [], answer["holds"]
                return True

            await eventually(no_holds_left, timeout=30)
            response = await settled_hold(client, urls[0], [names[2], names[3]], busy_at)
            assert response.status_code == 201, response.text
            multi = response.json()
            assert multi["resources"] == sorted([names[2], names[3]])

            # an expired hold frees its slot
            later = free + timedelta(days=1)
            response = await settled_hold(client, urls[1], [names[0]], later, ttl=2)
            assert response.status_code == 201, response.text

            async def freed() -> bool:
                response = await hold(client, urls[0], [names[0]], later)
                return response.status_code == 201

            await eventually(freed, timeout=30, every=1.0)

            # release and confirm
            hold_url = f"{urls[1]}/api/holds/{multi['hold_id']}"
            response = await client.post(f"{hold_url}/confirm", headers=AUTH)
            assert response.status_code == 200 and response.json()["status"] == "confirmed"
            response = await client.get(hold_url, headers=AUTH)
            assert response.json()["state"] == "confirmed"
            response = await client.delete(
                f"{urls[0]}/api/holds/{accepted['hold_id']}", headers=AUTH
            )
            assert response.status_code == 200 and response.json()["status"] == "released"
            response = await settled_hold(client, urls[0], [names[0]], at)
            assert response.status_code == 201, "a released hold frees its slot"

            # a provider event on top of an accepted hold is a conflict, reported
            booked = BASE + timedelta(days=8, hours=10)
            response = await settled_hold(client, urls[1], [names[2]], booked)
            assert response.status_code == 201, response.text
            clash = response.json()["hold_id"]
            world.emulator.insert_event(f"{names[2]}@example.com", event_body(10, day_offset=8))

            async def reported() -> bool:
                answer = await availability(client, urls[0], names[2])
                return any(c["hold_id"] == clash for c in answer["conflicts"])

            await eventually(reported, timeout=30)

        await holds.settle(quiet=1.0)
        conflicts = [
            e for e in map(decode_hold_event, holds.values) if e.kind is HoldEventKind.CONFLICT
        ]
        assert [e.hold_id for e in conflicts] == [clash]
        assert conflicts[0].conflict is not None and conflicts[0].conflict.system_event_id
        kinds = [decode_hold_event(v).kind for v in holds.values]
        assert {HoldEventKind.ACCEPTED, HoldEventKind.REJECTED, HoldEventKind.EXPIRED} <= set(kinds)
        assert {HoldEventKind.CONFIRMED, HoldEventKind.RELEASED} <= set(kinds)
        await holds.aclose()


async def decided_holds(
    client: httpx.AsyncClient, url: str, names: list[str]
) -> dict[str, set[str]]:
    """Once no hold on ``names`` is pending (asked of the worker at ``url``): each
    resource's hold ids, after asserting that no two holds on one resource overlap."""

    async def settled() -> dict[str, list[dict[str, Any]]]:
        held: dict[str, list[dict[str, Any]]] = {}
        for name in names:
            answer = await availability(client, url, name)
            assert all(h["state"] != "pending" for h in answer["holds"]), answer["holds"]
            held[name] = answer["holds"]
        return held

    held = await eventually(settled, timeout=90, every=1.0)
    for name, holds in held.items():
        spans = sorted((parse(h["start"]), parse(h["end"]), h["hold_id"]) for h in holds)
        for (_, e1, h1), (s2, _, h2) in itertools.pairwise(spans):
            assert e1 <= s2, f"{name}: {h1} and {h2} overlap"
    return {name: {h["hold_id"] for h in holds} for name, holds in held.items()}


async def hold_records(world: Cluster, hold_id: str) -> list[tuple[str, str, str]]:
    reader = await TopicReader(
        world.settings.kafka_bootstrap, world.settings.topic("holds")
    ).start()
    try:
        await reader.settle(quiet=1.0)
        events = [decode_hold_event(v) for v in reader.values]
        return [(e.resource_id, e.kind.value, e.detail) for e in events if e.hold_id == hold_id]
    finally:
        await reader.aclose()


async def test_sigkill_of_the_owner_while_holds_are_decided(kafka_settings) -> None:
    """Holds keep being asked for (over both workers, some across three resources) while
    the worker that owns the contended resource is SIGKILLed: afterwards no resource
    has two overlapping holds, every accepted hold is still there, and every
    multi-resource hold is on all of its resources or on none."""
    async with cluster(kafka_settings) as world:
        names = world.add_calendars(6, 1)
        await world.register(names)
        await world.converge(deadline=time.monotonic() + 90)
        await asyncio.to_thread(world.workers.wait_balanced)
        workers = world.workers.workers
        contended = names[0]
        async with httpx.AsyncClient(timeout=60.0) as client:
            probe = await client.get(f"{workers[0].url}/api/availability/{contended}", headers=AUTH)
            victim = 1 if "X-Calsync-Answered-By" in probe.headers else 0
            survivor = 1 - victim
            slot0 = BASE + timedelta(days=10)
            asks: list[tuple[list[str], datetime, str]] = []
            for n in range(60):
                if n % 3 == 0:  # across three resources, overlapping each other
                    group = sorted({contended, names[1 + n % 5], names[1 + (n + 2) % 5]})
                else:
                    group = [contended]
                asks.append((group, slot0 + timedelta(minutes=20 * (n % 9)), uuid.uuid4().hex))
            outcomes: dict[str, int] = {}
            accepted: dict[str, str] = {}

            async def ask(index: int) -> None:
                group, at, key = asks[index]
                await asyncio.sleep(index * 0.05)
                url = workers[index % 2].url
                deadline = time.monotonic() + 120
                while True:
                    try:
                        response = await hold(client, url, group, at, minutes=30, ttl=3600, key=key)
                        if response.status_code in (201, 409):
                            outcomes[key] = response.status_code
                            if response.status_code == 201:
                                accepted[key] = response.json()["hold_id"]
                            return
                    except httpx.HTTPError:
                        pass
                    assert time.monotonic() < deadline, f"no decision for {key}"
                    url = workers[survivor].url  # the same key again: idempotent
                    await asyncio.sleep(0.5)

            tasks = [asyncio.ensure_future(ask(n)) for n in range(len(asks))]
            await asyncio.sleep(1.0)
            workers[victim].kill()
            await asyncio.gather(*tasks)
            await asyncio.to_thread(world.workers.start, victim)
            await asyncio.to_thread(world.workers.wait_balanced)
            assert len(outcomes) == len(asks)
            assert accepted, "some holds were accepted"

            on = await decided_holds(client, workers[survivor].url, names)
        for key, hold_id in accepted.items():
            group = next(g for g, _, k in asks if k == key)
            if not all(hold_id in on[n] for n in group):
                records = await hold_records(world, hold_id)
                logs = [
                    f"worker {i}: {line}"
                    for i, w in enumerate(world.workers.workers)
                    for line in w.log_path.read_text(errors="replace").splitlines()
                    if hold_id in line or "Recovery" in line or "Worker ready" in line
                ]
                raise AssertionError(
                    f"accepted {hold_id} of {group} lost; on {on}; {records}\n" + "\n".join(logs)
                )
        every = {h for ids in on.values() for h in ids}
        for hold_id in every:
            holders = {n for n in names if hold_id in on[n]}
            ask_group = next((g for g, _, k in asks if accepted.get(k) == hold_id), sorted(holders))
            assert holders == set(ask_group), f"{hold_id} partial: on {holders}"
