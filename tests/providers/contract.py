"""The contract every :class:`~calsync.providers.base.Provider` passes.

A backend's test module subclasses :class:`ProviderContract`, provides a ``world``
fixture (a :class:`World`: the backend's server, emulator or in-memory store, seen
from the side of whoever changes the calendar) and names, in ``lacks``, each
:class:`Cap` the backend cannot exercise, with the reason. A test that needs a
capability the backend lacks is not generated for that subclass (it is not
skipped: the class attribute is removed before pytest collects it), so every
collected test runs and can fail.

Each world builds its providers through one factory function of its test module,
so a constructor change is a one-line fix there.
"""

from __future__ import annotations

import enum
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Protocol, TypeVar

import pytest
from aiohttp import web

from calsync.errors import AuthorizationRevoked, CursorExpired, ProviderRejected, RateLimited
from calsync.model import Deletion, Occurrence, Window
from calsync.providers.base import ChangePage, Provider

#: The sync horizon of every contract test: December 2026.
WINDOW = Window(datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
BASE = datetime(2026, 12, 10, 9, tzinfo=UTC)
HOUR = timedelta(hours=1)
#: What a world writes into every event's title/description: must never reach a page.
SECRET = "secret board meeting"


class Cap(enum.Enum):
    """What a contract test may need beyond reading a calendar."""

    CURSOR_EXPIRY = "make a cursor one the backend no longer honours"
    RATE_LIMIT = "answer 429, with and without Retry-After"
    TOKEN_REFRESH = "expire an OAuth access token so the next call answers 401"
    REVOCATION = "revoke the credentials the provider holds"
    QUARANTINE = "store an item the provider cannot normalize"
    PUSH = "create, renew and stop push channels"


class World(Protocol):
    """One backend's calendar, changed behind the provider's back.

    ``key`` names an event in the test; :meth:`native_id` is the id the provider
    reports for it. Events are timed, never all-day, never recurring.
    """

    #: The page size the providers of :meth:`provider` ask for (items or batch).
    page_size: int

    def provider(self) -> Provider:
        """A new provider for the calendar, built by the module's one factory."""
        ...

    def native_id(self, key: str) -> str: ...

    async def add(self, key: str, start: datetime, end: datetime) -> None: ...

    async def move(self, key: str, start: datetime, end: datetime) -> None: ...

    async def delete(self, key: str) -> None: ...

    # Cap.CURSOR_EXPIRY
    async def expire_cursor(self, cursor: str) -> str:
        """Make ``cursor`` one the backend no longer honours; returns what to present."""
        ...

    # Cap.RATE_LIMIT
    async def throttle(self, retry_after: float | None) -> None:
        """The next change-listing call answers 429 (with ``Retry-After`` when given)."""
        ...

    # Cap.TOKEN_REFRESH
    async def expire_access_token(self) -> None: ...

    def unauthorized_answers(self) -> int:
        """How many 401s the backend has answered so far."""
        ...

    # Cap.REVOCATION
    async def revoke_grant(self) -> None: ...

    # Cap.QUARANTINE
    async def add_malformed(self, key: str) -> None:
        """Store an event under ``key`` that the provider must refuse to normalize."""
        ...

    # Cap.PUSH
    push_address: str


_F = TypeVar("_F", bound=Callable[..., Any])


def needs(*caps: Cap) -> Callable[[_F], _F]:
    """Mark a contract test as needing ``caps``."""

    def mark(test: _F) -> _F:
        test.contract_needs = frozenset(caps)  # type: ignore[attr-defined]
        return test

    return mark


# -- helpers ---------------------------------------------------------------------


async def walk(provider: Provider, cursor: str | None) -> tuple[list[ChangePage], str]:
    """Every page of one walk, and its cursor; checks the page-shape rules."""
    pages = [page async for page in provider.fetch_changes(cursor, WINDOW)]
    assert pages, "a walk yields at least one page"
    assert all(page.cursor is None for page in pages[:-1]), "the cursor is on the last page only"
    assert all(page.full == (cursor is None) for page in pages)
    last = pages[-1].cursor
    assert isinstance(last, str) and last, "the last page carries a cursor"
    return pages, last


def upserts(pages: list[ChangePage]) -> dict[str, Occurrence]:
    return {
        c.native_event_id: c for page in pages for c in page.changes if isinstance(c, Occurrence)
    }


def deletions(pages: list[ChangePage]) -> set[str]:
    return {c.native_event_id for page in pages for c in page.changes if isinstance(c, Deletion)}


def changes(pages: list[ChangePage]) -> list[object]:
    return [c for page in pages for c in page.changes]


@dataclass
class PushReceiver:
    """A webhook endpoint on 127.0.0.1 that answers Graph's validation handshake
    (echoes ``validationToken`` as text/plain) and 200 to every other push."""

    url: str = ""
    received: int = 0
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        token = request.query.get("validationToken")
        if token is not None:
            return web.Response(text=token, content_type="text/plain")
        self.received += 1
        await request.read()
        return web.Response(status=200)

    async def start(self) -> PushReceiver:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


@pytest.fixture
async def push_receiver() -> AsyncIterator[PushReceiver]:
    receiver = await PushReceiver().start()
    yield receiver
    await receiver.aclose()


# -- the contract ------------------------------------------------------------------


class ProviderContract:
    """Subclasses provide a ``world`` fixture and list what they lack, with reasons."""

    lacks: ClassVar[Mapping[Cap, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for cap, reason in cls.lacks.items():
            if not isinstance(cap, Cap) or not reason.strip():
                raise TypeError(f"{cls.__name__}.lacks must map Cap to a reason, got {cap!r}")
        for name in dir(cls):
            test = getattr(cls, name, None)
            if name.startswith("test_") and set(getattr(test, "contract_needs", ())) & set(
                cls.lacks
            ):
                setattr(cls, name, None)  # not generated for this backend; see ``lacks``

    # -- paging and cursors ----------------------------------------------------------

    async def test_full_listing_spans_pages(self, world: World) -> None:
        count = 2 * world.page_size + 1
        for n in range(count):
            await world.add(f"ev{n}", BASE + n * HOUR, BASE + n * HOUR + 30 * timedelta(minutes=1))
        pages, _ = await walk(world.provider(), None)
        assert len(pages) >= 3
        found = upserts(pages)
        assert set(found) == {world.native_id(f"ev{n}") for n in range(count)}
        third = found[world.native_id("ev2")]
        assert (third.start_utc, third.end_utc) == (BASE + 2 * HOUR, BASE + 2 * HOUR + HOUR / 2)
        assert not third.is_all_day
        assert not deletions(pages)
        assert not any(page.quarantined for page in pages)
        assert SECRET not in repr(pages)

    async def test_incremental_walk_spans_pages(self, world: World) -> None:
        await world.add("first", BASE, BASE + HOUR)
        provider = world.provider()
        _, cursor = await walk(provider, None)
        count = 2 * world.page_size + 1
        for n in range(count):
            await world.add(f"ev{n}", BASE + n * HOUR, BASE + (n + 1) * HOUR)
        pages, _ = await walk(provider, cursor)
        assert len(pages) >= 3
        assert set(upserts(pages)) == {world.native_id(f"ev{n}") for n in range(count)}

    async def test_cursor_round_trip_without_changes(self, world: World) -> None:
        await world.add("a", BASE, BASE + HOUR)
        provider = world.provider()
        _, cursor = await walk(provider, None)
        pages, cursor = await walk(provider, cursor)
        assert changes(pages) == []
        pages, _ = await walk(world.provider(), cursor)  # a cursor outlives its provider
        assert changes(pages) == []

    async def test_edits_deletions_and_inserts_arrive_once(self, world: World) -> None:
        for key in ("keep", "edit", "drop"):
            await world.add(key, BASE, BASE + HOUR)
        provider = world.provider()
        _, cursor = await walk(provider, None)
        moved = BASE + timedelta(days=2)
        await world.move("edit", moved, moved + timedelta(minutes=30))
        await world.delete("drop")
        await world.add("new", BASE + 3 * HOUR, BASE + 4 * HOUR)
        pages, cursor = await walk(provider, cursor)
        found = upserts(pages)
        assert set(found) == {world.native_id("edit"), world.native_id("new")}
        assert found[world.native_id("edit")].start_utc == moved
        assert found[world.native_id("edit")].end_utc == moved + timedelta(minutes=30)
        assert deletions(pages) == {world.native_id("drop")}
        pages, _ = await walk(provider, cursor)
        assert changes(pages) == []

    async def test_full_listing_omits_deleted_events(self, world: World) -> None:
        await world.add("alive", BASE, BASE + HOUR)
        await world.add("gone", BASE, BASE + HOUR)
        await world.delete("gone")
        pages, _ = await walk(world.provider(), None)
        assert set(upserts(pages)) == {world.native_id("alive")}
        assert not deletions(pages)  # a full listing states what exists

    @needs(Cap.CURSOR_EXPIRY)
    async def test_expired_cursor_raises_cursor_expired_then_a_full_listing_recovers(
        self, world: World
    ) -> None:
        await world.add("a", BASE, BASE + HOUR)
        provider = world.provider()
        _, cursor = await walk(provider, None)
        await world.add("b", BASE, BASE + HOUR)
        expired = await world.expire_cursor(cursor)
        with pytest.raises(CursorExpired):
            await walk(provider, expired)
        pages, cursor = await walk(provider, None)
        assert set(upserts(pages)) == {world.native_id("a"), world.native_id("b")}
        pages, _ = await walk(provider, cursor)
        assert changes(pages) == []

    async def test_foreign_cursor_is_cursor_expired(self, world: World) -> None:
        await world.add("a", BASE, BASE + HOUR)
        with pytest.raises(CursorExpired):
            await walk(world.provider(), "not-a-cursor-of-this-provider")

    # -- the horizon -----------------------------------------------------------------

    async def test_full_listing_keeps_what_overlaps_the_window_and_nothing_else(
        self, world: World
    ) -> None:
        start, end = WINDOW.start, WINDOW.end
        minute = timedelta(minutes=1)
        await world.add("ends-at-start", start - HOUR, start)
        await world.add("ends-after-start", start - HOUR, start + minute)
        await world.add("starts-before-end", end - minute, end + HOUR)
        await world.add("starts-at-end", end, end + HOUR)
        await world.add("far-before", start - timedelta(days=40), start - timedelta(days=39))
        pages, _ = await walk(world.provider(), None)
        found = upserts(pages)
        assert set(found) == {
            world.native_id("ends-after-start"),
            world.native_id("starts-before-end"),
        }
        straddling = found[world.native_id("ends-after-start")]
        assert (straddling.start_utc, straddling.end_utc) == (start - HOUR, start + minute)

    async def test_incremental_walk_follows_events_across_the_horizon(self, world: World) -> None:
        await world.add("leaves", BASE, BASE + HOUR)
        await world.add("enters", WINDOW.end + HOUR, WINDOW.end + 2 * HOUR)
        provider = world.provider()
        pages, cursor = await walk(provider, None)
        assert set(upserts(pages)) == {world.native_id("leaves")}
        await world.move("leaves", WINDOW.end + HOUR, WINDOW.end + 2 * HOUR)
        await world.move("enters", BASE, BASE + HOUR)
        pages, _ = await walk(provider, cursor)
        found = upserts(pages)
        entered = found.get(world.native_id("enters"))
        assert entered is not None and entered.start_utc == BASE
        # the one that left is reported, as a deletion or at its new place: either way
        # the caller stops counting it as busy inside the window
        left = world.native_id("leaves")
        assert left in deletions(pages) or (
            left in found and not WINDOW.overlaps(found[left].start_utc, found[left].end_utc)
        )

    # -- errors ------------------------------------------------------------------------

    @needs(Cap.RATE_LIMIT)
    async def test_429_with_retry_after_is_rate_limited_with_that_delay(self, world: World) -> None:
        await world.add("a", BASE, BASE + HOUR)
        provider = world.provider()
        await world.throttle(7)
        with pytest.raises(RateLimited) as caught:
            await walk(provider, None)
        assert caught.value.retry_after == 7
        assert caught.value.retriable
        pages, _ = await walk(provider, None)  # the throttle passed: the same provider goes on
        assert set(upserts(pages)) == {world.native_id("a")}

    @needs(Cap.RATE_LIMIT)
    async def test_429_without_retry_after_is_rate_limited_without_a_delay(
        self, world: World
    ) -> None:
        await world.add("a", BASE, BASE + HOUR)
        provider = world.provider()
        _, cursor = await walk(provider, None)
        await world.throttle(None)
        with pytest.raises(RateLimited) as caught:
            await walk(provider, cursor)
        assert caught.value.retry_after is None
        pages, _ = await walk(provider, cursor)
        assert changes(pages) == []

    @needs(Cap.TOKEN_REFRESH)
    async def test_401_refreshes_the_access_token_and_the_walk_goes_on(self, world: World) -> None:
        await world.add("a", BASE, BASE + HOUR)
        provider = world.provider()
        _, cursor = await walk(provider, None)
        refused = world.unauthorized_answers()
        await world.expire_access_token()
        await world.add("b", BASE, BASE + HOUR)
        pages, _ = await walk(provider, cursor)
        assert set(upserts(pages)) == {world.native_id("b")}
        assert world.unauthorized_answers() == refused + 1, "one 401, then a refreshed token"

    @needs(Cap.REVOCATION)
    async def test_revoked_grant_is_authorization_revoked(self, world: World) -> None:
        await world.add("a", BASE, BASE + HOUR)
        provider = world.provider()
        _, cursor = await walk(provider, None)
        await world.revoke_grant()
        with pytest.raises(AuthorizationRevoked) as caught:
            await walk(provider, cursor)
        assert not caught.value.retriable
        with pytest.raises(AuthorizationRevoked):
            await walk(world.provider(), None)  # a new provider with the same credentials

    @needs(Cap.QUARANTINE)
    async def test_malformed_item_is_quarantined_and_the_rest_arrives(self, world: World) -> None:
        await world.add("good", BASE, BASE + HOUR)
        await world.add_malformed("malformed")  # no hex digit: cannot hide in a hash
        pages, cursor = await walk(world.provider(), None)
        assert set(upserts(pages)) == {world.native_id("good")}
        quarantined = [q for page in pages for q in page.quarantined]
        assert len(quarantined) == 1
        assert world.native_id("malformed") not in quarantined[0].item_hash
        assert quarantined[0].reason
        await world.add("later", BASE, BASE + HOUR)
        pages, _ = await walk(world.provider(), cursor)  # the cursor moved past it
        assert set(upserts(pages)) == {world.native_id("later")}

    # -- push --------------------------------------------------------------------------

    @needs(Cap.PUSH)
    async def test_subscribe_expires_ttl_from_now(self, world: World) -> None:
        provider = world.provider()
        before = time.time()
        sub = await provider.subscribe("contract-channel-1", world.push_address, "tok", 3600)
        after = time.time()
        assert sub.channel_id and sub.provider_resource_id
        assert (before + 3600 - 5) * 1000 <= sub.expires_at_ms <= (after + 3600 + 5) * 1000
        await provider.unsubscribe(sub)

    @needs(Cap.PUSH)
    async def test_renew_extends_in_place_or_is_refused(self, world: World) -> None:
        provider = world.provider()
        sub = await provider.subscribe("contract-channel-2", world.push_address, "tok", 3600)
        if provider.renewable:
            renewed = await provider.renew(sub, 7200)
            assert renewed.channel_id == sub.channel_id
            assert renewed.expires_at_ms >= sub.expires_at_ms + 3000 * 1000
        else:
            with pytest.raises(ProviderRejected):
                await provider.renew(sub, 7200)
        await provider.unsubscribe(sub)

    @needs(Cap.PUSH)
    async def test_unsubscribing_a_stopped_channel_is_not_an_error(self, world: World) -> None:
        provider = world.provider()
        sub = await provider.subscribe("contract-channel-3", world.push_address, "tok", 3600)
        await provider.unsubscribe(sub)
        await provider.unsubscribe(sub)
