"""The providers' one way to send a request: gate, send, translate, observe, refresh once.

:class:`ProviderHttp` is the seam every provider request goes through, in this order:

1. **token**: with a :class:`TokenSource`, an access token (refreshed by the source when
   it is stale); credentials the source rotated meanwhile are handed to ``on_rotate``
   *before* the request goes on (the old refresh token may already be dead); a
   transient failure of the token endpoint is raised as
   :class:`~calsync.errors.TokenRefreshFailed` (the grant is fine: "refreshing");
2. **gate**: a slot of the account's rate limit (:class:`AccountGate`); a wait longer
   than ``max_inline_wait`` raises :class:`~calsync.errors.RateLimited` instead;
3. **send**: :func:`send_bounded`; a network failure becomes
   :class:`~calsync.errors.TransientProviderError` (``raise ... from``);
4. **observe**: the status (and the error it means) slows or restores the account;
5. **refresh once**: a ``401`` with a token source is retried once with a fresh token.

A non-success status is turned into a calsync error by one ladder,
:func:`status_error`, which each provider refines with what only it knows (its
cursor-expiry and throttling codes) in its own ``_translate``.

Bounded reads:

A provider (or anything between it and us) can answer with a body of any size;
reading it whole with ``response.content`` would let it take all the worker's
memory. :func:`send_bounded` streams the body and counts as it goes, so a body over
its limit costs at most the limit (plus one chunk) and is refused as soon as the
limit is passed, with :class:`~calsync.errors.ResponseTooLarge` (not retriable: the
same request would bring the same body). The count is of *decoded* bytes, so a
small gzip bomb is caught too; a ``Content-Length`` over the limit is refused before
any of the body is read. ``deadline`` bounds the whole exchange, so a server that
trickles a body byte by byte cannot hold a lane forever (httpx's own timeouts are per
network operation).

:class:`BoundedSession` is the same for ``requests``, which the token endpoints'
libraries use: google-auth (``google.auth.transport.requests.Request(session)``) and
MSAL (``http_client=``).

Limits (module constants; each provider takes its own as a constructor argument):

* :data:`CALDAV_RESPONSE_LIMIT` 16 MiB: a multistatus of ``calendar-multiget``
  ``calendar-data`` for one batch, or a discovery/sync listing;
* :data:`JSON_PAGE_LIMIT` 8 MiB: a Google ``events.list`` page (250 events) or a
  Graph delta page (100 events), with room for long descriptions and attendee lists;
* :data:`TOKEN_RESPONSE_LIMIT` 1 MiB: an OAuth token or OpenID configuration answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import httpx
import orjson
import requests

from calsync.errors import (
    AuthorizationRevoked,
    CursorExpired,
    ProviderError,
    ProviderRejected,
    RateLimited,
    ResponseTooLarge,
    TokenRefreshFailed,
    TransientProviderError,
)
from calsync.ratelimit import RateLimiter
from calsync.retry import retry_after_from_headers

log = logging.getLogger(__name__)

__all__ = [
    "CALDAV_RESPONSE_LIMIT",
    "DEFAULT_DEADLINE",
    "JSON_PAGE_LIMIT",
    "TOKEN_RESPONSE_LIMIT",
    "AccountGate",
    "BoundedSession",
    "ProviderHttp",
    "TokenSource",
    "json_page",
    "read_ahead",
    "read_bounded",
    "send_bounded",
    "status_error",
]

MiB = 1024 * 1024
CALDAV_RESPONSE_LIMIT = 16 * MiB
JSON_PAGE_LIMIT = 8 * MiB
TOKEN_RESPONSE_LIMIT = 1 * MiB
#: Seconds for a whole request and its body (16 MiB at ~140 KB/s).
DEFAULT_DEADLINE = 120.0

_DROPPED_HEADERS = ("content-encoding", "content-length", "transfer-encoding")


def _declared_length(headers: Any) -> int | None:
    raw = headers.get("Content-Length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


async def read_bounded(chunks: AsyncIterable[bytes], limit: int, what: str) -> bytes:
    """The concatenated ``chunks``; raises :class:`ResponseTooLarge` once they pass ``limit``."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge(f"{what} response larger than {limit} bytes", limit=limit)
        parts.append(chunk)
    return b"".join(parts)


def _read_bounded_sync(chunks: Iterable[bytes], limit: int, what: str) -> bytes:
    parts: list[bytes] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge(f"{what} response larger than {limit} bytes", limit=limit)
        parts.append(chunk)
    return b"".join(parts)


async def send_bounded(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    limit: int,
    what: str,
    deadline: float | None = DEFAULT_DEADLINE,
    **kwargs: Any,
) -> httpx.Response:
    """``client.request(method, url, **kwargs)`` with the body read under ``limit`` bytes.

    Returns a complete :class:`httpx.Response` (``content``, ``json()``, headers and
    status as usual; the body is already decoded, so ``Content-Encoding`` is dropped).
    ``what`` names the service in error messages. Raises :class:`ResponseTooLarge`
    for a body over the limit, :class:`httpx.ReadTimeout` when the exchange takes
    longer than ``deadline`` seconds, and whatever httpx raises otherwise
    (:class:`httpx.TransportError`) for the caller to translate.
    """
    try:
        async with asyncio.timeout(deadline):
            async with client.stream(method, url, **kwargs) as response:
                declared = _declared_length(response.headers)
                if declared is not None and declared > limit:
                    raise ResponseTooLarge(
                        f"{what} response larger than {limit} bytes (declared {declared})",
                        limit=limit,
                    )
                body = await read_bounded(response.aiter_bytes(), limit, what)
    except TimeoutError:
        raise httpx.ReadTimeout(f"{what} did not answer within {deadline} s") from None
    headers = [
        (name, value)
        for name, value in response.headers.multi_items()
        if name.lower() not in _DROPPED_HEADERS
    ]
    return httpx.Response(
        response.status_code, headers=headers, content=body, request=response.request
    )


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
            if limiter.on_wait is not None:
                limiter.on_wait(self._provider, delay)
            await asyncio.sleep(delay)
        try:
            yield
        finally:
            limiter.release(self._provider, self.account)

    def observe(self, status: int, error: ProviderError | None) -> None:
        """Throttles (429, rate-limit 403s, 503) slow the account; successes restore it."""
        if self._limiter is None:
            return
        if self._limiter.on_response is not None:
            self._limiter.on_response(self._provider, status)
        if isinstance(error, RateLimited) or status == 503:
            retry_after = error.retry_after if isinstance(error, RateLimited) else None
            self._limiter.throttled(self._provider, self.account, retry_after)
        elif status < 400:
            self._limiter.succeeded(self._provider, self.account)


class TokenSource(Protocol):
    """Access tokens of one grant (Google, Microsoft); see :class:`ProviderHttp`."""

    async def access_token(self, *, force_refresh: bool = False) -> str:
        """A valid access token; a new one when ``force_refresh``."""
        ...

    def rotated_credentials(self) -> dict[str, str] | None:
        """Credentials the source rotated since last asked (once), else ``None``."""
        ...


def status_error(
    response: httpx.Response,
    service: str,
    *,
    label: str | None = None,
    cursor_expired: bool = False,
    throttled: bool = False,
    retry_after_throttles: Callable[[int], bool] = lambda status: False,
) -> ProviderError:
    """The calsync error for a non-success response: the one status ladder.

    In order: ``cursor_expired`` → :class:`CursorExpired`; ``throttled``, ``429``, or a
    status for which ``retry_after_throttles`` holds that carries a delay
    (``Retry-After`` or rate-limit headers) → :class:`RateLimited` with that delay;
    ``401`` → :class:`AuthorizationRevoked`; other 5xx → :class:`TransientProviderError`;
    the rest → :class:`ProviderRejected`. ``label`` (the status by default) names the
    answer in the message; providers pass their error code with it.
    """
    status = response.status_code
    label = label or str(status)
    if cursor_expired:
        return CursorExpired(f"{service} cursor expired ({label})", status=status)
    retry_after = retry_after_from_headers(response.headers, now=datetime.now(UTC))
    if throttled or status == 429 or (retry_after is not None and retry_after_throttles(status)):
        return RateLimited(f"{service} throttled ({label})", retry_after=retry_after, status=status)
    if status == 401:
        return AuthorizationRevoked(f"{service} refused the credentials ({label})", status=status)
    if status >= 500:
        return TransientProviderError(f"{service} {label}", status=status)
    return ProviderRejected(f"{service} {label}", status=status)


def json_page(response: httpx.Response, items_key: str, what: str) -> tuple[Any, list[Any]]:
    """A JSON page and its list of items under ``items_key`` (absent: empty); raises
    :class:`TransientProviderError` (``"<what> returned a malformed page"``) otherwise."""
    try:
        body = orjson.loads(response.content)  # several times faster than json
        items = body.get(items_key, [])
        if not isinstance(items, list):
            raise TypeError(f"{items_key} is not a list")
    except (orjson.JSONDecodeError, TypeError, AttributeError) as exc:
        raise TransientProviderError(f"{what} returned a malformed page") from exc
    return body, items


_P = TypeVar("_P")

#: The request for the page after a given one, or None after the last page.
NextRequest = Callable[[_P], Callable[[], Awaitable[_P]] | None]


async def read_ahead(
    first: Callable[[], Awaitable[_P]], after: NextRequest[_P]
) -> AsyncIterator[_P]:
    """Yield the pages of a paged listing in order, each next one already requested.

    ``first()`` fetches the first page; ``after(page)`` gives the request for the next
    one (None after the last). That request is started *before* ``page`` is yielded,
    so the provider serves it while the caller normalizes, diffs and emits ``page``:
    one request in flight at most, the same requests as one after another. (It gets
    on only when the caller gives the event loop a turn: normalize a page
    :func:`~calsync.pacing.paced`.) A failed request raises when its page is asked
    for, in page order, never earlier. When the caller stops early (an error, a
    break), the request in flight is cancelled.
    """
    pending: asyncio.Future[_P] | None = asyncio.ensure_future(first())
    try:
        while pending is not None:
            page = await pending
            follow = after(page)
            if follow is not None:
                pending = asyncio.ensure_future(follow())
                await asyncio.sleep(0)  # it starts now, not when the caller next awaits
            else:
                pending = None
            yield page
    finally:
        if pending is not None:
            pending.cancel()
            # not awaited (this may run in the generator's finalizer); its outcome is
            # collected so that a failure of a page nobody asked for is not logged
            pending.add_done_callback(_collect)


def _collect(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class ProviderHttp:
    """The request seam of one provider instance (see the module docstring).

    ``what`` names the service in messages; ``translate`` is the provider's refinement
    of :func:`status_error`; ``limit`` caps every body; ``unreachable``, when set, is the
    one message of every network failure (details go to the debug log only).
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        gate: AccountGate,
        what: str,
        translate: Callable[[httpx.Response], ProviderError],
        limit: int,
        *,
        tokens: TokenSource | None = None,
        on_rotate: Callable[[dict[str, str]], Awaitable[None]] | None = None,
        unreachable: str | None = None,
    ) -> None:
        self._client = client
        self.gate = gate
        self._what = what
        self._translate = translate
        self._limit = limit
        self._tokens = tokens
        self._on_rotate = on_rotate
        self._unreachable = unreachable

    async def _bearer(self, force_refresh: bool) -> list[tuple[str, str]]:
        if self._tokens is None:
            return []
        try:
            token = await self._tokens.access_token(force_refresh=force_refresh)
        except (RateLimited, TokenRefreshFailed):
            raise
        except TransientProviderError as exc:
            # the grant is fine, its token endpoint is not: say so (credentials "refreshing")
            raise TokenRefreshFailed(str(exc), status=exc.status) from exc
        if self._on_rotate is not None:
            # The old refresh token may already be dead: store the new one before
            # anything else can fail or the process can die.
            rotated = self._tokens.rotated_credentials()
            if rotated is not None:
                await self._on_rotate(rotated)
        return [("Authorization", f"Bearer {token}")]

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        **kwargs: Any,
    ) -> httpx.Response:
        """One request (twice when a token source's token was refused with ``401``).

        Returns the response whatever its status (callers decide what a status means
        for them, with ``translate``). Raises :class:`RateLimited` (local limit),
        :class:`TransientProviderError` (network), :class:`ResponseTooLarge`, and what
        the token source raises.
        """
        response = await self._once(method, url, headers, kwargs, force_refresh=False)
        if response.status_code == 401 and self._tokens is not None:
            # the access token may have expired early: refresh once
            response = await self._once(method, url, headers, kwargs, force_refresh=True)
        return response

    async def _once(
        self,
        method: str,
        url: str,
        headers: Sequence[tuple[str, str]],
        kwargs: dict[str, Any],
        *,
        force_refresh: bool,
    ) -> httpx.Response:
        auth = await self._bearer(force_refresh)
        async with self.gate.slot():
            try:
                response = await send_bounded(
                    self._client,
                    method,
                    url,
                    limit=self._limit,
                    what=self._what,
                    headers=[*headers, *auth],
                    **kwargs,
                )
            except httpx.TransportError as exc:
                if self._unreachable is not None:
                    log.debug("%s %s %s failed: %r", self._what, method, url, exc)
                    raise TransientProviderError(self._unreachable) from exc
                raise TransientProviderError(f"{self._what} unreachable: {exc!r}") from exc
        error = self._translate(response) if response.status_code >= 400 else None
        self.gate.observe(response.status_code, error)
        return response


class BoundedSession(requests.Session):
    """A :class:`requests.Session` that reads every response under ``limit`` bytes and
    gives every request a default ``timeout`` (MSAL sets none on a session it is given).

    A body over the limit raises :class:`ResponseTooLarge` from the request call.
    """

    def __init__(
        self, *, limit: int = TOKEN_RESPONSE_LIMIT, timeout: float = 30.0, what: str = "token"
    ) -> None:
        super().__init__()
        self._limit = limit
        self._timeout = timeout
        self._what = what

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        kwargs["stream"] = True
        response = super().request(*args, **kwargs)
        try:
            declared = _declared_length(response.headers)
            if declared is not None and declared > self._limit:
                raise ResponseTooLarge(
                    f"{self._what} response larger than {self._limit} bytes (declared {declared})",
                    limit=self._limit,
                )
            body = _read_bounded_sync(
                response.iter_content(chunk_size=64 * 1024), self._limit, self._what
            )
        except BaseException:
            response.close()
            raise
        # requests' own cache of the body: .content, .text and .json() read it from here
        response._content = body
        response._content_consumed = True  # type: ignore[attr-defined]
        return response
