"""The availability and holds API of a worker: answered by whichever worker owns the data.

Routes (all behind the admin token, like every route but the webhooks and ``/healthz``):

* ``GET /api/availability/{resource}?start=&end=``: busy intervals, holds, conflicts
  between them, and the ``as_of`` block (:mod:`calsync.availability.freshness`);
* ``GET /api/availability/{resource}/explain?at=``: why that instant is busy or free;
* ``POST /api/availability/query``: free slots across resources
  (:func:`calsync.availability.slots.find_slots`), each with the freshness behind it;
* ``POST /api/holds``, ``GET /api/holds/{id}``, ``DELETE /api/holds/{id}``,
  ``POST /api/holds/{id}/confirm`` (:mod:`calsync.availability.holds`);
* ``POST /api/availability/_snapshot``: what the query needs of the resources this
  worker owns (worker to worker).

**Routing.** A resource's index lives in the tables of the worker that owns its
partition. A request about one resource is *forwarded* to that worker (Faust's
table routing: :meth:`faust.app.router.Router.key_store` names the owner's URL),
with the caller's token, and its answer is passed back; a query across resources
asks each owner for a snapshot of its resources. We route rather than replicate:
a replicated view (a global table, or standbys read as actives) would answer from
a copy that lags the owner, and a hold decided against a lagging copy could
double-book. A request that reaches a worker that does not own the resource (the
assignment changed meanwhile) is answered ``503`` with ``Retry-After``, never
forwarded twice.

Holds are never routed: any worker writes the hold's requests to
``calsync.hold-requests`` (keyed by resource, so each is decided by its owner in
partition order) and waits for the decision on ``calsync.holds``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as wall_time
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
from aiohttp import web

from calsync.availability.errors import InvalidAvailabilityRequest
from calsync.availability.freshness import Freshness, as_of
from calsync.availability.holds import (
    DECISIONS,
    Hold,
    HoldBook,
    HoldEvent,
    HoldEventKind,
    HoldState,
    fingerprint,
    home_of,
    new_hold_id,
)
from calsync.availability.index import BusyIndex, timeline_of
from calsync.availability.intervals import DEFAULT_BLOCKING, Flag, Timeline
from calsync.availability.slots import (
    ResourceAvailability,
    SlotRequest,
    Span,
    WorkingHours,
    find_slots,
)
from calsync.errors import CodecError, MalformedProviderData
from calsync.gateway.holds import HoldBoard
from calsync.gateway.http import RESOURCE_ID, Gateway, RequestRejected, _wait_seconds
from calsync.model import StatusIntent, system_event_id
from calsync.normalize.windows_zones import zone_for
from calsync.providers import registry
from calsync.settings import Settings
from calsync.streams.records import HoldRequest, HoldRequestKind
from calsync.tables.records import Channel, Resource, SyncState

__all__ = ["AvailabilityApi", "IndexTables", "Ownership"]

log = logging.getLogger(__name__)

#: Header on a forwarded request: its receiver answers, it never forwards again.
ROUTED = "X-Calsync-Routed"
#: The widest window of one availability request.
MAX_WINDOW = timedelta(days=62)
#: At most this many resources in one hold.
MAX_HOLD_RESOURCES = 20
MAX_TTL = 7 * 86_400.0
DEFAULT_TTL = 600.0
DEFAULT_WAIT = 10.0
_KEY = re.compile(r"[\x21-\x7e]{1,200}")
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FLAG_NAMES: Mapping[str, Flag] = {
    "busy": Flag.BUSY,
    "tentative": Flag.TENTATIVE,
    "out_of_office": Flag.OUT_OF_OFFICE,
    "free": Flag.FREE,
    "cancelled": Flag.CANCELLED,
    "hold": Flag.HOLD,
    "all_day": Flag.ALL_DAY,
}


class Ownership(Protocol):
    """Which worker owns a resource: ``None`` for this one, else the owner's base URL.

    Raises :class:`LookupError` while nobody is known to own it (a rebalance)."""

    def owner(self, resource_id: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class IndexTables:
    """The tables of the resources this worker owns (Faust tables, or dicts in tests)."""

    resources: Mapping[str, Resource]
    sync_state: Mapping[str, SyncState]
    channels: Mapping[str, Channel]
    busy: Mapping[str, bytes]
    holds: Mapping[str, bytes]


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _flag_names(flags: int) -> list[str]:
    return [name for name, bit in _FLAG_NAMES.items() if flags & bit]


def _instant(value: object, name: str) -> datetime:
    if not isinstance(value, str) or len(value) > 40:
        raise RequestRejected(400, f"{name} must be an ISO 8601 time with an offset", field=name)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise RequestRejected(
            400, f"{name} is not an ISO 8601 time: {value[:40]!r}", field=name
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise RequestRejected(400, f"{name} needs a UTC offset (or Z): {value!r}", field=name)
    return moment.astimezone(UTC)


def _window(start: datetime, end: datetime) -> tuple[int, int]:
    if end <= start:
        raise RequestRejected(400, "end must be after start", field="end")
    if end - start > MAX_WINDOW:
        raise RequestRejected(400, f"the window may span at most {MAX_WINDOW.days} days")
    return int(start.timestamp()), int(end.timestamp())


def _resource_id(value: object, name: str = "resource_id") -> str:
    if not isinstance(value, str) or not RESOURCE_ID.fullmatch(value):
        raise RequestRejected(400, f"{name} is not a valid resource id", field=name)
    return value


def _number(
    body: Mapping[str, Any], name: str, default: float, *, low: float, high: float
) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestRejected(400, f"{name} must be a number from {low:g} to {high:g}", field=name)
    return float(value)


def _mask(value: object) -> int:
    if value is None:
        return DEFAULT_BLOCKING
    if not isinstance(value, list) or len(value) > len(_FLAG_NAMES):
        raise RequestRejected(400, "blocking must be a list of busy states", field="blocking")
    mask = 0
    for name in value:
        if name not in _FLAG_NAMES:
            known = ", ".join(_FLAG_NAMES)
            raise RequestRejected(
                400, f"unknown busy state {str(name)[:30]!r} (known: {known})", field="blocking"
            )
        mask |= _FLAG_NAMES[name]
    return mask


def _zone(value: object, name: str) -> Any:
    if not isinstance(value, str) or len(value) > 80:
        raise RequestRejected(400, f"{name} must be an IANA or Windows zone name", field=name)
    try:
        return zone_for(value)
    except MalformedProviderData as exc:
        raise RequestRejected(400, f"{name}: {exc}", field=name) from None


def _spans(value: object, name: str) -> list[Span]:
    if not isinstance(value, list) or len(value) > 12:
        raise RequestRejected(400, f"{name} must be a list of [from, to] times", field=name)
    spans: list[Span] = []
    for item in value:
        if not (
            isinstance(item, list) and len(item) == 2 and all(isinstance(t, str) for t in item)
        ):
            raise RequestRejected(400, f'{name}: each span is ["HH:MM", "HH:MM"]', field=name)
        try:
            start = wall_time.fromisoformat(item[0])
            end = (
                wall_time(0)
                if item[1] in ("24:00", "24:00:00")
                else wall_time.fromisoformat(item[1])
            )
        except ValueError:
            raise RequestRejected(
                400, f"{name}: not a time of day: {item!r}"[:120], field=name
            ) from None
        spans.append((start, end))
    return spans


def _hours(value: object) -> WorkingHours | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RequestRejected(400, "working_hours must be an object", field="working_hours")
    zone = _zone(value.get("zone", "UTC"), "working_hours.zone")
    weekly_raw = value.get("weekly", {})
    exceptions_raw = value.get("exceptions", {})
    if not isinstance(weekly_raw, dict) or not isinstance(exceptions_raw, dict):
        raise RequestRejected(400, "weekly and exceptions are objects", field="working_hours")
    if len(exceptions_raw) > 400:
        raise RequestRejected(400, "at most 400 exception dates", field="working_hours")
    weekly: dict[int, list[Span]] = {}
    for day, spans in weekly_raw.items():
        if day not in _WEEKDAYS:
            raise RequestRejected(400, f"weekly days are {', '.join(_WEEKDAYS)}", field="weekly")
        weekly[_WEEKDAYS.index(day)] = _spans(spans, f"weekly.{day}")
    exceptions: dict[date, list[Span]] = {}
    for day, spans in exceptions_raw.items():
        try:
            exceptions[date.fromisoformat(str(day))] = _spans(spans, f"exceptions.{day}")
        except ValueError:
            raise RequestRejected(
                400, f"not a date: {str(day)[:20]!r}", field="exceptions"
            ) from None
    try:
        return WorkingHours(zone, weekly, exceptions)
    except InvalidAvailabilityRequest as exc:
        raise RequestRejected(400, str(exc), field="working_hours") from None


class AvailabilityApi:
    """The handlers (module docstring) over this worker's tables and a publisher."""

    def __init__(
        self,
        settings: Settings,
        gateway: Gateway,
        tables: IndexTables,
        ownership: Ownership,
        holds: Callable[[], HoldBoard],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._gateway = gateway
        self._tables = tables
        self._ownership = ownership
        self._holds_board = holds
        self._board: HoldBoard | None = None
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._hold_requests = settings.topic("hold-requests")

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/availability/{resource_id}", self.availability),
            web.get("/api/availability/{resource_id}/explain", self.explain),
            web.post("/api/availability/query", self.query),
            web.post("/api/availability/_snapshot", self.snapshot),
            web.post("/api/holds", self.create_hold),
            web.get("/api/holds/{hold_id}", self.get_hold),
            web.delete("/api/holds/{hold_id}", self.release_hold),
            web.post("/api/holds/{hold_id}/confirm", self.confirm_hold),
        ]

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        board, self._board = self._board, None
        if board is not None:
            await board.aclose()

    # -- routing ----------------------------------------------------------------------

    def _owner(self, request: web.Request, rid: str) -> str | None:
        """``None`` when this worker answers for ``rid``; else the owner's base URL."""
        try:
            owner = self._ownership.owner(rid)
        except LookupError:
            raise RequestRejected(503, "the partitions are being reassigned; retry") from None
        if owner is not None and request.headers.get(ROUTED):
            raise RequestRejected(503, "this worker no longer owns the resource; retry")
        return owner

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=15.0, connect=3.0),
                auto_decompress=True,
            )
        return self._session

    async def forward(
        self, request: web.Request, owner: str, body: bytes | None = None
    ) -> web.Response:
        """Ask the owner the same question (same method, path, query, token); its answer."""
        url = owner.rstrip("/") + str(request.rel_url)
        headers = {ROUTED: self._settings.app_id}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self._client().request(
                request.method, url, data=body, headers=headers, allow_redirects=False
            ) as answer:
                data = await answer.content.read(self._settings.gateway_max_body * 8 + 1)
                return web.Response(
                    body=data,
                    status=answer.status,
                    content_type=answer.content_type or "application/json",
                    headers={"X-Calsync-Answered-By": owner},
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("forwarding %s to %s failed: %r", request.rel_url, owner, exc)
            raise RequestRejected(503, "the resource's worker cannot be reached; retry") from None

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
        start = _instant(request.query["start"], "start") if "start" in request.query else now
        end = (
            _instant(request.query["end"], "end")
            if "end" in request.query
            else start + timedelta(days=7)
        )
        return _window(start, end)

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
                conflicts.append({"hold_id": hold.hold_id, "start": _iso(s), "end": _iso(e)})
        return {
            "resource_id": rid,
            "provider": resource.provider,
            "start": _iso(start),
            "end": _iso(end),
            "busy": [
                {
                    "start": _iso(s),
                    "end": _iso(e),
                    "status": _flag_names(f & ~int(Flag.ALL_DAY)),
                    "all_day": bool(f & Flag.ALL_DAY),
                }
                for s, e, f in timeline.segments(start, end)
            ],
            "holds": [_hold_json(h) for h in sorted(holds, key=lambda h: (h.start, h.hold_id))],
            "conflicts": conflicts,
            "as_of": self._freshness(rid, resource).to_json(),
        }

    async def availability(self, request: web.Request) -> web.Response:
        try:
            rid = _resource_id(request.match_info["resource_id"])
            start, end = self._window_query(request)
            owner = self._owner(request, rid)
            if owner is not None:
                return await self.forward(request, owner)
            return web.json_response(self.local_view(rid, start, end))
        except RequestRejected as exc:
            return exc.response()

    async def explain(self, request: web.Request) -> web.Response:
        """Why ``at`` is busy or free on the resource: the occurrences and holds there."""
        try:
            rid = _resource_id(request.match_info["resource_id"])
            if "at" not in request.query:
                raise RequestRejected(400, "at (an ISO 8601 time) is required", field="at")
            at = int(_instant(request.query["at"], "at").timestamp())
            owner = self._owner(request, rid)
            if owner is not None:
                return await self.forward(request, owner)
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
                        "start": _iso(entry.start),
                        "end": _iso(entry.end),
                        "status": _flag_names(entry.flags & ~int(Flag.ALL_DAY)),
                        "all_day": bool(entry.flags & Flag.ALL_DAY),
                        "blocks_by_default": blocks,
                        "rule": _rule(entry.flags, resource),
                        "synced_at": _iso(entry.synced_at),
                    }
                )
            holds = [_hold_json(h) for h in self._book(rid).holds.values() if h.start <= at < h.end]
            busy = any(o["blocks_by_default"] for o in occurrences) or bool(holds)
            return web.json_response(
                {
                    "resource_id": rid,
                    "at": _iso(at),
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
            start, end = _window(
                _instant(body.get("start"), "start"), _instant(body.get("end"), "end")
            )
            out: dict[str, Any] = {}
            for value in rids:
                rid = _resource_id(value, "resources")
                try:
                    if self._ownership.owner(rid) is not None:
                        raise LookupError(rid)
                except LookupError:
                    out[rid] = {"error": "not owned here"}
                    continue
                out[rid] = self._snapshot_one(rid, start, end)
            return web.json_response(out)
        except RequestRejected as exc:
            return exc.response()

    def _snapshot_one(self, rid: str, start: int, end: int) -> dict[str, Any]:
        resource = self._tables.resources.get(rid)
        if resource is None:
            return {"error": "unknown resource"}
        timeline = self._timeline(rid)
        holds = [
            [h.start, h.end]
            for h in self._book(rid).holds.values()
            if h.start < end and start < h.end
        ]
        return {
            "segments": [list(s) for s in timeline.segments(start, end)],
            "holds": holds,
            "as_of": self._freshness(rid, resource).to_json(),
        }

    async def _gather(
        self, request: web.Request, rids: list[str], start: int, end: int
    ) -> dict[str, dict[str, Any]]:
        by_owner: dict[str | None, list[str]] = {}
        for rid in rids:
            by_owner.setdefault(self._owner(request, rid), []).append(rid)
        out: dict[str, dict[str, Any]] = {}
        for rid in by_owner.pop(None, []):
            out[rid] = self._snapshot_one(rid, start, end)
        payload = {"start": _iso(start), "end": _iso(end)}

        async def ask(owner: str, group: list[str]) -> dict[str, Any]:
            url = owner.rstrip("/") + "/api/availability/_snapshot"
            headers = {ROUTED: self._settings.app_id}
            if "Authorization" in request.headers:
                headers["Authorization"] = request.headers["Authorization"]
            try:
                async with self._client().post(
                    url, json={**payload, "resources": group}, headers=headers
                ) as answer:
                    if answer.status != 200:
                        raise RequestRejected(503, f"a worker answered {answer.status}; retry")
                    data = await answer.json()
                    return data if isinstance(data, dict) else {}
            except (aiohttp.ClientError, TimeoutError, ValueError):
                raise RequestRejected(503, "a resource's worker cannot be reached; retry") from None

        owners = [owner for owner in by_owner if owner is not None]
        answers = await asyncio.gather(*(ask(o, by_owner[o]) for o in owners))
        for owner, answer in zip(owners, answers, strict=True):
            for rid in by_owner[owner]:
                out[rid] = answer.get(rid) or {"error": "no answer"}
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
                    rid = _resource_id(item.get("id"), "resources[].id")
                    hours[rid] = _hours(item.get("working_hours"))
                else:
                    hours[_resource_id(item, "resources")] = None
            if len(hours) != len(raw):
                raise RequestRejected(400, "a resource is listed twice", field="resources")
            window_start = _instant(body.get("start"), "start")
            window_end = _instant(body.get("end"), "end")
            start, end = _window(window_start, window_end)
            minutes = {
                name: _number(body, name, default, low=low, high=high)
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
            mask = _mask(body.get("blocking"))
            zone = _zone(body.get("zone", "UTC"), "zone")
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
            missing = {rid: d["error"] for rid, d in data.items() if "error" in d}
            unknown = [rid for rid, why in missing.items() if why == "unknown resource"]
            if unknown:
                raise RequestRejected(404, f"unknown resources: {', '.join(unknown)[:300]}")
            if missing:
                raise RequestRejected(503, "the partitions are being reassigned; retry")
            resources = []
            for rid in rids:
                segments = [(int(s), int(e), int(f)) for s, e, f in data[rid]["segments"]]
                segments += [(int(s), int(e), int(Flag.HOLD)) for s, e in data[rid]["holds"]]
                resources.append(
                    ResourceAvailability(rid, Timeline.from_segments(segments), hours[rid])
                )
            now = datetime.fromtimestamp(self._clock(), UTC)
            try:
                found = find_slots(resources, slot_request, now=now)
            except InvalidAvailabilityRequest as exc:
                raise RequestRejected(400, str(exc)) from None
            as_ofs = {rid: data[rid]["as_of"] for rid in rids}
            slots = []
            for slot in found.slots:
                used = rids if required is None else list(slot.available)
                synced = [as_ofs[r]["synced_at"] for r in used]
                oldest = None if None in synced or not synced else min(synced)
                slots.append(
                    {
                        "start": _iso(slot.start.timestamp()),
                        "end": _iso(slot.end.timestamp()),
                        "available": list(slot.available),
                        "as_of": _iso(oldest) if oldest is not None else None,
                        "fresh": all(as_ofs[r]["fresh"] for r in used),
                    }
                )
            return web.json_response(
                {"slots": slots, "truncated": found.truncated, "resources": as_ofs}
            )
        except RequestRejected as exc:
            return exc.response()

    # -- holds ---------------------------------------------------------------------------

    async def _board_ready(self) -> HoldBoard:
        if self._board is None:
            self._board = self._holds_board()
        try:
            await self._board.ready()
        except Exception as exc:
            log.warning("cannot follow the holds topic: %r", exc)
            raise RequestRejected(503, "the holds topic cannot be read now; retry") from None
        return self._board

    async def _send(self, requests: list[HoldRequest]) -> None:
        await asyncio.gather(
            *(
                self._gateway.publish(self._hold_requests, r.resource_id, r.dumps())
                for r in requests
            )
        )

    async def create_hold(self, request: web.Request) -> web.Response:
        """Hold time on one or several resources, all or nothing (``POST /api/holds``)."""
        try:
            body = await self._gateway.json_body(request)
            if not isinstance(body, dict):
                raise RequestRejected(400, "the body must be a JSON object")
            raw = body.get("resources")
            if isinstance(raw, str):
                raw = [raw]
            if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_HOLD_RESOURCES:
                raise RequestRejected(
                    400, f"resources: a list of 1 to {MAX_HOLD_RESOURCES} ids", field="resources"
                )
            participants = sorted({_resource_id(r, "resources") for r in raw})
            start, end = _window(
                _instant(body.get("start"), "start"), _instant(body.get("end"), "end")
            )
            ttl = _number(body, "ttl_seconds", DEFAULT_TTL, low=1, high=MAX_TTL)
            key = body.get("idempotency_key")
            if not isinstance(key, str) or not _KEY.fullmatch(key):
                raise RequestRejected(
                    400,
                    "idempotency_key: 1 to 200 printable ASCII characters, the same for a retry",
                    field="idempotency_key",
                )
            mask = _mask(body.get("blocking")) & ~int(Flag.HOLD)  # holds always block holds
            wait = _wait_seconds(request) if "wait" in request.query else DEFAULT_WAIT
            hold_id = new_hold_id(key, participants)
            home = participants[0]
            now = self._clock()
            board = await self._board_ready()
            mark = board.mark()
            prepares = [
                HoldRequest(
                    kind=HoldRequestKind.PREPARE.value,
                    hold_id=hold_id,
                    resource_id=rid,
                    issued_at=now,
                    home=home,
                    participants=participants,
                    start=start,
                    end=end,
                    ttl=ttl,
                    fingerprint=fingerprint(participants, start, end, ttl),
                    blocking=mask,
                )
                for rid in participants
            ]
            await self._send(prepares)
            decided = await board.wait_for(
                hold_id, resource_id=home, kinds=DECISIONS, after=mark, wait=wait
            )
            return _decision(hold_id, participants, decided)
        except RequestRejected as exc:
            return exc.response()

    def _hold_id(self, request: web.Request) -> tuple[str, str]:
        hold_id = request.match_info["hold_id"]
        try:
            home = home_of(hold_id)
        except InvalidAvailabilityRequest:
            raise RequestRejected(400, "not a hold id", field="hold_id") from None
        return hold_id, _resource_id(home, "hold_id")

    def _local_hold(self, hold_id: str, home: str) -> dict[str, Any]:
        book = self._book(home)
        live = book.holds.get(hold_id)
        if live is not None:
            return _hold_json(live)
        ended = book.ended.get(hold_id)
        if ended is None:
            raise RequestRejected(404, f"unknown hold {hold_id!r}")
        return {
            "hold_id": hold_id,
            "state": ended.outcome.value,
            "start": _iso(ended.start),
            "end": _iso(ended.end),
            "resources": list(ended.participants),
            "ended_at": _iso(ended.at),
            "conflict": ended.conflict.to_json() if ended.conflict else None,
            "detail": ended.detail or None,
        }

    async def get_hold(self, request: web.Request) -> web.Response:
        try:
            hold_id, home = self._hold_id(request)
            owner = self._owner(request, home)
            if owner is not None:
                return await self.forward(request, owner)
            return web.json_response(self._local_hold(hold_id, home))
        except RequestRejected as exc:
            return exc.response()

    async def _change(
        self,
        request: web.Request,
        kind: HoldRequestKind,
        outcomes: frozenset[HoldEventKind],
    ) -> web.Response:
        hold_id, home = self._hold_id(request)
        owner = self._owner(request, home)
        if owner is not None:
            return await self.forward(request, owner)
        book = self._book(home)
        hold = book.holds.get(hold_id)
        if hold is None:
            if hold_id in book.ended:
                state = book.ended[hold_id].outcome.value
                raise RequestRejected(409, f"the hold is already {state}")
            raise RequestRejected(404, f"unknown hold {hold_id!r}")
        if kind is HoldRequestKind.CONFIRM and (
            hold.state is HoldState.PENDING
            or (hold.state is HoldState.ACCEPTED and self._clock() >= hold.expires_at)
        ):
            raise RequestRejected(
                409, f"the hold is {_state(hold, self._clock())}; it cannot be confirmed"
            )
        wait = _wait_seconds(request) if "wait" in request.query else DEFAULT_WAIT
        board = await self._board_ready()
        mark = board.mark()
        await self._send(
            [
                HoldRequest(
                    kind=kind.value,
                    hold_id=hold_id,
                    resource_id=home,
                    issued_at=self._clock(),
                    home=home,
                    participants=list(hold.participants),
                    start=hold.start,
                    end=hold.end,
                )
            ]
        )
        done = await board.wait_for(
            hold_id, resource_id=home, kinds=outcomes, after=mark, wait=wait
        )
        if done is None:
            url = f"/api/holds/{quote(hold_id, safe='')}"
            return web.json_response(
                {"hold_id": hold_id, "status": "pending", "status_url": url},
                status=202,
                headers={"Location": url},
            )
        return web.json_response({"hold_id": hold_id, "status": done.kind.value})

    async def release_hold(self, request: web.Request) -> web.Response:
        try:
            return await self._change(
                request,
                HoldRequestKind.RELEASE,
                frozenset({HoldEventKind.RELEASED, HoldEventKind.REJECTED}),
            )
        except RequestRejected as exc:
            return exc.response()

    async def confirm_hold(self, request: web.Request) -> web.Response:
        try:
            return await self._change(
                request, HoldRequestKind.CONFIRM, frozenset({HoldEventKind.CONFIRMED})
            )
        except RequestRejected as exc:
            return exc.response()


def _state(hold: Hold, now: float) -> str:
    if hold.state is HoldState.ACCEPTED and now >= hold.expires_at:
        return "expired"
    return hold.state.value


def _hold_json(hold: Hold) -> dict[str, Any]:
    return {
        "hold_id": hold.hold_id,
        "state": hold.state.value,
        "start": _iso(hold.start),
        "end": _iso(hold.end),
        "resources": list(hold.participants),
        "expires_at": _iso(hold.expires_at) if hold.expires_at else None,
    }


def _decision(hold_id: str, participants: list[str], decided: HoldEvent | None) -> web.Response:
    url = f"/api/holds/{quote(hold_id, safe='')}"
    headers = {"Location": url}
    body: dict[str, Any]
    if decided is None:
        body = {
            "hold_id": hold_id,
            "status": "pending",
            "status_url": url,
            "resources": participants,
        }
        return web.json_response(body, status=202, headers=headers)
    body = {
        "hold_id": hold_id,
        "status": decided.kind.value,
        "resources": participants,
        "start": _iso(decided.start),
        "end": _iso(decided.end),
        "status_url": url,
    }
    if decided.kind is HoldEventKind.ACCEPTED:
        body["expires_at"] = _iso(decided.expires_at) if decided.expires_at else None
        return web.json_response(body, status=201, headers=headers)
    conflict = decided.conflict
    if conflict is not None:
        body["conflict"] = {
            **conflict.to_json(),
            "start": _iso(conflict.start),
            "end": _iso(conflict.end),
            "status": _flag_names(conflict.flags),
        }
    body["detail"] = decided.detail or None
    return web.json_response(body, status=409, headers=headers)


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
