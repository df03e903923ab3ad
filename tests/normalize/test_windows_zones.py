"""Windows and Outlook zone names resolved to IANA zones; DST behaviour of the results."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from calsync.errors import MalformedProviderData
from calsync.normalize.windows_zones import WINDOWS_ZONES, zone_for

# CLDR common/supplemental/windowsZones.xml, territory "001" (unicode-org/cldr, otherVersion
# 7e11800): the zone Windows id maps to when no territory is known.
CLDR_001 = {
    "Dateline Standard Time": "Etc/GMT+12",
    "UTC-11": "Etc/GMT+11",
    "Aleutian Standard Time": "America/Adak",
    "Hawaiian Standard Time": "Pacific/Honolulu",
    "Marquesas Standard Time": "Pacific/Marquesas",
    "Alaskan Standard Time": "America/Anchorage",
    "UTC-09": "Etc/GMT+9",
    "Pacific Standard Time (Mexico)": "America/Tijuana",
    "UTC-08": "Etc/GMT+8",
    "Pacific Standard Time": "America/Los_Angeles",
    "US Mountain Standard Time": "America/Phoenix",
    "Mountain Standard Time (Mexico)": "America/Mazatlan",
    "Mountain Standard Time": "America/Denver",
    "Yukon Standard Time": "America/Whitehorse",
    "Central America Standard Time": "America/Guatemala",
    "Central Standard Time": "America/Chicago",
    "Easter Island Standard Time": "Pacific/Easter",
    "Central Standard Time (Mexico)": "America/Mexico_City",
    "Canada Central Standard Time": "America/Regina",
    "SA Pacific Standard Time": "America/Bogota",
    "Eastern Standard Time (Mexico)": "America/Cancun",
    "Eastern Standard Time": "America/New_York",
    "Haiti Standard Time": "America/Port-au-Prince",
    "Cuba Standard Time": "America/Havana",
    "US Eastern Standard Time": "America/Indianapolis",
    "Turks And Caicos Standard Time": "America/Grand_Turk",
    "Paraguay Standard Time": "America/Asuncion",
    "Atlantic Standard Time": "America/Halifax",
    "Venezuela Standard Time": "America/Caracas",
    "Central Brazilian Standard Time": "America/Cuiaba",
    "SA Western Standard Time": "America/La_Paz",
    "Pacific SA Standard Time": "America/Santiago",
    "Newfoundland Standard Time": "America/St_Johns",
    "Tocantins Standard Time": "America/Araguaina",
    "E. South America Standard Time": "America/Sao_Paulo",
    "SA Eastern Standard Time": "America/Cayenne",
    "Argentina Standard Time": "America/Buenos_Aires",
    "Greenland Standard Time": "America/Godthab",
    "Montevideo Standard Time": "America/Montevideo",
    "Magallanes Standard Time": "America/Punta_Arenas",
    "Saint Pierre Standard Time": "America/Miquelon",
    "Bahia Standard Time": "America/Bahia",
    "UTC-02": "Etc/GMT+2",
    "Azores Standard Time": "Atlantic/Azores",
    "Cape Verde Standard Time": "Atlantic/Cape_Verde",
    "UTC": "Etc/UTC",
    "GMT Standard Time": "Europe/London",
    "Greenwich Standard Time": "Atlantic/Reykjavik",
    "Sao Tome Standard Time": "Africa/Sao_Tome",
    "Morocco Standard Time": "Africa/Casablanca",
    "W. Europe Standard Time": "Europe/Berlin",
    "Central Europe Standard Time": "Europe/Budapest",
    "Romance Standard Time": "Europe/Paris",
    "Central European Standard Time": "Europe/Warsaw",
    "W. Central Africa Standard Time": "Africa/Lagos",
    "Jordan Standard Time": "Asia/Amman",
    "GTB Standard Time": "Europe/Bucharest",
    "Middle East Standard Time": "Asia/Beirut",
    "Egypt Standard Time": "Africa/Cairo",
    "E. Europe Standard Time": "Europe/Chisinau",
    "Syria Standard Time": "Asia/Damascus",
    "West Bank Standard Time": "Asia/Hebron",
    "South Africa Standard Time": "Africa/Johannesburg",
    "FLE Standard Time": "Europe/Kiev",
    "Israel Standard Time": "Asia/Jerusalem",
    "South Sudan Standard Time": "Africa/Juba",
    "Kaliningrad Standard Time": "Europe/Kaliningrad",
    "Sudan Standard Time": "Africa/Khartoum",
    "Libya Standard Time": "Africa/Tripoli",
    "Namibia Standard Time": "Africa/Windhoek",
    "Arabic Standard Time": "Asia/Baghdad",
    "Turkey Standard Time": "Europe/Istanbul",
    "Arab Standard Time": "Asia/Riyadh",
    "Belarus Standard Time": "Europe/Minsk",
    "Russian Standard Time": "Europe/Moscow",
    "E. Africa Standard Time": "Africa/Nairobi",
    "Iran Standard Time": "Asia/Tehran",
    "Arabian Standard Time": "Asia/Dubai",
    "Astrakhan Standard Time": "Europe/Astrakhan",
    "Azerbaijan Standard Time": "Asia/Baku",
    "Russia Time Zone 3": "Europe/Samara",
    "Mauritius Standard Time": "Indian/Mauritius",
    "Saratov Standard Time": "Europe/Saratov",
    "Georgian Standard Time": "Asia/Tbilisi",
    "Volgograd Standard Time": "Europe/Volgograd",
    "Caucasus Standard Time": "Asia/Yerevan",
    "Afghanistan Standard Time": "Asia/Kabul",
    "West Asia Standard Time": "Asia/Tashkent",
    "Ekaterinburg Standard Time": "Asia/Yekaterinburg",
    "Pakistan Standard Time": "Asia/Karachi",
    "Qyzylorda Standard Time": "Asia/Qyzylorda",
    "India Standard Time": "Asia/Calcutta",
    "Sri Lanka Standard Time": "Asia/Colombo",
    "Nepal Standard Time": "Asia/Katmandu",
    "Central Asia Standard Time": "Asia/Bishkek",
    "Bangladesh Standard Time": "Asia/Dhaka",
    "Omsk Standard Time": "Asia/Omsk",
    "Myanmar Standard Time": "Asia/Rangoon",
    "SE Asia Standard Time": "Asia/Bangkok",
    "Altai Standard Time": "Asia/Barnaul",
    "W. Mongolia Standard Time": "Asia/Hovd",
    "North Asia Standard Time": "Asia/Krasnoyarsk",
    "N. Central Asia Standard Time": "Asia/Novosibirsk",
    "Tomsk Standard Time": "Asia/Tomsk",
    "China Standard Time": "Asia/Shanghai",
    "North Asia East Standard Time": "Asia/Irkutsk",
    "Singapore Standard Time": "Asia/Singapore",
    "W. Australia Standard Time": "Australia/Perth",
    "Taipei Standard Time": "Asia/Taipei",
    "Ulaanbaatar Standard Time": "Asia/Ulaanbaatar",
    "Aus Central W. Standard Time": "Australia/Eucla",
    "Transbaikal Standard Time": "Asia/Chita",
    "Tokyo Standard Time": "Asia/Tokyo",
    "North Korea Standard Time": "Asia/Pyongyang",
    "Korea Standard Time": "Asia/Seoul",
    "Yakutsk Standard Time": "Asia/Yakutsk",
    "Cen. Australia Standard Time": "Australia/Adelaide",
    "AUS Central Standard Time": "Australia/Darwin",
    "E. Australia Standard Time": "Australia/Brisbane",
    "AUS Eastern Standard Time": "Australia/Sydney",
    "West Pacific Standard Time": "Pacific/Port_Moresby",
    "Tasmania Standard Time": "Australia/Hobart",
    "Vladivostok Standard Time": "Asia/Vladivostok",
    "Lord Howe Standard Time": "Australia/Lord_Howe",
    "Bougainville Standard Time": "Pacific/Bougainville",
    "Russia Time Zone 10": "Asia/Srednekolymsk",
    "Magadan Standard Time": "Asia/Magadan",
    "Norfolk Standard Time": "Pacific/Norfolk",
    "Sakhalin Standard Time": "Asia/Sakhalin",
    "Central Pacific Standard Time": "Pacific/Guadalcanal",
    "Russia Time Zone 11": "Asia/Kamchatka",
    "New Zealand Standard Time": "Pacific/Auckland",
    "UTC+12": "Etc/GMT-12",
    "Fiji Standard Time": "Pacific/Fiji",
    "Chatham Islands Standard Time": "Pacific/Chatham",
    "UTC+13": "Etc/GMT-13",
    "Tonga Standard Time": "Pacific/Tongatapu",
    "Samoa Standard Time": "Pacific/Apia",
    "Line Islands Standard Time": "Pacific/Kiritimati",
}


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize("name", sorted(WINDOWS_ZONES))
def test_every_table_entry_is_a_loadable_zone(name: str) -> None:
    zone = zone_for(name)
    assert isinstance(zone, ZoneInfo)
    assert zone.key == WINDOWS_ZONES[name]
    assert zone.utcoffset(datetime(2026, 6, 1)) is not None


@pytest.mark.parametrize(("name", "iana"), sorted(CLDR_001.items()))
def test_cldr_golden_zones_are_covered(name: str, iana: str) -> None:
    assert WINDOWS_ZONES[name] == iana
    assert zone_for(name) == ZoneInfo(iana)


@pytest.mark.parametrize(
    ("name", "iana"),
    [
        ("pacific standard time", "America/Los_Angeles"),
        ("W. EUROPE STANDARD TIME", "Europe/Berlin"),
        ("  Tokyo Standard Time ", "Asia/Tokyo"),
        ("Europe/Berlin", "Europe/Berlin"),
        ("america/new_york", "America/New_York"),
        ("Asia/Kolkata", "Asia/Kolkata"),
        ("Kamchatka Standard Time", "Asia/Kamchatka"),
        ("Mid-Atlantic Standard Time", "Etc/GMT+2"),
    ],
)
def test_windows_names_match_case_insensitively_and_iana_names_pass_through(
    name: str, iana: str
) -> None:
    assert zone_for(name).key == iana


@pytest.mark.parametrize(
    "name", ["UTC", "utc", "Coordinated Universal Time", "tzone://Microsoft/Utc", "Etc/UTC"]
)
def test_utc_spellings(name: str) -> None:
    assert zone_for(name).utcoffset(datetime(2026, 7, 1)) == timedelta(0)


@pytest.mark.parametrize(
    "name",
    [
        "tzone://Microsoft/Custom",
        "TZONE://MICROSOFT/CUSTOM",
        "Customized Time Zone",
        "Mars Standard Time",
        "",
        "../../etc/passwd",
        "Europe/Atlantis",
    ],
)
def test_custom_and_unknown_zones_are_malformed(name: str) -> None:
    with pytest.raises(MalformedProviderData):
        zone_for(name)


def test_pacific_spring_forward_gap_reads_with_the_offset_before_it() -> None:
    zone = zone_for("Pacific Standard Time")
    # 2026-03-08 02:00 PST jumps to 03:00 PDT: 02:30 does not exist on the wall.
    assert datetime(2026, 3, 8, 2, 30, tzinfo=zone).astimezone(UTC) == utc(2026, 3, 8, 10, 30)
    assert datetime(2026, 3, 8, 1, 59, tzinfo=zone).astimezone(UTC) == utc(2026, 3, 8, 9, 59)
    assert datetime(2026, 3, 8, 3, 0, tzinfo=zone).astimezone(UTC) == utc(2026, 3, 8, 10, 0)


def test_pacific_fall_back_overlap_fold_0_is_the_earlier_instant() -> None:
    zone = zone_for("Pacific Standard Time")
    first = datetime(2026, 11, 1, 1, 30, tzinfo=zone)
    assert first.astimezone(UTC) == utc(2026, 11, 1, 8, 30)  # PDT
    assert first.replace(fold=1).astimezone(UTC) == utc(2026, 11, 1, 9, 30)  # PST


def test_w_europe_transitions() -> None:
    zone = zone_for("W. Europe Standard Time")
    assert datetime(2026, 1, 15, 12, tzinfo=zone).astimezone(UTC) == utc(2026, 1, 15, 11)
    assert datetime(2026, 7, 15, 12, tzinfo=zone).astimezone(UTC) == utc(2026, 7, 15, 10)
    # gap on 2026-03-29 (02:00 -> 03:00), overlap on 2026-10-25 (03:00 -> 02:00)
    assert datetime(2026, 3, 29, 2, 30, tzinfo=zone).astimezone(UTC) == utc(2026, 3, 29, 1, 30)
    assert datetime(2026, 10, 25, 2, 30, tzinfo=zone).astimezone(UTC) == utc(2026, 10, 25, 0, 30)


def test_aus_eastern_has_southern_hemisphere_dst() -> None:
    zone = zone_for("AUS Eastern Standard Time")
    assert zone.utcoffset(datetime(2026, 1, 15)) == timedelta(hours=11)  # summer: AEDT
    assert zone.utcoffset(datetime(2026, 7, 15)) == timedelta(hours=10)  # winter: AEST
    # DST ends 2026-04-05 03:00 -> 02:00 and starts 2026-10-04 02:00 -> 03:00
    assert datetime(2026, 4, 5, 2, 30, tzinfo=zone).astimezone(UTC) == utc(2026, 4, 4, 15, 30)
    assert datetime(2026, 10, 4, 2, 30, tzinfo=zone).astimezone(UTC) == utc(2026, 10, 3, 16, 30)


@pytest.mark.parametrize(
    ("name", "day", "hours"),
    [
        ("Pacific Standard Time", date(2026, 3, 8), 23),
        ("Pacific Standard Time", date(2026, 11, 1), 25),
        ("W. Europe Standard Time", date(2026, 3, 29), 23),
        ("W. Europe Standard Time", date(2026, 10, 25), 25),
        ("AUS Eastern Standard Time", date(2026, 10, 4), 23),
        ("AUS Eastern Standard Time", date(2026, 4, 5), 25),
        ("Tokyo Standard Time", date(2026, 3, 8), 24),
    ],
)
def test_all_day_spans_between_local_midnights(name: str, day: date, hours: int) -> None:
    zone = zone_for(name)
    start = datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone).astimezone(UTC)
    assert end - start == timedelta(hours=hours)
