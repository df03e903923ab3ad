"""An in-memory :class:`~calsync.providers.base.Provider`: the fake for sync logic tests.

It keeps a change log like a real provider: the cursor is the log position, a
delta walk returns what changed after it (deletions included), a full walk lists
what exists, and :meth:`invalidate_cursors` makes every older cursor raise
:class:`~calsync.errors.CursorExpired`, as Google's 410 does; so does a cursor it
did not make. It passes ``tests/providers/contract.py`` (except what needs HTTP or
credentials: throttling, token refresh, revocation, malformed items).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from calsync.errors import CursorExpired, ProviderRejected
from calsync.model import Change, Deletion, Occurrence, ProviderOrigin, Window
from calsync.providers.base import ChangePage, Subscription


class MemoryProvider:
    origin = ProviderOrigin.GOOGLE
    renewable = False

    def __init__(self, *, page_size: int = 100, clock: Callable[[], float] = time.time) -> None:
        """``clock`` (epoch seconds) dates subscription expiries."""
        self.page_size = page_size
        self.clock = clock
        self.items: dict[str, Occurrence] = {}
        self._log: list[Change] = []
        self._epoch = 0
        self.fetches = 0
        self.subscriptions: dict[str, Subscription] = {}

    def put(self, occurrence: Occurrence) -> None:
        self.items[occurrence.native_event_id] = occurrence
        self._log.append(occurrence)

    def remove(self, native_event_id: str) -> None:
        self.items.pop(native_event_id, None)
        self._log.append(Deletion(native_event_id))

    def invalidate_cursors(self) -> None:
        self._epoch += 1

    async def fetch_changes(self, cursor: str | None, window: Window) -> AsyncIterator[ChangePage]:
        self.fetches += 1
        position = len(self._log)
        if cursor is None:
            changes: list[Change] = [
                o for o in self.items.values() if window.overlaps(o.start_utc, o.end_utc)
            ]
        else:
            epoch, _, since = cursor.partition(":")
            if not (epoch.isdigit() and since.isdigit()) or int(since) > position:
                raise CursorExpired("not a cursor of this provider", status=410)
            if int(epoch) != self._epoch:
                raise CursorExpired("cursor invalidated", status=410)
            changes = list(self._log[int(since) : position])
        pages = [changes[i : i + self.page_size] for i in range(0, len(changes), self.page_size)]
        pages = pages or [[]]
        for number, page in enumerate(pages, start=1):
            last = number == len(pages)
            yield ChangePage(
                changes=page,
                full=cursor is None,
                cursor=f"{self._epoch}:{position}" if last else None,
            )

    async def subscribe(
        self,
        channel_id: str,
        address: str,
        token: str,
        ttl_seconds: int,
        *,
        lifecycle_address: str | None = None,
    ) -> Subscription:
        if channel_id in self.subscriptions:
            raise ProviderRejected("duplicate channel id", status=409)
        expires_at_ms = int((self.clock() + ttl_seconds) * 1000)
        sub = Subscription(channel_id, f"res-{channel_id}", expires_at_ms)
        self.subscriptions[channel_id] = sub
        return sub

    async def unsubscribe(self, subscription: Subscription) -> None:
        self.subscriptions.pop(subscription.channel_id, None)

    async def renew(self, subscription: Subscription, ttl_seconds: int) -> Subscription:
        raise ProviderRejected("not renewable")

    def rotated_credentials(self) -> dict[str, str] | None:
        return None

    async def aclose(self) -> None:
        return None
