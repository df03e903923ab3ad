"""The free-slot finder: when can these resources meet, for how long, within which hours.

Pure and bounded: no I/O, no clock (the caller passes ``now``), and every request
is checked against :class:`SlotLimits` before any work is done.

**What a slot is.** For a :class:`SlotRequest` a slot is an interval
``[s, s + duration)`` such that

1. *it lies in the effective window*: ``s >= max(request.start, now + min_notice)``
   and ``s + duration <= min(request.end, horizon)``, where the horizon, if
   ``max_days_ahead`` is set, is the local midnight (in ``request.zone``) that ends
   the calendar day ``max_days_ahead`` days after today's local date: ``0`` means
   "today only", as on a booking page;
2. *it is aligned*: the wall-clock time of ``s`` in ``request.zone`` is a whole
   multiple of ``granularity`` after local midnight (``granularity`` divides a day,
   so every day has the same grid). Aligned to the viewer's clock, not to the
   epoch, so a viewer at +05:30 sees hourly slots at 09:00, 10:00, not 09:30;
3. *each counted resource is free for it*: the slot lies inside the resource's
   working hours, and ``[s - buffer_before, s + duration + buffer_after)`` holds no
   instant whose :class:`~calsync.availability.intervals.Flag`\\ s meet
   ``request.blocking``. Buffers apply to busy time only: a slot may start the
   moment working hours start even with a buffer before it;
4. *enough resources are free*: all of them (``required is None``), or at least
   ``required`` of them, the "N of M" mode of round-robin and pooled booking.

Slots come back in start order, one per aligned start (overlapping slots are all
listed: a booking page offers 09:00, 09:15, 09:30 for a 60-minute meeting), each
with the ids of the resources free for it, in the order the resources were given.
At most ``max_slots`` come back; :attr:`SlotResult.truncated` says whether more exist.

**Working hours** are wall-clock hours in the resource's IANA zone. An instant is
within working hours iff its local date and wall-clock time fall in one of that
date's spans, so the hours stay right on the days the offset changes: 09:00-17:00
on a spring-forward day is 8 hours of wall clock and 8 hours of real time; a span
01:00-03:00 across a spring-forward gap is one real hour (02:00-03:00 never
happens); a span 01:00-03:00 across a fall-back is three real hours (02:00-03:00
happens twice). Offset changes are found by probing the zone every 6 hours and
bisecting to the second, which assumes no zone changes its offset twice within 6
hours (none has).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from types import MappingProxyType

from calsync.availability.errors import InvalidAvailabilityRequest, RequestTooLarge
from calsync.availability.intervals import (
    DEFAULT_BLOCKING,
    Interval,
    Timeline,
    clip,
    epoch_seconds,
    intersect,
    normalize,
    subtract,
    widen,
)

__all__ = [
    "DEFAULT_LIMITS",
    "ResourceAvailability",
    "Slot",
    "SlotLimits",
    "SlotRequest",
    "SlotResult",
    "Span",
    "WorkingHours",
    "find_slots",
]

#: A local ``(start, end)`` wall-clock span of one day; ``end == time(0)`` means 24:00.
Span = tuple[time, time]

_DAY = 86_400
_MIDNIGHT = time(0)
_PROBE = 6 * 3600  # offset changes are at least this far apart in every zone


def _span_seconds(span: Span) -> tuple[int, int]:
    start, end = span
    if start.tzinfo is not None or end.tzinfo is not None:
        raise InvalidAvailabilityRequest(f"working-hours times are wall-clock times: {span}")
    s = start.hour * 3600 + start.minute * 60 + start.second
    e = _DAY if end == _MIDNIGHT else end.hour * 3600 + end.minute * 60 + end.second
    if start.microsecond or end.microsecond or not s < e:
        raise InvalidAvailabilityRequest(
            f"a span runs forward within one day, to whole seconds: {span}"
        )
    return s, e


def _frozen_spans(spans: Iterable[Span]) -> tuple[tuple[int, int], ...]:
    return tuple(sorted(_span_seconds(span) for span in spans))


@dataclass(frozen=True, slots=True)
class WorkingHours:
    """When a resource can be booked, in wall-clock time of its zone.

    ``weekly`` maps a weekday (``0`` = Monday, as :meth:`date.weekday`) to that
    day's spans; a missing weekday is closed. ``exceptions`` maps a local date to
    the spans that replace the weekly ones on that date; an empty sequence closes
    the date. Spans of one day may overlap (they are joined). Raises
    :class:`InvalidAvailabilityRequest` for a span that does not run forward
    within one day or carries a tzinfo, or a weekday outside ``0..6``.
    """

    zone: tzinfo
    weekly: Mapping[int, Sequence[Span]]
    exceptions: Mapping[date, Sequence[Span]] = field(default_factory=dict)
    # the spans as seconds after local midnight, checked once
    _weekly: Mapping[int, tuple[tuple[int, int], ...]] = field(
        init=False, repr=False, compare=False
    )
    _exceptions: Mapping[date, tuple[tuple[int, int], ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if any(day not in range(7) for day in self.weekly):
            raise InvalidAvailabilityRequest(f"weekdays are 0 (Monday) to 6: {sorted(self.weekly)}")
        weekly = {day: _frozen_spans(spans) for day, spans in self.weekly.items()}
        exceptions = {day: _frozen_spans(spans) for day, spans in self.exceptions.items()}
        object.__setattr__(self, "_weekly", MappingProxyType(weekly))
        object.__setattr__(self, "_exceptions", MappingProxyType(exceptions))

    @classmethod
    def weekdays(cls, zone: tzinfo, start: time = time(9), end: time = time(17)) -> WorkingHours:
        """Monday to Friday, ``start`` to ``end`` (09:00-17:00 unless told)."""
        return cls(zone, {day: [(start, end)] for day in range(5)})

    def intervals(self, start: int, end: int) -> list[Interval]:
        """The normalized working instants in ``[start, end)`` (epoch seconds)."""
        if start >= end:
            return []
        pieces = _offset_pieces(self.zone, start, end)
        # local dates that can touch [start, end): offsets stay within +-1 day
        first = datetime.fromtimestamp(start, UTC).date() - timedelta(days=1)
        last = datetime.fromtimestamp(end, UTC).date() + timedelta(days=1)
        out: list[Interval] = []
        day = first
        while day <= last:
            spans = self._exceptions.get(day)
            if spans is None:
                spans = self._weekly.get(day.weekday(), ())
            if spans:
                midnight = (day - _EPOCH_DATE).days * _DAY  # local midnight, read as UTC
                for span_start, span_end in spans:
                    wall_start, wall_end = midnight + span_start, midnight + span_end
                    for piece_start, piece_end, offset in pieces:
                        # in this piece wall = t + offset, so wall in [ws, we) <=> t in [ws-o, we-o)
                        s = max(wall_start - offset, piece_start)
                        e = min(wall_end - offset, piece_end)
                        if s < e:
                            out.append((s, e))
            day += timedelta(days=1)
        return normalize(out)


_EPOCH_DATE = date(1970, 1, 1)


def _offset(zone: tzinfo, moment: int) -> int:
    offset = datetime.fromtimestamp(moment, zone).utcoffset()
    assert offset is not None  # fromtimestamp with a tzinfo gives an aware datetime
    return offset.days * _DAY + offset.seconds


@functools.lru_cache(maxsize=1024)
def _offset_pieces(zone: tzinfo, start: int, end: int) -> list[tuple[int, int, int]]:
    """``[start, end)`` cut where ``zone``'s UTC offset changes: ``(a, b, offset)`` each.

    Cached: a query asks it once per resource, mostly for the same zone and window.
    Callers must not modify the list.
    """
    if zone is UTC:
        return [(start, end, 0)]
    pieces: list[tuple[int, int, int]] = []
    piece_start, offset = start, _offset(zone, start)
    probe, last = start, end - 1
    while probe < last:
        nxt = min(probe + _PROBE, last)
        if _offset(zone, nxt) != offset:
            lo, hi = probe, nxt  # offset(lo) == offset != offset(hi)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset(zone, mid) == offset:
                    lo = mid
                else:
                    hi = mid
            pieces.append((piece_start, hi, offset))
            piece_start, offset = hi, _offset(zone, hi)
        probe = nxt
    pieces.append((piece_start, end, offset))
    return pieces


@dataclass(frozen=True, slots=True)
class ResourceAvailability:
    """One resource as the finder sees it: its busy timeline and its working hours.

    ``busy`` must cover the request's window widened by its buffers; ``hours``
    ``None`` means bookable around the clock (a room without opening hours).
    """

    resource_id: str
    busy: Timeline
    hours: WorkingHours | None = None


@dataclass(frozen=True, slots=True)
class SlotLimits:
    """How much one request may ask for; past these :class:`RequestTooLarge` is raised."""

    max_window: timedelta = timedelta(days=62)
    max_slots: int = 1000
    max_resources: int = 100


DEFAULT_LIMITS = SlotLimits()


@dataclass(frozen=True, slots=True)
class SlotRequest:
    """What a booking page asks; the rules are in the module docstring.

    ``start``/``end``: the window (aware datetimes). ``granularity``: whole minutes
    dividing 24 hours. ``required``: ``None`` for "all resources free", or N for
    "at least N of them". ``blocking``: the flags that make time busy.
    """

    start: datetime
    end: datetime
    duration: timedelta
    granularity: timedelta = timedelta(minutes=15)
    buffer_before: timedelta = timedelta(0)
    buffer_after: timedelta = timedelta(0)
    min_notice: timedelta = timedelta(0)
    max_days_ahead: int | None = None
    zone: tzinfo = UTC
    blocking: int = DEFAULT_BLOCKING
    required: int | None = None
    max_slots: int = 100


@dataclass(frozen=True, slots=True)
class Slot:
    """``[start, end)`` (aware UTC datetimes) and the resources free for all of it."""

    start: datetime
    end: datetime
    available: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SlotResult:
    """The slots found, in start order; ``truncated`` if more existed past ``max_slots``."""

    slots: tuple[Slot, ...]
    truncated: bool


def _seconds(value: timedelta, name: str, *, positive: bool = False) -> int:
    if value.microseconds or value < timedelta(0) or (positive and not value):
        kind = "positive" if positive else "non-negative"
        raise InvalidAvailabilityRequest(f"{name} must be a {kind} whole number of seconds")
    return value.days * _DAY + value.seconds


def _instant(value: datetime, name: str) -> int:
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidAvailabilityRequest(f"{name} must be timezone-aware: {value!r}")
    return epoch_seconds(value)


def _check(
    resources: Sequence[ResourceAvailability], request: SlotRequest, limits: SlotLimits
) -> None:
    if not resources:
        raise InvalidAvailabilityRequest("no resources given")
    if len(resources) > limits.max_resources:
        raise RequestTooLarge(
            f"{len(resources)} resources, at most {limits.max_resources}",
            limit="max_resources",
            maximum=limits.max_resources,
            value=len(resources),
        )
    if len({r.resource_id for r in resources}) != len(resources):
        raise InvalidAvailabilityRequest("a resource is given twice")
    _instant(request.start, "start")  # before comparing: naive and aware do not compare
    _instant(request.end, "end")
    if request.end <= request.start:
        raise InvalidAvailabilityRequest("the window ends before it starts")
    if request.end - request.start > limits.max_window:
        raise RequestTooLarge(
            f"a window of {request.end - request.start}, at most {limits.max_window}",
            limit="max_window",
            maximum=limits.max_window,
            value=request.end - request.start,
        )
    if not 0 < request.max_slots <= limits.max_slots:
        if request.max_slots > limits.max_slots:
            raise RequestTooLarge(
                f"{request.max_slots} slots asked, at most {limits.max_slots}",
                limit="max_slots",
                maximum=limits.max_slots,
                value=request.max_slots,
            )
        raise InvalidAvailabilityRequest("max_slots must be positive")
    granularity = _seconds(request.granularity, "granularity", positive=True)
    if granularity % 60 or _DAY % granularity:
        raise InvalidAvailabilityRequest(
            f"granularity must be whole minutes dividing 24 hours: {request.granularity}"
        )
    if request.required is not None and not 1 <= request.required <= len(resources):
        raise InvalidAvailabilityRequest(
            f"required must be between 1 and {len(resources)}: {request.required}"
        )
    if request.max_days_ahead is not None and request.max_days_ahead < 0:
        raise InvalidAvailabilityRequest("max_days_ahead must not be negative")
    if not 0 <= request.blocking < 256:
        raise InvalidAvailabilityRequest(f"blocking is a flags byte: {request.blocking}")


def _horizon(now: datetime, request: SlotRequest) -> int | None:
    if request.max_days_ahead is None:
        return None
    today = now.astimezone(request.zone).date()
    last_midnight = datetime.combine(
        today + timedelta(days=request.max_days_ahead + 1), _MIDNIGHT, request.zone
    )
    # fold=0: a midnight inside a gap is the instant the gap starts
    return epoch_seconds(last_midnight)


def _start_ranges(free: Iterable[Interval], duration: int) -> list[Interval]:
    """The starts ``s`` with ``[s, s + duration)`` inside ``free``, as half-open ranges."""
    # integer seconds: "s <= b - duration" is "s < b - duration + 1"
    return [(a, b - duration + 1) for a, b in free if b - a >= duration]


def find_slots(
    resources: Sequence[ResourceAvailability],
    request: SlotRequest,
    *,
    now: datetime,
    limits: SlotLimits = DEFAULT_LIMITS,
) -> SlotResult:
    """The slots of ``request`` for ``resources`` at ``now`` (module docstring rules).

    Raises :class:`RequestTooLarge` past ``limits`` and
    :class:`InvalidAvailabilityRequest` for a malformed request, before any work.
    Cost: linear in busy segments and working spans in the window, plus the slots
    returned; never proportional to the window divided by the granularity.
    """
    _check(resources, request, limits)
    window_start = _instant(request.start, "start")
    window_end = _instant(request.end, "end")
    duration = _seconds(request.duration, "duration", positive=True)
    before = _seconds(request.buffer_before, "buffer_before")
    after = _seconds(request.buffer_after, "buffer_after")
    notice = _seconds(request.min_notice, "min_notice")
    granularity = _seconds(request.granularity, "granularity", positive=True)
    lo = max(window_start, _instant(now, "now") + notice)
    hi = window_end
    horizon = _horizon(now, request)
    if horizon is not None:
        hi = min(hi, horizon)
    if hi - lo < duration:
        return SlotResult((), truncated=False)

    need = len(resources) if request.required is None else request.required
    pieces = _offset_pieces(request.zone, lo, hi)
    ids = [r.resource_id for r in resources]
    # resources often share one WorkingHours (a pool, or one request's parsed hours)
    working_of: dict[int, list[Interval]] = {}
    starts: list[list[Interval]] = []  # each resource's slot starts, normalized
    for resource in resources:
        if resource.hours is None:
            working = [(lo, hi)]
        else:
            key = id(resource.hours)  # alive for the whole call: ids are not reused
            if key not in working_of:
                working_of[key] = resource.hours.intervals(lo, hi)
            working = working_of[key]
        # a busy [b0, b1) rules out slots [s, s+d) with s - before < b1 and s + d + after > b0
        busy = resource.busy.blocking(lo - before, hi + after, request.blocking)
        if before or after:  # blocking() is normalized already: widen only re-sorts it
            busy = widen(busy, after, before)
        # disjoint, non-touching free intervals give disjoint, non-touching start ranges
        starts.append(_start_ranges(subtract(working, clip(busy, lo, hi)), duration))

    slots: list[Slot] = []

    def emit(first: int, end: int, available: tuple[str, ...]) -> bool:
        """Add the slots starting on the grid in ``[first, end)``; ``False`` when full."""
        for start in _aligned(pieces, first, end, granularity):
            if len(slots) == request.max_slots:
                return False
            slots.append(
                Slot(
                    datetime.fromtimestamp(start, UTC),
                    datetime.fromtimestamp(start + duration, UTC),
                    available,
                )
            )
        return True

    if need == len(resources):
        # all of them (the common request): the starts every resource allows, by merging
        common = starts[0]
        for ranges in starts[1:]:
            common = intersect(common, ranges)
        everyone = tuple(ids)
        for a, b in common:
            if not emit(a, b, everyone):
                return SlotResult(tuple(slots), truncated=True)
        return SlotResult(tuple(slots), truncated=False)

    # N of M: sweep the start ranges' ends in time order, keeping who is free
    events: list[tuple[int, int, int]] = []  # (time, +1 opens / -1 closes, resource index)
    for index, ranges in enumerate(starts):
        for a, b in ranges:
            events.append((a, 1, index))
            events.append((b, -1, index))
    events.sort()
    members: set[int] = set()
    i, count = 0, len(events)
    while i < count:
        moment = events[i][0]
        while i < count and events[i][0] == moment:
            _, step, index = events[i]
            if step > 0:
                members.add(index)
            else:
                members.discard(index)
            i += 1
        if len(members) < need or i == count:
            continue
        if not emit(moment, events[i][0], tuple(ids[k] for k in sorted(members))):
            return SlotResult(tuple(slots), truncated=True)
    return SlotResult(tuple(slots), truncated=False)


def _aligned(
    pieces: Sequence[tuple[int, int, int]], start: int, end: int, granularity: int
) -> Iterator[int]:
    """The instants in ``[start, end)`` whose wall clock is on the granularity grid."""
    for piece_start, piece_end, offset in pieces:
        a, b = max(start, piece_start), min(end, piece_end)
        if a >= b:
            continue
        # wall = t + offset; the first wall >= a + offset on the grid, back in UTC
        t = -(-(a + offset) // granularity) * granularity - offset
        while t < b:
            yield t
            t += granularity
