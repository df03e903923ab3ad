"""Holds: reserved time that makes double-booking impossible, decided per resource.

A hold reserves ``[start, end)`` on one or several resources until its TTL runs out,
it is released, or it is confirmed (then it blocks until its end, as a booking).
Every change to the holds of a resource is decided by the :class:`HoldBook` of that
resource, one request at a time, in the order of the resource's partition of
``calsync.hold-requests``: two requests for the same resource are never decided
concurrently, whichever workers received them. That, and nothing else, is why two
overlapping holds on one resource can never both be accepted.

**Several resources: all or nothing.** A hold names a *home* resource (the smallest
id of its participants); the home's book is its single point of decision, and its
id is part of the hold id (``<home>~<uuid>``), so anyone holding the id finds the
decider. Each participant decides for itself (``prepare``): a conflict rejects at
once; otherwise the time is reserved as *pending* and the participant sends its
vote to the home. The home commits when every vote is a yes (and tells each
participant), aborts at the first no or when its prepare deadline passes (and tells
each participant to drop its reservation). The first decision recorded in the home's
book wins; a decision is never revised, so a late vote, a replayed request or a
participant asking ``resolve`` after a crash all get the same answer. Participants
never decide the outcome themselves: a pending reservation that waited too long
asks the home, which aborts it if still undecided. A crash of any worker replays
its partitions' requests against the tables recovered from their changelogs, and
every handler here is idempotent, so no partial hold survives and no accepted hold
is lost.

Pending and expired-but-not-yet-removed holds block like accepted ones: an expired
hold stops blocking when its home's housekeeping removes it (a timer at its expiry;
under a second later), never earlier, so a confirmation racing with the expiry can
never leave two blocking holds.

Everything here is pure: time comes in as ``now``, busy time as a callable, and the
effects come out as :class:`Effects` (records for ``calsync.holds``, requests for
other resources' partitions) for the caller to write.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from calsync.availability.errors import InvalidAvailabilityRequest
from calsync.errors import CodecError
from calsync.streams.records import HoldRequest, HoldRequestKind

__all__ = [
    "HOLD_NAMESPACE",
    "Conflict",
    "Effects",
    "Ended",
    "Hold",
    "HoldBook",
    "HoldEvent",
    "HoldEventKind",
    "HoldState",
    "home_of",
    "new_hold_id",
]

log = logging.getLogger(__name__)

#: Namespace of hold ids (uuid5 of the idempotency key); never change it.
HOLD_NAMESPACE = uuid.UUID("0b6c7b0e-4f1f-5a8e-9c57-2f3d1c9e4a11")
#: Seconds a multi-resource hold may wait for its votes before the home aborts it.
PREPARE_TIMEOUT = 15.0
#: Seconds past the prepare deadline after which a participant asks the home.
RESOLVE_GRACE = 5.0
#: How long a book remembers ended holds (idempotent replays, late votes).
ENDED_RETENTION = 24 * 3600.0
#: At most this many ended holds are remembered per resource.
MAX_ENDED = 2000
#: At most this many live holds per resource (a bound on what callers can make us keep).
MAX_HOLDS = 5000
#: Votes kept for holds the home has not seen yet.
MAX_EARLY = 1000


class HoldState(enum.StrEnum):
    PENDING = "pending"  # reserved, waiting for the home's decision
    ACCEPTED = "accepted"  # held until its TTL runs out
    CONFIRMED = "confirmed"  # a booking: blocks until its end


class HoldEventKind(enum.StrEnum):
    """What a record on ``calsync.holds`` says happened (schema ``hold_event.avsc``)."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    RELEASED = "released"
    EXPIRED = "expired"
    CONFIRMED = "confirmed"
    #: a provider's busy time arrived on top of an accepted or confirmed hold
    CONFLICT = "conflict"


#: The event kinds that end a hold request's wait (the home's answer).
DECISIONS = frozenset({HoldEventKind.ACCEPTED, HoldEventKind.REJECTED})


@dataclass(frozen=True, slots=True)
class Conflict:
    """What stands in a hold's way: busy time from a provider, or another hold."""

    resource_id: str
    source: str  # "busy" | "hold" | "request"
    start: int
    end: int
    flags: int = 0
    system_event_id: str | None = None
    hold_id: str | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "resource_id": self.resource_id,
            "source": self.source,
            "start": self.start,
            "end": self.end,
            "flags": self.flags,
            "system_event_id": self.system_event_id,
            "hold_id": self.hold_id,
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Conflict:
        return cls(
            resource_id=str(data["resource_id"]),
            source=str(data["source"]),
            start=int(data["start"]),
            end=int(data["end"]),
            flags=int(data.get("flags") or 0),
            system_event_id=data.get("system_event_id"),
            hold_id=data.get("hold_id"),
            detail=str(data.get("detail") or ""),
        )


@dataclass(frozen=True, slots=True)
class HoldEvent:
    """One record of ``calsync.holds`` (keyed by ``resource_id``).

    ``booking`` is where writing a confirmed hold into the provider's calendar will
    report itself (``{"state": "not_written", "provider_event_id": None}`` today).
    """

    hold_id: str
    resource_id: str
    kind: HoldEventKind
    start: int
    end: int
    home: str
    participants: tuple[str, ...]
    emitted_at: float
    expires_at: float | None = None
    conflict: Conflict | None = None
    detail: str = ""
    booking: dict[str, str | None] | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    """A live hold in one resource's book. ``deadline``: pending holds only, when the
    home aborts (home) or the participant asks the home (others)."""

    hold_id: str
    start: int
    end: int
    state: HoldState
    home: str
    participants: tuple[str, ...]
    fingerprint: str
    created_at: float
    ttl: float
    blocking: int
    expires_at: float = 0.0
    deadline: float = 0.0
    votes: tuple[str, ...] = ()  # home only: participants that voted yes

    def blocks(self, start: int, end: int) -> bool:
        return self.start < end and start < self.end


@dataclass(frozen=True, slots=True)
class Ended:
    """A hold this book no longer keeps, and how it ended (for replays and late votes)."""

    hold_id: str
    outcome: HoldEventKind
    at: float
    start: int
    end: int
    home: str
    participants: tuple[str, ...]
    conflict: Conflict | None = None
    detail: str = ""


@dataclass(slots=True)
class Effects:
    """What a decision wants written: records to publish, requests to send."""

    events: list[HoldEvent] = field(default_factory=list)
    requests: list[HoldRequest] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.events or self.requests)


BusyConflict = Callable[[int, int, int], Conflict | None]


def new_hold_id(idempotency_key: str, resources: Iterable[str]) -> str:
    """``<home>~<uuid5 of the key>``: the same key always names the same hold."""
    home = min(resources)
    return f"{home}~{uuid.uuid5(HOLD_NAMESPACE, idempotency_key).hex}"


def home_of(hold_id: str) -> str:
    """The home resource of a hold id (raises for a malformed id)."""
    home, sep, rest = hold_id.rpartition("~")
    if not sep or not home or len(rest) != 32:
        raise InvalidAvailabilityRequest(f"not a hold id: {hold_id!r}")
    return home


def fingerprint(participants: Iterable[str], start: int, end: int, ttl: float) -> str:
    """What an idempotency key promised: the same key with another request is refused."""
    material = f"{','.join(sorted(participants))}|{start}|{end}|{ttl:g}"
    return hashlib.sha256(material.encode()).hexdigest()[:24]


class HoldBook:
    """The holds of one resource (``resource_id``), as kept in the ``holds`` table.

    Methods take a request and ``now`` and return :class:`Effects`; they never raise
    for a request that does not fit (that is a rejection), only for a malformed one.
    """

    def __init__(
        self,
        resource_id: str,
        *,
        holds: dict[str, Hold] | None = None,
        ended: dict[str, Ended] | None = None,
        early: dict[str, tuple[str, ...]] | None = None,
        unsent: list[dict[str, Any]] | None = None,
    ) -> None:
        self.resource_id = resource_id
        self.holds: dict[str, Hold] = holds or {}
        self.ended: dict[str, Ended] = ended or {}
        #: home only: yes-votes that arrived before the home's own prepare
        self.early: dict[str, tuple[str, ...]] = early or {}
        #: effects recorded with the book and not yet known to be written (outbox)
        self.unsent: list[dict[str, Any]] = unsent or []

    # -- reading --------------------------------------------------------------------

    def blocking(self, start: int, end: int, *, exclude: str | None = None) -> Hold | None:
        """The first live hold overlapping ``[start, end)`` (pending ones included)."""
        for hold in sorted(self.holds.values(), key=lambda h: (h.start, h.hold_id)):
            if hold.hold_id != exclude and hold.blocks(start, end):
                return hold
        return None

    def segments(self) -> list[tuple[int, int, str, str]]:
        """``(start, end, hold_id, state)`` of every live hold, by start."""
        return sorted((h.start, h.end, h.hold_id, h.state.value) for h in self.holds.values())

    def next_due(self) -> float | None:
        """When :meth:`housekeep` has something to do next (``None``: nothing)."""
        times = [h.deadline for h in self.holds.values() if h.state is HoldState.PENDING]
        times += [
            h.expires_at
            for h in self.holds.values()
            if h.state is not HoldState.PENDING and h.home == self.resource_id
        ]
        return min(times) if times else None

    # -- deciding -------------------------------------------------------------------

    def handle(self, request: HoldRequest, now: float, busy: BusyConflict) -> Effects:
        """Apply one request addressed to this resource (in partition order)."""
        handler = {
            HoldRequestKind.PREPARE.value: self._prepare,
            HoldRequestKind.VOTE.value: self._vote,
            HoldRequestKind.COMMIT.value: self._commit,
            HoldRequestKind.ABORT.value: self._abort,
            HoldRequestKind.RELEASE.value: self._release,
            HoldRequestKind.CONFIRM.value: self._confirm,
            HoldRequestKind.EXPIRE.value: self._expire,
            HoldRequestKind.RESOLVE.value: self._resolve,
        }.get(request.kind)
        if handler is None:
            raise CodecError(f"unknown hold request kind {request.kind!r}")
        effects = handler(request, now, busy)
        self._prune(now)
        return effects

    def _event(
        self,
        hold: Hold | Ended,
        kind: HoldEventKind,
        now: float,
        *,
        conflict: Conflict | None = None,
        detail: str = "",
    ) -> HoldEvent:
        expires = hold.expires_at if isinstance(hold, Hold) and hold.expires_at else None
        booking: dict[str, str | None] | None = None
        if kind is HoldEventKind.CONFIRMED:
            booking = {"state": "not_written", "provider_event_id": None}
        return HoldEvent(
            hold_id=hold.hold_id,
            resource_id=self.resource_id,
            kind=kind,
            start=hold.start,
            end=hold.end,
            home=hold.home,
            participants=hold.participants,
            emitted_at=now,
            expires_at=expires,
            conflict=conflict,
            detail=detail,
            booking=booking,
        )

    def _to(
        self, target: str, kind: HoldRequestKind, hold: Hold | Ended, now: float, **kw: Any
    ) -> HoldRequest:
        return HoldRequest(
            kind=kind.value,
            hold_id=hold.hold_id,
            resource_id=target,
            issued_at=now,
            home=hold.home,
            participants=list(hold.participants),
            start=hold.start,
            end=hold.end,
            **kw,
        )

    def _others(self, hold: Hold | Ended) -> list[str]:
        return [p for p in hold.participants if p != self.resource_id]

    def _end(
        self,
        hold: Hold,
        outcome: HoldEventKind,
        now: float,
        *,
        conflict: Conflict | None = None,
        detail: str = "",
    ) -> Ended:
        self.holds.pop(hold.hold_id, None)
        ended = Ended(
            hold.hold_id,
            outcome,
            now,
            hold.start,
            hold.end,
            hold.home,
            hold.participants,
            conflict,
            detail,
        )
        self.ended[hold.hold_id] = ended
        return ended

    def _find_conflict(
        self, request: HoldRequest, busy: BusyConflict, blocking: int
    ) -> Conflict | None:
        found = busy(request.start, request.end, blocking)
        if found is not None:
            return found
        other = self.blocking(request.start, request.end, exclude=request.hold_id)
        if other is not None:
            return Conflict(
                self.resource_id,
                "hold",
                other.start,
                other.end,
                hold_id=other.hold_id,
                detail=f"held ({other.state.value})",
            )
        if len(self.holds) >= MAX_HOLDS:
            return Conflict(
                self.resource_id,
                "request",
                request.start,
                request.end,
                detail=f"this resource already has {MAX_HOLDS} live holds",
            )
        return None

    def _prepare(self, request: HoldRequest, now: float, busy: BusyConflict) -> Effects:
        effects = Effects()
        hid = request.hold_id
        participants = tuple(sorted(set(request.participants or [self.resource_id])))
        home = participants[0]
        ended = self.ended.get(hid)
        existing = self.holds.get(hid)
        if ended is not None:
            if home == self.resource_id:  # tell the waiting caller again
                effects.events.append(
                    self._event(
                        ended, ended.outcome, now, conflict=ended.conflict, detail=ended.detail
                    )
                )
            return effects
        if existing is not None:
            if existing.fingerprint != request.fingerprint:
                # The key was used for another request: the hold stays as it was decided,
                # and no record contradicts it (the API says so when asked).
                log.info("hold %s: idempotency key reused for another request", hid)
                return effects
            if home == self.resource_id:
                if existing.state is not HoldState.PENDING:
                    effects.events.append(self._event(existing, HoldEventKind.ACCEPTED, now))
            else:
                effects.requests.append(
                    self._to(
                        home, HoldRequestKind.VOTE, existing, now, voter=self.resource_id, ok=True
                    )
                )
            return effects
        blocking = request.blocking
        conflict = self._find_conflict(request, busy, blocking)
        hold = Hold(
            hold_id=hid,
            start=request.start,
            end=request.end,
            state=HoldState.PENDING,
            home=home,
            participants=participants,
            fingerprint=request.fingerprint,
            created_at=now,
            ttl=request.ttl,
            blocking=blocking,
        )
        if conflict is not None:
            ended_hold = self._end(hold, HoldEventKind.REJECTED, now, conflict=conflict)
            if home == self.resource_id:
                effects.events.append(
                    self._event(ended_hold, HoldEventKind.REJECTED, now, conflict=conflict)
                )
                for other in self._others(hold):
                    effects.requests.append(self._to(other, HoldRequestKind.ABORT, hold, now))
            else:
                effects.requests.append(
                    self._to(
                        home,
                        HoldRequestKind.VOTE,
                        hold,
                        now,
                        voter=self.resource_id,
                        ok=False,
                        conflict=conflict.to_json(),
                    )
                )
            return effects
        if len(participants) == 1:
            accepted = replace(hold, state=HoldState.ACCEPTED, expires_at=now + hold.ttl)
            self.holds[hid] = accepted
            effects.events.append(self._event(accepted, HoldEventKind.ACCEPTED, now))
            return effects
        if home == self.resource_id:
            votes = tuple(sorted({self.resource_id, *self.early.pop(hid, ())}))
            self.holds[hid] = replace(hold, deadline=now + PREPARE_TIMEOUT, votes=votes)
            return self._maybe_commit(self.holds[hid], now)
        self.holds[hid] = replace(hold, deadline=now + PREPARE_TIMEOUT + RESOLVE_GRACE)
        effects.requests.append(
            self._to(home, HoldRequestKind.VOTE, hold, now, voter=self.resource_id, ok=True)
        )
        return effects

    def _maybe_commit(self, hold: Hold, now: float) -> Effects:
        effects = Effects()
        if set(hold.votes) != set(hold.participants):
            return effects
        accepted = replace(hold, state=HoldState.ACCEPTED, expires_at=now + hold.ttl, deadline=0.0)
        self.holds[hold.hold_id] = accepted
        effects.events.append(self._event(accepted, HoldEventKind.ACCEPTED, now))
        for other in self._others(accepted):
            effects.requests.append(
                self._to(
                    other, HoldRequestKind.COMMIT, accepted, now, expires_at=accepted.expires_at
                )
            )
        return effects

    def _abort_at_home(
        self, hold: Hold, now: float, conflict: Conflict | None, detail: str
    ) -> Effects:
        effects = Effects()
        ended = self._end(hold, HoldEventKind.REJECTED, now, conflict=conflict, detail=detail)
        effects.events.append(
            self._event(ended, HoldEventKind.REJECTED, now, conflict=conflict, detail=detail)
        )
        for other in self._others(hold):
            effects.requests.append(self._to(other, HoldRequestKind.ABORT, hold, now))
        return effects

    def _placeholder(self, request: HoldRequest, now: float) -> Hold:
        """A hold the home never prepared, to decide (reject) it all the same."""
        return Hold(
            hold_id=request.hold_id,
            start=request.start,
            end=request.end,
            state=HoldState.PENDING,
            home=self.resource_id,
            participants=tuple(sorted(set(request.participants or []))),
            fingerprint="",
            created_at=now,
            ttl=0.0,
            blocking=0,
        )

    def _vote(self, request: HoldRequest, now: float, busy: BusyConflict) -> Effects:
        """At the home: a participant's yes or no."""
        effects = Effects()
        hid, voter = request.hold_id, request.voter or ""
        hold = self.holds.get(hid)
        ended = self.ended.get(hid)
        if ended is not None:
            if request.ok and ended.outcome is HoldEventKind.REJECTED:
                effects.requests.append(self._to(voter, HoldRequestKind.ABORT, ended, now))
            return effects
        if hold is None:
            if request.ok:
                if len(self.early) < MAX_EARLY or hid in self.early:
                    self.early[hid] = tuple(sorted({*self.early.get(hid, ()), voter}))
                return effects
            # a no before the home's own prepare: the hold is decided, rejected
            placeholder = self._placeholder(request, now)
            conflict = Conflict.from_json(request.conflict) if request.conflict else None
            self.early.pop(hid, None)
            return self._abort_at_home(placeholder, now, conflict, "")
        if hold.state is not HoldState.PENDING:
            if request.ok:  # a replayed vote: say commit again
                effects.requests.append(
                    self._to(voter, HoldRequestKind.COMMIT, hold, now, expires_at=hold.expires_at)
                )
            return effects
        if not request.ok:
            conflict = Conflict.from_json(request.conflict) if request.conflict else None
            return self._abort_at_home(hold, now, conflict, "")
        if voter in hold.participants:
            hold = replace(hold, votes=tuple(sorted({*hold.votes, voter})))
            self.holds[hid] = hold
        return self._maybe_commit(hold, now)

    def _commit(self, request: HoldRequest, now: float, busy: BusyConflict) -> Effects:
        """At a participant: the home committed."""
        effects = Effects()
        hold = self.holds.get(request.hold_id)
        if hold is None or hold.state is not HoldState.PENDING:
            return effects
        accepted = replace(
            hold, state=HoldState.ACCEPTED, expires_at=request.expires_at, deadline=0.0
        )
        self.holds[hold.hold_id] = accepted
        effects.events.append(self._event(accepted, HoldEventKind.ACCEPTED, now))
        return effects

    def _abort(self, request: HoldRequest, now: float, busy: BusyConflict) -> Effects:
        """At a participant: the home aborted; drop the reservation."""
        hold = self.holds.get(request.hold_id)
        if hold is not None and hold.state is HoldState.PENDING:
            self._end(hold, HoldEventKind.REJECTED, now, detail="aborted by its home resource")
        elif hold is None and request.hold_id not in self.ended:
            # the abort overtook our own prepare: remember, so the prepare finds it decided
            self.ended[request.hold_id] = Ended(
                request.hold_id,
                HoldEventKind.REJECTED,
                now,
                request.start,
                request.end,
                request.home,
                tuple(request.participants or ()),
                detail="aborted by its home resource",
            )
        return Effects()

    def _release(self, request: HoldRequest, now: float, busy: BusyConflict) -> Effects:
        effects = Effects()
        hold = self.holds.get(request.hold_id)
        if hold is None:
            return effects
        if hold.home == self.resource_id and hold.state is HoldState.PENDING:
            return self._abort_at_home(hold, now, None, "released before it was decided")
        if hold.state is HoldState.PENDING:
            return effects  # only the home decides a pending hold
        ended = self._end(hold, HoldEventKind.RELEASED, now)
        effects.events.append(self._event(ended, HoldEventKind.RELEASED, now))
        if hold.home == self.resource_id:
            for other in self._others(hold):
                effects.requests.append(self._to(other, HoldRequestKind.RELEASE, hold, now))
        return effects

    def _confirm(self, request: HoldRequest, now: float, busy: BusyConflict) -> Effects:
        effects = Effects()
        hold = self.holds.get(request.hold_id)
        if hold is None or hold.state is HoldState.PENDING:
            return effects
        at_home = hold.home == self.resource_id
        if hold.state is HoldState.CONFIRMED:
            if at_home:
                effects.events.append(self._event(hold, HoldEventKind.CONFIRMED, now))
            return effects
        if at_home and now >= hold.expires_at:
            return effects  # expired: housekeeping removes it; the caller hears 409
        confirmed = replace(hold, state=HoldState.CONFIRMED, expires_at=float(hold.end))
        self.holds[hold.hold_id] = confirmed
        effects.events.append(self._event(confirmed, HoldEventKind.CONFIRMED, now))
        if at_home:
            for other in self._others(hold):
                effects.requests.append(self._to(other, HoldRequestKind.CONFIRM, hold, now))
        return effects

    def _expire(self, request: HoldRequest, now: float, busy: BusyConflict) -> Effects:
        """At a participant: the home expired the hold."""
        effects = Effects()
        hold = self.holds.get(request.hold_id)
        if hold is None or hold.state is not HoldState.ACCEPTED:
            return effects
        ended = self._end(hold, HoldEventKind.EXPIRED, now)
        effects.events.append(self._event(ended, HoldEventKind.EXPIRED, now))
        return effects

    def _resolve(self, request: HoldRequest, now: float, busy: BusyConflict) -> Effects:
        """At the home: a participant waited too long for the decision; answer it."""
        effects = Effects()
        voter, hid = request.voter or "", request.hold_id
        hold = self.holds.get(hid)
        ended = self.ended.get(hid)
        if hold is not None and hold.state is not HoldState.PENDING:
            effects.requests.append(
                self._to(voter, HoldRequestKind.COMMIT, hold, now, expires_at=hold.expires_at)
            )
        elif hold is not None:
            if now >= hold.deadline:
                return self._abort_at_home(hold, now, None, "its participants did not all answer")
        elif ended is not None:
            if ended.outcome is HoldEventKind.REJECTED:
                effects.requests.append(self._to(voter, HoldRequestKind.ABORT, ended, now))
            else:  # it was accepted, then ended: the participant's copy ends too
                kind = (
                    HoldRequestKind.EXPIRE
                    if ended.outcome is HoldEventKind.EXPIRED
                    else HoldRequestKind.RELEASE
                )
                effects.requests.append(self._to(voter, HoldRequestKind.COMMIT, ended, now))
                effects.requests.append(self._to(voter, kind, ended, now))
        else:  # never prepared here: decide it now, rejected
            placeholder = self._placeholder(request, now)
            self.early.pop(hid, None)
            return self._abort_at_home(placeholder, now, None, "its home never saw the request")
        return effects

    def housekeep(self, now: float) -> Effects:
        """Expire, abort and ask about what is due at ``now``."""
        effects = Effects()
        for hold in sorted(self.holds.values(), key=lambda h: h.hold_id):
            at_home = hold.home == self.resource_id
            if hold.state is HoldState.PENDING and now >= hold.deadline:
                if at_home:
                    more = self._abort_at_home(
                        hold, now, None, "its participants did not all answer"
                    )
                    effects.events += more.events
                    effects.requests += more.requests
                else:
                    self.holds[hold.hold_id] = replace(hold, deadline=now + RESOLVE_GRACE)
                    effects.requests.append(
                        self._to(
                            hold.home, HoldRequestKind.RESOLVE, hold, now, voter=self.resource_id
                        )
                    )
            elif hold.state is HoldState.ACCEPTED and at_home and now >= hold.expires_at:
                ended = self._end(hold, HoldEventKind.EXPIRED, now)
                effects.events.append(self._event(ended, HoldEventKind.EXPIRED, now))
                for other in self._others(hold):
                    effects.requests.append(self._to(other, HoldRequestKind.EXPIRE, hold, now))
            elif hold.state is HoldState.CONFIRMED and at_home and now >= hold.end:
                self._end(hold, HoldEventKind.CONFIRMED, now, detail="past")
                for other in self._others(hold):
                    effects.requests.append(self._to(other, HoldRequestKind.RELEASE, hold, now))
        self._prune(now)
        return effects

    def conflicts_with(self, start: int, end: int) -> list[Hold]:
        """Accepted or confirmed holds that busy time ``[start, end)`` lands on."""
        return [
            h
            for h in self.holds.values()
            if h.state is not HoldState.PENDING and h.blocks(start, end)
        ]

    def _prune(self, now: float) -> None:
        old = [k for k, e in self.ended.items() if now - e.at > ENDED_RETENTION]
        for key in old:
            del self.ended[key]
        while len(self.ended) > MAX_ENDED:
            del self.ended[next(iter(self.ended))]

    # -- storage --------------------------------------------------------------------

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "v": 1,
                "holds": [_hold_json(h) for h in self.holds.values()],
                "ended": [_ended_json(e) for e in self.ended.values()],
                "early": self.early,
                "unsent": self.unsent,
            }
        )

    @classmethod
    def decode(cls, resource_id: str, value: bytes | None) -> HoldBook:
        if value is None:
            return cls(resource_id)
        try:
            data = orjson.loads(value)
            holds = [_hold_from(h) for h in data.get("holds", [])]
            ended = [_ended_from(e) for e in data.get("ended", [])]
            return cls(
                resource_id,
                holds={h.hold_id: h for h in holds},
                ended={e.hold_id: e for e in ended},
                early={k: tuple(v) for k, v in (data.get("early") or {}).items()},
                unsent=list(data.get("unsent") or []),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CodecError(f"holds of {resource_id} cannot be decoded: {exc}") from exc


def _hold_json(h: Hold) -> dict[str, Any]:
    return {
        "id": h.hold_id,
        "s": h.start,
        "e": h.end,
        "st": h.state.value,
        "home": h.home,
        "p": list(h.participants),
        "fp": h.fingerprint,
        "c": h.created_at,
        "ttl": h.ttl,
        "b": h.blocking,
        "x": h.expires_at,
        "d": h.deadline,
        "v": list(h.votes),
    }


def _hold_from(d: dict[str, Any]) -> Hold:
    return Hold(
        hold_id=d["id"],
        start=int(d["s"]),
        end=int(d["e"]),
        state=HoldState(d["st"]),
        home=d["home"],
        participants=tuple(d["p"]),
        fingerprint=d["fp"],
        created_at=float(d["c"]),
        ttl=float(d["ttl"]),
        blocking=int(d["b"]),
        expires_at=float(d["x"]),
        deadline=float(d["d"]),
        votes=tuple(d["v"]),
    )


def _ended_json(e: Ended) -> dict[str, Any]:
    return {
        "id": e.hold_id,
        "o": e.outcome.value,
        "at": e.at,
        "s": e.start,
        "e": e.end,
        "home": e.home,
        "p": list(e.participants),
        "c": e.conflict.to_json() if e.conflict else None,
        "d": e.detail,
    }


def _ended_from(d: dict[str, Any]) -> Ended:
    return Ended(
        hold_id=d["id"],
        outcome=HoldEventKind(d["o"]),
        at=float(d["at"]),
        start=int(d["s"]),
        end=int(d["e"]),
        home=d["home"],
        participants=tuple(d["p"]),
        conflict=Conflict.from_json(d["c"]) if d.get("c") else None,
        detail=d.get("d") or "",
    )
