"""The provider protocol every adapter (Google, Microsoft, CalDAV) implements.

A provider reads one calendar. :meth:`Provider.fetch_changes` walks the changes
since a cursor (or, without one, the full listing inside a window) page by page;
the cursor is one opaque string (Google ``syncToken``, Graph ``deltaLink``, CalDAV
``sync-token``) and appears only on the last page. An expired cursor raises
:class:`~calsync.errors.CursorExpired`, to which the caller answers with a full
resync. Pages hold :class:`~calsync.model.Occurrence` and
:class:`~calsync.model.Deletion` values only: nothing personal leaves the adapter.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from calsync.errors import MalformedProviderData
from calsync.model import Change, ProviderOrigin, Window


def hash_item_id(item_id: object) -> str:
    """A stable, non-reversible name for an item, for quarantine status events."""
    return hashlib.sha256(repr(item_id).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Quarantined:
    """An item the adapter could not normalize: its (hashed) id and why."""

    item_hash: str
    reason: str


@dataclass(slots=True)
class ChangePage:
    """One page of a change walk.

    ``full`` is true when the walk is a full listing (no cursor was used, or the
    cursor expired): the caller diffs it against what it knew. ``cursor`` is set on
    the last page only. ``time_zone`` is the calendar's zone when the provider said.
    """

    changes: list[Change]
    full: bool
    cursor: str | None = None
    time_zone: str | None = None
    quarantined: list[Quarantined] = field(default_factory=list)

    def add(self, raw: object, normalize: Callable[[Mapping[str, Any]], Change]) -> None:
        """Add ``normalize(raw)``, or quarantine ``raw`` (by its hashed ``id``) when it is
        not an object or :class:`MalformedProviderData` says it cannot be represented."""
        try:
            if not isinstance(raw, Mapping):
                raise MalformedProviderData("item is not an object")
            self.changes.append(normalize(raw))
        except MalformedProviderData as exc:
            item_id = raw.get("id") if isinstance(raw, Mapping) else raw
            self.quarantined.append(Quarantined(hash_item_id(item_id), str(exc)))


@dataclass(frozen=True, slots=True)
class Subscription:
    """A push channel or subscription at the provider."""

    channel_id: str
    provider_resource_id: str
    expires_at_ms: int


class Provider(Protocol):
    """One calendar at one provider, with its credentials.

    Every method raises only :class:`~calsync.errors.ProviderError` subclasses.
    Reads are safe to repeat; ``subscribe`` and ``unsubscribe`` are not retried
    blindly by callers. ``renewable`` says whether :meth:`renew` extends a
    subscription in place (Graph); otherwise the caller replaces it with a new
    one and stops the old (Google channels).
    """

    origin: ProviderOrigin
    renewable: bool

    def fetch_changes(self, cursor: str | None, window: Window) -> AsyncIterator[ChangePage]:
        """Yield pages of changes since ``cursor``; ``None`` lists everything in ``window``."""
        ...

    async def subscribe(
        self,
        channel_id: str,
        address: str,
        token: str,
        ttl_seconds: int,
        *,
        lifecycle_address: str | None = None,
    ) -> Subscription:
        """Create a push channel delivering to ``address`` with ``token``.

        ``channel_id`` is ours where the provider lets the client choose it (Google);
        providers that assign ids (Graph) ignore it and return theirs. ``token`` is
        echoed in every push (Google channel token, Graph ``clientState``).
        """
        ...

    async def renew(self, subscription: Subscription, ttl_seconds: int) -> Subscription:
        """Extend ``subscription`` (only when ``renewable``); returns its new expiry."""
        ...

    def rotated_credentials(self) -> dict[str, str] | None:
        """Plaintext credentials the provider rotated since last asked (Microsoft
        refresh tokens replace themselves on use), for the caller to store encrypted;
        ``None`` when nothing changed."""
        ...

    async def unsubscribe(self, subscription: Subscription) -> None:
        """Stop a push channel; stopping one that is already gone is not an error."""
        ...

    async def aclose(self) -> None:
        """Release what the provider holds; idempotent."""
        ...
