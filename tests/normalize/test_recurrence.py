"""Tests of :mod:`calsync.normalize.recurrence`: a hand-computed golden corpus, property tests
against a naive oracle, and every .ics file the icalendar libraries ship."""

from __future__ import annotations

import contextlib
import json
import pathlib
import sysconfig
import warnings
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calsync.errors import MalformedProviderData
from calsync.model import StatusIntent, Transparency, Window
from calsync.normalize.busy import BusyPolicy
from calsync.normalize.recurrence import expand_calendar, wall_to_utc

DATA = pathlib.Path(__file__).parent.parent / "data" / "recurrence"
CORPUS = sorted(DATA.glob("*.ics"))
WIDE = Window(datetime(2000, 1, 1, tzinfo=UTC), datetime(2040, 1, 1, tzinfo=UTC))
UTC_ZONE = ZoneInfo("Etc/UTC")


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _z(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _calendar(*events: str, prelude: str = "") -> str:
    body = "".join(f"BEGIN:VEVENT\r\n{event.strip()}\r\nEND:VEVENT\r\n" for event in events)
    return f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:test\r\n{prelude}{body}END:VCALENDAR\r\n"


def _expand(ics: str, zone: str = "Etc/UTC", window: Window = WIDE, **kw: object) -> list[tuple]:
    found = expand_calendar(ics, window=window, default_zone=ZoneInfo(zone), **kw)  # type: ignore[arg-type]
    return [(o.native_event_id, _z(o.start_utc), _z(o.end_utc), o.is_all_day) for o in found]


# -- golden corpus -------------------------------------------------------------------


def test_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 12
    for path in CORPUS:
        assert path.with_suffix(".expected.json").exists(), path


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_golden_corpus(path: pathlib.Path) -> None:
    spec = json.loads(path.with_suffix(".expected.json").read_text())
    assert spec["why"]
    window = Window(_utc(spec["window"]["start"]), _utc(spec["window"]["end"]))
    found = expand_calendar(
        path.read_bytes(), window=window, default_zone=ZoneInfo(spec["default_zone"])
    )
    got = [
        {
            "id": o.native_event_id,
            "start": _z(o.start_utc),
            "end": _z(o.end_utc),
            "all_day": o.is_all_day,
        }
        for o in found
    ]
    assert got == spec["expected"]
    for occurrence in found:
        assert occurrence.start_utc.tzinfo is UTC
        uid = occurrence.native_event_id.split("/")[0]
        if "/" in occurrence.native_event_id:
            assert occurrence.series_id == uid
        else:
            assert occurrence.series_id is None


# -- focused cases -------------------------------------------------------------------


def test_datetime_without_end_is_zero_length_and_kept_inside_window() -> None:
    ics = _calendar("UID:z\r\nDTSTART:20260101T100000Z")
    assert _expand(ics) == [("z", "2026-01-01T10:00:00Z", "2026-01-01T10:00:00Z", False)]


def test_duration_days_are_nominal_across_dst() -> None:
    ics = _calendar("UID:d\r\nDTSTART;TZID=Europe/Berlin:20260328T120000\r\nDURATION:P1D")
    # Mar 28 12:00 CET (11:00Z) + one calendar day = Mar 29 12:00 CEST (10:00Z): 23 hours
    assert _expand(ics) == [("d", "2026-03-28T11:00:00Z", "2026-03-29T10:00:00Z", False)]


def test_all_day_duration_is_honoured() -> None:
    ics = _calendar("UID:a\r\nDTSTART;VALUE=DATE:20260110\r\nDURATION:P2D")
    assert _expand(ics, "Asia/Tokyo") == [
        ("a", "2026-01-09T15:00:00Z", "2026-01-11T15:00:00Z", True)
    ]


def test_until_in_utc_is_inclusive() -> None:
    ics = _calendar(
        "UID:u\r\nDTSTART;TZID=America/New_York:20260105T090000\r\nDURATION:PT1H\r\n"
        "RRULE:FREQ=DAILY;UNTIL=20260107T140000Z"
    )
    assert [row[1] for row in _expand(ics)] == [
        "2026-01-05T14:00:00Z",
        "2026-01-06T14:00:00Z",
        "2026-01-07T14:00:00Z",
    ]


def test_date_exdate_on_timed_series_removes_that_day() -> None:
    ics = _calendar(
        "UID:x\r\nDTSTART:20260105T090000Z\r\nRRULE:FREQ=DAILY;COUNT=3\r\nEXDATE;VALUE=DATE:20260106"
    )
    assert [row[0] for row in _expand(ics)] == ["x/20260105T090000Z", "x/20260107T090000Z"]


def test_rdate_period_keeps_its_own_length() -> None:
    ics = _calendar(
        "UID:p\r\nDTSTART:20260105T090000Z\r\nDTEND:20260105T100000Z\r\n"
        "RDATE;VALUE=PERIOD:20260110T120000Z/PT3H"
    )
    assert _expand(ics)[1] == (
        "p/20260110T120000Z",
        "2026-01-10T12:00:00Z",
        "2026-01-10T15:00:00Z",
        False,
    )


def test_orphan_override_without_master() -> None:
    ics = _calendar(
        "UID:o\r\nRECURRENCE-ID:20260105T090000Z\r\nDTSTART:20260105T100000Z\r\nDTEND:20260105T110000Z"
    )
    found = expand_calendar(ics, window=WIDE, default_zone=UTC_ZONE)
    assert [(o.native_event_id, o.series_id) for o in found] == [("o/20260105T090000Z", "o")]


def test_override_moves_instance_into_window() -> None:
    ics = _calendar(
        "UID:m\r\nDTSTART:20260105T090000Z\r\nDURATION:PT1H\r\nRRULE:FREQ=WEEKLY;COUNT=3",
        "UID:m\r\nRECURRENCE-ID:20260105T090000Z\r\nDTSTART:20260301T090000Z\r\nDURATION:PT1H",
    )
    window = Window(datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
    assert [row[0] for row in _expand(ics, window=window)] == ["m/20260105T090000Z"]


def test_thisandfuture_cancelled_ends_the_series() -> None:
    ics = _calendar(
        "UID:c\r\nDTSTART:20260105T090000Z\r\nDURATION:PT1H\r\nRRULE:FREQ=DAILY",
        "UID:c\r\nRECURRENCE-ID;RANGE=THISANDFUTURE:20260107T090000Z\r\n"
        "DTSTART:20260107T090000Z\r\nDURATION:PT1H\r\nSTATUS:CANCELLED",
    )
    window = Window(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
    assert [row[0] for row in _expand(ics, window=window)] == [
        "c/20260105T090000Z",
        "c/20260106T090000Z",
    ]


def test_busy_state_from_transp_status_and_partstat() -> None:
    ics = _calendar(
        "UID:b\r\nDTSTART:20260105T090000Z\r\nDURATION:PT1H\r\nTRANSP:TRANSPARENT",
        "UID:t\r\nDTSTART:20260105T090000Z\r\nDURATION:PT1H\r\nSTATUS:TENTATIVE",
        "UID:n\r\nDTSTART:20260105T090000Z\r\nDURATION:PT1H\r\n"
        "ATTENDEE;PARTSTAT=DECLINED:mailto:Me@Example.com",
        "UID:k\r\nDTSTART:20260105T090000Z\r\nDURATION:PT1H\r\nSTATUS:CANCELLED",
    )
    found = expand_calendar(ics, window=WIDE, default_zone=UTC_ZONE, own_address="me@example.com")
    states = {o.native_event_id: (o.status_intent, o.transparency) for o in found}
    assert states == {
        "b": (StatusIntent.FREE, Transparency.TRANSPARENT),
        "t": (StatusIntent.TENTATIVE, Transparency.OPAQUE),
        "n": (StatusIntent.FREE, Transparency.OPAQUE),
    }
    strict = BusyPolicy(declined_is_free=False)
    found = expand_calendar(
        ics, window=WIDE, default_zone=UTC_ZONE, policy=strict, own_address="me@example.com"
    )
    assert {o.native_event_id: o.status_intent for o in found}["n"] is StatusIntent.BUSY


@pytest.mark.parametrize(
    "ics",
    [
        b"not a calendar",
        _calendar("UID:1\r\nDTEND:20260101T100000Z"),
        _calendar("DTSTART:20260101T100000Z"),
        _calendar("UID:1\r\nDTSTART;TZID=Nowhere/Special:20260101T100000"),
        _calendar("UID:1\r\nDTSTART:20260101T100000Z\r\nDTEND:20260101T090000Z"),
        _calendar("UID:1\r\nDTSTART;VALUE=DATE:20260101\r\nDTEND:20260101T090000Z"),
        _calendar("UID:1\r\nDTSTART:20260101T100000Z\r\nRRULE:FREQ=SOMETIMES"),
        # a COUNT rule cannot be fast-forwarded: 40 years of seconds are refused
        _calendar("UID:1\r\nDTSTART:19600101T000000Z\r\nRRULE:FREQ=SECONDLY;COUNT=2000000000"),
    ],
    ids=[
        "garbage",
        "no-dtstart",
        "no-uid",
        "unknown-tzid",
        "negative",
        "mixed",
        "bad-rrule",
        "too-many-steps",
    ],
)
def test_unrepresentable_input_raises_malformed(ics: str | bytes) -> None:
    with pytest.raises(MalformedProviderData):
        expand_calendar(ics, window=WIDE, default_zone=UTC_ZONE)


def test_malformed_carries_the_uid() -> None:
    with pytest.raises(MalformedProviderData) as caught:
        expand_calendar(
            _calendar("UID:who\r\nDTEND:20260101T100000Z"), window=WIDE, default_zone=UTC_ZONE
        )
    assert caught.value.item_id == "who"


@pytest.mark.parametrize(
    ("zone", "wall", "expected"),
    [
        ("America/New_York", datetime(2026, 3, 8, 2, 30), datetime(2026, 3, 8, 7, 30)),  # gap
        ("America/New_York", datetime(2026, 11, 1, 1, 30), datetime(2026, 11, 1, 5, 30)),  # overlap
        ("Europe/Berlin", datetime(2026, 3, 29, 2, 0), datetime(2026, 3, 29, 1, 0)),  # gap start
        ("Australia/Sydney", datetime(2026, 10, 4, 2, 15), datetime(2026, 10, 3, 16, 15)),  # gap
        (
            "Australia/Lord_Howe",
            datetime(2026, 4, 5, 1, 45),
            datetime(2026, 4, 4, 14, 45),
        ),  # 30-min
    ],
)
def test_wall_to_utc(zone: str, wall: datetime, expected: datetime) -> None:
    assert wall_to_utc(wall, ZoneInfo(zone)) == expected.replace(tzinfo=UTC)


# -- property tests against a naive oracle -------------------------------------------

ZONES = [
    "America/New_York",
    "Europe/Berlin",
    "Australia/Sydney",
    "America/Santiago",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "America/St_Johns",
    "Pacific/Apia",
    "Etc/UTC",
]


def _oracle(
    zone: ZoneInfo, start: datetime, step_days: int, count: int, minutes: int, excluded: set[int]
) -> list[tuple[str, datetime, datetime]]:
    """Step the wall clock day by day; zoneinfo's fold=0 is RFC 5545's reading."""
    rows = []
    for index in range(count):
        wall = start + timedelta(days=step_days * index)
        if index in excluded:
            continue
        begin = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
        rows.append((begin.strftime("%Y%m%dT%H%M%SZ"), begin, begin + timedelta(minutes=minutes)))
    return rows


@settings(max_examples=150, deadline=None)
@given(
    zone_name=st.sampled_from(ZONES),
    day=st.dates(min_value=date(2019, 1, 1), max_value=date(2030, 12, 31)),
    hour=st.integers(0, 23),
    minute=st.sampled_from([0, 15, 30, 45]),
    weekly=st.booleans(),
    interval=st.integers(1, 4),
    count=st.integers(1, 40),
    minutes=st.integers(0, 600),
    data=st.data(),
)
def test_daily_weekly_match_oracle(
    zone_name: str,
    day: date,
    hour: int,
    minute: int,
    weekly: bool,
    interval: int,
    count: int,
    minutes: int,
    data: st.DataObject,
) -> None:
    zone = ZoneInfo(zone_name)
    start = datetime(day.year, day.month, day.day, hour, minute)
    excluded = set(data.draw(st.lists(st.integers(0, count - 1), max_size=count), label="exdates"))
    step = 7 * interval if weekly else interval
    lines = [
        "UID:prop",
        f"DTSTART;TZID={zone_name}:{start:%Y%m%dT%H%M%S}",
        f"DURATION:PT{minutes}M",
        f"RRULE:FREQ={'WEEKLY' if weekly else 'DAILY'};INTERVAL={interval};COUNT={count}",
    ]
    if excluded:
        walls = ",".join(
            f"{start + timedelta(days=step * i):%Y%m%dT%H%M%S}" for i in sorted(excluded)
        )
        lines.append(f"EXDATE;TZID={zone_name}:{walls}")
    expected = _oracle(zone, start, step, count, minutes, excluded)

    # a random window: the oracle filters by the same overlap rule
    lo = data.draw(st.integers(-2, step * count + 2), label="window start (days)")
    span = data.draw(st.integers(1, step * count + 4), label="window length (days)")
    window_start = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=lo)
    window = Window(window_start, window_start + timedelta(days=span))
    found = expand_calendar(_calendar("\r\n".join(lines)), window=window, default_zone=UTC_ZONE)
    want = [
        (f"prop/{rid}", b, e)
        for rid, b, e in expected
        if (e > window.start and b < window.end) or (b == e and window.start <= b < window.end)
    ]
    assert [(o.native_event_id, o.start_utc, o.end_utc) for o in found] == want


@settings(max_examples=60, deadline=None)
@given(
    zone_name=st.sampled_from(ZONES),
    day=st.dates(min_value=date(2020, 1, 1), max_value=date(2030, 12, 31)),
    days=st.integers(1, 10),
    repeat=st.integers(1, 6),
)
def test_all_day_matches_local_midnights(zone_name: str, day: date, days: int, repeat: int) -> None:
    zone = ZoneInfo(zone_name)
    last = day + timedelta(days=days)
    ics = _calendar(
        f"UID:ad\r\nDTSTART;VALUE=DATE:{day:%Y%m%d}\r\nDTEND;VALUE=DATE:{last:%Y%m%d}"
        f"\r\nRRULE:FREQ=WEEKLY;INTERVAL=2;COUNT={repeat}"
    )
    found = expand_calendar(ics, window=WIDE, default_zone=zone)
    want = []
    for index in range(repeat):
        first = day + timedelta(days=14 * index)
        begin = datetime.combine(first, datetime.min.time(), tzinfo=zone).astimezone(UTC)
        end = datetime.combine(first + timedelta(days=days), datetime.min.time(), tzinfo=zone)
        want.append((f"ad/{first:%Y%m%d}", begin, end.astimezone(UTC), True))
    assert [(o.native_event_id, o.start_utc, o.end_utc, o.is_all_day) for o in found] == want


# -- every .ics file the libraries ship ----------------------------------------------

SITE = pathlib.Path(sysconfig.get_paths()["purelib"])
SHIPPED = sorted(
    path
    for package in ("icalendar", "recurring_ical_events")
    for path in (SITE / package).glob("test*/**/*.ics")
)
TWO_YEARS = Window(datetime(2013, 1, 1, tzinfo=UTC), datetime(2015, 1, 1, tzinfo=UTC))


def test_shipped_files_found() -> None:
    assert len(SHIPPED) > 100
    # both libraries contribute: a dependency dropped from the lock must not thin the corpus
    for package in ("icalendar", "recurring_ical_events"):
        assert any((SITE / package) in path.parents for path in SHIPPED), package


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(SITE)) for p in SHIPPED])
def test_shipped_ics_never_raises_a_foreign_exception(path: pathlib.Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.suppress(MalformedProviderData):
            expand_calendar(
                path.read_bytes(), window=TWO_YEARS, default_zone=ZoneInfo("Europe/Berlin")
            )
