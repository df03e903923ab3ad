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
  zone (:func:`calsync.providers.windows_zones.zone_for`); anything else raises
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
* **Busy state** comes from :func:`calsync.busy.status_intent`; instances whose
  intent is ``CANCELLED`` are left out (there is no busy time to report; the diff
  against the previous listing turns them into deletions).

Only VEVENTs are read; VTODO, VJOURNAL and VFREEBUSY are ignored. Every failure
raises :class:`~calsync.errors.MalformedProviderData` with the UID as ``item_id``.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from dateutil.rrule import rrulestr  # type: ignore[import-untyped]  # no stubs installed
from icalendar import Calendar, Component

from calsync.busy import BusyPolicy, status_intent
from calsync.errors import MalformedProviderData
from calsync.model import Occurrence, StatusIntent, Transparency
from calsync.providers.base import Window

__all__ = ["MAX_STEPS", "expand_calendar", "expand_component", "wall_to_utc"]

#: Rule steps walked before the window ends; a series needing more (a minutely
#: rule from decades ago) is refused rather than allowed to stall a worker.
MAX_STEPS = 500_000

_DAY = timedelta(days=1)


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
    ) -> None:
        self.uid = uid
        self.window = window
        self.default_zone = default_zone
        self.policy = policy
        self.own_address = own_address.casefold().removeprefix("mailto:") if own_address else None

    def fail(self, reason: str) -> MalformedProviderData:
        return MalformedProviderData(reason, item_id=self.uid)

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
        from calsync.providers.windows_zones import zone_for

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
            # orphan overrides (an invitation to single instances): each stands alone
            found = []
            for override in overrides:
                times = self.times(override)
                recurrence_id = self.value(override, "RECURRENCE-ID")
                start, end = self.span(times.wall, times)
                native = f"{self.uid}/{_rid(self.recurrence_key(recurrence_id, times))}"
                occurrence = self.occurrence(override, start, end, times.all_day, native, True)
                if occurrence is not None:
                    found.append(occurrence)
            return found
        times = self.times(master)
        series = bool(overrides) or any(name in master for name in ("RRULE", "RDATE"))
        if not series:
            start, end = self.span(times.wall, times)
            occurrence = self.occurrence(master, start, end, times.all_day, self.uid, False)
            return [occurrence] if occurrence is not None else []
        return self.expand_series(master, times, overrides)

    def expand_series(
        self, master: Component, times: _Times, overrides: Sequence[Component]
    ) -> list[Occurrence]:
        single: dict[datetime | date, Component] = {}
        future: list[tuple[datetime | date, Component]] = []
        for override in sorted(overrides, key=lambda c: int(c.get("SEQUENCE", 0) or 0)):
            prop = override.get("RECURRENCE-ID")
            recurrence_id = self.value(override, "RECURRENCE-ID")
            key = self.recurrence_key(recurrence_id, times)
            single[key] = override
            if str(getattr(prop, "params", {}).get("RANGE", "")).upper() == "THISANDFUTURE":
                future.append((key, override))
        future.sort(key=lambda item: _sortable(item[0]))
        future_keys = [_sortable(key) for key, _ in future]
        shifts = [self.recurrence_key_shift(key, override, times) for key, override in future]
        # instances that THISANDFUTURE moves earlier must still be generated
        lookahead = max([timedelta(0)] + [-shift for shift, _ in shifts])

        found: list[Occurrence] = []
        seen: set[datetime | date] = set()
        stop = self.window.end + lookahead + timedelta(days=2)
        for instance in self.instances(master, times, stop):
            if instance.key in seen:
                continue
            seen.add(instance.key)
            native = f"{self.uid}/{_rid(instance.key)}"
            if instance.key in single:
                continue  # the override speaks for itself below
            index = bisect.bisect_right(future_keys, _sortable(instance.key)) - 1
            source, wall, span_times = master, instance.wall, times
            if index >= 0:
                source = future[index][1]
                shift, span_times = shifts[index]
                wall = instance.wall + shift
                start, end = self.span(wall, span_times)
            elif instance.end is not None:
                start, end = wall_to_utc(wall, times.zone), instance.end
            else:
                start, end = self.span(wall, times)
            occurrence = self.occurrence(source, start, end, times.all_day, native, True)
            if occurrence is not None:
                found.append(occurrence)
        for key, override in single.items():
            override_times = self.times(override)
            start, end = self.span(override_times.wall, override_times)
            native = f"{self.uid}/{_rid(key)}"
            occurrence = self.occurrence(override, start, end, override_times.all_day, native, True)
            if occurrence is not None:
                found.append(occurrence)
        found.sort(key=lambda o: (o.start_utc, o.native_event_id))
        return found

    def recurrence_key_shift(
        self, key: datetime | date, override: Component, times: _Times
    ) -> tuple[timedelta, _Times]:
        """A THISANDFUTURE override's wall-clock shift, and the times later instances take."""
        override_times = self.times(override)
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

    def instances(self, master: Component, times: _Times, stop: datetime) -> Iterator[_Instance]:
        """The series' instances in start order, EXDATEs removed, until ``stop`` (UTC)."""
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

        merged = _merge(self.rule_walls(master, times, stop), extra)
        stop_wall = _local(stop.replace(tzinfo=None), times.zone) + _DAY
        for instance in merged:
            if instance.wall > stop_wall:
                return
            if instance.key in excluded_keys or instance.wall.date() in excluded_days:
                continue
            yield instance

    def rule_walls(self, master: Component, times: _Times, stop: datetime) -> Iterator[_Instance]:
        """DTSTART and the RRULE's instances, in order."""
        rules = master.get("RRULE")
        if rules is None:
            yield _Instance(times.wall, self.key(times.wall, times))
            return
        if isinstance(rules, list):
            raise self.fail("more than one RRULE")
        text, until = self.rule_text(rules, times)
        try:
            rule = rrulestr(text, dtstart=times.wall, ignoretz=True)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise self.fail(f"unusable RRULE: {exc}") from exc
        stop_wall = _local(stop.replace(tzinfo=None), times.zone) + _DAY
        # RFC 5545: DTSTART is always the first instance, even if the rule skips it
        first = True
        steps = 0
        walls = itertools.chain([times.wall], iter(rule))
        for wall in walls:
            if not first and wall == times.wall:
                continue
            first = False
            steps += 1
            if steps > MAX_STEPS:
                raise self.fail("the series has too many instances before the window ends")
            key = self.key(wall, times)
            if until is not None and _sortable(key) > _sortable(until):
                return
            yield _Instance(wall, key)
            if wall > stop_wall:
                return

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

    def dates(self, component: Component, name: str) -> Iterator[Any]:
        props = component.get(name)
        if props is None:
            return
        for prop in props if isinstance(props, list) else [props]:
            for item in getattr(prop, "dts", ()):
                value = item.dt
                if isinstance(value, tuple):
                    yield tuple(self.resolve(part, prop) for part in value)
                else:
                    yield self.resolve(value, prop)


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


def expand_component(
    vevent: Component,
    overrides: Iterable[Component] = (),
    *,
    window: Window,
    default_zone: ZoneInfo,
    policy: BusyPolicy | None = None,
    own_address: str | None = None,
) -> list[Occurrence]:
    """The occurrences of one VEVENT (a master, or a lone override) in ``window``.

    ``overrides`` are the RECURRENCE-ID components of the same UID. The VEVENT's
    TZIDs must already be resolved (as :meth:`icalendar.Calendar.from_ical` does
    with the object's VTIMEZONEs) or be IANA/Windows names. Raises only
    :class:`MalformedProviderData`.
    """
    uid = str(vevent.get("UID", "")) or None
    expander = _Expander(
        uid or "",
        window=window,
        default_zone=default_zone,
        policy=policy or BusyPolicy(),
        own_address=own_address,
    )
    others = list(overrides)
    try:
        if "RECURRENCE-ID" in vevent:
            return expander.expand(None, [vevent, *others])
        return expander.expand(vevent, others)
    except MalformedProviderData:
        raise
    except Exception as exc:  # a foreign error from icalendar or dateutil: quarantine the item
        raise MalformedProviderData(
            f"cannot expand event: {type(exc).__name__}: {exc}", item_id=uid
        ) from exc


def expand_calendar(
    ics: bytes | str,
    *,
    window: Window,
    default_zone: ZoneInfo,
    policy: BusyPolicy | None = None,
    own_address: str | None = None,
) -> list[Occurrence]:
    """Every occurrence of the VEVENTs in one iCalendar object that overlaps ``window``.

    VEVENTs are grouped by UID (a CalDAV resource holds one UID; more are
    accepted); each group is a master and its overrides. ``own_address`` is the
    calendar owner's address, to read their PARTSTAT. The result is sorted by
    start, then id. Raises only :class:`MalformedProviderData` (``item_id`` is the
    UID when one is known).
    """
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
    found: list[Occurrence] = []
    for uid, (masters, overrides) in groups.items():
        if len(masters) > 1:
            raise MalformedProviderData("more than one VEVENT without RECURRENCE-ID", item_id=uid)
        if masters:
            found += expand_component(
                masters[0],
                overrides,
                window=window,
                default_zone=default_zone,
                policy=policy,
                own_address=own_address,
            )
        else:
            found += expand_component(
                overrides[0],
                overrides[1:],
                window=window,
                default_zone=default_zone,
                policy=policy,
                own_address=own_address,
            )
    found.sort(key=lambda o: (o.start_utc, o.native_event_id))
    return found
