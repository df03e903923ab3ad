"""The holds API: ``POST /api/holds``, ``GET``/``DELETE /api/holds/{id}``,
``POST /api/holds/{id}/confirm`` (semantics: ``docs/availability.md``).

Holds are never routed: any worker writes the hold's requests to
``calsync.hold-requests`` (keyed by resource, so each is decided by its owner in
partition order, :mod:`calsync.agents.holds`) and waits for the home resource's
decision on ``calsync.holds`` (:class:`~calsync.gateway.holds.HoldBoard`). Reading,
releasing and confirming a hold go to its home's owner first (the hold id names the
home), which knows at once whether the hold exists.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from aiohttp import web

from calsync.availability.errors import InvalidAvailabilityRequest
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
from calsync.availability.intervals import Flag
from calsync.errors import CodecError
from calsync.gateway.holds import HoldBoard
from calsync.gateway.http import Gateway, RequestRejected, wait_seconds
from calsync.settings import Settings
from calsync.streams.records import HoldRequest, HoldRequestKind
from calsync.web import wire
from calsync.web.routing import Router

__all__ = ["HoldsApi"]

log = logging.getLogger(__name__)

#: At most this many resources in one hold.
MAX_HOLD_RESOURCES = 20
MAX_TTL = 7 * 86_400.0
DEFAULT_TTL = 600.0
#: Seconds a hold request waits for its decision unless ``?wait=`` says otherwise.
DEFAULT_WAIT = 10.0
_KEY = re.compile(r"[\x21-\x7e]{1,200}")


class HoldsApi:
    """The hold handlers over the ``holds`` table of the resources this worker owns."""

    def __init__(
        self,
        settings: Settings,
        gateway: Gateway,
        holds: Mapping[str, bytes],
        router: Router,
        board: Callable[[], HoldBoard],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._gateway = gateway
        self._holds = holds
        self._router = router
        self._new_board = board
        self._board: HoldBoard | None = None
        self._clock = clock
        self._hold_requests = settings.topic("hold-requests")

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/holds", self.create_hold),
            web.get("/api/holds/{hold_id}", self.get_hold),
            web.delete("/api/holds/{hold_id}", self.release_hold),
            web.post("/api/holds/{hold_id}/confirm", self.confirm_hold),
        ]

    async def aclose(self) -> None:
        board, self._board = self._board, None
        if board is not None:
            await board.aclose()

    def _book(self, rid: str) -> HoldBook:
        try:
            return HoldBook.decode(rid, self._holds.get(rid))
        except CodecError as exc:
            log.error("holds of %s cannot be read: %s", rid, exc)
            raise RequestRejected(500, "the holds of this resource cannot be read") from None

    async def _board_ready(self) -> HoldBoard:
        if self._board is None:
            self._board = self._new_board()
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
            participants = sorted({wire.resource_id(r, "resources") for r in raw})
            start, end = wire.window(
                wire.instant(body.get("start"), "start"), wire.instant(body.get("end"), "end")
            )
            ttl = wire.number(body, "ttl_seconds", DEFAULT_TTL, low=1, high=MAX_TTL)
            key = body.get("idempotency_key")
            if not isinstance(key, str) or not _KEY.fullmatch(key):
                raise RequestRejected(
                    400,
                    "idempotency_key: 1 to 200 printable ASCII characters, the same for a retry",
                    field="idempotency_key",
                )
            mask = wire.blocking_mask(body.get("blocking")) & ~int(
                Flag.HOLD
            )  # holds always block holds
            wait = wait_seconds(request) if "wait" in request.query else DEFAULT_WAIT
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
        return hold_id, wire.resource_id(home, "hold_id")

    def _local_hold(self, hold_id: str, home: str) -> dict[str, Any]:
        book = self._book(home)
        live = book.holds.get(hold_id)
        if live is not None:
            return wire.hold_json(live)
        ended = book.ended.get(hold_id)
        if ended is None:
            raise RequestRejected(404, f"unknown hold {hold_id!r}")
        return {
            "hold_id": hold_id,
            "state": ended.outcome.value,
            "start": wire.iso(ended.start),
            "end": wire.iso(ended.end),
            "resources": list(ended.participants),
            "ended_at": wire.iso(ended.at),
            "conflict": ended.conflict.to_json() if ended.conflict else None,
            "detail": ended.detail or None,
        }

    async def get_hold(self, request: web.Request) -> web.Response:
        try:
            hold_id, home = self._hold_id(request)
            owner = self._router.owner(request, home)
            if owner is not None:
                return await self._router.forward(request, owner)
            return wire.answer(self._local_hold(hold_id, home))
        except RequestRejected as exc:
            return exc.response()

    async def _change(
        self,
        request: web.Request,
        kind: HoldRequestKind,
        outcomes: frozenset[HoldEventKind],
    ) -> web.Response:
        hold_id, home = self._hold_id(request)
        owner = self._router.owner(request, home)
        if owner is not None:
            return await self._router.forward(request, owner)
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
        wait = wait_seconds(request) if "wait" in request.query else DEFAULT_WAIT
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
            return wire.answer(
                {"hold_id": hold_id, "status": "pending", "status_url": url},
                status=202,
                headers={"Location": url},
            )
        return wire.answer({"hold_id": hold_id, "status": done.kind.value})

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
        return wire.answer(body, status=202, headers=headers)
    body = {
        "hold_id": hold_id,
        "status": decided.kind.value,
        "resources": participants,
        "start": wire.iso(decided.start),
        "end": wire.iso(decided.end),
        "status_url": url,
    }
    if decided.kind is HoldEventKind.ACCEPTED:
        body["expires_at"] = wire.iso(decided.expires_at) if decided.expires_at else None
        return wire.answer(body, status=201, headers=headers)
    conflict = decided.conflict
    if conflict is not None:
        body["conflict"] = {
            **conflict.to_json(),
            "start": wire.iso(conflict.start),
            "end": wire.iso(conflict.end),
            "status": wire.flag_names(conflict.flags),
        }
    body["detail"] = decided.detail or None
    return wire.answer(body, status=409, headers=headers)
