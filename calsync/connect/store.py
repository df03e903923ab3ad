"""Connect links and consents in progress: bounded, expiring, single-use, in memory.

Three kinds of entry, each found only by an unguessable 256-bit token
(``secrets.token_urlsafe(32)``):

* a :class:`ConnectLink` (``POST /api/connect`` makes it): which resource, which
  provider, what to register; opened by the calendar's owner; spent once it has
  registered a calendar, or when it expires (``connect_link_ttl``);
* a :class:`PendingConsent` per OAuth ``state``: bound to one link, holding the PKCE
  verifier (or msal's whole flow) server-side; taken (deleted) before the code is
  redeemed, so a replayed callback finds nothing; expires after ``connect_state_ttl``;
* a :class:`PendingChoice` after a successful consent: the encrypted refresh token
  and the calendars to pick from, until the owner submits the picker form.

Entries live in the process that made the link (the worker, or the one gateway that
serves both ``/api/connect`` and ``/connect/*``); a restart forgets them, and the
owner is asked for a new link. Every map holds at most ``max_entries``; a full store
refuses new entries (:class:`StoreFull`) rather than evicting live ones.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from calsync.errors import CalsyncError


class StoreFull(CalsyncError):
    """Too many connect links or consents in progress; try again later."""


@dataclass(frozen=True, slots=True)
class ConnectLink:
    """What a connect link registers: ``calendar_id`` None lets the owner pick."""

    resource_id: str
    provider: str
    expires_at: float
    calendar_id: str | None = None
    time_zone: str | None = None
    busy_policy: Mapping[str, bool] | None = None


@dataclass(frozen=True, slots=True)
class PendingConsent:
    """One consent in progress: the link it belongs to and the PKCE secret or msal flow."""

    link_token: str
    expires_at: float
    code_verifier: str = field(default="", repr=False)
    msal_flow: Mapping[str, Any] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class CalendarChoice:
    """A calendar the owner may share: its id, a label for the page, its time zone."""

    calendar_id: str
    label: str
    time_zone: str | None
    primary: bool = False


@dataclass(frozen=True, slots=True)
class PendingChoice:
    """A granted consent waiting for the owner to pick calendars."""

    link_token: str
    expires_at: float
    #: the credentials to register, already encrypted (:class:`calsync.crypto.SecretBox`)
    credentials: Mapping[str, str] = field(repr=False)
    calendars: tuple[CalendarChoice, ...] = ()


def new_token() -> str:
    """256 random bits, URL-safe: 43 characters of ``[A-Za-z0-9_-]``."""
    return secrets.token_urlsafe(32)


_T = TypeVar("_T", ConnectLink, PendingConsent, PendingChoice)


class _Expiring(Generic[_T]):
    def __init__(self, clock: Callable[[], float], max_entries: int) -> None:
        self._clock = clock
        self._max = max_entries
        self._items: dict[str, _T] = {}

    def _sweep(self) -> None:
        now = self._clock()
        for token in [t for t, item in self._items.items() if item.expires_at <= now]:
            del self._items[token]

    def add(self, item: _T, token: str | None = None) -> str:
        """Store ``item`` under ``token`` (default: a new one, see :func:`new_token`);
        raises :class:`StoreFull` when full."""
        self._sweep()
        if len(self._items) >= self._max:
            raise StoreFull("too many connect links or consents in progress")
        token = token or new_token()
        self._items[token] = item
        return token

    def get(self, token: str) -> _T | None:
        """The live entry of ``token``, else None (expired entries are dropped)."""
        item = self._items.get(token)
        if item is not None and item.expires_at <= self._clock():
            del self._items[token]
            return None
        return item

    def take(self, token: str) -> _T | None:
        """Remove and return the live entry of ``token`` (single use), else None."""
        item = self._items.pop(token, None)
        if item is not None and item.expires_at <= self._clock():
            return None
        return item

    def discard_where(self, predicate: Callable[[_T], bool]) -> None:
        for token in [t for t, item in self._items.items() if predicate(item)]:
            del self._items[token]


class ConnectStore:
    """The three maps of the module docstring, on one clock and one size limit each."""

    def __init__(self, clock: Callable[[], float], max_entries: int) -> None:
        self.links: _Expiring[ConnectLink] = _Expiring(clock, max_entries)
        self.consents: _Expiring[PendingConsent] = _Expiring(clock, max_entries)
        self.choices: _Expiring[PendingChoice] = _Expiring(clock, max_entries)

    def spend(self, link_token: str) -> None:
        """The link registered its calendars: forget it and whatever hangs off it."""
        self.links.take(link_token)
        self.consents.discard_where(lambda c: c.link_token == link_token)
        self.choices.discard_where(lambda c: c.link_token == link_token)
