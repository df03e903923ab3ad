"""CalDAV (RFC 4791, RFC 6578) and iCloud: discovery, sync-collection, ctag/etag fallback.

One :class:`CalDAVProvider` reads one calendar collection through an injected
:class:`httpx.AsyncClient`, logging in with HTTP Basic (username and an
app-specific password; iCloud accepts nothing else for third parties).

Decisions (each a reading of RFC 4791, RFC 6578 and the servers' behaviour):

* **Discovery.** ``url`` may be a calendar collection (used as is) or any other
  DAV URL: then ``/.well-known/caldav`` is followed, ``DAV:current-user-principal``
  and ``CALDAV:calendar-home-set`` are read, and the calendar whose last path segment
  or display name is ``calendar`` is chosen (the first VEVENT calendar when
  ``calendar`` is ``None``).
* **Where requests (and the Basic credentials) may go.** Only to the registered
  URL's origin (scheme, host, port), or over HTTPS to a host under the same parent
  domain (``caldav.icloud.com`` → ``p42-caldav.icloud.com``: iCloud's partition
  hosts, named by ``calendar-home-set``). Redirects are followed by hand and only
  within the origin of the request that got them. URLs with userinfo
  (``https://user:pw@host/``) are refused wherever they appear. Anything else is
  :class:`ProviderRejected` before a request is made. Which *addresses* may be
  reached is the transport's business (:mod:`calsync.providers.netpolicy`).
* **Sizes.** Every response is read under ``max_response_bytes``
  (:data:`~calsync.providers.http.CALDAV_RESPONSE_LIMIT`); a ``calendar-multiget``
  batch over it is fetched again one resource at a time, and a single resource over
  it is quarantined; any other response over it raises
  :class:`~calsync.errors.ResponseTooLarge`.
* **Changes.** ``sync-collection`` (Depth 0, no ``DAV:limit``; 507 truncation is
  followed) then ``calendar-multiget`` in batches of ``batch_size``; one
  :class:`ChangePage` per batch. A member listed as 404 on a full listing is ignored
  (Radicale lists deleted members on an empty-token sync); the collection itself
  listed among members (iCloud) is ignored. Servers whose ``supported-report-set``
  lacks ``sync-collection`` are read by ``getctag`` + a Depth 1 ``getetag`` listing
  diffed against the etags kept in the cursor.
* **Occurrence ids.** A resource (href) yields occurrences from
  :func:`calsync.normalize.recurrence.expand_object`, run in a worker thread (it is
  CPU-bound, bounded by :class:`~calsync.normalize.recurrence.ExpansionLimits`); what it
  collapsed or dropped becomes one :class:`Quarantined` per notice, named by the
  href's hash like a refused resource. The cursor remembers which ids each href
  produced, so a removed href becomes a :class:`Deletion` per id and an edited
  href deletes the ids it no longer produces.
* **Cursor** (opaque to callers): ``caldav:1:`` + JSON
  ``{"u": collection URL, "t": sync-token or null, "c": ctag or null,
  "e": {href: etag} (fallback mode only), "h": {href: [native ids]}}``. It grows
  with the number of resources and occurrences in the window. A cursor for another
  collection, or one that does not decode, raises :class:`CursorExpired`.
* **Invalid tokens** in every server form raise :class:`CursorExpired`: 403/409/400
  with ``DAV:valid-sync-token`` (Radicale 403), 412 (Xandikos), 500 (older
  Xandikos, CCS), or a 207 carrying the precondition or an error status for the
  collection. Servers that silently answer a stale token with a full listing
  (DAViCal) are read as if every member changed: upserts are right, deletions made
  meanwhile are missed until the next full resync.
* **Errors**: 401 → :class:`AuthorizationRevoked`; 429 and 503 (iCloud throttles with
  503, ``Retry-After`` optional) → :class:`RateLimited`; other 5xx →
  :class:`TransientProviderError`; other 4xx → :class:`ProviderRejected`. Every
  network failure (refused, timed out, TLS, DNS, an address the network policy
  refuses) is one :class:`TransientProviderError` with one message: the status
  events that carry it must not tell whether a port answered. Details go to the
  debug log.
* **No push.** CalDAV has no third-party push (iCloud's is APNs for Apple clients
  only): :meth:`CalDAVProvider.subscribe` raises :class:`ProviderRejected` and the
  caller polls.

Normalization is the privacy boundary: only UID, RECURRENCE-ID, times, STATUS and
TRANSP are read; SUMMARY, DESCRIPTION, LOCATION, ATTENDEE, ORGANIZER never leave.
"""

from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit
from zoneinfo import ZoneInfo

import httpx
import orjson

from calsync.errors import (
    CursorExpired,
    MalformedProviderData,
    ProviderError,
    ProviderRejected,
    ResponseTooLarge,
    TransientProviderError,
)
from calsync.model import (
    Change,
    Deletion,
    ProviderOrigin,
    Window,
)
from calsync.normalize import recurrence
from calsync.normalize.busy import BusyPolicy
from calsync.providers.base import ChangePage, Quarantined, Subscription, hash_item_id
from calsync.providers.http import (
    CALDAV_RESPONSE_LIMIT,
    AccountGate,
    ProviderHttp,
    status_error,
)
from calsync.providers.netpolicy import NetworkPolicy, literal_address_refusal
from calsync.providers.spec import BuildContext, ProviderSpec, PushKind, account_key
from calsync.ratelimit import BucketSpec, RateLimiter
from calsync.tables.records import Resource

log = logging.getLogger(__name__)

NAME = "caldav"
#: The one message of every network failure (see the module docstring).
UNREACHABLE = "caldav server unreachable"

DAV = "DAV:"
CALDAV = "urn:ietf:params:xml:ns:caldav"
CS = "http://calendarserver.org/ns/"
_CURSOR_PREFIX = "caldav:1:"
_XML = "application/xml; charset=utf-8"
_MAX_REDIRECTS = 5
_MAX_TRUNCATED_ROUNDS = 1000


def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


# -- XML --------------------------------------------------------------------------


def _parse_xml(content: bytes) -> ET.Element:
    try:
        # expat resolves no external entities and (>= 2.4.1) bounds entity expansion
        return ET.fromstring(content)  # noqa: S314
    except ET.ParseError as exc:
        raise TransientProviderError("caldav server returned malformed XML") from exc


def _status_code(text: str | None) -> int:
    parts = (text or "").split()
    try:
        return int(parts[1])
    except (IndexError, ValueError):
        return 0


@dataclass(slots=True)
class _Member:
    href: str
    status: int
    props: dict[str, ET.Element] = field(default_factory=dict)


def _members(root: ET.Element) -> list[_Member]:
    """The ``DAV:response`` elements of a multistatus, with their 200 props."""
    out: list[_Member] = []
    for response in root.iter(_q(DAV, "response")):
        href = (response.findtext(_q(DAV, "href")) or "").strip()
        member = _Member(href, _status_code(response.findtext(_q(DAV, "status"))))
        for propstat in response.findall(_q(DAV, "propstat")):
            code = _status_code(propstat.findtext(_q(DAV, "status")))
            prop = propstat.find(_q(DAV, "prop"))
            if prop is None:
                continue
            if code == 200:
                for child in prop:
                    member.props[child.tag] = child
            if not member.status:
                member.status = code
        if not member.status:
            member.status = 200
        out.append(member)
    return out


def _href_text(element: ET.Element | None) -> str | None:
    if element is None:
        return None
    text = element.findtext(_q(DAV, "href"))
    return text.strip() if text else None


def _propfind(*props: tuple[str, str]) -> bytes:
    names = "".join(f'<x:{name} xmlns:x="{ns}"/>' for ns, name in props)
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<d:propfind xmlns:d="DAV:"><d:prop>{names}</d:prop></d:propfind>'
    ).encode()


def _sync_body(token: str) -> bytes:
    token_xml = f"<d:sync-token>{_escape(token)}</d:sync-token>" if token else "<d:sync-token/>"
    return (
        '<?xml version="1.0" encoding="utf-8"?><d:sync-collection xmlns:d="DAV:">'
        f"{token_xml}<d:sync-level>1</d:sync-level><d:prop><d:getetag/></d:prop>"
        "</d:sync-collection>"
    ).encode()


def _multiget_body(hrefs: Iterable[str]) -> bytes:
    refs = "".join(f"<d:href>{_escape(h)}</d:href>" for h in hrefs)
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<c:calendar-multiget xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">'
        f"<d:prop><d:getetag/><c:calendar-data/></d:prop>{refs}</c:calendar-multiget>"
    ).encode()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _has_valid_sync_token_error(content: bytes) -> bool:
    return b"valid-sync-token" in content


# -- where requests may go ----------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of ``url``; raises :class:`ProviderRejected` for a URL that
    is not plain http(s) or carries userinfo."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ProviderRejected("caldav URL does not parse") from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ProviderRejected("caldav URLs must be http(s) URLs with a host")
    if parts.username is not None or parts.password is not None:
        raise ProviderRejected("caldav URLs must not carry credentials (user:password@)")
    return scheme, parts.hostname.lower().rstrip("."), port or _DEFAULT_PORTS[scheme]


def _parent_domain(host: str) -> str | None:
    """``host`` without its first label, when that leaves at least two labels."""
    labels = host.split(".")
    if len(labels) < 3 or all(label.isdigit() for label in labels):
        return None
    return ".".join(labels[1:])


def _reachable_from(registered: tuple[str, str, int], target: tuple[str, str, int]) -> bool:
    """Whether credentials for the ``registered`` origin may be sent to ``target``."""
    if target == registered:
        return True
    parent = _parent_domain(registered[1])
    return (
        target[0] == "https"
        and registered[0] == "https"
        and parent is not None
        and target[1].endswith("." + parent)
    )


# -- errors -----------------------------------------------------------------------


def _translate(response: httpx.Response, *, with_token: bool = False) -> ProviderError:
    """The calsync error for a non-success response (``with_token`` for a stored-token
    sync): :func:`status_error` refined with the servers' sync-token refusals and
    iCloud's 503 throttling (``Retry-After`` optional)."""
    status = response.status_code
    return status_error(
        response,
        NAME,
        cursor_expired=with_token
        and (
            status in (412, 500)
            or (status in (400, 403, 409) and _has_valid_sync_token_error(response.content))
        ),
        throttled=status == 503,
    )


# -- cursor -----------------------------------------------------------------------


@dataclass(slots=True)
class _State:
    url: str
    token: str | None = None
    ctag: str | None = None
    etags: dict[str, str] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=dict)

    def encode(self) -> str:
        body: dict[str, Any] = {"u": self.url, "t": self.token, "c": self.ctag, "h": self.ids}
        if self.etags:
            body["e"] = self.etags
        return _CURSOR_PREFIX + orjson.dumps(body).decode()

    @classmethod
    def decode(cls, cursor: str) -> _State:
        if not cursor.startswith(_CURSOR_PREFIX):
            raise CursorExpired("not a calsync caldav cursor")
        try:
            body = orjson.loads(cursor[len(_CURSOR_PREFIX) :])
            return cls(
                url=str(body["u"]),
                token=None if body.get("t") is None else str(body["t"]),
                ctag=None if body.get("c") is None else str(body["c"]),
                etags={str(k): str(v) for k, v in (body.get("e") or {}).items()},
                ids={str(k): [str(i) for i in v] for k, v in (body.get("h") or {}).items()},
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise CursorExpired("caldav cursor does not decode") from exc


# -- provider ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CalendarInfo:
    """A calendar collection found by discovery."""

    url: str
    display_name: str | None
    supports_sync: bool
    supports_events: bool


class CalDAVProvider:
    """One CalDAV calendar, read through an injected :class:`httpx.AsyncClient`.

    ``url`` is a calendar collection or a server/principal URL to discover from
    (see the module docstring). ``use_sync_collection`` forces (``True``) or avoids
    (``False``) ``sync-collection``; ``None`` follows the server's
    ``supported-report-set``. ``time_zone`` reads floating times and all-day dates;
    ``own_address`` (the owner's calendar address, e.g. the Apple ID) lets the
    expander read the owner's PARTSTAT; ``policy`` (the default :class:`BusyPolicy`
    when ``None``) is handed to the expander to decide busy states. Every method
    raises only :class:`~calsync.errors.ProviderError` subclasses.
    """

    origin = ProviderOrigin.CALDAV
    renewable = False

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        url: str,
        username: str,
        password: str,
        calendar: str | None = None,
        time_zone: str | None = None,
        own_address: str | None = None,
        batch_size: int = 50,
        use_sync_collection: bool | None = None,
        limiter: RateLimiter | None = None,
        account: str = "",
        max_inline_wait: float = 0.25,
        policy: BusyPolicy | None = None,
        max_response_bytes: int = CALDAV_RESPONSE_LIMIT,
    ) -> None:
        self._max_response_bytes = max_response_bytes
        self._policy = BusyPolicy() if policy is None else policy
        self._auth = httpx.BasicAuth(username, password)
        self._url = url
        self._calendar_name = calendar
        self._default_zone = ZoneInfo(time_zone or "UTC")
        self._own_address = own_address
        self._batch_size = max(1, batch_size)
        self._use_sync = use_sync_collection
        gate = AccountGate(limiter, NAME, account, max_inline_wait)
        self._http = ProviderHttp(
            client, gate, NAME, _translate, max_response_bytes, unreachable=UNREACHABLE
        )
        self.account = account
        self._resolved: CalendarInfo | None = None

    # -- HTTP -----------------------------------------------------------------
    async def _request(
        self, method: str, url: str, *, body: bytes | None = None, depth: str | None = None
    ) -> httpx.Response:
        """One request, never following redirects, to a URL the credentials may go to.

        Raises :class:`ProviderRejected` for any other URL (see the module docstring),
        :class:`~calsync.errors.ResponseTooLarge` for a body over the limit and
        :class:`TransientProviderError` (:data:`UNREACHABLE`) for every network failure.
        """
        if not _reachable_from(_origin(self._url), _origin(url)):
            raise ProviderRejected("caldav server named a URL on another origin; not followed")
        headers = [("Content-Type", _XML)] if body is not None else []
        if depth is not None:
            headers.append(("Depth", depth))
        return await self._http.send(
            method, url, headers=headers, content=body, auth=self._auth, follow_redirects=False
        )

    async def _propfind(
        self, url: str, depth: str, *props: tuple[str, str]
    ) -> tuple[str, list[_Member]]:
        """PROPFIND following same-origin redirects by hand; returns the final URL and
        the members. A redirect to another origin raises :class:`ProviderRejected`."""
        for _ in range(_MAX_REDIRECTS):
            response = await self._request("PROPFIND", url, body=_propfind(*props), depth=depth)
            location = response.headers.get("Location")
            if response.status_code in (301, 302, 303, 307, 308) and location:
                target = urljoin(url, location)
                if _origin(target) != _origin(url):
                    raise ProviderRejected("caldav server redirected to another origin")
                url = target
                continue
            if response.status_code != 207:
                raise _translate(response)
            return url, _members(_parse_xml(response.content))
        raise ProviderRejected("caldav discovery redirected too often")

    # -- discovery ------------------------------------------------------------
    async def discover_calendars(self) -> list[CalendarInfo]:
        """Every calendar collection under the account's calendar home.

        Raises :class:`ProviderRejected` when the server names no principal or home.
        """
        parts = urlsplit(self._url)
        start = self._url
        if parts.path in ("", "/"):
            start = urljoin(self._url, "/.well-known/caldav")
        context, members = await self._propfind(start, "0", (DAV, "current-user-principal"))
        principal = next(
            (_href_text(m.props.get(_q(DAV, "current-user-principal"))) for m in members), None
        )
        if not principal:
            raise ProviderRejected("caldav server named no current-user-principal")
        principal_url = urljoin(context, principal)
        principal_url, members = await self._propfind(
            principal_url, "0", (CALDAV, "calendar-home-set")
        )
        home = next(
            (_href_text(m.props.get(_q(CALDAV, "calendar-home-set"))) for m in members), None
        )
        if not home:
            raise ProviderRejected("caldav principal has no calendar-home-set")
        # an absolute href may move us to another host (iCloud partitions): _request
        # lets it only within the registered host's parent domain, over HTTPS
        home_url = urljoin(principal_url, home)
        return await self._list_calendars(home_url)

    async def _list_calendars(self, home_url: str) -> list[CalendarInfo]:
        home_url, members = await self._propfind(
            home_url,
            "1",
            (DAV, "resourcetype"),
            (DAV, "displayname"),
            (DAV, "supported-report-set"),
            (CALDAV, "supported-calendar-component-set"),
        )
        return [info for m in members if (info := _calendar_info(home_url, m)) is not None]

    async def _calendar(self) -> CalendarInfo:
        if self._resolved is not None:
            return self._resolved
        url, members = await self._propfind(
            self._url,
            "0",
            (DAV, "resourcetype"),
            (DAV, "displayname"),
            (DAV, "supported-report-set"),
            (CALDAV, "supported-calendar-component-set"),
        )
        direct = next((_calendar_info(url, m) for m in members), None)
        if direct is not None:
            self._resolved = direct
            return direct
        calendars = await self.discover_calendars()
        wanted = self._calendar_name
        for info in calendars:
            segment = unquote(urlsplit(info.url).path.rstrip("/").rsplit("/", 1)[-1])
            if wanted is None and info.supports_events:
                self._resolved = info
                return info
            if wanted is not None and wanted in (segment, info.display_name):
                self._resolved = info
                return info
        raise ProviderRejected(f"no calendar {wanted!r} found by discovery")

    # -- changes --------------------------------------------------------------
    async def fetch_changes(self, cursor: str | None, window: Window) -> AsyncIterator[ChangePage]:
        """Yield pages since ``cursor`` (or a full listing); the cursor is on the last page.

        Raises :class:`CursorExpired` for a token the server refuses (any of its
        forms) and for a cursor made for another collection.
        """
        calendar = await self._calendar()
        previous = _State.decode(cursor) if cursor is not None else None
        if previous is not None and previous.url != calendar.url:
            raise CursorExpired("the cursor belongs to another calendar collection")
        use_sync = calendar.supports_sync if self._use_sync is None else self._use_sync
        if previous is not None and use_sync != (previous.token is not None):
            raise CursorExpired("the cursor was made with another change-detection method")
        state = _State(url=calendar.url, ids=dict(previous.ids) if previous else {})
        if use_sync:
            changed, removed = await self._sync(calendar.url, previous, state)
        else:
            changed, removed = await self._etag_diff(calendar.url, previous, state)
        full = previous is None
        async for page in self._pages(calendar.url, changed, removed, state, full, window):
            yield page

    async def _sync(
        self, url: str, previous: _State | None, state: _State
    ) -> tuple[list[str], list[str]]:
        token = previous.token if previous is not None else ""
        full = previous is None
        collection = unquote(urlsplit(url).path).rstrip("/")
        changed: dict[str, None] = {}
        removed: dict[str, None] = {}
        for _ in range(_MAX_TRUNCATED_ROUNDS):
            response = await self._request("REPORT", url, body=_sync_body(token or ""), depth="0")
            with_token = bool(token)
            if response.status_code != 207:
                raise _translate(response, with_token=with_token)
            if with_token and _has_valid_sync_token_error(response.content):
                raise CursorExpired("caldav sync token refused (207)", status=207)
            root = _parse_xml(response.content)
            truncated = False
            for member in _members(root):
                path = urlsplit(urljoin(url, member.href)).path
                if unquote(path).rstrip("/") == collection:
                    if member.status == 507:
                        truncated = True
                    elif member.status >= 400 and with_token:
                        raise CursorExpired(f"caldav sync refused ({member.status})", status=207)
                    continue  # iCloud lists the collection itself among the changes
                if path.endswith("/"):
                    continue
                if member.status == 404:
                    changed.pop(path, None)
                    if not full:
                        removed[path] = None
                elif member.status < 400:
                    removed.pop(path, None)
                    changed[path] = None
            new_token = (root.findtext(_q(DAV, "sync-token")) or "").strip()
            if not new_token:
                raise TransientProviderError("caldav sync-collection answered without a sync-token")
            token = new_token
            if not truncated:
                state.token = token
                return list(changed), list(removed)
        raise TransientProviderError("caldav sync-collection kept truncating")

    async def _etag_diff(
        self, url: str, previous: _State | None, state: _State
    ) -> tuple[list[str], list[str]]:
        _, members = await self._propfind(url, "0", (CS, "getctag"))
        ctag = next(
            (m.props[_q(CS, "getctag")].text for m in members if _q(CS, "getctag") in m.props), None
        )
        if previous is not None and ctag is not None and ctag == previous.ctag:
            state.ctag, state.etags = previous.ctag, dict(previous.etags)
            return [], []
        _, members = await self._propfind(url, "1", (DAV, "getetag"), (DAV, "resourcetype"))
        etags: dict[str, str] = {}
        for member in members:
            path = urlsplit(urljoin(url, member.href)).path
            etag = member.props.get(_q(DAV, "getetag"))
            if path.endswith("/") or etag is None or member.status >= 400:
                continue
            etags[path] = (etag.text or "").strip()
        old = previous.etags if previous is not None else {}
        state.ctag, state.etags = ctag, etags
        changed = [href for href, etag in etags.items() if old.get(href) != etag]
        removed = [href for href in old if href not in etags]
        return changed, removed

    async def _pages(
        self,
        url: str,
        changed: list[str],
        removed: list[str],
        state: _State,
        full: bool,
        window: Window,
    ) -> AsyncIterator[ChangePage]:
        zone = self._default_zone.key
        first: list[Change] = []
        for href in removed:
            first.extend(Deletion(native_id) for native_id in state.ids.pop(href, ()))
        batches = [
            changed[i : i + self._batch_size] for i in range(0, len(changed), self._batch_size)
        ]
        if not batches:
            yield ChangePage(changes=first, full=full, cursor=state.encode(), time_zone=zone)
            return
        for number, batch in enumerate(batches):
            page = ChangePage(changes=first if number == 0 else [], full=full, time_zone=zone)
            await self._fill(url, batch, state, window, page)
            if number == len(batches) - 1:
                page.cursor = state.encode()
            yield page

    async def _fill(
        self, url: str, batch: list[str], state: _State, window: Window, page: ChangePage
    ) -> None:
        found, oversized = await self._multiget(url, batch)
        for href in batch:
            if href in oversized:
                reason = f"resource larger than {self._max_response_bytes} bytes"
                page.quarantined.append(Quarantined(hash_item_id(href), reason))
                continue  # like a malformed one: the ids it produced before stay
            member = found.get(href)
            data = member.props.get(_q(CALDAV, "calendar-data")) if member else None
            if member is None or member.status == 404 or data is None:
                # gone between the listing and the fetch: a removal
                page.changes.extend(Deletion(i) for i in state.ids.pop(href, ()))
                state.etags.pop(href, None)
                continue
            try:
                # CPU-bound (bounded by recurrence.ExpansionLimits): in a worker thread,
                # so the event loop keeps serving other resources meanwhile
                expansion = await asyncio.to_thread(
                    recurrence.expand_object,
                    data.text or "",
                    window=window,
                    default_zone=self._default_zone,
                    policy=self._policy,
                    own_address=self._own_address,
                )
            except MalformedProviderData as exc:
                page.quarantined.append(Quarantined(hash_item_id(href), str(exc)))
                continue  # the ids it produced before stay, so a later removal still finds them
            page.quarantined.extend(
                Quarantined(hash_item_id(href), notice.reason) for notice in expansion.notices
            )
            occurrences = expansion.occurrences
            new_ids = [o.native_event_id for o in occurrences]
            kept = set(new_ids)
            page.changes.extend(Deletion(old) for old in state.ids.get(href, ()) if old not in kept)
            page.changes.extend(occurrences)
            state.ids[href] = new_ids

    async def _multiget(self, url: str, batch: list[str]) -> tuple[dict[str, _Member], set[str]]:
        """The members of ``batch`` by path, and the hrefs too large to fetch.

        A batch whose answer is over the size limit is fetched again one href at a
        time, so one oversized resource does not hold back the others.
        """
        try:
            response = await self._request("REPORT", url, body=_multiget_body(batch), depth="1")
        except ResponseTooLarge:
            if len(batch) == 1:
                return {}, set(batch)
            found: dict[str, _Member] = {}
            oversized: set[str] = set()
            for href in batch:
                one, too_large = await self._multiget(url, [href])
                found.update(one)
                oversized |= too_large
            return found, oversized
        if response.status_code != 207:
            raise _translate(response)
        members = {
            urlsplit(urljoin(url, listed.href)).path: listed
            for listed in _members(_parse_xml(response.content))
        }
        return members, set()

    # -- push (none) ------------------------------------------------------------
    async def subscribe(
        self,
        channel_id: str,
        address: str,
        token: str,
        ttl_seconds: int,
        *,
        lifecycle_address: str | None = None,
    ) -> Subscription:
        """CalDAV offers third parties no push: always :class:`ProviderRejected`; poll instead."""
        raise ProviderRejected("caldav has no push")

    async def renew(self, subscription: Subscription, ttl_seconds: int) -> Subscription:
        raise ProviderRejected("caldav has no push")

    async def unsubscribe(self, subscription: Subscription) -> None:
        """Nothing to stop: there are never CalDAV subscriptions."""

    def rotated_credentials(self) -> dict[str, str] | None:
        return None  # app-specific passwords never rotate themselves

    async def aclose(self) -> None:
        """The HTTP client belongs to the caller; nothing else to release."""


def _calendar_info(base: str, member: _Member) -> CalendarInfo | None:
    resourcetype = member.props.get(_q(DAV, "resourcetype"))
    if resourcetype is None or resourcetype.find(_q(CALDAV, "calendar")) is None:
        return None
    reports = member.props.get(_q(DAV, "supported-report-set"))
    supports_sync = (
        reports is not None and reports.find(f".//{_q(DAV, 'sync-collection')}") is not None
    )
    components = member.props.get(_q(CALDAV, "supported-calendar-component-set"))
    supports_events = components is None or any(
        comp.get("name", "").upper() == "VEVENT" for comp in components
    )
    name = member.props.get(_q(DAV, "displayname"))
    return CalendarInfo(
        url=urljoin(base, member.href),
        display_name=(name.text or None) if name is not None else None,
        supports_sync=supports_sync,
        supports_events=supports_events,
    )


# -- registration -------------------------------------------------------------------


def check_calendar_url(url: str, networks: NetworkPolicy) -> None:
    """Refuse (:class:`ValueError`, its message for the registrant) a CalDAV URL that is
    not http(s), carries credentials, has no host, or names a non-public address
    literally (host names are checked after resolution, at connect)."""
    # calendar_id is the calendar collection URL, or the server's base URL
    if not url.startswith(("https://", "http://")):
        raise ValueError("calendar_id must be the CalDAV server or calendar URL")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError("calendar_id is not a valid URL") from None
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError(
            "calendar_id must not carry credentials (user:password@); put them in credentials"
        )
    if not parts.hostname:
        raise ValueError("calendar_id has no host")
    refusal = literal_address_refusal(parts.hostname, networks)
    if refusal is not None:
        raise ValueError(f"calendar_id: {refusal}")


def _account(resource: Resource, credentials: Mapping[str, str]) -> str:
    return account_key(NAME, f"{resource.calendar_id}\x1f{credentials['username']}")


def _build(context: BuildContext) -> CalDAVProvider:
    return CalDAVProvider(
        client=context.client,
        url=context.resource.calendar_id,
        username=context.credentials["username"],
        password=context.credentials["password"],
        time_zone=context.resource.time_zone,
        limiter=context.limiter,
        account=context.account,
        max_inline_wait=context.settings.max_inline_wait,
        policy=context.policy,
        own_address=context.resource.own_address,
    )


#: CalDAV servers publish no quota: a modest per-account rate keeps polling polite
#: (iCloud throttles with 503).
ACCOUNT_BUCKET = BucketSpec(rate=5.0, burst=10.0)
APP_BUCKET = BucketSpec(rate=1_000.0, burst=1_000.0)

SPEC = ProviderSpec(
    name=NAME,
    origin=ProviderOrigin.CALDAV,
    credential_fields=("username", "password"),
    push=PushKind.POLL,
    rate_limits=lambda settings: (ACCOUNT_BUCKET, APP_BUCKET),
    account=_account,
    build=_build,
    check_calendar=check_calendar_url,
    user_supplied_urls=True,
)
