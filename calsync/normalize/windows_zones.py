"""Time zone names as Outlook and Microsoft Graph send them, resolved to IANA zones.

Graph names a zone in ``dateTimeTimeZone.timeZone`` (and ``originalStartTimeZone``)
in one of these forms, all handled by :func:`zone_for`:

* a Windows zone id (``"Pacific Standard Time"``), matched case-insensitively and
  mapped through CLDR's ``windowsZones`` "001" (golden zone) table, which
  :data:`icalendar.timezone.windows_to_olson.WINDOWS_TO_OLSON` carries, plus
  :data:`EXTRA_WINDOWS_ZONES` (legacy Windows ids and Exchange's UTC spellings);
* an IANA name (``"Europe/Berlin"``), passed through (case-insensitively too);
* ``"tzone://Microsoft/Custom"`` / ``"Customized Time Zone"``: a legacy custom zone
  whose rules travel only in the item's MAPI definition, so it cannot be resolved
  and raises :class:`~calsync.errors.MalformedProviderData`.

Anything else raises :class:`~calsync.errors.MalformedProviderData`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

from calsync.errors import MalformedProviderData

__all__ = ["CUSTOM_ZONE_NAMES", "EXTRA_WINDOWS_ZONES", "WINDOWS_ZONES", "zone_for"]

#: Names Graph and Exchange use that are not in CLDR's current "001" table. The
#: legacy ids are still in the Windows registry (shown as "... - Old") and so can be
#: chosen in Outlook; they map to the zone CLDR gave them while it listed them.
EXTRA_WINDOWS_ZONES: Mapping[str, str] = MappingProxyType(
    {
        "Coordinated Universal Time": "Etc/UTC",
        "tzone://Microsoft/Utc": "Etc/UTC",
        "Kamchatka Standard Time": "Asia/Kamchatka",
        "Mid-Atlantic Standard Time": "Etc/GMT+2",
        "Armenian Standard Time": "Asia/Yerevan",
        "Mexico Standard Time": "America/Mexico_City",
        "Mexico Standard Time 2": "America/Chihuahua",
    }
)

#: Every Windows id (and UTC alias) :func:`zone_for` knows, with its IANA zone.
WINDOWS_ZONES: Mapping[str, str] = MappingProxyType({**WINDOWS_TO_OLSON, **EXTRA_WINDOWS_ZONES})

#: Legacy custom zones: their rules are not in the name, so no IANA zone fits.
CUSTOM_ZONE_NAMES = frozenset({"tzone://microsoft/custom", "customized time zone"})

_BY_LOWER_NAME = {name.casefold(): iana for name, iana in WINDOWS_ZONES.items()}


@functools.cache
def _iana_by_lower_name() -> dict[str, str]:
    return {name.casefold(): name for name in available_timezones()}


@functools.cache
def zone_for(name: str) -> ZoneInfo:
    """The IANA zone for a zone name Graph sent; see the module docstring.

    Raises :class:`MalformedProviderData` for a custom or unknown zone.
    """
    key = name.strip()
    folded = key.casefold()
    if folded in CUSTOM_ZONE_NAMES:
        raise MalformedProviderData(
            f"custom time zone {key!r} cannot be resolved without its definition"
        )
    iana = _BY_LOWER_NAME.get(folded)
    if iana is None:
        iana = _iana_by_lower_name().get(folded)
    if iana is None:
        raise MalformedProviderData(f"unknown time zone {key[:64]!r}")
    try:
        return ZoneInfo(iana)
    except (ZoneInfoNotFoundError, ValueError) as exc:  # tzdata lacks a zone CLDR names
        raise MalformedProviderData(f"time zone {key!r} has no tz data ({iana})") from exc
