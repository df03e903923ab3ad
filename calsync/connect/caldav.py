"""Finding the calendars of a CalDAV account (iCloud by default) before registering them.

Discovery is RFC 6764 / RFC 4791: ``/.well-known/caldav`` (when given a server URL),
``current-user-principal``, ``calendar-home-set``, then the home's calendar
collections (:meth:`calsync.providers.caldav.CalDAVProvider.discover_calendars`). It
runs through the same network-guarded client the worker uses
(:func:`calsync.providers.factory.guarded_caldav_client`), so a server URL, a
redirect or a home on a non-public address is refused unless
``CALSYNC_CALDAV_ALLOWED_NETWORKS`` lists it, and credentials never follow a
redirect to another origin. Only collections that hold events (VEVENT) are offered
(iCloud lists Reminders collections too).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from calsync.errors import AuthorizationRevoked, CalsyncError, ProviderError
from calsync.providers.caldav import CalDAVProvider, CalendarInfo
from calsync.providers.factory import guarded_caldav_client
from calsync.settings import Settings

ICLOUD_URL = "https://caldav.icloud.com"
ICLOUD_HELP = (
    "iCloud needs an app-specific password, not your Apple Account password: sign in at "
    "https://account.apple.com, open Sign-In and Security > App-Specific Passwords, "
    "create one (it looks like xxxx-xxxx-xxxx-xxxx and is shown once) and use it here "
    "with your Apple Account email. Two-factor authentication must be on. You can "
    "revoke it there at any time; calsync then stops reading the calendar."
)


class DiscoveryFailed(CalsyncError):
    """Discovery failed; the message says why in words a user can act on."""


def is_icloud(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host == "icloud.com" or host.endswith(".icloud.com")


async def discover(
    settings: Settings, url: str, username: str, password: str
) -> list[CalendarInfo]:
    """The event calendars of the account (checking the credentials on the way).

    Raises :class:`DiscoveryFailed`: the password was refused, the server is not
    reachable or not allowed, or it names no calendars."""
    client = guarded_caldav_client(settings)
    provider = CalDAVProvider(client=client, url=url, username=username, password=password)
    try:
        found = await provider.discover_calendars()
    except AuthorizationRevoked:
        hint = f" {ICLOUD_HELP}" if is_icloud(url) else ""
        raise DiscoveryFailed(
            f"{urlsplit(url).hostname} refused the username or password (HTTP 401).{hint}"
        ) from None
    except ProviderError as exc:
        raise DiscoveryFailed(f"calendar discovery at {url} failed: {exc}") from None
    finally:
        await provider.aclose()
        await client.aclose()
    calendars = [c for c in found if c.supports_events]
    if not calendars:
        raise DiscoveryFailed(f"the account at {url} has no calendars with events")
    return calendars
