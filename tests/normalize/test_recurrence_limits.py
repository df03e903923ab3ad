"""Hostile and lossy inputs to :mod:`calsync.normalize.recurrence`: caps, budgets, collapsing,
and partial expansion (what can be expanded is, what cannot is named in a notice)."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calsync.errors import MalformedProviderData
from calsync.model import StatusIntent, Window
from calsync.normalize.recurrence import (
    DEFAULT_LIMITS,
    ExpansionLimits,
    expand_calendar,
    expand_object,
)
from tests.normalize.test_recurrence import UTC_ZONE, _calendar, _oracle

#: The default sync horizon (30 days back, 365 ahead) around a fixed "now".
NOW = datetime(2026, 3, 1, tzinfo=UTC)
HORIZON = Window(NOW - timedelta(days=30), NOW + timedelta(days=365))


def _cpu() -> float:
    return time.thread_time()


# -- item 4: a tiny interval neither blocks nor floods ------------------------------


def test_minutely_series_over_the_horizon_is_one_collapsed_block() -> None:
    ics = _calendar("UID:flood\r\nDTSTART:20260130T000000Z\r\nDURATION:PT1M\r\nRRULE:FREQ=MINUTELY")
    before = _cpu()
    found = expand_object(ics, window=HORIZON, default_zone=UTC_ZONE)
    spent = _cpu() - before
    assert [(o.native_event_id, o.series_id) for o in found.occurrences] == [
        ("flood/collapsed", "flood")
    ]
    block = found.occurrences[0]
    # from the first instance inside the horizon to the horizon's end: nothing is
    # reported free that the series said was busy
    assert (block.start_utc, block.end_utc) == (HORIZON.start, HORIZON.end)
    assert block.status_intent is StatusIntent.BUSY
    assert [n.uid for n in found.notices] == ["flood"]
    assert found.notices[0].reason.startswith("collapsed:")
    assert "5000" in found.notices[0].reason
    # the cap cut the enumeration: ~5,000 instances, not 570,000 (45 s before)
    assert spent < 2.0


def test_sixty_day_minutely_series_no_longer_becomes_86400_events() -> None:
    window = Window(NOW, NOW + timedelta(days=60))
    ics = _calendar("UID:m\r\nDTSTART:20260301T000000Z\r\nDURATION:PT1M\r\nRRULE:FREQ=MINUTELY")
    found = expand_calendar(ics, window=window, default_zone=UTC_ZONE)
    assert len(found) == 1


def test_minutely_series_from_years_ago_is_cheap() -> None:
    """The rule is fast-forwarded to the horizon, not stepped through ten years."""
    ics = _calendar(
        "UID:old\r\nDTSTART;TZID=Europe/Berlin:20160101T000730\r\nDURATION:PT1M\r\n"
        "RRULE:FREQ=MINUTELY;INTERVAL=7"
    )
    before = _cpu()
    found = expand_object(ics, window=HORIZON, default_zone=UTC_ZONE)
    assert _cpu() - before < 2.0
    (block,) = found.occurrences
    assert block.native_event_id == "old/collapsed"
    assert HORIZON.start <= block.start_utc < HORIZON.start + timedelta(minutes=7)


def test_fast_forward_keeps_the_instances_exact() -> None:
    """Below the cap, a series started long ago expands to the same instances as a
    step-by-step walk (the oracle: DTSTART + k * 5 hours on the UTC clock)."""
    ics = _calendar(
        "UID:h\r\nDTSTART:20100101T013000Z\r\nDURATION:PT30M\r\nRRULE:FREQ=HOURLY;INTERVAL=5"
    )
    window = Window(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 4, tzinfo=UTC))
    found = expand_calendar(ics, window=window, default_zone=UTC_ZONE)
    first = datetime(2010, 1, 1, 1, 30, tzinfo=UTC)
    steps = int((window.start - first) / timedelta(hours=5))
    want = [first + timedelta(hours=5 * k) for k in range(steps - 1, steps + 20)]
    want = [s for s in want if s + timedelta(minutes=30) > window.start and s < window.end]
    assert [o.start_utc for o in found] == want


def test_collapsed_block_ends_with_the_last_instance_when_until_is_known() -> None:
    ics = _calendar(
        "UID:u\r\nDTSTART:20260301T090000Z\r\nDURATION:PT10M\r\n"
        "RRULE:FREQ=MINUTELY;UNTIL=20260310T120000Z"
    )
    (block,) = expand_calendar(ics, window=HORIZON, default_zone=UTC_ZONE)
    assert block.start_utc == datetime(2026, 3, 1, 9, tzinfo=UTC)
    assert block.end_utc == datetime(2026, 3, 10, 12, 10, tzinfo=UTC)


def test_collapsed_transparent_series_stays_free_and_cancelled_vanishes() -> None:
    rule = "DTSTART:20260301T000000Z\r\nDURATION:PT1M\r\nRRULE:FREQ=MINUTELY"
    ics = _calendar(
        f"UID:free\r\n{rule}\r\nTRANSP:TRANSPARENT", f"UID:gone\r\n{rule}\r\nSTATUS:CANCELLED"
    )
    found = expand_object(ics, window=HORIZON, default_zone=UTC_ZONE)
    assert [(o.native_event_id, o.status_intent) for o in found.occurrences] == [
        ("free/collapsed", StatusIntent.FREE)
    ]
    assert sorted(n.uid for n in found.notices) == ["free", "gone"]


def test_hourly_for_a_year_inside_office_hours_fits_the_cap() -> None:
    """A dense but real pattern: every hour 9-17 on weekdays, for the whole horizon."""
    ics = _calendar(
        "UID:office\r\nDTSTART;TZID=Europe/Berlin:20260202T090000\r\nDURATION:PT30M\r\n"
        "RRULE:FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR;BYHOUR=9,10,11,12,13,14,15,16,17"
    )
    found = expand_object(ics, window=HORIZON, default_zone=UTC_ZONE)
    assert found.notices == []
    assert 2_400 < len(found.occurrences) <= DEFAULT_LIMITS.series_instances


def test_huge_rdate_list_collapses_without_reading_every_date() -> None:
    dates = ",".join(
        (datetime(2026, 3, 1, tzinfo=UTC) + timedelta(minutes=k)).strftime("%Y%m%dT%H%M%SZ")
        for k in range(30_000)
    )
    ics = _calendar(f"UID:r\r\nDTSTART:20260301T000000Z\r\nDURATION:PT1M\r\nRDATE:{dates}")
    found = expand_object(ics, window=HORIZON, default_zone=UTC_ZONE)
    assert [o.native_event_id for o in found.occurrences] == ["r/collapsed"]
    assert "RDATE" in found.notices[0].reason


def test_thousands_of_overrides_collapse_the_series() -> None:
    limits = ExpansionLimits(overrides=50)
    master = "UID:o\r\nDTSTART:20260301T090000Z\r\nDURATION:PT1H\r\nRRULE:FREQ=DAILY"
    overrides = [
        f"UID:o\r\nRECURRENCE-ID:{day:%Y%m%d}T090000Z\r\nDTSTART:{day:%Y%m%d}T100000Z\r\n"
        "DURATION:PT1H"
        for day in (datetime(2026, 3, 1) + timedelta(days=k) for k in range(60))
    ]
    found = expand_object(
        _calendar(master, *overrides), window=HORIZON, default_zone=UTC_ZONE, limits=limits
    )
    assert [o.native_event_id for o in found.occurrences] == ["o/collapsed"]
    assert "override" in found.notices[0].reason


def test_instances_per_object_are_capped_across_uids() -> None:
    limits = ExpansionLimits(series_instances=100, object_instances=250)
    events = [
        f"UID:s{n}\r\nDTSTART:20260301T09{n:02d}00Z\r\nDURATION:PT1M\r\nRRULE:FREQ=DAILY;COUNT=90"
        for n in range(5)
    ]
    found = expand_object(_calendar(*events), window=HORIZON, default_zone=UTC_ZONE, limits=limits)
    kept = {o.series_id for o in found.occurrences}
    assert len(found.occurrences) <= 250
    assert kept == {"s0", "s1"}
    assert {n.uid for n in found.notices} == {"s2", "s3", "s4"}


def test_a_slow_expansion_is_refused_by_its_cpu_budget() -> None:
    """COUNT rules cannot be fast-forwarded: stepping from 1990 is cut by the budget.
    The budget is the object's: UIDs expanded before it ran out are kept."""
    limits = ExpansionLimits(cpu_seconds=0.05)
    ics = _calendar(
        "UID:ok\r\nDTSTART:20260301T000000Z",
        "UID:slow\r\nDTSTART:19900101T000000Z\r\nRRULE:FREQ=MINUTELY;COUNT=400000",
    )
    before = _cpu()
    with pytest.raises(MalformedProviderData, match="CPU budget"):
        expand_object(
            _calendar("UID:slow\r\nDTSTART:19900101T000000Z\r\nRRULE:FREQ=MINUTELY;COUNT=400000"),
            window=HORIZON,
            default_zone=UTC_ZONE,
            limits=limits,
        )
    found = expand_object(ics, window=HORIZON, default_zone=UTC_ZONE, limits=limits)
    assert [o.native_event_id for o in found.occurrences] == ["ok"]
    assert "CPU budget" in found.notices[0].reason
    assert _cpu() - before < 1.0


def test_an_oversized_object_is_refused_before_parsing() -> None:
    ics = _calendar("UID:big\r\nDTSTART:20260301T000000Z\r\nX-PAD:" + "x" * 5000)
    with pytest.raises(MalformedProviderData, match="bytes"):
        expand_object(
            ics, window=HORIZON, default_zone=UTC_ZONE, limits=ExpansionLimits(object_bytes=4096)
        )


# -- item 14: lossy quarantines ---------------------------------------------------


def test_two_rrules_expand_their_union() -> None:
    ics = _calendar(
        "UID:two\r\nDTSTART:20260302T090000Z\r\nDURATION:PT1H\r\n"
        "RRULE:FREQ=WEEKLY;COUNT=3\r\nRRULE:FREQ=WEEKLY;BYDAY=MO,WE;UNTIL=20260311T235959Z"
    )
    found = expand_object(ics, window=HORIZON, default_zone=UTC_ZONE)
    assert [o.native_event_id for o in found.occurrences] == [
        "two/20260302T090000Z",
        "two/20260304T090000Z",
        "two/20260309T090000Z",
        "two/20260311T090000Z",
        "two/20260316T090000Z",
    ]
    assert found.notices == []


def test_duplicate_masters_keep_the_highest_sequence_and_say_so() -> None:
    ics = _calendar(
        "UID:d\r\nSEQUENCE:1\r\nDTSTAMP:20260301T000000Z\r\nDTSTART:20260302T090000Z",
        "UID:d\r\nSEQUENCE:2\r\nDTSTAMP:20260201T000000Z\r\nDTSTART:20260302T100000Z",
        "UID:d\r\nSEQUENCE:2\r\nDTSTAMP:20260202T000000Z\r\nDTSTART:20260302T110000Z",
        "UID:d\r\nSEQUENCE:2\r\nDTSTAMP:20260202T000000Z\r\nDTSTART:20260302T120000Z",
    )
    found = expand_object(ics, window=HORIZON, default_zone=UTC_ZONE)
    # SEQUENCE 2 wins; of those the latest DTSTAMP; of equal ones the first in the file
    assert [o.start_utc.hour for o in found.occurrences] == [11]
    (notice,) = found.notices
    assert notice.uid == "d"
    assert notice.reason.startswith("dropped: 3 other")


def test_last_modified_breaks_a_sequence_tie() -> None:
    ics = _calendar(
        "UID:l\r\nDTSTAMP:20260301T000000Z\r\nLAST-MODIFIED:20260101T000000Z\r\n"
        "DTSTART:20260302T090000Z",
        "UID:l\r\nDTSTAMP:20260101T000000Z\r\nLAST-MODIFIED:20260305T000000Z\r\n"
        "DTSTART:20260302T100000Z",
    )
    (occurrence,) = expand_calendar(ics, window=HORIZON, default_zone=UTC_ZONE)
    assert occurrence.start_utc.hour == 10


def test_one_bad_override_drops_only_itself() -> None:
    ics = _calendar(
        "UID:b\r\nDTSTART:20260302T090000Z\r\nDURATION:PT1H\r\nRRULE:FREQ=DAILY;COUNT=3",
        "UID:b\r\nRECURRENCE-ID:20260303T090000Z\r\n"
        "DTSTART;TZID=Nowhere/Special:20260303T150000\r\nDURATION:PT1H",
        "UID:b\r\nRECURRENCE-ID:20260304T090000Z\r\nDTSTART:20260304T070000Z\r\nDURATION:PT1H",
    )
    found = expand_object(ics, window=HORIZON, default_zone=UTC_ZONE)
    # the broken override's instance stays where the series put it: busy, not lost
    assert [(o.native_event_id, o.start_utc.hour) for o in found.occurrences] == [
        ("b/20260302T090000Z", 9),
        ("b/20260303T090000Z", 9),
        ("b/20260304T090000Z", 7),
    ]
    (notice,) = found.notices
    assert notice.reason.startswith("dropped: an override")
    assert "Nowhere/Special" in notice.reason


def test_one_bad_uid_does_not_drop_the_others_but_all_bad_still_raises() -> None:
    good = "UID:g\r\nDTSTART:20260302T090000Z"
    bad = "UID:x\r\nDTSTART;TZID=Nowhere/Special:20260302T090000"
    found = expand_object(_calendar(good, bad), window=HORIZON, default_zone=UTC_ZONE)
    assert [o.native_event_id for o in found.occurrences] == ["g"]
    assert [n.uid for n in found.notices] == ["x"]
    with pytest.raises(MalformedProviderData) as caught:
        expand_object(_calendar(bad), window=HORIZON, default_zone=UTC_ZONE)
    assert caught.value.item_id == "x"


@settings(max_examples=80, deadline=None)
@given(
    zone_name=st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Sydney"]),
    day=st.dates(min_value=datetime(2024, 1, 1).date(), max_value=datetime(2028, 1, 1).date()),
    hour=st.integers(0, 23),
    steps=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 30)), min_size=2, max_size=3),
)
def test_union_of_rrules_matches_oracle(
    zone_name: str, day: object, hour: int, steps: list[tuple[int, int]]
) -> None:
    zone = ZoneInfo(zone_name)
    start = datetime.combine(day, datetime.min.time()).replace(hour=hour)  # type: ignore[arg-type]
    rules = "\r\n".join(f"RRULE:FREQ=DAILY;INTERVAL={step};COUNT={count}" for step, count in steps)
    ics = _calendar(
        f"UID:prop\r\nDTSTART;TZID={zone_name}:{start:%Y%m%dT%H%M%S}\r\nDURATION:PT1H\r\n{rules}"
    )
    want = sorted(
        {row[:2] for step, count in steps for row in _oracle(zone, start, step, count, 60, set())},
        key=lambda row: row[1],
    )
    window = Window(datetime(2000, 1, 1, tzinfo=UTC), datetime(2040, 1, 1, tzinfo=UTC))
    found = expand_calendar(ics, window=window, default_zone=UTC_ZONE)
    assert [(o.native_event_id, o.start_utc) for o in found] == [
        (f"prop/{rid}", begin) for rid, begin in want
    ]


RULE_SHAPES = {
    # freq: (longest lead before the window the oracle can afford to walk, extra parts)
    "MINUTELY": (timedelta(days=20), ["", ";BYHOUR=9,17", ";BYDAY=MO,FR;BYMINUTE=0,30"]),
    "HOURLY": (timedelta(days=700), ["", ";BYDAY=TU,SA", ";BYMONTH=1,2,3"]),
    "DAILY": (timedelta(days=4000), ["", ";BYHOUR=8,20", ";BYMONTHDAY=1,15,31"]),
    "WEEKLY": (timedelta(days=4000), ["", ";BYDAY=MO,WE,SU;WKST=SU", ";BYDAY=TH;BYHOUR=7,19"]),
    "MONTHLY": (timedelta(days=9000), ["", ";BYDAY=-1FR", ";BYMONTHDAY=-1,10;BYSETPOS=1"]),
    "YEARLY": (timedelta(days=20000), ["", ";BYMONTH=2;BYDAY=2MO", ";BYWEEKNO=1,20;BYDAY=WE"]),
}


@settings(max_examples=120, deadline=None)
@given(
    freq=st.sampled_from(sorted(RULE_SHAPES)),
    shape=st.integers(0, 2),
    interval=st.integers(1, 5),
    lead=st.floats(0.0, 1.0),
    second=st.sampled_from([0, 30]),
)
def test_fast_forward_matches_a_walk_from_dtstart(
    freq: str, shape: int, interval: int, lead: float, second: int
) -> None:
    """Skipping to the horizon gives exactly the instances a walk from DTSTART gives."""
    from dateutil.rrule import rrulestr  # type: ignore[import-untyped]  # no stubs

    longest, parts = RULE_SHAPES[freq]
    window = Window(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 3, tzinfo=UTC))
    start = (window.start - longest * lead).replace(microsecond=0, second=second)
    if freq in ("MONTHLY", "YEARLY"):
        start = start.replace(day=min(start.day, 28) if lead < 0.5 else start.day)
    text = f"RRULE:FREQ={freq};INTERVAL={interval}{parts[shape]}"
    naive = start.replace(tzinfo=None)
    end = window.end.replace(tzinfo=None)
    ics = _calendar(f"UID:ff\r\nDTSTART:{naive:%Y%m%dT%H%M%S}Z\r\nDURATION:PT1M\r\n{text}")
    try:
        rule = itertools.takewhile(lambda w: w < end, rrulestr(text, dtstart=naive))
    except ValueError:  # BYxxx parts the INTERVAL never reaches from this DTSTART
        with pytest.raises(MalformedProviderData, match="unusable RRULE"):
            expand_calendar(ics, window=window, default_zone=UTC_ZONE)
        return
    walk = [naive] + [w for w in rule if w != naive]
    duration = timedelta(minutes=1)
    want = [
        w.replace(tzinfo=UTC)
        for w in walk
        if w.replace(tzinfo=UTC) + duration > window.start and w.replace(tzinfo=UTC) < window.end
    ]
    found = expand_calendar(ics, window=window, default_zone=UTC_ZONE)
    assert [o.start_utc for o in found] == want
