"""The providers' one way to send a request and read its response: with a size cap.

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
from collections.abc import AsyncIterable, Iterable
from typing import Any

import httpx
import requests

from calsync.errors import ResponseTooLarge

__all__ = [
    "CALDAV_RESPONSE_LIMIT",
    "DEFAULT_DEADLINE",
    "JSON_PAGE_LIMIT",
    "TOKEN_RESPONSE_LIMIT",
    "BoundedSession",
    "read_bounded",
    "send_bounded",
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
