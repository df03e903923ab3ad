"""The availability API of a worker: answered by whichever worker owns the data.

Routes (all behind the admin token, like every route but the webhooks and ``/healthz``):

* ``GET /api/availability/{resource}?start=&end=``: busy intervals, holds, conflicts
  between them, and the ``as_of`` block (:mod:`calsync.availability.freshness`);
* ``GET /api/availability/{resource}/explain?at=``: why that instant is busy or free;
* ``POST /api/availability/query``: free slots across resources
  (:func:`calsync.availability.slots.find_slots`), each with the freshness behind it;
* ``POST /api/availability/_snapshot``: what the query needs of the resources this
  worker owns (worker to worker).

**Routing** (:mod:`calsync.web.routing`). A resource's index lives in the tables of the
worker that owns its partition. A request about one resource is forwarded to that
worker, with the caller's token, and its answer is passed back; a query across
resources asks each owner for a snapshot of its resources and finds the slots here.
We route rather than replicate: a replicated view (a global table, or standbys read
as actives) would answer from a copy that lags the owner, and a hold decided against
a lagging copy could double-book. The holds API is :mod:`calsync.web.holds`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from aiohttp import web

from calsync.availability.errors import InvalidAvailabilityRequest
from calsync.availability.freshness import Freshness, as_of
from calsync.availability.holds import HoldBook, HoldState
from calsync.availability.index import BusyIndex, timeline_of
from calsync.availability.intervals import DEFAULT_BLOCKING, Flag, Timeline
from calsync.availability.slots import (
    ResourceAvailability,
    SlotRequest,
    WorkingHours,
    find_slots,
)
from calsync.errors import CodecError
from calsync.gateway.http import Gateway, RequestRejected
from calsync.model import StatusIntent, system_event_id
from calsync.providers import registry
from calsync.settings import Settings
from calsync.tables.records import Channel, Resource, SyncState
from calsync.web import wire
from calsync.web.routing import Router

__all__ = ["AvailabilityApi", "IndexTables"]

log = logging.getLogger(__name__)

V_co = TypeVar("V_co", covariant=True)


class Reads(Protocol[V_co]):
    """What the API needs of a table: a read (:class:`~calsync.tables.reads.DecodedReads`
    over a Faust table, or a dict in tests)."""

    def get(self, key: str, /) -> V_co | None: ...


@dataclass(frozen=True, slots=True)
class IndexTables:
    """The tables of the resources this worker owns."""

    resources: Reads[Resource]
    sync_state: Reads[SyncState]
    channels: Reads[Channel]
    busy: Reads[bytes]
    holds: Reads[bytes]


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What a free-slot query needs of one resource in ``[start, end)``: its busy
    timeline, its holds there, and its ``as_of`` block. Built from the owner's tables,
    or from the owner's ``_snapshot`` answer (:meth:`to_json` / :meth:`from_json`).

    ``timeline`` may reach past the window (the owner's stored one is used as it is,
    without a copy: the slot finder bisects it); only its part inside the window is
    sent to another worker or merged with the holds."""

    timeline: Timeline
    holds: list[tuple[int, int]]
    as_of: dict[str, Any]
    start: int
    end: int

    def timeline_with_holds(self) -> Timeline:
        if not self.holds:
            return self.timeline
        hold = int(Flag.HOLD)
        return Timeline.from_segments(
            [
                *self.timeline.segments(self.start, self.end),
                *((start, end, hold) for start, end in self.holds),
            ]
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "segments": [list(segment) for segment in self.timeline.segments(self.start, self.end)],
            "holds": [list(hold) for hold in self.holds],
            "as_of": self.as_of,
        }

    @classmethod
    def from_json(cls, data: Any, start: int, end: int) -> _Snapshot | str:
        """The snapshot of ``[start, end)`` in another worker's answer, or the reason it
        has none."""
        if not isinstance(data, dict):
            return "no answer"
        if "error" in data:
            return str(data["error"])
        try:
            segments = [(int(s), int(e), int(f)) for s, e, f in data["segments"]]
            holds = [(int(s), int(e)) for s, e in data["holds"]]
            as_of = data["as_of"]
            if not isinstance(as_of, dict):
                raise TypeError("as_of")
            return cls(Timeline.from_segments(segments), holds, as_of, start, end)
        except (KeyError, TypeError, ValueError):
            log.warning("a malformed snapshot answer from another worker")
            return "no answer"


class AvailabilityApi:
    """The handlers (module docstring) over this worker's tables and a publisher."""

    def __init__(
        self,
        settings: Settings,
        gateway: Gateway,
        tables: IndexTables,
        router: Router,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._gateway = gateway
        self._tables = tables
        self._router = router
        self._clock = clock

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/availability/{resource_id}", self.availability),
            web.get("/api/availability/{resource_id}/explain", self.explain),
            web.post("/api/availability/query", self.query),
            web.post("/api/availability/_snapshot", self.snapshot),
        ]

    # -- one resource ----------------------------------------------------------------

    def _freshness(self, rid: str, resource: Resource) -> Freshness:
        tables, settings = self._tables, self._settings
        return as_of(
            resource,
            tables.sync_state.get(rid),
            tables.channels.get(rid),
            push=registry.spec(resource.provider).push,
            now=self._clock(),
            poll_limit=2 * settings.poll_max_interval + 60.0,
        )

    def _resource(self, rid: str) -> Resource:
        resource = self._tables.resources.get(rid)
        if resource is None:
            raise RequestRejected(404, f"unknown resource {rid!r}")
        return resource

    def _book(self, rid: str) -> HoldBook:
        try:
            return HoldBook.decode(rid, self._tables.holds.get(rid))
        except CodecError as exc:
            log.error("holds of %s cannot be read: %s", rid, exc)
            raise RequestRejected(500, "the holds of this resource cannot be read") from None

    def _timeline(self, rid: str) -> Timeline:
        try:
            return timeline_of(self._tables.busy.get(rid))
        except CodecError as exc:
            log.error("availability index of %s cannot be read: %s", rid, exc)
            raise RequestRejected(500, "the index of this resource cannot be read") from None

    def _window_query(self, request: web.Request) -> tuple[int, int]:
        now = datetime.fromtimestamp(self._clock(), UTC)
        start = wire.instant(request.query["start"], "start") if "start" in request.query else now
        end = (
            wire.instant(request.query["end"], "end")
            if "end" in request.query
            else start + timedelta(days=7)
        )
        return wire.window(start, end)

    def local_view(self, rid: str, start: int, end: int) -> dict[str, Any]:
        """What this worker knows of ``rid`` in ``[start, end)`` (it must own it)."""
        resource = self._resource(rid)
        timeline = self._timeline(rid)
        book = self._book(rid)
        holds = [h for h in book.holds.values() if h.start < end and start < h.end]
        conflicts = []
        for hold in holds:
            if hold.state is HoldState.PENDING:
                continue
            for s, e in timeline.blocking(
                hold.start, hold.end, int(Flag.BUSY | Flag.OUT_OF_OFFICE)
            ):
                conflicts.append(
                    {"hold_id": hold.hold_id, "start": wire.iso(s), "end": wire.iso(e)}
                )
        return {
            "resource_id": rid,
            "provider": resource.provider,
            "start": wire.iso(start),
            "end": wire.iso(end),
            "busy": [
                {
                    "start": wire.iso(s),
                    "end": wire.iso(e),
                    "status": wire.flag_names(f & ~int(Flag.ALL_DAY)),
                    "all_day": bool(f & Flag.ALL_DAY),
                }
                for s, e, f in timeline.segments(start, end)
            ],
            "holds": [wire.hold_json(h) for h in sorted(holds, key=lambda h: (h.start, h.hold_id))],
            "conflicts": conflicts,
            "as_of": self._freshness(rid, resource).to_json(),
        }

    async def availability(self, request: web.Request) -> web.Response:
        try:
            rid = wire.resource_id(request.match_info["resource_id"])
            start, end = self._window_query(request)
            owner = self._router.owner(request, rid)
            if owner is not None:
                return await self._router.forward(request, owner)
            return wire.answer(self.local_view(rid, start, end))
        except RequestRejected as exc:
            return exc.response()

    async def explain(self, request: web.Request) -> web.Response:
        """Why ``at`` is busy or free on the resource: the occurrences and holds there."""
        try:
            rid = wire.resource_id(request.match_info["resource_id"])
            if "at" not in request.query:
                raise RequestRejected(400, "at (an ISO 8601 time) is required", field="at")
            at = int(wire.instant(request.query["at"], "at").timestamp())
            owner = self._router.owner(request, rid)
            if owner is not None:
                return await self._router.forward(request, owner)
            resource = self._resource(rid)
            try:
                index = BusyIndex.decode(self._tables.busy.get(rid))
            except CodecError:
                raise RequestRejected(500, "the index of this resource cannot be read") from None
            origin = registry.spec(resource.provider).origin
            occurrences = []
            for entry in index.covering(at):
                blocks = bool(entry.flags & DEFAULT_BLOCKING)
                occurrences.append(
                    {
                        "provider": resource.provider,
                        "system_event_id": system_event_id(origin, rid, entry.native_event_id),
                        "start": wire.iso(entry.start),
                        "end": wire.iso(entry.end),
                        "status": wire.flag_names(entry.flags & ~int(Flag.ALL_DAY)),
                        "all_day": bool(entry.flags & Flag.ALL_DAY),
                        "blocks_by_default": blocks,
                        "rule": _rule(entry.flags, resource),
                        "synced_at": wire.iso(entry.synced_at),
                    }
                )
            holds = [
                wire.hold_json(h) for h in self._book(rid).holds.values() if h.start <= at < h.end
            ]
            busy = any(o["blocks_by_default"] for o in occurrences) or bool(holds)
            return wire.answer(
                {
                    "resource_id": rid,
                    "at": wire.iso(at),
                    "verdict": "busy" if busy else "free",
                    "occurrences": occurrences,
                    "holds": holds,
                    "as_of": self._freshness(rid, resource).to_json(),
                }
            )
        except RequestRejected as exc:
            return exc.response()

    # -- many resources ------------------------------------------------------------------

    async def snapshot(self, request: web.Request) -> web.Response:
        """Worker to worker: the busy segments, holds and freshness of owned resources."""
        try:
            body = await self._gateway.json_body(request)
            if not isinstance(body, dict):
                raise RequestRejected(400, "the body must be a JSON object")
            rids = body.get("resources")
            if not isinstance(rids, list) or len(rids) > 100:
                raise RequestRejected(
                    400, "resources: a list of at most 100 ids", field="resources"
                )
            start, end = wire.window(
                wire.instant(body.get("start"), "start"), wire.instant(body.get("end"), "end")
            )
            out: dict[str, Any] = {}
            for value in rids:
                rid = wire.resource_id(value, "resources")
                snap = self._snapshot_one(rid, start, end) if self._router.owns(rid) else None
                if snap is None:
                    out[rid] = {"error": "not owned here"}
                elif isinstance(snap, str):
                    out[rid] = {"error": snap}
                else:
                    out[rid] = snap.to_json()
            return wire.answer(out)
        except RequestRejected as exc:
            return exc.response()

    def _snapshot_one(self, rid: str, start: int, end: int) -> _Snapshot | str:
        """What a query needs of an owned resource in ``[start, end)``, or why not."""
        resource = self._tables.resources.get(rid)
        if resource is None:
            return "unknown resource"
        holds = (
            [
                (h.start, h.end)
                for h in self._book(rid).holds.values()
                if h.start < end and start < h.end
            ]
            if self._tables.holds.get(rid) is not None  # most resources have no holds
            else []
        )
        return _Snapshot(
            self._timeline(rid), holds, self._freshness(rid, resource).to_json(), start, end
        )

    async def _gather(
        self, request: web.Request, rids: list[str], start: int, end: int
    ) -> dict[str, _Snapshot | str]:
        """Each resource's snapshot (from this worker's tables, or its owner's
        ``_snapshot`` answer), or why there is none."""
        by_owner: dict[str | None, list[str]] = {}
        for rid in rids:
            by_owner.setdefault(self._router.owner(request, rid), []).append(rid)
        out: dict[str, _Snapshot | str] = {}
        for rid in by_owner.pop(None, []):
            out[rid] = self._snapshot_one(rid, start, end)
        payload = {"start": wire.iso(start), "end": wire.iso(end)}

        async def ask(owner: str, group: list[str]) -> dict[str, Any]:
            path = "/api/availability/_snapshot"
            answer = await self._router.post(request, owner, path, {**payload, "resources": group})
            return answer if isinstance(answer, dict) else {}

        owners = [owner for owner in by_owner if owner is not None]
        answers = await asyncio.gather(*(ask(o, by_owner[o]) for o in owners))
        for owner, answer in zip(owners, answers, strict=True):
            for rid in by_owner[owner]:
                out[rid] = _Snapshot.from_json(answer.get(rid), start, end)
        return out

    async def query(self, request: web.Request) -> web.Response:
        """Free slots across resources (``POST /api/availability/query``)."""
        try:
            body = await self._gateway.json_body(request)
            if not isinstance(body, dict):
                raise RequestRejected(400, "the body must be a JSON object")
            raw = body.get("resources")
            if not isinstance(raw, list) or not 1 <= len(raw) <= 100:
                raise RequestRejected(400, "resources: a list of 1 to 100", field="resources")
            hours: dict[str, WorkingHours | None] = {}
            for item in raw:
                if isinstance(item, dict):
                    rid = wire.resource_id(item.get("id"), "resources[].id")
                    hours[rid] = wire.working_hours(item.get("working_hours"))
                else:
                    hours[wire.resource_id(item, "resources")] = None
            if len(hours) != len(raw):
                raise RequestRejected(400, "a resource is listed twice", field="resources")
            window_start = wire.instant(body.get("start"), "start")
            window_end = wire.instant(body.get("end"), "end")
            start, end = wire.window(window_start, window_end)
            minutes = {
                name: wire.number(body, name, default, low=low, high=high)
                for name, default, low, high in (
                    ("duration_minutes", 30, 1, 24 * 60),
                    ("granularity_minutes", 15, 1, 24 * 60),
                    ("buffer_before_minutes", 0, 0, 24 * 60),
                    ("buffer_after_minutes", 0, 0, 24 * 60),
                    ("min_notice_minutes", 0, 0, 62 * 24 * 60),
                )
            }
            required = body.get("required")
            if required is not None and (
                isinstance(required, bool) or not isinstance(required, int)
            ):
                raise RequestRejected(400, "required must be a whole number", field="required")
            days_ahead = body.get("max_days_ahead")
            if days_ahead is not None and (
                isinstance(days_ahead, bool) or not isinstance(days_ahead, int) or days_ahead < 0
            ):
                raise RequestRejected(
                    400, "max_days_ahead must be a whole number", field="max_days_ahead"
                )
            max_slots = body.get("max_slots", 100)
            if isinstance(max_slots, bool) or not isinstance(max_slots, int):
                raise RequestRejected(400, "max_slots must be a whole number", field="max_slots")
            mask = wire.blocking_mask(body.get("blocking"))
            zone = wire.zone(body.get("zone", "UTC"), "zone")
            slot_request = SlotRequest(
                start=window_start,
                end=window_end,
                duration=timedelta(minutes=minutes["duration_minutes"]),
                granularity=timedelta(minutes=minutes["granularity_minutes"]),
                buffer_before=timedelta(minutes=minutes["buffer_before_minutes"]),
                buffer_after=timedelta(minutes=minutes["buffer_after_minutes"]),
                min_notice=timedelta(minutes=minutes["min_notice_minutes"]),
                max_days_ahead=days_ahead,
                zone=zone,
                blocking=mask,
                required=required,
                max_slots=max_slots,
            )
            before = int(minutes["buffer_before_minutes"] * 60)
            after = int(minutes["buffer_after_minutes"] * 60)
            rids = list(hours)
            data = await self._gather(request, rids, start - after, end + before)
            snapshots: dict[str, _Snapshot] = {}
            missing: dict[str, str] = {}
            for rid, snap in data.items():
                if isinstance(snap, str):
                    missing[rid] = snap
                else:
                    snapshots[rid] = snap
            unknown = [rid for rid, why in missing.items() if why == "unknown resource"]
            if unknown:
                raise RequestRejected(404, f"unknown resources: {', '.join(unknown)[:300]}")
            if missing:
                raise RequestRejected(503, "the partitions are being reassigned; retry")
            resources = [
                ResourceAvailability(rid, snapshots[rid].timeline_with_holds(), hours[rid])
                for rid in rids
            ]
            now = datetime.fromtimestamp(self._clock(), UTC)
            try:
                found = find_slots(resources, slot_request, now=now)
            except InvalidAvailabilityRequest as exc:
                raise RequestRejected(400, str(exc)) from None
            as_ofs = {rid: snapshots[rid].as_of for rid in rids}
            slots = []
            for slot in found.slots:
                used = rids if required is None else list(slot.available)
                synced = [as_ofs[r]["synced_at"] for r in used]
                oldest = None if None in synced or not synced else min(synced)
                slots.append(
                    {
                        "start": wire.iso(slot.start.timestamp()),
                        "end": wire.iso(slot.end.timestamp()),
                        "available": list(slot.available),
                        "as_of": wire.iso(oldest) if oldest is not None else None,
                        "fresh": all(as_ofs[r]["fresh"] for r in used),
                    }
                )
            return wire.answer({"slots": slots, "truncated": found.truncated, "resources": as_ofs})
        except RequestRejected as exc:
            return exc.response()

    # -- holds ---------------------------------------------------------------------------


_RULES = {
    StatusIntent.BUSY: "an event that blocks the slot (opaque, accepted or organized)",
    StatusIntent.TENTATIVE: "a tentative event: blocks only where the caller asks for tentative",
    StatusIntent.OUT_OF_OFFICE: "out of office: blocks the slot",
    StatusIntent.FREE: "marked free (transparent, or declined by the owner): does not block",
    StatusIntent.CANCELLED: "cancelled: does not block",
}
_INTENT_OF_FLAG = {
    Flag.BUSY: StatusIntent.BUSY,
    Flag.TENTATIVE: StatusIntent.TENTATIVE,
    Flag.OUT_OF_OFFICE: StatusIntent.OUT_OF_OFFICE,
    Flag.FREE: StatusIntent.FREE,
    Flag.CANCELLED: StatusIntent.CANCELLED,
}


def _rule(flags: int, resource: Resource) -> str:
    """The busy-policy rule behind an occurrence's state, in words (no event content)."""
    intent = next((i for f, i in _INTENT_OF_FLAG.items() if flags & f), StatusIntent.BUSY)
    words = _RULES[intent]
    if flags & Flag.ALL_DAY:
        words += "; an all-day event"
    policy = resource.busy_policy or {}
    if policy:
        switches = ", ".join(f"{k}={v}" for k, v in sorted(policy.items()))
        words += f" (busy policy: {switches})"
    return words
