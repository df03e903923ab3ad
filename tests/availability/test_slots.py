"""The free-slot finder: worked examples, then a minute-by-minute oracle across DST changes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from itertools import accumulate
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calsync.availability.errors import InvalidAvailabilityRequest, RequestTooLarge
from calsync.availability.intervals import DEFAULT_BLOCKING, Flag, Segment, Timeline
from calsync.availability.slots import (
    ResourceAvailability,
    SlotLimits,
    SlotRequest,
    Span,
    WorkingHours,
    find_slots,
)
from calsync.errors import CalsyncError

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
SYDNEY = ZoneInfo("Australia/Sydney")
KOLKATA = ZoneInfo("Asia/Kolkata")
EVERY_DAY = range(7)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def ts(moment: datetime) -> int:
    return int(moment.timestamp())


def hours(zone: tzinfo, *spans: Span, days: range = EVERY_DAY, **kw: object) -> WorkingHours:
    return WorkingHours(zone, {day: list(spans) for day in days}, **kw)  # type: ignore[arg-type]


def busy(*segments: tuple[datetime, datetime, int]) -> Timeline:
    return Timeline.from_segments((ts(s), ts(e), f) for s, e, f in segments)


def starts(resources: list[ResourceAvailability], request: SlotRequest, now: datetime) -> list[str]:
    return [
        slot.start.strftime("%m-%d %H:%M") for slot in find_slots(resources, request, now=now).slots
    ]


EARLY = utc(2026, 1, 1)

# -- working hours across offset changes -----------------------------------------


def local_hours(wh: WorkingHours, day: datetime) -> list[tuple[datetime, datetime]]:
    return [
        (datetime.fromtimestamp(s, UTC), datetime.fromtimestamp(e, UTC))
        for s, e in wh.intervals(ts(day - timedelta(hours=14)), ts(day + timedelta(hours=38)))
    ]


@pytest.mark.parametrize(
    ("zone", "day", "expected"),
    [
        # Berlin springs forward on 2026-03-29 at 02:00 (+01 -> +02), falls back 10-25
        (BERLIN, utc(2026, 3, 28), (utc(2026, 3, 28, 8), utc(2026, 3, 28, 16))),
        (BERLIN, utc(2026, 3, 29), (utc(2026, 3, 29, 7), utc(2026, 3, 29, 15))),
        (BERLIN, utc(2026, 10, 25), (utc(2026, 10, 25, 8), utc(2026, 10, 25, 16))),
        # New York: 2026-03-08 (-05 -> -04) and 2026-11-01 (-04 -> -05)
        (NEW_YORK, utc(2026, 3, 8), (utc(2026, 3, 8, 13), utc(2026, 3, 8, 21))),
        (NEW_YORK, utc(2026, 11, 1), (utc(2026, 11, 1, 14), utc(2026, 11, 1, 22))),
        # Sydney: 2026-04-05 (+11 -> +10) and 2026-10-04 (+10 -> +11)
        (SYDNEY, utc(2026, 4, 5), (utc(2026, 4, 4, 23), utc(2026, 4, 5, 7))),
        (SYDNEY, utc(2026, 10, 4), (utc(2026, 10, 3, 22), utc(2026, 10, 4, 6))),
    ],
)
def test_nine_to_five_on_the_day_the_offset_changes(
    zone: ZoneInfo, day: datetime, expected: tuple[datetime, datetime]
) -> None:
    wh = hours(zone, (time(9), time(17)))
    local_day = day.date()
    found = [
        iv
        for iv in local_hours(wh, day)
        if iv[0].astimezone(zone).date() == local_day  # the span of that local date
    ]
    assert found == [expected]
    assert expected[1] - expected[0] == timedelta(hours=8)


def test_a_span_across_the_gap_is_shorter_and_across_the_fold_longer() -> None:
    wh = WorkingHours(
        BERLIN,
        {},
        exceptions={
            date(2026, 3, 29): [(time(1), time(3))],
            date(2026, 10, 25): [(time(1), time(3))],
        },
    )
    spring = wh.intervals(ts(utc(2026, 3, 28)), ts(utc(2026, 3, 30)))
    assert spring == [(ts(utc(2026, 3, 29, 0)), ts(utc(2026, 3, 29, 1)))]  # 01:00-02:00 CET
    autumn = wh.intervals(ts(utc(2026, 10, 24)), ts(utc(2026, 10, 26)))
    assert autumn == [(ts(utc(2026, 10, 24, 23)), ts(utc(2026, 10, 25, 2)))]  # 01:00 CEST-03:00 CET
    starts_in_gap = WorkingHours(BERLIN, {6: [(time(2, 30), time(4))]})
    # 02:30 never happens on 03-29: working starts when the clock jumps to 03:00
    assert starts_in_gap.intervals(ts(utc(2026, 3, 29)), ts(utc(2026, 3, 30))) == [
        (ts(utc(2026, 3, 29, 1)), ts(utc(2026, 3, 29, 2)))
    ]


def test_midnight_end_means_the_whole_day_and_exceptions_replace_it() -> None:
    wh = hours(
        BERLIN,
        (time(0), time(0)),
        exceptions={date(2026, 6, 2): [], date(2026, 6, 3): [(time(10), time(12))]},
    )
    found = wh.intervals(ts(utc(2026, 6, 1)), ts(utc(2026, 6, 5)))
    assert found == [
        (ts(utc(2026, 6, 1)), ts(utc(2026, 6, 1, 22))),  # until local midnight
        (ts(utc(2026, 6, 3, 8)), ts(utc(2026, 6, 3, 10))),
        (ts(utc(2026, 6, 3, 22)), ts(utc(2026, 6, 5))),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        {0: [(time(17), time(9))]},
        {0: [(time(9), time(9))]},
        {7: [(time(9), time(17))]},
        {0: [(time(9, tzinfo=UTC), time(17))]},
        {0: [(time(9, 0, 0, 5), time(17))]},
    ],
)
def test_working_hours_refuse_what_they_cannot_mean(bad: dict[int, list[Span]]) -> None:
    with pytest.raises(InvalidAvailabilityRequest):
        WorkingHours(BERLIN, bad)


# -- the finder: worked examples --------------------------------------------------

MONDAY = utc(2026, 6, 1)  # Berlin is +02 all June


def test_buffers_widen_busy_time_and_not_working_hours() -> None:
    room = ResourceAvailability(
        "room",
        busy(
            (MONDAY.replace(hour=9), MONDAY.replace(hour=10), Flag.BUSY),
            (MONDAY.replace(hour=12), MONDAY.replace(hour=13), Flag.BUSY),
        ),
        hours(BERLIN, (time(9), time(17))),  # 07:00-15:00 UTC
    )
    request = SlotRequest(
        MONDAY,
        MONDAY + timedelta(days=1),
        duration=timedelta(hours=1),
        granularity=timedelta(minutes=15),
        buffer_before=timedelta(minutes=15),
        buffer_after=timedelta(minutes=45),
    )
    # the slot [s, s+60) needs [s-15, s+105) free: 09-10 blocks 08:15-10:15, 12-13 11:15-13:15
    assert starts([room], request, EARLY) == [
        "06-01 07:00",  # its buffer before lies outside working hours: allowed
        "06-01 07:15",  # 07:15-08:15, +45 after = 09:00: touches the meeting, allowed
        "06-01 10:15",  # 10:00 + 15 before; 10:15-11:15 + 45 after touches 12:00
        "06-01 13:15",
        "06-01 13:30",
        "06-01 13:45",
        "06-01 14:00",  # the last that ends by 15:00 (17:00 in Berlin)
    ]


def test_min_notice_and_max_days_ahead() -> None:
    resource = ResourceAvailability("a", Timeline.EMPTY, hours(UTC, (time(9), time(12))))
    request = SlotRequest(
        MONDAY,
        MONDAY + timedelta(days=7),
        duration=timedelta(hours=1),
        granularity=timedelta(hours=1),
        min_notice=timedelta(hours=2),
        max_days_ahead=1,
    )
    now = MONDAY.replace(hour=8, minute=30)
    assert starts([resource], request, now) == [
        "06-01 11:00",
        "06-02 09:00",
        "06-02 10:00",
        "06-02 11:00",
    ]
    today_only = SlotRequest(
        MONDAY, MONDAY + timedelta(days=7), duration=timedelta(hours=1), max_days_ahead=0
    )
    assert starts([resource], today_only, MONDAY.replace(hour=11, minute=1)) == []


def test_max_days_ahead_counts_the_viewers_calendar_days() -> None:
    resource = ResourceAvailability("a", Timeline.EMPTY)
    request = SlotRequest(
        MONDAY,
        MONDAY + timedelta(days=3),
        duration=timedelta(hours=1),
        granularity=timedelta(hours=1),
        max_days_ahead=0,
        zone=SYDNEY,  # +10: 2026-06-01 ends at 14:00 UTC
    )
    found = find_slots([resource], request, now=MONDAY).slots
    assert found[-1].end == MONDAY.replace(hour=14)


def test_tentative_blocks_only_when_asked() -> None:
    resource = ResourceAvailability(
        "a", busy((MONDAY.replace(hour=1), MONDAY.replace(hour=2), Flag.TENTATIVE))
    )
    base = SlotRequest(
        MONDAY,
        MONDAY.replace(hour=3),
        duration=timedelta(hours=1),
        granularity=timedelta(hours=1),
    )
    assert starts([resource], base, EARLY) == ["06-01 00:00", "06-01 01:00", "06-01 02:00"]
    strict = SlotRequest(
        base.start,
        base.end,
        base.duration,
        granularity=base.granularity,
        blocking=DEFAULT_BLOCKING | Flag.TENTATIVE,
    )
    assert starts([resource], strict, EARLY) == ["06-01 00:00", "06-01 02:00"]


def test_holds_and_out_of_office_block_by_default_free_time_does_not() -> None:
    resource = ResourceAvailability(
        "a",
        busy(
            (MONDAY, MONDAY.replace(hour=1), Flag.HOLD),
            (MONDAY.replace(hour=1), MONDAY.replace(hour=2), Flag.OUT_OF_OFFICE | Flag.ALL_DAY),
            (MONDAY.replace(hour=2), MONDAY.replace(hour=3), Flag.FREE),
            (MONDAY.replace(hour=3), MONDAY.replace(hour=4), Flag.CANCELLED),
        ),
    )
    request = SlotRequest(
        MONDAY, MONDAY.replace(hour=4), timedelta(hours=1), granularity=timedelta(hours=1)
    )
    assert starts([resource], request, EARLY) == ["06-01 02:00", "06-01 03:00"]


def test_n_of_m_reports_who_is_free() -> None:
    hour = timedelta(hours=1)
    alice = ResourceAvailability("alice", busy((MONDAY, MONDAY + hour, Flag.BUSY)))
    bob = ResourceAvailability("bob", busy((MONDAY + hour, MONDAY + 2 * hour, Flag.BUSY)))
    carol = ResourceAvailability("carol", busy((MONDAY, MONDAY + 2 * hour, Flag.BUSY)))
    request = SlotRequest(MONDAY, MONDAY + 3 * hour, hour, granularity=hour, required=1)
    found = find_slots([alice, bob, carol], request, now=EARLY).slots
    assert [(s.start.hour, s.available) for s in found] == [
        (0, ("bob",)),
        (1, ("alice",)),
        (2, ("alice", "bob", "carol")),
    ]
    two = SlotRequest(MONDAY, MONDAY + 3 * hour, hour, granularity=hour, required=2)
    assert [s.start.hour for s in find_slots([alice, bob, carol], two, now=EARLY).slots] == [2]
    everyone = SlotRequest(MONDAY, MONDAY + 3 * hour, hour, granularity=hour)
    assert find_slots([alice, bob, carol], everyone, now=EARLY).slots[0].available == (
        "alice",
        "bob",
        "carol",
    )


def test_slots_align_to_the_viewers_wall_clock() -> None:
    resource = ResourceAvailability("a", Timeline.EMPTY)
    request = SlotRequest(
        MONDAY, MONDAY.replace(hour=3), timedelta(minutes=30), granularity=timedelta(hours=1)
    )
    assert starts([resource], request, EARLY) == ["06-01 00:00", "06-01 01:00", "06-01 02:00"]
    in_kolkata = SlotRequest(
        MONDAY,
        MONDAY.replace(hour=3),
        timedelta(minutes=30),
        granularity=timedelta(hours=1),
        zone=KOLKATA,  # +05:30: local whole hours are UTC half hours
    )
    assert starts([resource], in_kolkata, EARLY) == ["06-01 00:30", "06-01 01:30", "06-01 02:30"]


def test_alignment_follows_the_fold() -> None:
    night = utc(2026, 10, 24, 22)  # Berlin 00:00 CEST; the clock goes back at 01:00 UTC
    request = SlotRequest(
        night,
        night + timedelta(hours=5),
        timedelta(minutes=30),
        granularity=timedelta(hours=1),
        zone=BERLIN,
    )
    found = find_slots([ResourceAvailability("a", Timeline.EMPTY)], request, now=EARLY).slots
    walls = [s.start.astimezone(BERLIN).strftime("%H:%M%z") for s in found]
    assert walls == ["00:00+0200", "01:00+0200", "02:00+0200", "02:00+0100", "03:00+0100"]


def test_truncation_is_reported() -> None:
    resource = ResourceAvailability("a", Timeline.EMPTY)
    request = SlotRequest(MONDAY, MONDAY + timedelta(days=1), timedelta(minutes=30), max_slots=5)
    result = find_slots([resource], request, now=EARLY)
    assert len(result.slots) == 5 and result.truncated
    exact = SlotRequest(MONDAY, MONDAY + timedelta(hours=2), timedelta(hours=1), max_slots=5)
    result = find_slots([resource], exact, now=EARLY)
    assert len(result.slots) == 5 and not result.truncated


def test_nothing_fits_in_a_window_shorter_than_the_meeting() -> None:
    resource = ResourceAvailability("a", Timeline.EMPTY)
    request = SlotRequest(MONDAY, MONDAY + timedelta(minutes=20), timedelta(minutes=30))
    assert find_slots([resource], request, now=EARLY).slots == ()
    late = SlotRequest(MONDAY, MONDAY + timedelta(hours=2), timedelta(minutes=30))
    assert find_slots([resource], late, now=MONDAY + timedelta(hours=3)).slots == ()


ONE = [ResourceAvailability("a", Timeline.EMPTY)]
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


@pytest.mark.parametrize(
    ("resources", "request_", "error"),
    [
        (ONE, SlotRequest(MONDAY, MONDAY + 63 * DAY, HOUR), RequestTooLarge),
        (ONE, SlotRequest(MONDAY, MONDAY + DAY, HOUR, max_slots=1001), RequestTooLarge),
        (ONE * 101, SlotRequest(MONDAY, MONDAY + DAY, HOUR), RequestTooLarge),
        ([], SlotRequest(MONDAY, MONDAY + DAY, HOUR), InvalidAvailabilityRequest),
        (ONE * 2, SlotRequest(MONDAY, MONDAY + DAY, HOUR), InvalidAvailabilityRequest),
        (ONE, SlotRequest(MONDAY, MONDAY, HOUR), InvalidAvailabilityRequest),
        (ONE, SlotRequest(MONDAY, MONDAY + DAY, timedelta(0)), InvalidAvailabilityRequest),
        (ONE, SlotRequest(MONDAY, MONDAY + DAY, HOUR, max_slots=0), InvalidAvailabilityRequest),
        (
            ONE,
            SlotRequest(MONDAY, MONDAY + DAY, HOUR, granularity=timedelta(minutes=7)),
            InvalidAvailabilityRequest,
        ),
        (
            ONE,
            SlotRequest(MONDAY, MONDAY + DAY, HOUR, granularity=timedelta(seconds=90)),
            InvalidAvailabilityRequest,
        ),
        (ONE, SlotRequest(MONDAY, MONDAY + DAY, HOUR, required=2), InvalidAvailabilityRequest),
        (ONE, SlotRequest(MONDAY, MONDAY + DAY, HOUR, required=0), InvalidAvailabilityRequest),
        (
            ONE,
            SlotRequest(MONDAY, MONDAY + DAY, HOUR, buffer_before=-HOUR),
            InvalidAvailabilityRequest,
        ),
        (
            ONE,
            SlotRequest(MONDAY, MONDAY + DAY, HOUR, max_days_ahead=-1),
            InvalidAvailabilityRequest,
        ),
        (ONE, SlotRequest(MONDAY, MONDAY + DAY, HOUR, blocking=256), InvalidAvailabilityRequest),
        (
            ONE,
            SlotRequest(MONDAY.replace(tzinfo=None), MONDAY.replace(tzinfo=None) + DAY, HOUR),
            InvalidAvailabilityRequest,
        ),
    ],
)
def test_bad_and_too_large_requests_are_refused_up_front(
    resources: list[ResourceAvailability], request_: SlotRequest, error: type[Exception]
) -> None:
    with pytest.raises(error) as caught:
        find_slots(resources, request_, now=EARLY)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, CalsyncError)
    assert not caught.value.retriable


def test_too_large_carries_the_limit() -> None:
    limits = SlotLimits(max_window=timedelta(days=7))
    with pytest.raises(RequestTooLarge) as caught:
        find_slots(ONE, SlotRequest(MONDAY, MONDAY + 8 * DAY, HOUR), now=EARLY, limits=limits)
    assert caught.value.limit == "max_window"
    assert caught.value.maximum == timedelta(days=7)
    assert caught.value.value == timedelta(days=8)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(InvalidAvailabilityRequest):
        find_slots(ONE, SlotRequest(MONDAY, MONDAY + DAY, HOUR), now=datetime(2026, 1, 1))
    naive_end = SlotRequest(MONDAY, MONDAY.replace(tzinfo=None) + DAY, HOUR)
    with pytest.raises(InvalidAvailabilityRequest):
        find_slots(ONE, naive_end, now=EARLY)


# -- the oracle -------------------------------------------------------------------

# instants where the zones under test change their offset (see the worked examples)
TRANSITIONS = [
    utc(2026, 3, 29, 1),
    utc(2026, 10, 25, 1),
    utc(2026, 3, 8, 7),
    utc(2026, 11, 1, 6),
    utc(2026, 4, 4, 16),
    utc(2026, 10, 3, 16),
]
ZONES: list[tzinfo] = [BERLIN, NEW_YORK, SYDNEY, UTC]
GRANULARITIES = [5, 10, 15, 20, 30, 45, 60, 90, 120]
# spans: office-like days, or short spans near the hours where clocks change (01:00-04:00)
office_span = st.tuples(st.integers(0, 720), st.integers(240, 1440)).map(
    lambda p: (p[0], min(1440, p[0] + p[1]))
)
night_span = st.tuples(st.integers(50, 250), st.integers(1, 200)).map(lambda p: (p[0], p[0] + p[1]))


@st.composite
def spans(draw: st.DrawFn) -> list[Span]:
    out: list[Span] = []
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2]))):
        a, b = draw(office_span | night_span)
        end = time(0) if b == 1440 else time(b // 60, b % 60)
        out.append((time(a // 60, a % 60), end))
    return out


@dataclass
class Case:
    resources: list[ResourceAvailability]
    segments: list[list[Segment]]
    request: SlotRequest
    now: datetime


@st.composite
def cases(draw: st.DrawFn) -> Case:
    anchor = ts(draw(st.sampled_from(TRANSITIONS)))
    start = anchor - 60 * draw(st.integers(0, 36 * 60))
    length = 60 * draw(st.integers(30, 2 * 24 * 60))
    resources, all_segments = [], []
    for index in range(draw(st.integers(1, 3))):
        segments = [
            (s, s + 60 * draw(st.integers(1, 240)), draw(st.sampled_from([1, 2, 4, 8, 32, 129])))
            for s in (
                start + 60 * draw(st.integers(-180, length // 60 + 60))
                for _ in range(draw(st.integers(0, 8)))
            )
        ]
        wh = None
        if draw(st.booleans()):
            zone = draw(st.sampled_from(ZONES))
            local = datetime.fromtimestamp(anchor, zone).date()
            exceptions = {
                local + timedelta(days=draw(st.integers(-1, 1))): draw(spans())
                for _ in range(draw(st.integers(0, 1)))
            }
            weekly = {day: draw(spans()) for day in range(7)}
            wh = WorkingHours(zone, weekly, exceptions)
        resources.append(ResourceAvailability(f"r{index}", Timeline.from_segments(segments), wh))
        all_segments.append(segments)
    request = SlotRequest(
        datetime.fromtimestamp(start, UTC),
        datetime.fromtimestamp(start + length, UTC),
        duration=timedelta(minutes=draw(st.integers(1, 180))),
        granularity=timedelta(minutes=draw(st.sampled_from(GRANULARITIES))),
        buffer_before=timedelta(minutes=draw(st.sampled_from([0, 0, 5, 15, 60]))),
        buffer_after=timedelta(minutes=draw(st.sampled_from([0, 0, 10, 30]))),
        min_notice=timedelta(minutes=draw(st.sampled_from([0, 30, 240]))),
        max_days_ahead=draw(st.none() | st.integers(0, 2)),
        zone=draw(st.sampled_from([*ZONES, KOLKATA])),
        blocking=draw(st.sampled_from([DEFAULT_BLOCKING, DEFAULT_BLOCKING | Flag.TENTATIVE, 1])),
        required=draw(st.none() | st.integers(1, len(resources))),
        max_slots=draw(st.sampled_from([1, 7, 1000])),
    )
    now = datetime.fromtimestamp(start + 60 * draw(st.integers(-24 * 60, 6 * 60)), UTC)
    return Case(resources, all_segments, request, now)


def minute_is_working(wh: WorkingHours | None, minute: int) -> bool:
    if wh is None:
        return True
    local = datetime.fromtimestamp(minute * 60, wh.zone)
    spans = wh.exceptions.get(local.date(), wh.weekly.get(local.weekday(), ()))
    wall = local.hour * 60 + local.minute
    return any(
        s.hour * 60 + s.minute <= wall < (1440 if e == time(0) else e.hour * 60 + e.minute)
        for s, e in spans
    )


def oracle(case: Case) -> list[tuple[int, tuple[str, ...]]]:
    """Every candidate minute, checked one minute at a time (prefix sums for the ranges)."""
    req = case.request
    w0, w1 = ts(req.start) // 60, ts(req.end) // 60
    d = int(req.duration.total_seconds()) // 60
    before = int(req.buffer_before.total_seconds()) // 60
    after = int(req.buffer_after.total_seconds()) // 60
    earliest = ts(case.now) + int(req.min_notice.total_seconds())
    today = case.now.astimezone(req.zone).date()
    g = int(req.granularity.total_seconds()) // 60
    lo = w0 - before - 1
    per_resource = []
    for resource, segments in zip(case.resources, case.segments, strict=True):
        idle = [0 if minute_is_working(resource.hours, m) else 1 for m in range(w0, w1)]
        blocked = [0] * (w1 + after + 1 - lo)
        for s, e, f in segments:
            if f & req.blocking:
                for m in range(max(s // 60, lo), min(e // 60, w1 + after + 1)):
                    blocked[m - lo] = 1
        per_resource.append(
            (list(accumulate(idle, initial=0)), list(accumulate(blocked, initial=0)))
        )
    need = len(case.resources) if req.required is None else req.required
    out = []
    for m in range(w0, w1 - d + 1):
        if m * 60 < earliest:
            continue
        local = datetime.fromtimestamp(m * 60, req.zone)
        if (local.hour * 60 + local.minute) % g:
            continue
        if req.max_days_ahead is not None:
            last_day = datetime.fromtimestamp((m + d - 1) * 60, req.zone).date()
            if (last_day - today).days > req.max_days_ahead:
                continue
        free = []
        for resource, (idle, blocked) in zip(case.resources, per_resource, strict=True):
            if idle[m + d - w0] - idle[m - w0]:
                continue
            if blocked[m + d + after - lo] - blocked[m - before - lo]:
                continue
            free.append(resource.resource_id)
        if len(free) >= need:
            out.append((m * 60, tuple(free)))
    return out


@settings(max_examples=400, deadline=None)
@given(cases())
def test_the_finder_agrees_with_the_minute_oracle(case: Case) -> None:
    result = find_slots(case.resources, case.request, now=case.now)
    expected = oracle(case)
    cap = case.request.max_slots
    assert [(ts(s.start), s.available) for s in result.slots] == expected[:cap]
    assert result.truncated == (len(expected) > cap)
    for slot in result.slots:
        assert slot.end - slot.start == case.request.duration
