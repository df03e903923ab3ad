"""Scale with faults: ``N`` worker processes, ``R`` resources across Google, Microsoft and
a real Radicale, a stream of edits during and after the initial sync, one fault, then a
truth check of ``calsync.events`` against what the providers hold.

The cluster is the takeover benchmark's (:mod:`benchmarks.takeover`): the standalone
gateway in this process is the public webhook URL, ``calsync worker`` processes
(:class:`~calsync.testing.cluster.WorkerCluster`, each its own data dir, as on separate
machines) share the topics of one real broker. Here there are ``--workers`` of them and
three providers: the Google and Microsoft emulators in this process (populated with
their in-process bulk inserts) and one Radicale server (each CalDAV calendar created by
one whole-collection ``PUT``, a few at a time; Radicale writes a file per event, so
``--caldav-share`` and ``--caldav-max-events`` keep CalDAV a smaller part). Calendar
sizes are drawn from ``--min-events``..``--max-events``; one in ``--big-every`` (at
least one once ``R`` ≥ 100) has ``--big-events``. Everything is registered in one
``POST /api/resources/bulk`` per 5,000 rows.

Edits (``--edits-per-s``: 60 % moves, 20 % inserts, 20 % deletes, with the emulators'
pushes for Google and Graph; CalDAV is polled) run from the registration until
``--edit-seconds`` after the initial sync. The fault (``--fault``) strikes once
``--fault-at`` of the initial events are on ``calsync.events``:

* ``kill``: SIGKILL one worker (standby replicas on, the default). *Resumed* is the
  first record from a partition it held, *converged* the moment every calendar is
  fully synced and every edit made before the kill delivered.
* ``add``: start one more worker (a rebalance under load). *Resumed* is the first
  record from a partition the new worker took, once the group is stable again.
* ``none``: the baseline; times run from the same point of the initial sync.

The provider faults last ``--storm-seconds`` (``down``: ``--down-seconds``), while the
edits go on, and are then lifted; *converged* is timed from the lift:

* ``429``: half of the Google and Graph API calls answer 429 with ``Retry-After: 2``;
* ``410``: a third of the Google list calls answer ``410 fullSyncRequired`` and of the
  Graph calls ``410 syncStateNotFound`` (a full listing follows each);
* ``drop``: 20 % of the emulators' pushes never leave (what a later push, the
  catch-up, ``--catchup-interval``, or the reconciliation, ``--reconcile-period``,
  must make up for);
* ``down``: every Google and Graph API call answers 503 (the provider is down);
* ``revoke``: ``--revoke`` Google grants are revoked; at the lift each calendar is
  registered again with a new grant (what the reconnect link ends in);
* ``diskfull``: worker 0's data dir is a ``--disk-mib`` tmpfs (mounted by the
  harness: root only) that a file fills up; the worker must stop by itself, and at
  the lift the file is removed and the worker started again (what its supervisor
  would do once space returns);
* ``broker-restart``: the broker stops (controlled shutdown) and starts again on the
  same port and data;
* ``broker-down``: the broker is SIGSTOPped for ``--storm-seconds`` (unreachable:
  connections open, nothing answers), then resumed. Meanwhile the gateway answers
  pushes 503 with ``Retry-After``; for both broker faults the emulators retry refused
  pushes for about three minutes (Google retries for hours), so an edit is lost only
  if calsync loses it.

``--holds`` pairs of overlapping holds are posted to two different workers at the fault
(retried at a live worker with the same idempotency key): both accepted is a double
booking, which must never happen.

The truth check folds ``calsync.events`` (:func:`calsync.verify.fold`, as it is read)
and compares it with the providers' own state (:func:`calsync.verify.compare`): the
emulators' live events normalized as the worker normalizes them, Radicale through the
CalDAV provider (:func:`calsync.verify.list_truth`). Missing, extra and stale must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import gc
import math
import os
import random
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from benchmarks.harness.benchmark import Benchmark, Context
from benchmarks.harness.env import CLIENT_ID, CLIENT_SECRET, Env, free_port
from benchmarks.harness.google import event_time, tomorrow
from benchmarks.harness.load import memory_available, process_cpu, process_rss
from benchmarks.harness.processes import register_bulk, serve_gateway
from benchmarks.harness.report import Section, ms, verdict
from benchmarks.openloop import summarize
from benchmarks.takeover import notification_owners
from calsync.codecs.avro import decode_event
from calsync.emulators.google import GoogleEmulator
from calsync.emulators.microsoft import MicrosoftEmulator
from calsync.errors import CalsyncError
from calsync.model import ChangeKind, Occurrence, Window
from calsync.normalize.google import normalize_google_event
from calsync.normalize.microsoft import normalize_graph_event
from calsync.providers.caldav import CalDAVProvider
from calsync.settings import Settings
from calsync.testing.caldav_servers import RadicaleServer
from calsync.testing.cluster import WorkerCluster
from calsync.testing.topics import TopicReader
from calsync.verify import Busy, Interval, Report, compare, fold, horizon, list_truth

PROVIDERS = ("google", "microsoft", "caldav")
FAULTS = (
    "none",
    "kill",
    "add",
    "429",
    "410",
    "drop",
    "down",
    "revoke",
    "diskfull",
    "broker-restart",
    "broker-down",
)
#: Faults that last a while (``--storm-seconds``; ``down``: ``--down-seconds``) and
#: are then lifted: convergence is timed from the lift.
STORMS = ("429", "410", "drop", "down", "revoke", "diskfull", "broker-restart", "broker-down")
#: Faults of the broker itself: the emulators then retry refused pushes for minutes
#: (as Google does for hours), not for the emulators' default second.
BROKER_FAULTS = ("broker-restart", "broker-down")
BROKER_PUSH_RETRIES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 64.0)
UTC_ZONE = ZoneInfo("UTC")
#: Edits move events within this many days after tomorrow; holds go after it.
EDIT_DAYS = 120
HOLD_DAY = 200


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class Calendar:
    """One resource of the run: its id, provider and initial number of events."""

    rid: str
    provider: str
    events: int


def plan(
    resources: int,
    *,
    caldav_share: float,
    big_every: int,
    big_events: int,
    min_events: int,
    max_events: int,
    caldav_max_events: int,
    seed: int = 14,
) -> list[Calendar]:
    """The run's calendars: ``round(resources * caldav_share)`` on CalDAV, the others
    alternately on Google and Microsoft; sizes uniform in ``min_events..max_events``
    (CalDAV's at most ``caldav_max_events``); ``resources // big_every`` of them (at least
    one from 100 resources on) have ``big_events``, on the emulators (Google first), each
    big one replacing a small one. Deterministic for a ``seed``."""
    rng = random.Random(seed)
    caldav = round(resources * caldav_share)
    emulated = resources - caldav
    big = resources // big_every if big_every > 0 else 0
    if resources >= 100 and big_every > 0:
        big = max(big, 1)
    big = min(big, emulated)
    out: list[Calendar] = []
    for k in range(emulated):
        provider = PROVIDERS[k % 2]
        size = big_events if k < big else rng.randint(min_events, max_events)
        out.append(Calendar(f"{provider[0]}{k:05d}", provider, size))
    for k in range(caldav):
        size = rng.randint(min(min_events, caldav_max_events), caldav_max_events)
        out.append(Calendar(f"d{k:05d}", "caldav", size))
    return out


def slot(n: int) -> datetime:
    """The start of the ``n``-th 30-minute event of a calendar: 5 minutes apart from
    tomorrow (20,000 events span 70 days)."""
    return tomorrow() + timedelta(minutes=5 * n)


def graph_body(start: datetime) -> dict[str, Any]:
    fmt = "%Y-%m-%dT%H:%M:%S.0000000"
    return {
        "subject": "scale",
        "start": {"dateTime": start.strftime(fmt), "timeZone": "UTC"},
        "end": {"dateTime": (start + timedelta(minutes=30)).strftime(fmt), "timeZone": "UTC"},
        "showAs": "busy",
    }


def vevent(uid: str, start: datetime) -> str:
    fmt = "%Y%m%dT%H%M%SZ"
    return "\r\n".join(
        [
            "BEGIN:VEVENT",
            f"UID:{uid}",
            f"DTSTAMP:{datetime.now(UTC).strftime(fmt)}",
            f"DTSTART:{start.strftime(fmt)}",
            f"DTEND:{(start + timedelta(minutes=30)).strftime(fmt)}",
            "SUMMARY:scale",
            "END:VEVENT",
        ]
    )


def vcalendar(events: Iterable[str]) -> bytes:
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//calsync scale//EN", *events]
    return "\r\n".join([*lines, "END:VCALENDAR", ""]).encode()


# --------------------------------------------------------------------------- providers


@dataclass(frozen=True, slots=True)
class Edit:
    """One change made at a provider: the event's new start, or ``None`` (deleted)."""

    rid: str
    native_id: str
    at: float  # time.time() just before the change
    start: datetime | None


class Fleet:
    """The three providers, the calendars on them, and the changes made to them."""

    def __init__(
        self, google: GoogleEmulator, graph: MicrosoftEmulator, dav: RadicaleServer
    ) -> None:
        self.google = google
        self.graph = graph
        self.dav = dav
        self.calendars: dict[str, Calendar] = {}
        self.live: dict[str, list[str]] = {}  # rid → its live event ids
        self.initial: dict[str, set[str]] = {}  # rid → the ids it was registered with
        self.tokens: dict[str, str] = {}
        self._http = dav.client(timeout=600.0)
        self._dav_gate = asyncio.Semaphore(4)

    def calendar_id(self, rid: str) -> str:
        provider = self.calendars[rid].provider
        if provider == "caldav":
            return f"{self.dav.home_url.rstrip('/')}/{rid}/"
        return f"{rid}@{'contoso' if provider == 'microsoft' else 'scale'}.example"

    async def populate(self, calendars: Sequence[Calendar]) -> None:
        """Every calendar with its events: the emulators in bulk, in this thread;
        Radicale one whole-collection PUT per calendar, ``4`` at a time."""
        dav_jobs = []
        for cal in calendars:
            self.calendars[cal.rid] = cal
            cid = self.calendar_id(cal.rid)
            if cal.provider == "google":
                self.google.add_calendar(cid, time_zone="UTC")
                made = self.google.insert_events(
                    cid, ({"summary": "scale", **event_time(slot(i))} for i in range(cal.events))
                )
                ids = [str(e["id"]) for e in made]
                self.tokens[cal.rid] = self.google.issue_refresh_token(CLIENT_ID, [cid])
            elif cal.provider == "microsoft":
                self.graph.add_mailbox(cid, time_zone="UTC")
                made = self.graph.create_events(
                    cid, (graph_body(slot(i)) for i in range(cal.events))
                )
                ids = [str(e["id"]) for e in made]
                self.tokens[cal.rid] = self.graph.issue_refresh_token(CLIENT_ID, [cid])
            else:
                ids = [f"{cal.rid}-{i}" for i in range(cal.events)]
                body = vcalendar(vevent(uid, slot(i)) for i, uid in enumerate(ids))
                dav_jobs.append(self._dav("PUT", cid, body))
            self.live[cal.rid] = ids
            self.initial[cal.rid] = set(ids)
            await asyncio.sleep(0)  # let the loop breathe (gateway, readers)
        await asyncio.gather(*dav_jobs)

    async def _dav(self, method: str, url: str, body: bytes | None = None) -> None:
        async with self._dav_gate:
            headers = {"Content-Type": "text/calendar; charset=utf-8"} if body else {}
            response = await self._http.request(method, url, content=body, headers=headers)
        response.raise_for_status()

    def registrations(self) -> list[dict[str, Any]]:
        """The bulk registration rows of every calendar."""
        rows: list[dict[str, Any]] = []
        for rid, cal in self.calendars.items():
            row: dict[str, Any] = {
                "resource_id": rid,
                "provider": cal.provider,
                "calendar_id": self.calendar_id(rid),
            }
            if cal.provider == "caldav":
                row["time_zone"] = "UTC"
                row["credentials"] = {"username": self.dav.username, "password": self.dav.password}
            else:
                row["credentials"] = {"refresh_token": self.tokens[rid]}
            rows.append(row)
        return rows

    async def edit(self, rng: random.Random) -> Edit:
        """One random change to one random calendar (pushed where the provider pushes)."""
        rid = rng.choice(list(self.calendars))
        provider, cid, live = self.calendars[rid].provider, self.calendar_id(rid), self.live[rid]
        roll = rng.random()
        start = tomorrow() + timedelta(minutes=5 * rng.randrange(EDIT_DAYS * 288))
        at = time.time()
        if roll < 0.2 or not live:  # insert
            if provider == "google":
                native = str(
                    self.google.insert_event(cid, {"summary": "new", **event_time(start)})["id"]
                )
            elif provider == "microsoft":
                native = str(self.graph.create_event(cid, graph_body(start))["id"])
            else:
                native = f"{rid}-x{uuid.uuid4().hex[:10]}"
                await self._dav("PUT", f"{cid}{native}.ics", vcalendar([vevent(native, start)]))
            live.append(native)
            return Edit(rid, native, at, start)
        index = rng.randrange(len(live))
        native = live[index]
        if roll < 0.4:  # delete
            live[index] = live[-1]
            live.pop()
            if provider == "google":
                self.google.delete_event(cid, native)
            elif provider == "microsoft":
                self.graph.delete_event(cid, native)
            else:
                await self._dav("DELETE", f"{cid}{native}.ics")
            return Edit(rid, native, at, None)
        if provider == "google":
            self.google.patch_event(cid, native, event_time(start))
        elif provider == "microsoft":
            changes = graph_body(start)
            self.graph.update_event(cid, native, {k: changes[k] for k in ("start", "end")})
        else:
            await self._dav("PUT", f"{cid}{native}.ics", vcalendar([vevent(native, start)]))
        return Edit(rid, native, at, start)

    async def truth(self, rid: str, window: Window) -> dict[str, Interval]:
        """What the provider holds for ``rid`` now, inside ``window``: the emulators'
        live events normalized as the worker normalizes them; Radicale listed through
        the CalDAV provider."""
        cal, cid = self.calendars[rid], self.calendar_id(rid)
        if cal.provider == "caldav":
            provider = CalDAVProvider(
                client=self._http,
                url=cid,
                username=self.dav.username,
                password=self.dav.password,
                time_zone="UTC",
            )
            return await list_truth(provider, window)
        if cal.provider == "google":
            raws = self.google.list_live_events(cid)
            changes = [normalize_google_event(raw, UTC_ZONE) for raw in raws]
        else:
            raws = self.graph.list_live_events(cid)
            changes = [normalize_graph_event(raw, UTC_ZONE) for raw in raws]
        return {
            c.native_event_id: Interval.of_occurrence(c)
            for c in changes
            if isinstance(c, Occurrence) and window.overlaps(c.start_utc, c.end_utc)
        }

    def push_failures(self) -> dict[str, int]:
        """Per emulator, the push attempts that were not answered 2xx."""
        return {
            "google": sum(1 for d in self.google.delivery_log if not 200 <= (d.status or 0) < 300),
            "microsoft": sum(
                1 for d in self.graph.delivery_log if not 200 <= (d.status or 0) < 300
            ),
        }

    async def aclose(self) -> None:
        await self._http.aclose()


# --------------------------------------------------------------------------- the disk


def mount_tmpfs(path: Path, mib: int) -> None:
    """A ``mib`` MiB tmpfs at ``path`` (root only: ``mount``), private to its owner."""
    if os.geteuid() != 0:
        raise RuntimeError("--fault diskfull mounts a small tmpfs: run it as root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0700", "tmpfs", str(path)],
        check=True,
    )


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> int:
    """Write ``path`` until the file system is full; returns the bytes written."""
    chunk, written = b"\0" * (1 << 20), 0
    with path.open("wb") as out:
        while True:
            try:
                out.write(chunk)
                out.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return written
            written += len(chunk)


# --------------------------------------------------------------------------- the stream


class Follower(TopicReader):
    """Reads ``calsync.events`` from the beginning and keeps, instead of every record,
    what the run needs: the folded view (:func:`calsync.verify.fold`), when each
    calendar's initial events were all there, when each edit was delivered, and the
    first record of each partition after a mark."""

    def __init__(self, bootstrap: str, topic: str, fleet: Fleet, window: Window) -> None:
        super().__init__(bootstrap, topic)
        self.fleet = fleet
        self.window = window
        self.view: Busy = {}
        self.records = 0
        self.undecodable = 0
        self.last_at = 0.0  # CreateTime of the newest record
        self.remaining = {rid: set(ids) for rid, ids in fleet.initial.items()}
        self.initial_seen = 0
        self.synced_at: dict[str, float] = {}  # rid → CreateTime completing its initial sync
        self.pending: dict[tuple[str, str], list[Edit]] = {}
        self.delivered: list[tuple[Edit, float]] = []
        self.superseded = 0  # edits of events deleted before any record of them
        self.mark = math.inf
        self.first_after: dict[int, float] = {}  # partition → first CreateTime ≥ mark
        self.partition_of: dict[str, int] = {}  # rid → its partition of the topic

    @property
    def initial_total(self) -> int:
        return sum(len(ids) for ids in self.fleet.initial.values())

    def edited(self, edit: Edit) -> None:
        """Expect ``edit`` on the topic, unless it is the deletion of an event the view
        does not hold (never synced, or gone already): no record has to say so then,
        and the event's earlier edits never need to show up either."""
        key = (edit.rid, edit.native_id)
        if edit.start is None and edit.native_id not in self.view.get(edit.rid, {}):
            self.superseded += len(self.pending.pop(key, ()))
            self._seen(edit.rid, edit.native_id, edit.at)  # an initial event, if it was one
            return
        self.pending.setdefault(key, []).append(edit)

    def _seen(self, rid: str, native: str, at: float) -> None:
        remaining = self.remaining.get(rid)
        if remaining is not None and native in remaining:
            remaining.discard(native)
            self.initial_seen += 1
            if not remaining:
                self.synced_at[rid] = at

    async def poll(self, timeout: float = 0.2) -> int:
        batches = await self._consumer.getmany(timeout_ms=int(timeout * 1000), max_records=5000)
        count = 0
        for tp, messages in batches.items():
            for m in messages:
                count += 1
                at = m.timestamp / 1000
                self.last_at = max(self.last_at, at)
                if at >= self.mark and tp.partition not in self.first_after:
                    self.first_after[tp.partition] = at
                try:
                    event = decode_event(m.value)
                except CalsyncError:
                    self.undecodable += 1
                    continue
                fold((event,), self.view, window=self.window)
                rid, native = event.resource_id, event.native_event_id
                self.partition_of[rid] = tp.partition
                upsert = event.change is ChangeKind.UPSERT
                if upsert:
                    self._seen(rid, native, at)
                edits = self.pending.get((rid, native))
                if edits:
                    state = event.start_utc if upsert else None
                    last = max((i for i, e in enumerate(edits) if e.start == state), default=-1)
                    for e in edits[: last + 1]:
                        self.delivered.append((e, at))
                    del edits[: last + 1]
        self.records += count
        return count

    @property
    def undelivered(self) -> int:
        return sum(len(edits) for edits in self.pending.values())


# --------------------------------------------------------------------------- holds


@dataclass(slots=True)
class Holds:
    pairs: int = 0
    accepted: int = 0
    rejected: int = 0
    undecided: int = 0
    overlaps: int = 0  # pairs of which both were accepted
    latencies_ms: list[float] = field(default_factory=list)


async def hold_pairs(
    workers: WorkerCluster, admin_token: str, rids: Sequence[str], pairs: int, out: Holds
) -> None:
    """``pairs`` pairs of overlapping 30-minute holds, each pair on one resource, its two
    holds posted at once to two different running workers; a failed or pending answer is
    asked again (same idempotency key) at a worker still running, for up to 120 s."""
    day = tomorrow() + timedelta(days=HOLD_DAY)
    headers = {"Authorization": f"Bearer {admin_token}"}

    async def ask(client: httpx.AsyncClient, first: int, rid: str, start: datetime) -> bool | None:
        key = uuid.uuid4().hex
        body = {
            "resources": [rid],
            "start": start.isoformat(),
            "end": (start + timedelta(minutes=30)).isoformat(),
            "ttl_seconds": 3600,
            "idempotency_key": key,
        }
        began = time.monotonic()
        deadline = began + 120
        target = first
        while time.monotonic() < deadline:
            running = [w for w in workers.workers if w.running]
            if not running:
                return None
            worker = workers.workers[target % len(workers.workers)]
            if not worker.running:
                worker = running[target % len(running)]
            with contextlib.suppress(httpx.HTTPError):
                response = await client.post(f"{worker.url}/api/holds", json=body, headers=headers)
                if response.status_code in (201, 409):
                    out.latencies_ms.append((time.monotonic() - began) * 1000)
                    return response.status_code == 201
            target += 1
            await asyncio.sleep(0.5)
        return None

    async def pair(client: httpx.AsyncClient, j: int) -> None:
        rid = rids[j % len(rids)]
        start = day + timedelta(hours=j)
        answers = await asyncio.gather(
            ask(client, j, rid, start), ask(client, j + 1, rid, start + timedelta(minutes=15))
        )
        out.pairs += 1
        for answer in answers:
            if answer is None:
                out.undecided += 1
            elif answer:
                out.accepted += 1
            else:
                out.rejected += 1
        out.overlaps += all(answers)

    async with httpx.AsyncClient(timeout=60.0) as client:
        await asyncio.gather(*(pair(client, j) for j in range(pairs)))


# --------------------------------------------------------------------------- the run


@dataclass(slots=True)
class Outcome:
    """What one run measured (times in seconds, ``time.time()`` based)."""

    fault: str
    workers: int
    calendars: dict[str, int]  # provider → calendars
    events: dict[str, int]  # provider → initial events
    populate_s: float = 0.0
    registered_at: float = 0.0
    fault_at: float = math.nan
    fault_progress: float = math.nan  # share of the initial events on the topic then
    stable_at: float = math.nan  # add: the group stable again with the new worker
    lifted_at: float = math.nan  # a storm (STORMS) lifted
    resumed_at: float = math.nan  # first record from a moved (kill) / taken (add) partition
    moved_partitions: int = 0
    synced_at: float = math.nan  # every calendar's initial events on the topic
    converged_at: float = math.nan
    edits: int = 0
    undelivered: int = 0
    superseded: int = 0
    push_failures: dict[str, int] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)  # provider → ms
    #: the same, of the edits to calendars whose initial sync was on the topic already
    synced_latencies: dict[str, list[float]] = field(default_factory=dict)
    records: int = 0
    undecodable: int = 0
    report: Report | None = None
    differing: dict[str, Counter[str]] = field(default_factory=dict)  # provider → kind counts
    cpu: dict[str, float] = field(default_factory=dict)  # worker → CPU s
    peak_rss: dict[str, int] = field(default_factory=dict)  # process → highest RSS seen, bytes
    least_available: int = 0  # the lowest MemAvailable seen, bytes (0: never sampled)
    own_cpu_s: float = 0.0
    holds: Holds = field(default_factory=Holds)
    notes: list[str] = field(default_factory=list)

    @property
    def initial_events(self) -> int:
        return sum(self.events.values())

    def since_fault(self, at: float) -> float:
        return at - self.fault_at

    @property
    def cut(self) -> float:
        """Edits made before this are owed by convergence: the fault's moment, or a
        storm's lift."""
        return self.fault_at if math.isnan(self.lifted_at) else self.lifted_at


async def scale(ctx: Context) -> Outcome:
    opts, env = ctx.opts, ctx.env
    calendars = plan(
        opts.resources,
        caldav_share=opts.caldav_share,
        big_every=opts.big_every,
        big_events=opts.big_events,
        min_events=opts.min_events,
        max_events=opts.max_events,
        caldav_max_events=opts.caldav_max_events,
    )
    outcome = Outcome(
        opts.fault,
        opts.workers,
        dict(Counter(c.provider for c in calendars)),
        {p: sum(c.events for c in calendars if c.provider == p) for p in PROVIDERS},
    )
    async with contextlib.AsyncExitStack() as stack:
        retries = {"push_retry_delays": BROKER_PUSH_RETRIES} if opts.fault in BROKER_FAULTS else {}
        google = GoogleEmulator(seed=1414, **retries)
        await google.start()
        stack.push_async_callback(google.aclose)
        # Entra keeps a rotated refresh token valid; with single-use tokens a worker
        # SIGKILLed between the token endpoint's answer and storing the new token has
        # lost the grant, whatever calsync does (docs/benchmarks.md §7).
        graph = MicrosoftEmulator(seed=1414, old_refresh_tokens=opts.old_refresh_tokens, **retries)
        await graph.start()
        stack.push_async_callback(graph.aclose)
        for emulator in (google, graph):
            emulator.add_client(CLIENT_ID, CLIENT_SECRET)
        dav = RadicaleServer()
        await asyncio.to_thread(dav.start)
        stack.callback(dav.stop)
        fleet = Fleet(google, graph, dav)
        stack.push_async_callback(fleet.aclose)

        base = env.settings(
            "scale",
            google_api_url=google.api_url,
            google_token_url=google.token_url,
            graph_api_url=graph.api_url,
            microsoft_authority=graph.authority,
            microsoft_client_id=CLIENT_ID,
            microsoft_client_secret=CLIENT_SECRET,
            microsoft_ca_bundle=graph.ca_bundle_path,
            caldav_allowed_networks=dav.allowed_networks,
            poll_min_interval=opts.caldav_poll,
            poll_max_interval=opts.caldav_poll * 4,
            kafka_session_timeout=opts.scale_session_timeout,
            standby_replicas=opts.standby_replicas,
            reconcile_period=opts.reconcile_period,
            catchup_interval=opts.catchup_interval,
        )
        gateway = await stack.enter_async_context(serve_gateway(base, "127.0.0.1", free_port()))
        settings = dataclasses.replace(base, public_url=gateway)
        workers = WorkerCluster(settings, opts.workers)
        stack.push_async_callback(asyncio.to_thread, workers.stop)
        if opts.fault == "diskfull":
            small = workers.workers[0].settings.data_dir
            mount_tmpfs(small, opts.disk_mib)
            stack.callback(unmount, small)
        await asyncio.to_thread(workers.start)

        began = time.monotonic()
        await fleet.populate(calendars)
        outcome.populate_s = time.monotonic() - began
        # The emulators' events live as long as the run (millions of objects at 10,000
        # calendars): frozen, a full collection no longer walks them, which would stall
        # the emulators (and the topic reader) for seconds each time. Run.wait freezes
        # what the reader keeps as it grows.
        gc.freeze()

        window = horizon(settings, datetime.now(UTC), timedelta(hours=1))
        follower = Follower(env.bootstrap, settings.topic("events"), fleet, window)
        await follower.start()
        stack.push_async_callback(follower.aclose)
        await Run(opts, env, settings, fleet, workers, follower, outcome, gateway).go()
    return outcome


class Run:
    """The timed part: registration, edits, the fault, the wait, the truth."""

    def __init__(
        self,
        opts: argparse.Namespace,
        env: Env,
        settings: Settings,
        fleet: Fleet,
        workers: WorkerCluster,
        follower: Follower,
        outcome: Outcome,
        gateway: str,
    ) -> None:
        self.opts, self.env, self.settings = opts, env, settings
        self.fleet, self.workers, self.follower, self.outcome = fleet, workers, follower, outcome
        self.gateway = gateway
        self.editing = True
        self.edits: list[Edit] = []
        self.rng = random.Random(1414)
        self.own_cpu = os.times()
        #: workers allowed to exit by themselves (diskfull: the one whose disk is full)
        self.may_exit: set[int] = set()

    def log(self, message: str) -> None:
        f, calendars = self.follower, self.fleet.calendars
        synced = Counter(calendars[rid].provider for rid in f.synced_at)
        per_provider = "/".join(f"{synced[p]}" for p in PROVIDERS)
        memory = self.sample_memory()
        print(
            f"[scale] {message} ({f.records:,} records, {f.initial_seen:,}/{f.initial_total:,} "
            f"initial, {len(f.synced_at)}/{len(calendars)} synced (google/microsoft/caldav "
            f"{per_provider}), {f.undelivered} edits in flight; {memory})",
            flush=True,
        )

    def sample_memory(self) -> str:
        """Resident memory of this process, the workers and the broker, and what the
        machine has left; the peaks go into the outcome."""
        o = self.outcome
        rss = {"benchmark": process_rss(os.getpid())}
        for i, w in enumerate(self.workers.workers):
            if w.pid is not None and w.running:
                rss[f"worker {i}"] = process_rss(w.pid)
        broker = self.env.broker.pid if self.env.broker is not None else None
        if broker is not None:
            rss["broker"] = process_rss(broker)
        for name, value in rss.items():
            o.peak_rss[name] = max(o.peak_rss.get(name, 0), value)
        available = memory_available()
        if available:
            o.least_available = min(o.least_available or available, available)
        parts = ", ".join(f"{name} {value / 2**30:.1f}" for name, value in rss.items())
        return f"GiB resident: {parts}; available {available / 2**30:.1f}"

    def tails(self) -> str:
        """Each worker's first error lines and its last lines."""
        out = []
        for w in self.workers.workers:
            with contextlib.suppress(OSError):
                lines = w.log_path.read_text(errors="replace").splitlines()
                errors = [line[:400] for line in lines if "[ERROR]" in line or "[CRITICAL]" in line]
                out.append(f"--- {w.log_path} (exit {w.returncode}); first errors:")
                out += errors[:5]
                out.append("... last lines:")
                out += [line[:400] for line in lines[-15:]]
        return "\n".join(out)

    def sample_cpu(self) -> None:
        for i, w in enumerate(self.workers.workers):
            if w.pid is not None and w.running:
                self.outcome.cpu[f"worker {i}"] = process_cpu(w.pid)

    async def edit_loop(self) -> None:
        rate = self.opts.edits_per_s
        if rate <= 0:
            return
        next_at = time.monotonic()
        while self.editing:
            edit = await self.fleet.edit(self.rng)
            self.edits.append(edit)
            self.follower.edited(edit)
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def wait(self, what: str, done: Any, timeout: float) -> None:
        """Poll the topic (and sample CPU) until ``done()``; raise with the logs after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last_log = time.monotonic()
        while not done():
            crashed = [
                w
                for i, w in enumerate(self.workers.workers)
                if w.returncode is not None and i not in self.may_exit
            ]
            if crashed:
                self.log(f"a worker exited by itself while waiting for {what}")
                raise RuntimeError(
                    f"{len(crashed)} worker(s) exited by themselves (not killed by the "
                    f"benchmark) while waiting for {what}:\n{self.tails()}"
                )
            if time.monotonic() > deadline:
                self.log(f"TIMEOUT waiting for {what}")
                raise RuntimeError(f"{what}: not after {timeout:.0f} s\n{self.tails()}")
            await self.follower.poll(0.2)
            if time.monotonic() - last_log > 10:
                last_log = time.monotonic()
                gc.freeze()  # what the reader kept so far stays (see scale())
                self.sample_cpu()
                self.log(f"waiting for {what}")

    async def fault(self) -> None:
        o, f = self.outcome, self.follower
        o.fault_progress = f.initial_seen / max(1, f.initial_total)
        if self.opts.fault == "kill":
            owners = await notification_owners(self.settings)
            victim = max(
                range(len(self.workers.workers)),
                key=lambda i: len(owners.get(self.workers.workers[i].settings.web_port, set())),
            )
            moved = owners.get(self.workers.workers[victim].settings.web_port, set())
            self.sample_cpu()
            o.fault_at = time.time()
            self.workers.workers[victim].kill()
            o.moved_partitions = len(moved)
            o.notes.append(f"worker {victim} SIGKILLed; it held partitions {sorted(moved)}")
            f.mark, f.first_after = o.fault_at, {}
            await self.wait(
                "a moved partition's first record",
                lambda: bool(moved & f.first_after.keys()),
                self.opts.scale_session_timeout + 180,
            )
            o.resumed_at = min(f.first_after[p] for p in moved & f.first_after.keys())
        elif self.opts.fault == "add":
            o.fault_at = time.time()
            worker = self.workers.add()
            await asyncio.to_thread(worker.start, timeout=180.0)
            await asyncio.to_thread(self.workers.wait_balanced, timeout=120.0)
            o.stable_at = time.time()
            owners = await notification_owners(self.settings)
            taken = owners.get(worker.settings.web_port, set())
            o.moved_partitions = len(taken)
            o.notes.append(f"worker {len(self.workers.workers) - 1} added; it took {sorted(taken)}")
            f.mark, f.first_after = o.stable_at, {}
            if taken:
                await self.wait(
                    "a taken partition's first record",
                    lambda: bool(taken & f.first_after.keys()),
                    120,
                )
                o.resumed_at = min(f.first_after[p] for p in taken & f.first_after.keys())
        elif self.opts.fault in STORMS:
            await self.storm(self.opts.fault)
        else:
            o.fault_at = time.time()

    async def storm(self, kind: str) -> None:
        """A provider fault (module docstring) from now until it is lifted."""
        o, google, graph = self.outcome, self.fleet.google, self.fleet.graph
        lasts = self.opts.down_seconds if kind == "down" else self.opts.storm_seconds
        revoked: list[str] = []
        o.fault_at = time.time()
        if kind == "429":
            google.faults.add("rate_limit_429", probability=0.5, retry_after=2)
            graph.faults.add("throttle_429", probability=0.5, retry_after=2)
        elif kind == "410":
            google.faults.add("full_sync_required_410", probability=1 / 3, method="GET")
            graph.faults.add("sync_state_not_found_410", probability=1 / 3, method="GET")
        elif kind == "drop":
            for emulator in (google, graph):
                emulator.faults.drop_push_probability = 0.2
        elif kind == "down":
            google.faults.add("unavailable_503")
            graph.faults.add("unavailable_503")
        elif kind == "diskfull":
            await self.fill_disk(lasts)
            return
        elif kind in BROKER_FAULTS:
            await self.broker_fault(kind, lasts)
            return
        else:
            rids = [rid for rid, cal in self.fleet.calendars.items() if cal.provider == "google"]
            revoked = rids[: self.opts.revoke]
            for rid in revoked:
                google.revoke_refresh_token(self.fleet.tokens[rid])
        o.notes.append(f"{kind} for {lasts:g} s" + (f": {len(revoked)} grants" if revoked else ""))
        end = time.monotonic() + lasts
        await self.wait(f"the end of the {kind} storm", lambda: time.monotonic() > end, math.inf)
        for emulator in (google, graph):
            emulator.faults.clear()
        if revoked:
            for rid in revoked:
                self.fleet.tokens[rid] = google.issue_refresh_token(
                    CLIENT_ID, [self.fleet.calendar_id(rid)]
                )
            again = set(revoked)
            rows = [r for r in self.fleet.registrations() if r["resource_id"] in again]
            await register_bulk(self.gateway, self.env.admin_token, rows)
        o.lifted_at = time.time()

    async def broker_fault(self, kind: str, lasts: float) -> None:
        """``broker-restart``: stop the broker (a controlled shutdown) and start it again
        on the same port and data at once; ``broker-down``: SIGSTOP it for ``lasts`` s
        (unreachable: connections stay open, nothing answers), then SIGCONT."""
        o, broker = self.outcome, self.env.broker
        if broker is None:
            raise RuntimeError(f"--fault {kind} needs the broker this run started")
        if kind == "broker-restart":
            await asyncio.to_thread(broker.halt)
            o.notes.append("broker stopped (controlled shutdown)")
            await asyncio.to_thread(broker.start)
            o.notes.append(f"broker started again after {time.time() - o.fault_at:.1f} s")
        else:
            broker.freeze()
            o.notes.append(f"broker frozen (SIGSTOP) for {lasts:g} s")
            end = time.monotonic() + lasts
            try:
                await self.wait(
                    "the end of the broker outage", lambda: time.monotonic() > end, math.inf
                )
            finally:
                broker.thaw()
        o.lifted_at = time.time()

    async def fill_disk(self, lasts: float) -> None:
        """Fill worker 0's data dir; wait (at most ``lasts`` s) for it to stop by itself;
        free the space and start it again."""
        o, worker = self.outcome, self.workers.workers[0]
        filler = worker.settings.data_dir / "filler"
        self.may_exit.add(0)
        await asyncio.to_thread(fill, filler)
        end = time.monotonic() + lasts
        await self.wait(
            "worker 0 to stop on its full disk",
            lambda: worker.returncode is not None or time.monotonic() > end,
            math.inf,
        )
        code = worker.returncode
        with contextlib.suppress(OSError):
            lines = worker.log_path.read_text(errors="replace").splitlines()
            errors = [line[:300] for line in lines if "[ERROR]" in line or "[CRITICAL]" in line]
            o.notes += [f"worker 0 on a full disk: {line}" for line in errors[:3]]
        if code is None:
            o.notes.append(f"worker 0 still running {lasts:g} s after its disk filled")
            worker.kill()
        else:
            o.notes.append(
                f"worker 0 stopped by itself, exit code {code}, after "
                f"{time.time() - o.fault_at:.1f} s"
            )
        filler.unlink()
        await asyncio.to_thread(self.workers.start, 0, timeout=180.0)
        self.may_exit.discard(0)
        await asyncio.to_thread(self.workers.wait_balanced, timeout=120.0)
        o.lifted_at = time.time()

    async def go(self) -> None:
        opts, o, f, fleet = self.opts, self.outcome, self.follower, self.fleet
        await register_bulk(self.gateway, self.env.admin_token, fleet.registrations())
        o.registered_at = time.time()
        self.log("registered")
        editing = asyncio.create_task(self.edit_loop())
        holds: asyncio.Task[None] | None = None
        try:
            sync_timeout = opts.sync_timeout
            await self.wait(
                f"{opts.fault_at:.0%} of the initial events",
                lambda: f.initial_seen >= opts.fault_at * f.initial_total,
                sync_timeout,
            )
            if opts.holds:
                rids = [c.rid for c in fleet.calendars.values() if c.provider == "google"]
                holds = asyncio.create_task(
                    hold_pairs(self.workers, self.env.admin_token, rids, opts.holds, o.holds)
                )
            await self.fault()
            self.log(f"fault {opts.fault} done")
            await self.wait(
                "the initial sync", lambda: len(f.synced_at) == len(fleet.calendars), sync_timeout
            )
            o.synced_at = max(f.synced_at.values())
            self.log("initial sync done")
            before_fault = [e for e in self.edits if e.at < o.cut]
            await self.wait(
                "the edits made before the fault (or its lift)",
                lambda: not any(e.at < o.cut for es in f.pending.values() for e in es),
                opts.settle_timeout,
            )
            delivered_at = {id(e): at for e, at in f.delivered}  # the superseded do not count
            o.converged_at = max(
                [o.synced_at, *(delivered_at[id(e)] for e in before_fault if id(e) in delivered_at)]
            )
            self.log("converged")
            end = time.monotonic() + opts.edit_seconds
            await self.wait("the edits after the sync", lambda: time.monotonic() > end, math.inf)
        finally:
            self.editing = False
            await editing
        if holds is not None:
            await holds
        self.log("edits stopped")
        o.edits = len(self.edits)
        try:
            await self.wait("every edit delivered", lambda: f.undelivered == 0, opts.settle_timeout)
        except RuntimeError as exc:
            o.notes.append(f"not every edit was delivered: {str(exc).splitlines()[0]}")
        await f.settle(quiet=3.0)  # and the records after the last edit
        self.sample_cpu()
        mine = os.times()
        o.own_cpu_s = (mine.user + mine.system) - (self.own_cpu.user + self.own_cpu.system)
        o.undelivered = f.undelivered
        o.superseded = f.superseded
        for edits in f.pending.values():
            for e in edits[:1]:
                if len(o.notes) < 25:
                    o.notes.append(self.undelivered(e))
        o.push_failures = fleet.push_failures()
        o.records, o.undecodable = f.records, f.undecodable
        for edit, at in f.delivered:
            provider = fleet.calendars[edit.rid].provider
            took_ms = (at - edit.at) * 1000
            o.latencies.setdefault(provider, []).append(took_ms)
            # an edit to a calendar not synced yet waits for its initial sync: both modes
            # are in the figure above, this one is a push to a calendar already in step
            if f.synced_at.get(edit.rid, math.inf) <= edit.at:
                o.synced_latencies.setdefault(provider, []).append(took_ms)
        await self.truth()

    def undelivered(self, e: Edit) -> str:
        """Where and when an edit that never showed up was made, and its pushes."""
        o, provider = self.outcome, self.fleet.calendars[e.rid].provider
        partition = self.follower.partition_of.get(e.rid)
        pushes = ""
        if provider == "microsoft":
            answers = [
                f"{d.event} {d.status or d.error} at {d.time - o.registered_at:+.1f} s"
                for d in self.fleet.graph.delivery_log
                if d.resource_id == e.native_id
            ]
            pushes = f"; its change notifications: {answers or 'none'}"
        return (
            f"never delivered: {provider} {e.rid} (partition {partition}) {e.native_id} → "
            f"{e.start or 'deleted'}, edited at {e.at - o.registered_at:+.1f} s after "
            f"registration (fault at {o.fault_at - o.registered_at:+.1f} s, that calendar "
            f"synced at {self.follower.synced_at.get(e.rid, math.nan) - o.registered_at:+.1f} s)"
            f"{pushes}"
        )

    async def truth(self) -> None:
        o, fleet = self.outcome, self.fleet
        report = Report(window=self.follower.window, limit=10)
        for rid, cal in fleet.calendars.items():
            try:
                truth = await fleet.truth(rid, report.window)
            except CalsyncError as exc:
                report.errors[rid] = f"{type(exc).__name__}: {exc}"
                continue
            before = dict(report.counts)
            compare(report, rid, truth, self.follower.view.get(rid, {}))
            for kind, n in report.counts.items():
                if n > before[kind]:
                    o.differing.setdefault(cal.provider, Counter())[kind] += n - before[kind]
        o.report = report
        self.log(f"truth: {report.counts}, {len(report.errors)} errors")


# --------------------------------------------------------------------------- the report


def latency_row(name: str, values: Sequence[float]) -> str:
    if not values:
        return f"| {name} | 0 | n/a | n/a | n/a |"
    s = summarize(values)
    return f"| {name} | {len(values):,} | {ms(s['p50'])} | {ms(s['p99'])} | {ms(s['max'])} |"


def seconds(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f} s"


def after_lift(o: Outcome) -> str:
    """Lift → converged; the survivors may have converged before the lift (diskfull)."""
    took = o.converged_at - o.lifted_at
    return "before the lift" if took < 0 else seconds(took)


def report(o: Outcome, opts: argparse.Namespace, partitions: int) -> list[str]:
    r = o.report
    sync_s = o.synced_at - o.registered_at
    lines = [
        f"{o.workers} `calsync worker` processes (each its own data dir) on the broker, the "
        "standalone gateway in the benchmark process as the public webhook URL, the Google "
        "and Microsoft emulators in the benchmark process and one Radicale server "
        f"({partitions} partitions per topic, standby replicas {opts.standby_replicas}, "
        f"session timeout {opts.scale_session_timeout:g} s, CalDAV polled every "
        f"{opts.caldav_poll:g}..{opts.caldav_poll * 4:g} s). Calendars registered in bulk "
        "through the gateway; edits ("
        f"{opts.edits_per_s:g}/s: 60 % moves, 20 % inserts, 20 % deletes) from registration "
        f"until {opts.edit_seconds:g} s after the initial sync; the fault once "
        f"{opts.fault_at:.0%} of the initial events were on `calsync.events`. Microsoft "
        f"refresh tokens once rotated are {opts.old_refresh_tokens} (Entra: valid). Times "
        "are records' CreateTimes.",
        "",
        "| provider | calendars | initial events |",
        "| --- | ---: | ---: |",
    ]
    for p in PROVIDERS:
        lines.append(f"| {p} | {o.calendars.get(p, 0):,} | {o.events.get(p, 0):,} |")
    lines += [
        f"| all | {sum(o.calendars.values()):,} | {o.initial_events:,} |",
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| fault | {o.fault} |",
        f"| populating the providers | {o.populate_s:.1f} s |",
        f"| registration → every calendar's initial events on the topic | {seconds(sync_s)} |",
        f"| initial sync rate | {o.initial_events / sync_s:,.0f} events/s |"
        if sync_s > 0
        else "| initial sync rate | n/a |",
        f"| fault, after registration | {seconds(o.fault_at - o.registered_at)} "
        f"({o.fault_progress:.0%} of the initial events on the topic) |",
    ]
    if o.fault == "kill":
        lines.append(
            f"| kill → first record from a moved partition ({o.moved_partitions}) "
            f"| {seconds(o.since_fault(o.resumed_at))} |"
        )
    if o.fault == "add":
        lines += [
            f"| add → group stable with the new worker | {seconds(o.since_fault(o.stable_at))} |",
            f"| add → first record from a taken partition ({o.moved_partitions}) "
            f"| {seconds(o.since_fault(o.resumed_at))} |",
        ]
    if o.fault in STORMS:
        lines += [
            f"| fault lasted | {seconds(o.since_fault(o.lifted_at))} |",
            f"| lift → converged (initial sync done, edits before the lift delivered) "
            f"| {after_lift(o)} |",
        ]
    lines += [
        f"| fault → converged (initial sync done, edits before the fault delivered) "
        f"| {seconds(o.since_fault(o.converged_at))} |",
        f"| edits made / never delivered / superseded (deleted before any record) "
        f"| {o.edits:,} / {o.undelivered:,} / {o.superseded:,} |",
        f"| records on `calsync.events` (undecodable) | {o.records:,} ({o.undecodable}) |",
        "| pushes not answered 2xx (Google / Graph) "
        f"| {o.push_failures.get('google', 0)} / {o.push_failures.get('microsoft', 0)} |",
    ]
    if opts.holds:
        h = o.holds
        lines.append(
            f"| overlapping hold pairs at the fault: accepted / rejected / undecided holds "
            f"| {h.accepted} / {h.rejected} / {h.undecided} of {2 * h.pairs} |"
        )
        lines.append(f"| pairs with both holds accepted (must be 0) | **{h.overlaps}** |")
    if r is not None:
        lines.append(
            f"| differences: missing / extra / stale (must be 0) | **{r.counts['missing']} / "
            f"{r.counts['extra']} / {r.counts['stale']}** |"
        )
        if r.errors:
            lines.append(f"| calendars that could not be checked | {len(r.errors)} |")
    lines += [
        "",
        "Edit → delivered (ms, CreateTime of the first record carrying the change; CalDAV "
        "waits for the next poll):",
        "",
        "| provider | edits | p50 | p99 | max |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(latency_row(p, o.latencies.get(p, [])) for p in PROVIDERS),
        "",
        "Of these, the edits to calendars whose initial sync was already on the topic:",
        "",
        "| provider | edits | p50 | p99 | max |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(latency_row(p, o.synced_latencies.get(p, [])) for p in PROVIDERS),
        "",
        "CPU time: "
        + ", ".join(f"{name} {cpu:.0f} s" for name, cpu in sorted(o.cpu.items()))
        + f"; the benchmark process (emulators, gateway, reader) {o.own_cpu_s:.0f} s.",
    ]
    if o.peak_rss:
        lines += [
            "",
            "Memory, highest resident seen (sampled every 10 s): "
            + ", ".join(f"{name} {rss / 2**30:.2f} GiB" for name, rss in sorted(o.peak_rss.items()))
            + f"; least available on the machine {o.least_available / 2**30:.1f} GiB.",
        ]
    if o.notes:
        lines += ["", *(f"- {n}" for n in o.notes)]
    if r is not None and (r.differences or r.errors):
        lines += ["", "Differences per provider:", ""]
        lines += [f"- {p}: {dict(c)}" for p, c in sorted(o.differing.items())]
        lines += ["", "```", r.to_text(), "```"]
    return lines


def summary(o: Outcome) -> list[str]:
    r = o.report
    sync_s = o.synced_at - o.registered_at
    bad = (r.differences + len(r.errors) if r else 1) + o.holds.overlaps
    return [
        f"| scale, {o.workers} workers, {sum(o.calendars.values()):,} resources, fault {o.fault} "
        f"| initial sync {seconds(sync_s)} ({o.initial_events / sync_s:,.0f} events/s), "
        + (
            f"converged {after_lift(o)} after the lift, "
            if o.fault in STORMS
            else f"converged {seconds(o.since_fault(o.converged_at))} after the fault, "
        )
        + f"{r.differences if r else 'n/a'} differences, {o.holds.overlaps} overlapping holds "
        f"| 0 differences, 0 overlaps | {verdict(bad == 0)} |"
    ]


async def run(ctx: Context) -> Section:
    outcome = await scale(ctx)
    return Section(report(outcome, ctx.opts, ctx.env.partitions), summary(outcome))


def setting_default(name: str) -> float:
    """The default of a numeric :class:`Settings` field (what a worker runs with)."""
    return float(Settings.__dataclass_fields__[name].default)  # type: ignore[arg-type]


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--workers", type=int, default=3, help="worker processes (%(default)s)")
    group.add_argument("--resources", type=int, default=10_000, help="calendars (%(default)s)")
    group.add_argument("--fault", choices=FAULTS, default="kill", help="(%(default)s)")
    group.add_argument(
        "--edits-per-s", type=float, default=20.0, help="provider edits per s (%(default)s)"
    )
    group.add_argument(
        "--caldav-share", type=float, default=0.1, help="share on Radicale (%(default)s)"
    )
    group.add_argument(
        "--caldav-max-events", type=int, default=200, help="CalDAV calendar size cap (%(default)s)"
    )
    group.add_argument("--min-events", type=int, default=50, help="(%(default)s)")
    group.add_argument("--max-events", type=int, default=500, help="(%(default)s)")
    group.add_argument(
        "--big-every", type=int, default=1000, help="one big calendar in (%(default)s)"
    )
    group.add_argument("--big-events", type=int, default=20_000, help="its size (%(default)s)")
    group.add_argument(
        "--fault-at", type=float, default=0.5, help="share of initial events (%(default)s)"
    )
    group.add_argument(
        "--edit-seconds", type=float, default=30.0, help="edits after the sync, s (%(default)s)"
    )
    group.add_argument(
        "--holds", type=int, default=20, help="overlapping hold pairs at the fault (%(default)s)"
    )
    group.add_argument(
        "--caldav-poll", type=float, default=5.0, help="CalDAV poll interval, s (%(default)s)"
    )
    group.add_argument(
        "--scale-session-timeout",
        type=float,
        default=setting_default("kafka_session_timeout"),
        help="CALSYNC_KAFKA_SESSION_TIMEOUT, s (%(default)s)",
    )
    group.add_argument(
        "--standby-replicas", type=int, default=1, help="CALSYNC_STANDBY_REPLICAS (%(default)s)"
    )
    group.add_argument(
        "--sync-timeout", type=float, default=3600.0, help="initial sync limit, s (%(default)s)"
    )
    group.add_argument(
        "--storm-seconds", type=float, default=60.0, help="429/410/drop/revoke, s (%(default)s)"
    )
    group.add_argument(
        "--down-seconds", type=float, default=300.0, help="provider down, s (%(default)s)"
    )
    group.add_argument("--revoke", type=int, default=5, help="grants revoked (%(default)s)")
    group.add_argument(
        "--disk-mib", type=int, default=256, help="diskfull: worker 0's tmpfs (%(default)s)"
    )
    group.add_argument(
        "--reconcile-period",
        type=float,
        default=setting_default("reconcile_period"),
        help="CALSYNC_RECONCILE_PERIOD, s (%(default)s)",
    )
    group.add_argument(
        "--catchup-interval",
        type=float,
        default=setting_default("catchup_interval"),
        help="CALSYNC_CATCHUP_INTERVAL, s (%(default)s)",
    )
    group.add_argument(
        "--settle-timeout", type=float, default=120.0, help="delivery limit, s (%(default)s)"
    )
    group.add_argument(
        "--old-refresh-tokens",
        choices=("valid", "revoked"),
        default="valid",
        help="a rotated Microsoft refresh token stays valid, as on Entra, or is revoked "
        "(the emulator's strict default) (%(default)s)",
    )


def check(opts: argparse.Namespace) -> str | None:
    if opts.workers < 1 or opts.resources < 1:
        return "--workers and --resources ≥ 1"
    if opts.fault == "kill" and opts.workers < 2:
        return "--fault kill needs --workers ≥ 2"
    if not 0 <= opts.caldav_share <= 1 or not 0 < opts.fault_at < 1:
        return "--caldav-share within 0..1, --fault-at within (0, 1)"
    if not 1 <= opts.min_events <= opts.max_events:
        return "1 ≤ --min-events ≤ --max-events"
    return None


BENCHMARK = Benchmark(
    "scale", "Scale: N workers, three providers, edits and a fault", run, add_arguments, check
)
