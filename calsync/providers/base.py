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

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from calsync.errors import ProviderError, RateLimited
from calsync.model import Change, ProviderOrigin
from calsync.ratelimit import RateLimiter


@dataclass(frozen=True, slots=True)
class Window:
    """The sync horizon: occurrences that end after ``start`` and begin before ``end``."""

    start: datetime
    end: datetime

    def overlaps(self, start: datetime, end: datetime) -> bool:
        return end > self.start and start < self.end


class AccountGate:
    """One account's use of the worker's :class:`~calsync.ratelimit.RateLimiter`.

    Every provider request goes through :meth:`slot`: it waits for a token (a wait
    longer than ``max_inline_wait`` raises :class:`RateLimited` instead, so the work
    goes through the retry topic rather than blocking its lane) and releases the
    in-flight count afterwards; :meth:`observe` reports how the provider answered.
    """

    def __init__(
        self, limiter: RateLimiter | None, provider: str, account: str, max_inline_wait: float
    ) -> None:
        self._limiter = limiter
        self._provider = provider
        self.account = account
        self._max_inline_wait = max_inline_wait

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        limiter = self._limiter
        if limiter is None:
            yield
            return
        while (delay := limiter.reserve(self._provider, self.account)) > 0:
            if delay > self._max_inline_wait:
                raise RateLimited("local rate limit for this account", retry_after=delay)
            await asyncio.sleep(delay)
        try:
            yield
        finally:
            limiter.release(self._provider, self.account)

    def observe(self, status: int, error: ProviderError | None) -> None:
        """Throttles (429, rate-limit 403s, 503) slow the account; successes restore it."""
        if self._limiter is None:
            return
        if isinstance(error, RateLimited) or status == 503:
            retry_after = error.retry_after if isinstance(error, RateLimited) else None
            self._limiter.throttled(self._provider, self.account, retry_after)
        elif status < 400:
            self._limiter.succeeded(self._provider, self.account)


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
