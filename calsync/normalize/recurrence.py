"""Expand one iCalendar object (a CalDAV resource) into busy occurrences in UTC.

:func:`expand_calendar` parses a VCALENDAR (a master VEVENT, its RECURRENCE-ID
overrides, optional VTIMEZONEs) and returns one :class:`~calsync.model.Occurrence`
per instance that overlaps the window. Nothing personal is read: only UID, times,
recurrence properties, TRANSP, STATUS and (with ``own_address``) the owner's
PARTSTAT.

Decisions, each a reading of RFC 5545:

* **Ids.** A non-recurring event is ``<UID>``; an instance of a series is
  ``<UID>/<RECURRENCE-ID>`` with the recurrence id in UTC (``YYYYMMDDTHHMMSSZ``) or,
  for all-day series, the date (``YYYYMMDD``); its ``series_id`` is the UID. A
  component counts as a series when it has an RRULE or RDATE, or overrides.
* **Zones.** A TZID names a VTIMEZONE of the object, an IANA zone, or a Windows
  zone (:func:`calsync.normalize.windows_zones.zone_for`); anything else raises
  :class:`MalformedProviderData`. Floating times (no TZID, no ``Z``) and all-day
  dates are read in ``default_zone``.
* **Expansion in wall time.** Rules are expanded on the wall clock of DTSTART's
  zone, then each wall time becomes an instant: a time skipped by a DST gap takes
  the offset in force before the gap (02:30 on a spring-forward day is 03:30 after
  it, RFC 5545 3.3.5); a time repeated by a DST overlap is its first occurrence.
* **Durations.** DTEND gives the exact duration of the first instance, applied to
  every instance (RFC 5545 3.8.5.3). DURATION's days and weeks are nominal (added
  on the wall clock), its hours/minutes/seconds exact. No DTEND nor DURATION:
  one day for a DATE, zero length for a DATE-TIME. All-day instances run from
  local midnight to local midnight in ``default_zone`` (DTEND exclusive).
* **Exceptions.** EXDATE removes instances (a DATE EXDATE on a timed series
  removes every instance on that local day). An override replaces the instance
  whose RECURRENCE-ID it names (even one the rule does not produce, as most
  servers do); a STATUS:CANCELLED override removes it. ``RANGE=THISANDFUTURE``
  applies the override's wall-clock shift, duration and status to that instance
  and every later one, until a later THISANDFUTURE override takes over.
* **Busy state** comes from :func:`calsync.normalize.busy.status_intent`; instances whose
  intent is ``CANCELLED`` are left out (there is no busy time to report; the diff
  against the previous listing turns them into deletions).

Only VEVENTs are read; VTODO, VJOURNAL and VFREEBUSY are ignored. Every failure
raises :class:`~calsync.errors.MalformedProviderData` with the UID as ``item_id``.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import time as _clock
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from dateutil.relativedelta import relativedelta  # type: ignore[import-untyped]  # no stubs
from dateutil.rrule import rrulestr  # type: ignore[import-untyped]  # no stubs installed
from icalendar import Calendar, Component

from calsync.errors import MalformedProviderData
from calsync.model import Occurrence, StatusIntent, Transparency, Window
from calsync.normalize.busy import BusyPolicy, status_intent
from calsync.normalize.windows_zones import zone_for

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_STEPS",
    "Expansion",
    "ExpansionLimits",
    "Notice",
    "expand_calendar",
    "expand_component",
    "expand_object",
    "wall_to_utc",
]


@dataclass(frozen=True, slots=True)
class ExpansionLimits:
    """What one iCalendar object may cost. Its content is attacker-controlled: anyone
    who can send an invitation into a synced calendar writes it.

    ``series_instances`` is 5,000 instances of one series inside the horizon. The
    default horizon is 395 days; the densest real busy patterns fit well inside it
    (daily: 395; every office hour on weekdays: about 2,500), while hourly around
    the clock (9,480) or denser says "always busy", which the collapsed block says
    too. 5,000 occurrences cost about 0.2 s of CPU and keep one series' ids in the
    CalDAV cursor (about 60 bytes each) well under Kafka's 1 MB record limit.
    """

    #: Instances of one series inside the window; more collapse it into one block.
    series_instances: int = 5_000
    #: Occurrences of one object (all its UIDs); UIDs past this are dropped. RFC 4791
    #: wants one UID per resource: the slack is for exports that hold several.
    object_instances: int = 10_000
    #: RDATE values, and EXDATE values, of one series; more collapse it.
    dates: int = 10_000
    #: RECURRENCE-ID overrides of one UID; more collapse the series.
    overrides: int = 2_000
    #: Rule steps walked for one object (skipped and kept); more refuse the UID.
    steps: int = 500_000
    #: CPU seconds (of the expanding thread) for one object; more refuse the UID.
    cpu_seconds: float = 2.0
    #: Size of the object's text; a bigger one is refused before it is parsed.
    object_bytes: int = 4 * 1024 * 1024
    #: Notices listed per object; the rest are counted in one last notice.
    notices: int = 20


DEFAULT_LIMITS = ExpansionLimits()

#: Rule steps walked per object (kept for callers of the old name).
MAX_STEPS = DEFAULT_LIMITS.steps

#: How often (in rule steps) the CPU budget is read.
_CHECK_EVERY = 256

_DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Notice:
    """Something of one UID that was not expanded as written, and what was done instead.

    ``reason`` starts with ``collapsed:`` (the series became one block) or
    ``dropped:`` (a component, or the UID, was left out); it names no personal data.
    """

    uid: str
    reason: str


@dataclass(frozen=True, slots=True)
class Expansion:
    """The occurrences of one object, sorted by start then id, and what was not expanded."""

    occurrences: list[Occurrence]
    notices: list[Notice] = field(default_factory=list)


class _TooBig(Exception):
    """A series over a cap: it is collapsed. ``first`` is its first start seen in the window."""

    def __init__(self, reason: str, first: datetime | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.first = first


class _Budget:
    """The steps, CPU time and occurrences one object may still spend, shared by its UIDs."""

    def __init__(self, limits: ExpansionLimits) -> None:
        self.limits = limits
        self.steps = 0
        self.instances = 0
        # thread CPU time: fair when several expansions run in threads at once
        self.deadline = _clock.thread_time() + limits.cpu_seconds

    def step(self, uid: str) -> None:
        self.steps += 1
        if self.steps > self.limits.steps:
            raise MalformedProviderData(
                "the series has too many instances before the window ends", item_id=uid
            )
        if self.steps % _CHECK_EVERY == 0:
            self.check(uid)

    def check(self, uid: str) -> None:
        if _clock.thread_time() > self.deadline:
            raise MalformedProviderData(
                f"expansion exceeded its CPU budget of {self.limits.cpu_seconds:g} s", item_id=uid
            )


class _Notes:
    """The notices of one object, at most ``limit`` of them listed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.listed: list[Notice] = []
        self.more = 0
        self.first_unlisted = ""

    def add(self, uid: str, reason: str) -> None:
        if len(self.listed) < self.limit:
            self.listed.append(Notice(uid, reason))
            return
        if not self.more:
            self.first_unlisted = uid
        self.more += 1

    def notices(self) -> list[Notice]:
        if not self.more:
            return list(self.listed)
        return [
            *self.listed,
            Notice(self.first_unlisted, f"{self.more} further notices not listed"),
        ]


def wall_to_utc(wall: datetime, zone: tzinfo) -> datetime:
    """The UTC instant of the naive wall time ``wall`` in ``zone``.

    A wall time the zone skips (DST gap) takes the offset in force before the
    gap; one it repeats (DST overlap) is the earlier instant. Works for any
    ``tzinfo`` that converts from UTC correctly (zoneinfo, VTIMEZONE-built zones).
    """
    offsets: set[timedelta] = set()
    for fold in (0, 1):
        offset = wall.replace(tzinfo=zone, fold=fold).utcoffset()
        if offset is not None:
            offsets.add(offset)
    if not offsets:
        raise ValueError("zone without a UTC offset")
    # the offsets around the wall time, whatever the zone claims for it
    guess = wall - next(iter(offsets))
    before = _offset_at(guess - _DAY, zone)
    offsets |= {before, _offset_at(guess + _DAY, zone)}
    valid = [wall - offset for offset in offsets if _local(wall - offset, zone) == wall]
    instant = min(valid) if valid else wall - before
    return instant.replace(tzinfo=UTC)


def _offset_at(naive_utc: datetime, zone: tzinfo) -> timedelta:
    offset = naive_utc.replace(tzinfo=UTC).astimezone(zone).utcoffset()
    assert offset is not None
    return offset


def _local(naive_utc: datetime, zone: tzinfo) -> datetime:
    return naive_utc.replace(tzinfo=UTC).astimezone(zone).replace(tzinfo=None)


def _rid(value: datetime | date) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return value.strftime("%Y%m%d")


@dataclass(frozen=True, slots=True)
class _Instance:
    """One instance of a series: its wall start in the series zone and its key."""

    wall: datetime
    key: datetime | date  # UTC instant, or the date of an all-day series
    end: datetime | None = None  # an RDATE period's own end (UTC)


@dataclass(slots=True)
class _Times:
    """How one component's times are read."""

    all_day: bool
    zone: tzinfo
    wall: datetime  # DTSTART on the wall clock of ``zone`` (midnight for dates)
    nominal: timedelta  # whole days added on the wall clock
    exact: timedelta  # added to the UTC start


class _Expander:
    def __init__(
        self,
        uid: str,
        *,
        window: Window,
        default_zone: ZoneInfo,
        policy: BusyPolicy,
        own_address: str | None,
        budget: _Budget,
        notes: _Notes,
    ) -> None:
        self.uid = uid
        self.window = window
        self.default_zone = default_zone
        self.policy = policy
        self.own_address = own_address.casefold().removeprefix("mailto:") if own_address else None
        self.budget = budget
        self.limits = budget.limits
        self.notes = notes
        self.intents: dict[tuple[int, bool], tuple[StatusIntent, Transparency]] = {}

    def fail(self, reason: str) -> MalformedProviderData:
        return MalformedProviderData(reason, item_id=self.uid)

    def note(self, reason: str) -> None:
        self.notes.add(self.uid, reason)

    # -- values ------------------------------------------------------------------

    def value(self, component: Component, name: str) -> Any:
        prop = component.get(name)
        if prop is None:
            return None
        if isinstance(prop, list):
            raise self.fail(f"{name} appears more than once")
        value = component.decoded(name)
        return self.resolve(value, prop)

    def resolve(self, value: Any, prop: Any) -> Any:
        """Attach the zone a TZID names when icalendar could not (Windows names)."""
        if isinstance(value, datetime) and value.tzinfo is None:
            tzid = getattr(prop, "params", {}).get("TZID")
            if tzid:
                return value.replace(tzinfo=self.named_zone(str(tzid)))
        return value

    def named_zone(self, tzid: str) -> tzinfo:
        try:
            return zone_for(tzid)
        except MalformedProviderData:
            raise self.fail(f"unknown time zone {tzid!r}") from None

    def times(self, component: Component) -> _Times:
        start = self.value(component, "DTSTART")
        if start is None:
            raise self.fail("VEVENT without DTSTART")
        end = self.value(component, "DTEND")
        duration = self.value(component, "DURATION")
        if isinstance(start, datetime):
            zone = start.tzinfo or self.default_zone
            wall = start.replace(tzinfo=None)
            if isinstance(end, datetime):
                exact = self.to_utc(end, zone) - wall_to_utc(wall, zone)
                nominal = timedelta(0)
            elif end is not None:
                raise self.fail("DTSTART is a DATE-TIME but DTEND is a DATE")
            elif isinstance(duration, timedelta):
                nominal, exact = timedelta(days=duration.days), timedelta(seconds=duration.seconds)
                if duration.microseconds:
                    exact += timedelta(microseconds=duration.microseconds)
            elif duration is not None:
                raise self.fail("DURATION is not a duration")
            else:
                nominal = exact = timedelta(0)
            if nominal < timedelta(0) or (nominal == timedelta(0) and exact < timedelta(0)):
                raise self.fail("the event ends before it starts")
            return _Times(False, zone, wall, nominal, exact)
        if not isinstance(start, date):
            raise self.fail("DTSTART is neither a DATE nor a DATE-TIME")
        if isinstance(end, datetime):
            raise self.fail("DTSTART is a DATE but DTEND is a DATE-TIME")
        if isinstance(end, date):
            days = (end - start).days
        elif isinstance(duration, timedelta):
            # an all-day event lasts whole days; a part day still blocks that day
            days = duration.days + (1 if duration - timedelta(days=duration.days) else 0)
        elif duration is not None:
            raise self.fail("DURATION is not a duration")
        else:
            days = 1
        if days < 0:
            raise self.fail("the event ends before it starts")
        wall = datetime.combine(start, time(0))
        return _Times(True, self.default_zone, wall, timedelta(days=days), timedelta(0))

    def to_utc(self, value: datetime, zone: tzinfo) -> datetime:
        """An aware value's instant, or a floating one read in ``zone``."""
        if value.tzinfo is None:
            return wall_to_utc(value, zone)
        return wall_to_utc(value.replace(tzinfo=None), value.tzinfo)

    def to_wall(self, value: datetime | date, times: _Times) -> datetime:
        """``value`` on the wall clock of the series' zone."""
        if not isinstance(value, datetime):
            return datetime.combine(value, times.wall.time())
        if value.tzinfo is None:
            return value
        return self.to_utc(value, times.zone).astimezone(times.zone).replace(tzinfo=None)

    def key(self, wall: datetime, times: _Times) -> datetime | date:
        return wall.date() if times.all_day else wall_to_utc(wall, times.zone)

    def recurrence_key(self, value: datetime | date, times: _Times) -> datetime | date:
        if times.all_day:
            if isinstance(value, datetime):
                return self.to_wall(value, times).date()
            return value
        if isinstance(value, datetime):
            return self.to_utc(value, times.zone)
        return wall_to_utc(datetime.combine(value, times.wall.time()), times.zone)

    def span(self, wall: datetime, times: _Times) -> tuple[datetime, datetime]:
        start = wall_to_utc(wall, times.zone)
        end = wall_to_utc(wall + times.nominal, times.zone) + times.exact
        return start, end

    # -- busy state --------------------------------------------------------------

    def intent(self, component: Component, all_day: bool) -> tuple[StatusIntent, Transparency]:
        # read once per component: a series asks again for every instance
        cache_key = (id(component), all_day)
        cached = self.intents.get(cache_key)
        if cached is None:
            cached = self.intents[cache_key] = self.read_intent(component, all_day)
        return cached

    def read_intent(self, component: Component, all_day: bool) -> tuple[StatusIntent, Transparency]:
        transp = str(component.get("TRANSP", "OPAQUE")).upper()
        transparency = Transparency.TRANSPARENT if transp == "TRANSPARENT" else Transparency.OPAQUE
        status = component.get("STATUS")
        return status_intent(
            self.policy,
            transparency=transparency,
            status=str(status) if status is not None else None,
            own_response=self.own_response(component),
            all_day=all_day,
        )

    def own_response(self, component: Component) -> str | None:
        if self.own_address is None:
            return None
        attendees = component.get("ATTENDEE")
        if attendees is None:
            return None
        for attendee in attendees if isinstance(attendees, list) else [attendees]:
            if str(attendee).casefold().removeprefix("mailto:") == self.own_address:
                partstat = getattr(attendee, "params", {}).get("PARTSTAT", "NEEDS-ACTION")
                return str(partstat)
        return None

    def occurrence(
        self,
        component: Component,
        start: datetime,
        end: datetime,
        all_day: bool,
        native_id: str,
        series: bool,
    ) -> Occurrence | None:
        if not self.window.overlaps(start, end) and not (
            start == end and self.window.start <= start < self.window.end
        ):
            return None
        intent, transparency = self.intent(component, all_day)
        if intent is StatusIntent.CANCELLED:
            return None
        return Occurrence(
            native_event_id=native_id,
            start_utc=start,
            end_utc=end,
            is_all_day=all_day,
            transparency=transparency,
            status_intent=intent,
            series_id=self.uid if series else None,
        )

    # -- expansion ---------------------------------------------------------------

    def expand(self, master: Component | None, overrides: Sequence[Component]) -> list[Occurrence]:
        if master is None:
            return self.expand_orphans(overrides)
        times = self.times(master)
        series = bool(overrides) or any(name in master for name in ("RRULE", "RDATE"))
        if not series:
            start, end = self.span(times.wall, times)
            occurrence = self.occurrence(master, start, end, times.all_day, self.uid, False)
            return [occurrence] if occurrence is not None else []
        try:
            return self.expand_series(master, times, overrides)
        except _TooBig as big:
            return self.collapsed(master, times, big)

    def expand_orphans(self, overrides: Sequence[Component]) -> list[Occurrence]:
        """Overrides without their master (an invitation to single instances): each
        stands alone. One that cannot be read is dropped; if none can, the UID fails."""
        limit = self.limits.overrides
        if len(overrides) > limit:
            self.note(
                f"dropped: {len(overrides) - limit} of {len(overrides)} instances without a "
                f"recurring master (at most {limit} are read)"
            )
            overrides = overrides[:limit]
        found = []
        failures: list[MalformedProviderData] = []
        for override in overrides:
            self.budget.check(self.uid)
            try:
                times = self.times(override)
                recurrence_id = self.value(override, "RECURRENCE-ID")
                key = self.recurrence_key(recurrence_id, times)
            except MalformedProviderData as exc:
                failures.append(exc)
                continue
            start, end = self.span(times.wall, times)
            native = f"{self.uid}/{_rid(key)}"
            occurrence = self.occurrence(override, start, end, times.all_day, native, True)
            if occurrence is not None:
                found.append(occurrence)
        if failures and len(failures) == len(overrides):
            raise failures[0]
        for failure in failures:
            self.note(f"dropped: an instance without its master: {failure}")
        return found

    def expand_series(
        self, master: Component, times: _Times, overrides: Sequence[Component]
    ) -> list[Occurrence]:
        """Every instance of the series in the window; raises :class:`_TooBig` past a cap.

        The caps cut the work itself: the date lists are counted before they are read,
        and the rule walk stops at the first instance past ``series_instances``.
        """
        limits = self.limits
        if len(overrides) > limits.overrides:
            raise _TooBig(f"{len(overrides)} overrides (at most {limits.overrides} are read)")
        for name in ("RDATE", "EXDATE"):
            count = self.count_dates(master, name)
            if count > limits.dates:
                raise _TooBig(f"{count} {name} values (at most {limits.dates} are read)")

        single: dict[datetime | date, tuple[Component, _Times]] = {}
        future: list[tuple[datetime | date, Component, timedelta, _Times]] = []
        for override in sorted(overrides, key=_sequence):
            self.budget.check(self.uid)
            try:
                prop = override.get("RECURRENCE-ID")
                recurrence_id = self.value(override, "RECURRENCE-ID")
                key = self.recurrence_key(recurrence_id, times)
                override_times = self.times(override)
                thisandfuture = (
                    str(getattr(prop, "params", {}).get("RANGE", "")).upper() == "THISANDFUTURE"
                )
                if thisandfuture:
                    shift, shifted = self.recurrence_key_shift(key, override_times, times)
            except MalformedProviderData as exc:
                # the instance it would replace stays as the series has it: still busy
                self.note(f"dropped: an override (RECURRENCE-ID {_ical_text(prop)}): {exc}")
                continue
            single[key] = (override, override_times)
            if thisandfuture:
                future.append((key, override, shift, shifted))
        future.sort(key=lambda item: _sortable(item[0]))
        future_keys = [_sortable(item[0]) for item in future]
        shifts = [item[2] for item in future]
        # instances that THISANDFUTURE moves earlier must still be generated; those it
        # moves later, or that last long, may start before the window and reach into it
        lookahead = max([timedelta(0)] + [-shift for shift in shifts])
        lookbehind = max([timedelta(0), *shifts]) + max(
            [times.nominal + times.exact] + [t.nominal + t.exact for *_, t in future]
        )
        lower = self.window.start - lookbehind - timedelta(days=2)
        stop = self.window.end + lookahead + timedelta(days=2)

        found: list[Occurrence] = []
        seen: set[datetime | date] = set()
        inside = 0
        first: datetime | None = None
        for instance in self.instances(master, times, lower, stop):
            if instance.key in seen:
                continue
            seen.add(instance.key)
            native = f"{self.uid}/{_rid(instance.key)}"
            if instance.key in single:
                continue  # the override speaks for itself below
            index = bisect.bisect_right(future_keys, _sortable(instance.key)) - 1
            source, wall = master, instance.wall
            if index >= 0:
                _, source, shift, span_times = future[index]
                wall = instance.wall + shift
                start, end = self.span(wall, span_times)
            elif instance.end is not None:
                start, end = wall_to_utc(wall, times.zone), instance.end
            else:
                start, end = self.span(wall, times)
            if self.inside(start, end):
                inside += 1
                first = start if first is None else min(first, start)
                if inside > limits.series_instances:
                    raise _TooBig(
                        f"more than {limits.series_instances} instances in the sync horizon",
                        first,
                    )
            occurrence = self.occurrence(source, start, end, times.all_day, native, True)
            if occurrence is not None:
                found.append(occurrence)
        for key, (override, override_times) in single.items():
            start, end = self.span(override_times.wall, override_times)
            native = f"{self.uid}/{_rid(key)}"
            occurrence = self.occurrence(override, start, end, override_times.all_day, native, True)
            if occurrence is not None:
                found.append(occurrence)
        found.sort(key=lambda o: (o.start_utc, o.native_event_id))
        return found

    def inside(self, start: datetime, end: datetime) -> bool:
        return self.window.overlaps(start, end) or (
            start == end and self.window.start <= start < self.window.end
        )

    def collapsed(self, master: Component, times: _Times, big: _TooBig) -> list[Occurrence]:
        """The series as one block ``<UID>/collapsed``, from its first instance in the
        window to its last one's end (the window's end when that is not cheap to know).

        Reporting the gaps between instances as busy errs the safe way: "when unsure,
        the slot stays busy"; the busy state is the master's.
        """
        self.note(f"collapsed: {big.reason}; reported as one block")
        start = big.first
        if start is None:
            start = max(self.window.start, wall_to_utc(times.wall, times.zone))
        if times.all_day:  # from a local midnight, as every all-day occurrence
            day = _local(start.replace(tzinfo=None), times.zone).date()
            start = wall_to_utc(datetime.combine(day, time(0)), times.zone)
        end = self.window.end
        last = self.last_end(master, times)
        if last is not None:
            end = min(end, last)
        if end <= start:
            return []
        occurrence = self.occurrence(
            master, start, end, times.all_day, f"{self.uid}/collapsed", True
        )
        return [occurrence] if occurrence is not None else []

    def last_end(self, master: Component, times: _Times) -> datetime | None:
        """The end of the series' last instance when every RRULE has an UNTIL (and there
        are no RDATEs); ``None`` otherwise. Overrides moving instances later are not read."""
        rules = master.get("RRULE")
        if rules is None or "RDATE" in master:
            return None
        ends: list[datetime] = []
        for rule in rules if isinstance(rules, list) else [rules]:
            try:
                _, until = self.rule_text(rule, times)
                if until is None:
                    return None
                wall = (
                    datetime.combine(until, time(0))
                    if not isinstance(until, datetime)
                    else until.astimezone(times.zone).replace(tzinfo=None)
                )
                ends.append(self.span(wall, times)[1])
            except (MalformedProviderData, ValueError, OverflowError):
                return None
        return max(ends)

    def recurrence_key_shift(
        self, key: datetime | date, override_times: _Times, times: _Times
    ) -> tuple[timedelta, _Times]:
        """A THISANDFUTURE override's wall-clock shift, and the times later instances take."""
        if override_times.all_day != times.all_day:
            raise self.fail("a THISANDFUTURE override changes the event between all-day and timed")
        if isinstance(key, datetime):
            original = key.astimezone(times.zone).replace(tzinfo=None)
            new = self.to_wall(wall_to_utc(override_times.wall, override_times.zone), times)
        else:
            original = datetime.combine(key, time(0))
            new = override_times.wall
        shifted = _Times(
            times.all_day, times.zone, times.wall, override_times.nominal, override_times.exact
        )
        return new - original, shifted

    def instances(
        self, master: Component, times: _Times, lower: datetime, stop: datetime
    ) -> Iterator[_Instance]:
        """The series' instances in start order, EXDATEs removed, from about ``lower``
        until ``stop`` (UTC). Rule instances before ``lower`` are skipped unread."""
        excluded_keys: set[datetime | date] = set()
        excluded_days: set[date] = set()
        for value in self.dates(master, "EXDATE"):
            if isinstance(value, tuple):
                raise self.fail("EXDATE cannot be a PERIOD")
            if not times.all_day and not isinstance(value, datetime):
                excluded_days.add(value)
            else:
                excluded_keys.add(self.recurrence_key(value, times))

        extra: list[_Instance] = []
        for value in self.dates(master, "RDATE"):
            end: datetime | None = None
            if isinstance(value, tuple):
                begin, until = value
                if not isinstance(begin, datetime) or times.all_day:
                    raise self.fail("RDATE PERIOD on an all-day series")
                end = (
                    self.to_utc(begin + until, times.zone)
                    if isinstance(until, timedelta)
                    else self.to_utc(until, times.zone)
                )
                value = begin
            wall = self.to_wall(value, times)
            extra.append(_Instance(wall, self.key(wall, times), end))
        extra.sort(key=lambda i: _sortable(i.key))

        merged = _merge(self.rule_walls(master, times, lower, stop), extra)
        stop_wall = _local(stop.replace(tzinfo=None), times.zone) + _DAY
        for instance in merged:
            if instance.wall > stop_wall:
                return
            if instance.key in excluded_keys or instance.wall.date() in excluded_days:
                continue
            yield instance

    def rule_walls(
        self, master: Component, times: _Times, lower: datetime, stop: datetime
    ) -> Iterator[_Instance]:
        """DTSTART and the union of the RRULEs' instances, in order, without repeats.

        RFC 5545 allows several RRULEs (only discouraged): the instance set is their
        union. Walls before ``lower`` (less a day for the zone's offset) are skipped
        without being converted, and each rule is fast-forwarded there when it has no
        COUNT, so a dense rule that began years ago costs what its horizon costs.
        """
        rules = master.get("RRULE")
        lower_wall = _local(lower.replace(tzinfo=None), times.zone) - _DAY
        if rules is None:
            yield _Instance(times.wall, self.key(times.wall, times))
            return
        parsed = [self.rule(rule, times, lower_wall) for rule in _as_list(rules)]
        stop_wall = _local(stop.replace(tzinfo=None), times.zone) + _DAY
        streams = [
            self.rule_stream(rule, until, times, lower_wall, stop_wall) for rule, until in parsed
        ]
        key = self.key(times.wall, times)
        # RFC 5545: DTSTART is always the first instance, even if the rules skip it
        # (unless it is past every UNTIL)
        previous: datetime | None = None
        if times.wall >= lower_wall and any(
            until is None or _sortable(key) <= _sortable(until) for _, until in parsed
        ):
            previous = times.wall
            yield _Instance(times.wall, key)
        for wall in heapq.merge(*streams):
            if wall == previous:
                continue
            previous = wall
            yield _Instance(wall, self.key(wall, times))
            if wall > stop_wall:
                return

    def rule(
        self, rule: Any, times: _Times, lower_wall: datetime
    ) -> tuple[Any, datetime | date | None]:
        """One RRULE as a dateutil rule on the wall clock, and its UNTIL key."""
        text, until = self.rule_text(rule, times)
        start = times.wall
        try:
            freq = str(rule.get("FREQ", [""])[0]).upper()
            interval = int(rule.get("INTERVAL", [1])[0] or 1)
            if "COUNT" not in rule and lower_wall > start and interval > 0:
                start = _fast_forward(start, freq, interval, lower_wall)
            return rrulestr(text, dtstart=start, ignoretz=True), until
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
            raise self.fail(f"unusable RRULE: {exc}") from exc

    def rule_stream(
        self,
        rule: Any,
        until: datetime | date | None,
        times: _Times,
        lower_wall: datetime,
        stop_wall: datetime,
    ) -> Iterator[datetime]:
        """One rule's walls from ``lower_wall``, through UNTIL (applied in UTC), one past
        ``stop_wall``. Every wall walked is a step of the object's budget.

        The budget is read between instances only: dateutil looks for the next one
        without yielding, up to year 9999 for a rule that never matches again (about
        5 s for a secondly one). So it is also read before each rule starts, which
        bounds an object by its budget plus one such search.
        """
        self.budget.check(self.uid)
        for wall in rule:
            self.budget.step(self.uid)
            if until is not None and self.past(wall, until, times):
                return
            if wall < lower_wall:
                continue
            yield wall
            if wall > stop_wall:
                return

    def past(self, wall: datetime, until: datetime | date, times: _Times) -> bool:
        """Whether the instance at ``wall`` comes after UNTIL (converted only near it)."""
        if not isinstance(until, datetime):
            return wall.date() > until
        naive = until.replace(tzinfo=None)  # a wall time is within a day of its UTC time
        if wall - _DAY > naive:
            return True
        if wall + _DAY < naive:
            return False
        return _sortable(self.key(wall, times)) > until

    def rule_text(self, rule: Any, times: _Times) -> tuple[str, datetime | date | None]:
        """The RRULE without UNTIL (applied by key instead, in UTC) and the UNTIL key."""
        parts = dict(rule)
        until_values = parts.pop("UNTIL", None)
        until: datetime | date | None = None
        if until_values:
            value = until_values[0]
            if times.all_day:
                until = self.recurrence_key(value, times)
            elif isinstance(value, datetime):
                until = self.to_utc(value, times.zone)
            else:  # a DATE UNTIL on a timed series: through the end of that day
                until = wall_to_utc(datetime.combine(value, time(0)) + _DAY, times.zone)
                until -= timedelta(microseconds=1)
        rest = type(rule)(parts)
        try:
            text = rest.to_ical().decode()
        except (ValueError, TypeError, AttributeError) as exc:
            raise self.fail(f"unusable RRULE: {exc}") from exc
        return "RRULE:" + text, until

    def count_dates(self, component: Component, name: str) -> int:
        """How many values the ``name`` properties hold, without converting any."""
        props = component.get(name)
        if props is None:
            return 0
        return sum(len(getattr(prop, "dts", ())) for prop in _as_list(props))

    def dates(self, component: Component, name: str) -> Iterator[Any]:
        props = component.get(name)
        if props is None:
            return
        for prop in _as_list(props):
            for item in getattr(prop, "dts", ()):
                value = item.dt
                if isinstance(value, tuple):
                    yield tuple(self.resolve(part, prop) for part in value)
                else:
                    yield self.resolve(value, prop)


#: Sub-monthly frequencies as exact steps on the (naive) wall clock.
_STEPS = {
    "SECONDLY": timedelta(seconds=1),
    "MINUTELY": timedelta(minutes=1),
    "HOURLY": timedelta(hours=1),
    "DAILY": _DAY,
    "WEEKLY": timedelta(weeks=1),
}


def _fast_forward(start: datetime, freq: str, interval: int, target: datetime) -> datetime:
    """The latest ``start + k * interval * FREQ`` not after ``target``.

    Without COUNT, a rule's instance set from there on is the one it has from
    ``start``: dateutil walks whole periods from DTSTART and fills missing BYxxx
    parts from DTSTART's fields, which whole periods keep (months only while the day
    of month exists in every month, so day 29-31 starts are not moved).
    """
    step = _STEPS.get(freq)
    if step is not None:
        period = step * interval
        return start + period * ((target - start) // period)
    months = {"MONTHLY": 1, "YEARLY": 12}.get(freq)
    if months is None or start.day > 28:
        return start
    period_months = months * interval
    elapsed = (target.year - start.year) * 12 + target.month - start.month - 1
    if elapsed < period_months:
        return start
    moved: datetime = start + relativedelta(months=period_months * (elapsed // period_months))
    return moved


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _ical_text(prop: Any) -> str:
    try:
        return str(prop.to_ical().decode())
    except Exception:  # any shape icalendar gives a broken property
        return "?"


def _sequence(component: Component) -> int:
    try:
        return int(component.get("SEQUENCE", 0) or 0)
    except (TypeError, ValueError):
        return 0


def _stamp(component: Component) -> datetime:
    """The later of DTSTAMP and LAST-MODIFIED (UTC), the earliest instant if neither reads."""
    stamps = [datetime.min.replace(tzinfo=UTC)]
    for name in ("DTSTAMP", "LAST-MODIFIED"):
        value: object = None
        with contextlib.suppress(Exception):  # an unreadable stamp only loses its vote
            value = component.decoded(name) if name in component else None
        if isinstance(value, datetime):
            stamps.append(value if value.tzinfo else value.replace(tzinfo=UTC))
        elif isinstance(value, date):
            stamps.append(datetime.combine(value, time(0), tzinfo=UTC))
    return max(stamps)


def _winner(masters: list[Component]) -> Component:
    """Of several masters of one UID: the highest SEQUENCE, then the latest DTSTAMP or
    LAST-MODIFIED, then the first in the file (RFC 5546's order of revisions)."""
    ranked = sorted(
        range(len(masters)),
        key=lambda i: (-_sequence(masters[i]), -_stamp(masters[i]).timestamp(), i),
    )
    return masters[ranked[0]]


def _sortable(key: datetime | date) -> datetime:
    if isinstance(key, datetime):
        return key
    return datetime.combine(key, time(0), tzinfo=UTC)


def _merge(rule: Iterator[_Instance], extra: list[_Instance]) -> Iterator[_Instance]:
    """The rule's instances and the RDATEs, merged in start order."""
    pending = iter(extra)
    nxt = next(pending, None)
    for instance in rule:
        while nxt is not None and _sortable(nxt.key) < _sortable(instance.key):
            yield nxt
            nxt = next(pending, None)
        yield instance
    while nxt is not None:
        yield nxt
        nxt = next(pending, None)


def _expand_uid(
    expander: _Expander, master: Component | None, overrides: list[Component]
) -> list[Occurrence]:
    """Expand one UID; every failure, foreign ones included, is :class:`MalformedProviderData`."""
    try:
        expander.budget.check(expander.uid)
        return expander.expand(master, overrides)
    except MalformedProviderData:
        raise
    except Exception as exc:  # a foreign error from icalendar or dateutil: quarantine the item
        raise MalformedProviderData(
            f"cannot expand event: {type(exc).__name__}: {exc}", item_id=expander.uid or None
        ) from exc


def expand_component(
    vevent: Component,
    overrides: Iterable[Component] = (),
    *,
    window: Window,
    default_zone: ZoneInfo,
    policy: BusyPolicy | None = None,
    own_address: str | None = None,
    limits: ExpansionLimits = DEFAULT_LIMITS,
) -> list[Occurrence]:
    """The occurrences of one VEVENT (a master, or a lone override) in ``window``.

    ``overrides`` are the RECURRENCE-ID components of the same UID. The VEVENT's
    TZIDs must already be resolved (as :meth:`icalendar.Calendar.from_ical` does
    with the object's VTIMEZONEs) or be IANA/Windows names. A series over a cap is
    collapsed as :func:`expand_object` does, but the notices are not returned: use
    :func:`expand_object` to learn of them. Raises only :class:`MalformedProviderData`.
    """
    uid = str(vevent.get("UID", ""))
    expander = _Expander(
        uid,
        window=window,
        default_zone=default_zone,
        policy=policy or BusyPolicy(),
        own_address=own_address,
        budget=_Budget(limits),
        notes=_Notes(limits.notices),
    )
    others = list(overrides)
    if "RECURRENCE-ID" in vevent:
        return _expand_uid(expander, None, [vevent, *others])
    return _expand_uid(expander, vevent, others)


def expand_object(
    ics: bytes | str,
    *,
    window: Window,
    default_zone: ZoneInfo,
    policy: BusyPolicy | None = None,
    own_address: str | None = None,
    limits: ExpansionLimits = DEFAULT_LIMITS,
) -> Expansion:
    """Every occurrence of the VEVENTs in one iCalendar object that overlaps ``window``,
    and a :class:`Notice` for whatever was not expanded as written.

    VEVENTs are grouped by UID (a CalDAV resource holds one UID; more are accepted);
    each group is a master and its overrides. Of several masters of one UID the
    highest SEQUENCE wins (then the latest DTSTAMP/LAST-MODIFIED, then the first);
    the others are dropped with a notice. An override that cannot be read is dropped
    (its instance stays as the series has it); a UID that cannot be expanded is
    dropped; a series past ``limits`` is collapsed into one block (see
    :meth:`_Expander.collapsed`); UIDs past the object's instance cap are dropped.

    CPU-bound and synchronous, bounded by ``limits`` (its CPU budget is the calling
    thread's time, so callers on an event loop run it in a worker thread). Raises
    only :class:`MalformedProviderData`: when the object cannot be parsed or is too
    big, or when not one of its UIDs could be expanded (``item_id`` is then the
    first failing UID), so a caller keeps what it had rather than deleting it.
    """
    if len(ics) > limits.object_bytes:
        raise MalformedProviderData(f"the object is larger than {limits.object_bytes} bytes")
    try:
        calendar = Calendar.from_ical(ics)
    except Exception as exc:  # icalendar raises ValueError, KeyError, ... on bad input
        raise MalformedProviderData(f"unparsable iCalendar: {exc}") from exc
    if not isinstance(calendar, Calendar):
        raise MalformedProviderData("not a single VCALENDAR object")
    groups: dict[str, tuple[list[Component], list[Component]]] = {}
    try:
        events = list(calendar.walk("VEVENT"))
        for event in events:
            uid = str(event.get("UID", ""))
            if not uid:
                raise MalformedProviderData("VEVENT without UID")
            masters, overrides = groups.setdefault(uid, ([], []))
            (overrides if "RECURRENCE-ID" in event else masters).append(event)
    except MalformedProviderData:
        raise
    except Exception as exc:
        raise MalformedProviderData(f"unreadable VEVENT: {exc}") from exc

    budget = _Budget(limits)
    notes = _Notes(limits.notices)
    found: list[Occurrence] = []
    failures: list[MalformedProviderData] = []
    for uid, (masters, overrides) in groups.items():
        expander = _Expander(
            uid,
            window=window,
            default_zone=default_zone,
            policy=policy or BusyPolicy(),
            own_address=own_address,
            budget=budget,
            notes=notes,
        )
        master: Component | None = None
        if masters:
            master = _winner(masters)
            if len(masters) > 1:
                notes.add(
                    uid,
                    f"dropped: {len(masters) - 1} other VEVENTs without RECURRENCE-ID "
                    f"(kept the one with SEQUENCE {_sequence(master)}, the latest stamp)",
                )
        try:
            occurrences = _expand_uid(expander, master, overrides)
        except MalformedProviderData as exc:
            failures.append(exc)
            notes.add(uid, f"dropped: {exc}")
            continue
        if budget.instances + len(occurrences) > limits.object_instances:
            notes.add(
                uid,
                f"dropped: its {len(occurrences)} occurrences would pass the object's cap "
                f"of {limits.object_instances}",
            )
            continue
        budget.instances += len(occurrences)
        found += occurrences
    if failures and len(failures) == len(groups):
        raise failures[0]
    found.sort(key=lambda o: (o.start_utc, o.native_event_id))
    return Expansion(found, notes.notices())


def expand_calendar(
    ics: bytes | str,
    *,
    window: Window,
    default_zone: ZoneInfo,
    policy: BusyPolicy | None = None,
    own_address: str | None = None,
    limits: ExpansionLimits = DEFAULT_LIMITS,
) -> list[Occurrence]:
    """The occurrences of :func:`expand_object`, without its notices.

    For callers that only need the busy times; a sync must use
    :func:`expand_object`, whose notices say what was collapsed or dropped. Raises
    only :class:`MalformedProviderData`.
    """
    return expand_object(
        ics,
        window=window,
        default_zone=default_zone,
        policy=policy,
        own_address=own_address,
        limits=limits,
    ).occurrences
