"""Answering for resources another worker owns: ask the owner, pass its answer back.

A resource's tables live on the worker that owns its partition. :class:`Router` finds
that worker through an :class:`Ownership` (the app: Faust's table routing over the
URLs the workers announce in the consumer group) and forwards the request there with
the caller's token and the :data:`ROUTED` header; a request that carries the header
is never forwarded again (the assignment moved meanwhile: ``503``, retry).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp import web

from calsync.gateway.http import RequestRejected
from calsync.settings import Settings

__all__ = ["ROUTED", "Ownership", "Router"]

log = logging.getLogger(__name__)

#: Header on a forwarded request: its receiver answers, it never forwards again.
ROUTED = "X-Calsync-Routed"
#: Header on a forwarded answer: the owner that gave it.
ANSWERED_BY = "X-Calsync-Answered-By"
#: The largest answer passed back (an availability answer of 62 busy days is far less).
MAX_ANSWER = 8 * 1024 * 1024


class Ownership(Protocol):
    """Which worker owns a resource: ``None`` for this one, else the owner's base URL.

    Raises :class:`LookupError` while nobody is known to own it (a rebalance)."""

    def owner(self, resource_id: str) -> str | None: ...


class Router:
    """Forwards requests about a resource to the worker that owns it."""

    def __init__(self, settings: Settings, ownership: Ownership) -> None:
        self._settings = settings
        self._ownership = ownership
        self._session: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def owner(self, request: web.Request, rid: str) -> str | None:
        """``None`` when this worker answers for ``rid``; else the owner's base URL."""
        try:
            owner = self._ownership.owner(rid)
        except LookupError:
            raise RequestRejected(503, "the partitions are being reassigned; retry") from None
        if owner is not None and request.headers.get(ROUTED):
            raise RequestRejected(503, "this worker no longer owns the resource; retry")
        return owner

    def owns(self, rid: str) -> bool:
        """Whether this worker owns ``rid`` now (``False`` during a rebalance)."""
        try:
            return self._ownership.owner(rid) is None
        except LookupError:
            return False

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=15.0, connect=3.0)
            )
        return self._session

    def _headers(self, request: web.Request) -> dict[str, str]:
        headers = {ROUTED: self._settings.app_id}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        return headers

    async def forward(self, request: web.Request, owner: str) -> web.Response:
        """Ask the owner the same question (method, path, query, token, body); its answer."""
        body = await request.read() if request.can_read_body else None
        headers = self._headers(request)
        if body is not None:
            headers["Content-Type"] = request.headers.get("Content-Type", "application/json")
        url = owner.rstrip("/") + str(request.rel_url)
        try:
            async with self._client().request(
                request.method, url, data=body, headers=headers, allow_redirects=False
            ) as answer:
                data = await _bounded(answer)
                return web.Response(
                    body=data,
                    status=answer.status,
                    content_type=answer.content_type or "application/json",
                    headers={ANSWERED_BY: owner},
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("forwarding %s to %s failed: %r", request.rel_url, owner, exc)
            raise RequestRejected(503, "the resource's worker cannot be reached; retry") from None

    async def post(self, request: web.Request, owner: str, path: str, payload: Any) -> Any:
        """POST ``payload`` as JSON to ``path`` on the owner; its JSON answer (200 only)."""
        try:
            headers = {**self._headers(request), "Content-Type": "application/json"}
            async with self._client().post(
                owner.rstrip("/") + path, data=orjson.dumps(payload), headers=headers
            ) as answer:
                if answer.status != 200:
                    raise RequestRejected(503, f"a worker answered {answer.status}; retry")
                return orjson.loads(await _bounded(answer))
        except (aiohttp.ClientError, TimeoutError, ValueError):
            raise RequestRejected(503, "a resource's worker cannot be reached; retry") from None


async def _bounded(answer: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in answer.content.iter_chunked(65536):
        size += len(chunk)
        if size > MAX_ANSWER:
            raise RequestRejected(502, "the owning worker's answer is too large")
        chunks.append(chunk)
    return b"".join(chunks)
