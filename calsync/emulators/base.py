"""What every provider emulator shares; each provider module keeps only its wire format.

:class:`BaseEmulator` is the skeleton of an emulator, in the order its
sections run:

- **lifecycle** -- ``start`` helpers (:meth:`BaseEmulator._serve`), an
  idempotent :meth:`~BaseEmulator.aclose`, ``async with``, ``base_url``;
- **clock** -- :meth:`~BaseEmulator.now` is ``clock() + advance_clock`` offsets;
- **grants** -- OAuth clients, refresh-token grants (``account_of``) and the
  access tokens minted from them (:class:`AccessGrant`);
- **token sealing** -- opaque, HMAC-sealed page/sync/delta tokens bound to one
  emulator instance (:meth:`~BaseEmulator._seal` / ``_unseal``);
- **push delivery** -- one background worker per queue key, batching, a
  retrying POST, and :meth:`~BaseEmulator.flush_pushes`;
- **middleware** -- fault injection (:class:`~calsync.emulators.faults.FaultInjector`)
  for API calls, provider errors rendered by the provider, and the request log
  (:class:`~calsync.emulators.faults.RecordedRequest`);
- **control routes** -- the ``/_emulator`` routes every emulator answers
  (:data:`SHARED_CONTROL_ROUTES`);
- **the serve loop** -- :func:`serve_until_stopped` and the CLI helpers.

The in-memory calendar store is :class:`EventStore` of :class:`StoredEvent`
records: a change sequence (``seq``) every change bumps, a change log per
record (``history``: the timings it had and from which change on), and
tombstones -- a deleted event stays in the store, marked by the provider
(Google ``status: cancelled``, Graph ``deleted``), with the change sequence of
its deletion, so incremental readers learn of it. ``epoch`` counts token
invalidations. :class:`ListingCache` keeps the sorted walks built from it.

A provider subclass supplies ``API_PREFIX``, its error type (``error_type``)
and the hooks marked "provider hook" below. Nothing here knows a path,
header or body of Google's or Graph's API.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import copy
import dataclasses
import hashlib
import hmac
import json
import logging
import random
import secrets
import signal
import time
from collections import OrderedDict
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Hashable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ClassVar, Final, Generic, Protocol, Self, TypeVar, cast

import aiohttp
import yarl
from aiohttp import web

from calsync.emulators.faults import FaultInjector, RecordedRequest, retry_after_seconds

__all__ = [
    "CONTROL_PREFIX",
    "SHARED_CONTROL_ROUTES",
    "AccessGrant",
    "BaseEmulator",
    "EventStore",
    "Grant",
    "Handler",
    "ListingCache",
    "StoredEvent",
    "TokenForm",
    "canonical",
    "emulator_parser",
    "jcopy",
    "merge_changes",
    "parse_pair",
    "raw_resource",
    "read_json_object",
    "run_until_interrupted",
    "serve_emulator",
    "serve_until_stopped",
]

logger = logging.getLogger(__name__)

CONTROL_PREFIX: Final = "/_emulator"
_MAC_BYTES: Final = 12

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SHARED_CONTROL_ROUTES: Final[tuple[tuple[str, str, str], ...]] = (
    ("POST", "/_emulator/clients", "{client_id, client_secret} -> 201"),
    ("POST", "/_emulator/redirect_uris", "{client_id, redirect_uri} -> 201 (authorize)"),
    ("POST", "/_emulator/access_tokens/expire", "expire every access token -> 204"),
    ("GET", "/_emulator/faults", "-> {rules, drop_push_probability}"),
    ("POST", "/_emulator/faults", "{rules?, drop_push_probability?, seed?, replace?} -> 200"),
    ("DELETE", "/_emulator/faults", "clear rules and push drops -> 204"),
    ("GET", "/_emulator/requests", "?account=&calendar_id= -> [RecordedRequest]"),
    ("DELETE", "/_emulator/requests", "forget recorded requests -> 204"),
    ("GET", "/_emulator/deliveries", "-> [DeliveryRecord]"),
    ("POST", "/_emulator/flush_pushes", "wait for queued pushes -> 204"),
    ("POST", "/_emulator/clock/advance", "{seconds} -> {now}"),
)
"""The control routes every emulator answers: (method, path, contract)."""


# --------------------------------------------------------------------------- JSON helpers

_ATOMIC_TYPES: Final = frozenset({str, int, float, bool, type(None)})
_T = TypeVar("_T")


def _jcopy_any(value: Any) -> Any:
    cls = type(value)
    if cls is dict:
        atomic = _ATOMIC_TYPES
        return {k: v if type(v) in atomic else _jcopy_any(v) for k, v in value.items()}
    if cls is list:
        return [_jcopy_any(v) for v in value]
    if cls in _ATOMIC_TYPES:
        return value
    return copy.deepcopy(value)


def jcopy(value: _T) -> _T:
    """A deep copy of JSON-like data: dicts and lists rebuilt, scalars shared.

    Several times cheaper than ``copy.deepcopy`` (no memo); anything that is not
    a plain dict, list or JSON scalar falls back to ``copy.deepcopy``.
    """
    return cast("_T", _jcopy_any(value))


def canonical(event: Mapping[str, Any], order: Sequence[str]) -> dict[str, Any]:
    """``event`` with the keys of ``order`` first (in that order), then the rest."""
    out: dict[str, Any] = {k: event[k] for k in order if k in event}
    out.update({k: v for k, v in event.items() if k not in out})
    return out


def merge_changes(target: dict[str, Any], changes: Mapping[str, Any], skip: Iterable[str]) -> None:
    """Top-level replace of ``target`` by ``changes`` (copied); ``None`` removes a
    field; keys in ``skip`` (read-only ones) are ignored."""
    skipped = frozenset(skip)
    for key, value in changes.items():
        if key in skipped:
            continue
        if value is None:
            target.pop(key, None)
        else:
            target[key] = jcopy(value)


def raw_resource(event_id: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """``{"id": event_id, **raw}`` as JSON would carry it (TypeError/ValueError
    when ``raw`` is not JSON-serializable): what ``corrupt_event`` stores."""
    return {"id": event_id, **json.loads(json.dumps(dict(raw)))}


async def read_json_object(request: web.Request, error: Callable[[], Exception]) -> dict[str, Any]:
    """The request body as a JSON object; raises ``error()`` for anything else."""
    try:
        raw = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise error() from None
    if not isinstance(raw, dict):
        raise error()
    return raw


# --------------------------------------------------------------------------- the store

TimingT = TypeVar("TimingT")


@dataclass(slots=True)
class StoredEvent(Generic[TimingT]):
    """One record of an :class:`EventStore`: the resource as served, the change
    sequence it last changed at, and its change log ``history`` of
    ``(change sequence, timing)`` -- every timing it had, from which change on
    (empty for a resource stored unvalidated)."""

    resource: dict[str, Any]
    change_seq: int
    history: list[tuple[int, TimingT]]

    def relevant_timings(self, since: int | None) -> list[TimingT]:
        """The timings a client that synced at ``since`` may know or must learn."""
        if since is None:
            return [self.history[-1][1]] if self.history else []
        out: list[TimingT] = []
        for i, (_, timing) in enumerate(self.history):
            nxt = self.history[i + 1][0] if i + 1 < len(self.history) else None
            if nxt is None or nxt > since:
                out.append(timing)
        return out


RecordT = TypeVar("RecordT", bound=StoredEvent[Any])


@dataclass(slots=True, kw_only=True)
class EventStore(Generic[RecordT]):
    """An in-memory calendar: its records by id, the change sequence every change
    bumps (records keep the one of their last change, tombstones included), and
    the ``epoch`` that invalidating its tokens bumps."""

    seq: int = 0
    epoch: int = 0
    events: dict[str, RecordT] = field(default_factory=dict)

    def bump(self) -> int:
        """The next change sequence number."""
        self.seq += 1
        return self.seq

    def upsert(
        self,
        event_id: str,
        resource: dict[str, Any],
        seq: int,
        fresh: Callable[[dict[str, Any]], RecordT],
    ) -> RecordT:
        """Store ``resource`` as changed at ``seq``: into the record ``event_id``,
        or a ``fresh(resource)`` one when there is none."""
        rec = self.events.get(event_id)
        if rec is None:
            rec = self.events[event_id] = fresh(resource)
        rec.resource = resource
        rec.change_seq = seq
        return rec


KeyT = TypeVar("KeyT", bound=Hashable)
ListingT = TypeVar("ListingT")


class ListingCache(Generic[KeyT, ListingT]):
    """The last ``size`` listings by query, least recently used evicted first.

    Whether a cached listing is still valid is the caller's to check."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[KeyT, ListingT] = OrderedDict()

    def get(self, key: KeyT) -> ListingT | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: KeyT, listing: ListingT) -> ListingT:
        self._items[key] = listing
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return listing


# --------------------------------------------------------------------------- grants


class Grant(Protocol):
    """What the shared code reads of a provider's refresh-token grant."""

    client_id: str
    account: str


GrantT = TypeVar("GrantT", bound=Grant)


@dataclass(slots=True)
class AccessGrant(Generic[GrantT]):
    """A live access token: the grant it was minted from and its expiry (emulator clock)."""

    grant: GrantT
    expires_at: float


@dataclass(frozen=True, slots=True)
class TokenForm:
    """A token-endpoint POST: its form fields and the decoded Basic credentials."""

    fields: Mapping[str, Any]
    basic: tuple[str, str] | None

    def get(self, name: str) -> str | None:
        """A non-empty string field, else None."""
        value = self.fields.get(name)
        return value if isinstance(value, str) and value else None

    @classmethod
    async def read(cls, request: web.Request) -> TokenForm:
        """Parse the form; ``basic`` is ``(id, secret)`` of an ``Authorization:
        Basic`` header (``("", "")`` when it does not decode), else None."""
        form = await request.post()
        header = request.headers.get("Authorization", "")
        basic: tuple[str, str] | None = None
        if header.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(header[6:].strip()).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            user, _, password = decoded.partition(":")
            basic = (user, password)
        return cls(form, basic)


# --------------------------------------------------------------------------- the emulator

ErrorT = TypeVar("ErrorT", bound=Exception)
JobT = TypeVar("JobT")


class BaseEmulator(Generic[GrantT, ErrorT, JobT]):
    """The shared skeleton of an emulator (see the module docstring).

    Type parameters: the provider's refresh-token grant, the error its HTTP
    layer renders (``error_type``) and its push job.
    """

    API_PREFIX: ClassVar[str]
    GRANT_SCOPE_FIELD: ClassVar[str]  # the control route's list of covered calendars
    SEAL_PADDING: ClassVar[bool] = True  # keep base64 "=" padding in sealed tokens
    error_type: type[ErrorT]

    def __init__(
        self,
        *,
        faults: FaultInjector[Any],
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
        push_retry_delays: Sequence[float] = (0.05, 0.2, 0.5),
        push_timeout: float = 10.0,
    ) -> None:
        self.push_retry_delays = tuple(push_retry_delays)
        self.push_timeout = push_timeout
        self.faults = faults
        self.requests: list[RecordedRequest] = []
        self._clock = clock
        self._clock_offset = 0.0
        self._rng = random.Random(seed)
        self._secret = secrets.token_bytes(32)
        self._clients: dict[str, str] = {}
        self._redirect_uris: dict[str, set[str]] = {}
        self._refresh: dict[str, GrantT] = {}
        self._access: dict[str, AccessGrant[GrantT]] = {}
        self._minted: dict[str, GrantT] = {}  # every access token ever minted
        self._push_queues: dict[Hashable, asyncio.Queue[JobT | None]] = {}
        self._push_tasks: set[asyncio.Task[None]] = set()
        self._runners: list[web.AppRunner] = []
        self._session: aiohttp.ClientSession | None = None
        self._base_url: str | None = None
        self._closed = False

    # ----------------------------------------------------------------- lifecycle

    def _check_startable(self) -> None:
        if self._runners or self._closed:
            raise RuntimeError(f"{type(self).__name__} can be started once")

    async def _serve(
        self,
        app: web.Application,
        host: str,
        port: int,
        ssl_context: Any = None,
    ) -> int:
        """Serve ``app`` on ``host:port`` (0 = a free port); returns the bound port."""
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
        self._runners.append(runner)
        return int(runner.addresses[0][1])

    def _api_app(self) -> web.Application:
        """The API site: the shared middleware, the provider's routes and the control routes."""
        app = web.Application(middlewares=[self._middleware])
        self._add_routes(app.router)
        self._add_control_routes(app.router)
        return app

    def _open_session(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.push_timeout), trust_env=False
        )

    @staticmethod
    def _shown_host(host: str) -> str:
        return "127.0.0.1" if host in ("0.0.0.0", "") else host

    async def aclose(self) -> None:
        """Stop pushes and the servers. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._push_tasks):
            task.cancel()
        for task in list(self._push_tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._push_tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        self._after_close()

    def _after_close(self) -> None:
        """Provider hook: release what ``start`` made besides servers and pushes."""

    async def start(self) -> object:
        """Provider hook: serve (on free ports when called without arguments)."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        if not self._runners:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` of the API site; RuntimeError before :meth:`start`."""
        if self._base_url is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._base_url

    @property
    def api_url(self) -> str:
        """``base_url + API_PREFIX``."""
        return self.base_url + self.API_PREFIX

    # ----------------------------------------------------------------- clock

    def now(self) -> float:
        """The emulator clock: ``clock() + advance_clock offsets``, epoch seconds."""
        return self._clock() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Move the emulator clock forward (expire tokens and channels in tests)."""
        self._clock_offset += seconds

    def _now_dt(self) -> datetime:
        return datetime.fromtimestamp(self.now(), UTC)

    # ----------------------------------------------------------------- grants

    def add_client(self, client_id: str, client_secret: str) -> None:
        """Register (or re-key) an OAuth client (app registration)."""
        self._clients[client_id] = client_secret

    def add_redirect_uri(self, client_id: str, redirect_uri: str) -> None:
        """Register a redirect URI of ``client_id`` for the authorization endpoint
        (matched byte for byte); KeyError for an unknown client."""
        self._check_client(client_id)
        self._redirect_uris.setdefault(client_id, set()).add(redirect_uri)

    def _check_client(self, client_id: str) -> None:
        if client_id not in self._clients:
            raise KeyError(f"unknown OAuth client {client_id!r}")

    @staticmethod
    def _account_for(refresh_token: str) -> str:
        return "acct-" + hashlib.sha256(refresh_token.encode()).hexdigest()[:16]

    def _grant(self, refresh_token: str) -> GrantT:
        grant = self._refresh.get(refresh_token)
        if grant is None:
            raise KeyError("unknown refresh token")
        return grant

    def account_of(self, refresh_token: str) -> str:
        """The ``RecordedRequest.account`` of calls made with access tokens minted
        from the grant of ``refresh_token`` (stable, also after revocation and
        rotation). KeyError if unknown."""
        return self._grant(refresh_token).account

    def requests_for(
        self, *, account: str | None = None, calendar_id: str | None = None
    ) -> list[RecordedRequest]:
        """The recorded requests of ``account`` and/or on ``calendar_id`` (None = any)."""
        return [
            r
            for r in self.requests
            if (account is None or r.account == account)
            and (calendar_id is None or r.calendar_id == calendar_id)
        ]

    def expire_access_tokens(self) -> None:
        """Forget every access token, so the next API call answers 401."""
        self._access.clear()

    def _mint(self, access_token: str, grant: GrantT, lifetime: float) -> None:
        self._access[access_token] = AccessGrant(grant, self.now() + lifetime)
        self._minted[access_token] = grant

    @staticmethod
    def _bearer(request: web.Request) -> str | None:
        """The token of an ``Authorization: Bearer`` header (maybe empty), else None."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    def _grant_of(self, request: web.Request) -> GrantT | None:
        """The grant behind the call's bearer token if this emulator ever minted it
        (also when it has expired or its grant was revoked)."""
        token = self._bearer(request)
        return None if token is None else self._minted.get(token)

    # ----------------------------------------------------------------- token sealing

    def _seal(self, payload: Mapping[str, Any]) -> str:
        raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        mac = hmac.new(self._secret, raw, hashlib.sha256).digest()[:_MAC_BYTES]
        text = base64.urlsafe_b64encode(raw + mac).decode()
        return text if self.SEAL_PADDING else text.rstrip("=")

    def _unseal(self, token: str, kind: str) -> dict[str, Any] | None:
        """The payload of a token this instance sealed with ``{"t": kind}``, else None."""
        try:
            blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return None
        raw, mac = blob[:-_MAC_BYTES], blob[-_MAC_BYTES:]
        expected = hmac.new(self._secret, raw, hashlib.sha256).digest()[:_MAC_BYTES]
        if len(blob) <= _MAC_BYTES or not hmac.compare_digest(mac, expected):
            return None
        try:
            payload = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(payload, dict) or payload.get("t") != kind:
            return None
        return payload

    # ----------------------------------------------------------------- push delivery

    def _open_queue(
        self,
        key: Hashable,
        deliver: Callable[[list[JobT]], Awaitable[None]],
        batch: int = 1,
    ) -> asyncio.Queue[JobT | None]:
        """A push queue with its worker: up to ``batch`` queued jobs go to one
        ``deliver`` call; a ``None`` job ends the worker after what came before it."""
        queue: asyncio.Queue[JobT | None] = asyncio.Queue()
        self._push_queues[key] = queue
        task = asyncio.get_running_loop().create_task(self._push_worker(key, queue, deliver, batch))
        self._push_tasks.add(task)
        task.add_done_callback(self._push_tasks.discard)
        return queue

    async def _push_worker(
        self,
        key: Hashable,
        queue: asyncio.Queue[JobT | None],
        deliver: Callable[[list[JobT]], Awaitable[None]],
        batch: int,
    ) -> None:
        try:
            while True:
                taken = [await queue.get()]
                while len(taken) < batch and not queue.empty():
                    taken.append(queue.get_nowait())
                jobs = [job for job in taken if job is not None]
                try:
                    if jobs:
                        await deliver(jobs)
                except Exception:  # the worker must outlive any one bad delivery
                    logger.exception("push delivery failed")
                finally:
                    for _ in taken:
                        queue.task_done()
                if len(jobs) < len(taken):
                    return
        finally:
            # Let flush_pushes() return even for messages left behind.
            while not queue.empty():
                queue.get_nowait()
                queue.task_done()
            if self._push_queues.get(key) is queue:
                del self._push_queues[key]

    async def _post_with_retries(
        self,
        target: str | yarl.URL,
        body: bytes,
        headers: Mapping[str, str],
        *,
        log: Callable[[int | None, str | None, int], None],
        retry: Callable[[int | None], bool],
        still_wanted: Callable[[], bool] = lambda: True,
    ) -> None:
        """POST ``body`` and log every attempt; while ``retry(status)`` (status None:
        no answer) and ``push_retry_delays`` last, wait and POST again, unless
        ``still_wanted()`` says no after the wait."""
        session = self._session
        assert session is not None
        delays = self.push_retry_delays
        for attempt in range(1, len(delays) + 2):
            status: int | None = None
            error: str | None = None
            try:
                async with session.post(target, data=body, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            log(status, error, attempt)
            if not retry(status) or attempt > len(delays):
                return
            await asyncio.sleep(delays[attempt - 1])
            if not still_wanted():
                return

    async def flush_pushes(self) -> None:
        """Wait until every push queued so far was delivered, dropped or failed."""
        for queue in list(self._push_queues.values()):
            await queue.join()

    # ----------------------------------------------------------------- middleware

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        is_api = path.startswith(self.API_PREFIX + "/")
        recorded = self._recorded(request, is_api)
        arrival = self.now()
        status = 500
        fault: str | None = None
        headers: Mapping[str, str] = {}
        answer: web.StreamResponse | None = None
        self._open_call(request)
        try:
            explicit = not is_api and self._explicit_faults(request)
            if is_api or explicit:
                refused = self._admit(request) if is_api else None
                if refused is not None:
                    fault = refused[0]
                    answer = self._finish(request, refused[1])
                    return answer
                decision = self.faults.decide(request.method, path, explicit=explicit)
                if decision.fired_latency:
                    fault = "latency"
                    await asyncio.sleep(decision.latency)
                if decision.rule is not None:
                    fault = decision.rule.kind
                    answer = self._finish(request, self.faults.respond(decision.rule, request))
                    return answer
            try:
                answer = await handler(request)
            except self.error_type as exc:
                answer = self._error_response(exc, request)
            except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
                answer = self._unrouted(request, exc, is_api)
            answer = self._finish(request, answer)
            return answer
        except web.HTTPException as exc:
            status, headers = exc.status, exc.headers
            raise
        finally:
            if answer is not None:
                status, headers = answer.status, answer.headers
            if recorded:
                self.requests.append(self._record(request, arrival, status, fault, headers, is_api))
            self._close_call(request)

    def _recorded(self, request: web.Request, is_api: bool) -> bool:
        """Provider hook: whether the call lands in ``requests`` (API calls do)."""
        return is_api

    def _explicit_faults(self, request: web.Request) -> bool:
        """Provider hook: whether a non-API call (a token endpoint) is subject to the
        fault rules that name a ``path`` matching it; rules without a path never are."""
        return False

    def _open_call(self, request: web.Request) -> None:
        """Provider hook: per-call setup, before anything else."""

    def _admit(self, request: web.Request) -> tuple[str, web.StreamResponse] | None:
        """Provider hook: refuse an API call before faults, as ``(fault name, answer)``."""
        return None

    def _close_call(self, request: web.Request) -> None:
        """Provider hook: per-call teardown, after the call was recorded."""

    def _finish(self, request: web.Request, answer: web.StreamResponse) -> web.StreamResponse:
        """Provider hook: headers every answer of the API site carries."""
        return answer

    def _unrouted(
        self, request: web.Request, exc: web.HTTPException, is_api: bool
    ) -> web.StreamResponse:
        """Provider hook: the answer for a path or method no route serves (re-raise
        ``exc`` for aiohttp's own answer)."""
        raise exc

    def _error_response(self, exc: ErrorT, request: web.Request) -> web.Response:
        """Provider hook: ``exc`` as the provider's error response."""
        raise NotImplementedError

    def _attribution(self, request: web.Request, is_api: bool) -> tuple[str | None, str | None]:
        """Provider hook: the call's ``(account, calendar_id)`` for the request log."""
        return None, None

    def _record(
        self,
        request: web.Request,
        arrival: float,
        status: int,
        fault: str | None,
        headers: Mapping[str, str],
        is_api: bool,
    ) -> RecordedRequest:
        query = {k: request.query.getall(k) for k in request.query}
        raw_retry = headers.get("Retry-After")
        retry_after = None if raw_retry is None else retry_after_seconds(raw_retry, self.now())
        account, calendar_id = self._attribution(request, is_api)
        return RecordedRequest(
            arrival,
            request.method,
            request.path,
            query,
            status,
            fault,
            retry_after,
            account,
            calendar_id,
        )

    # ----------------------------------------------------------------- control routes

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        """Provider hook: the API routes and the provider's own control routes."""

    def _add_control_routes(self, router: web.UrlDispatcher) -> None:
        c = CONTROL_PREFIX
        router.add_get(c + "/health", self._c_health)
        router.add_post(c + "/clients", self._c_add_client)
        router.add_post(c + "/redirect_uris", self._c_add_redirect_uri)
        router.add_post(c + "/refresh_tokens", self._c_issue_refresh)
        router.add_post(c + "/access_tokens/expire", self._c_expire_access)
        router.add_get(c + "/faults", self._c_get_faults)
        router.add_post(c + "/faults", self._c_set_faults)
        router.add_delete(c + "/faults", self._c_clear_faults)
        router.add_get(c + "/requests", self._c_requests)
        router.add_delete(c + "/requests", self._c_clear_requests)
        router.add_get(c + "/deliveries", self._c_deliveries)
        router.add_post(c + "/flush_pushes", self._c_flush)
        router.add_post(c + "/clock/advance", self._c_advance_clock)

    def _bad_json(self) -> ErrorT:
        """Provider hook: the error for a body that is not a JSON object."""
        raise NotImplementedError

    def _control_error(self, message: str, name: str) -> ErrorT:
        """Provider hook: the 400 for a bad control-route field ``name``."""
        raise NotImplementedError

    def _missing_field(self, name: str) -> ErrorT:
        """Provider hook: the 400 for a missing control-route field ``name``."""
        raise NotImplementedError

    def _unknown(self, message: str) -> ErrorT:
        """Provider hook: the 404 for something a control route does not know."""
        raise NotImplementedError

    def issue_refresh_token(self, client_id: str, ids: list[str] | None = None) -> str:
        """Provider hook: a new grant for ``client_id`` covering ``ids`` (None = all)."""
        raise NotImplementedError

    def _health(self) -> dict[str, Any]:
        """Provider hook: the URLs ``/_emulator/health`` shows besides base and API URL."""
        return {}

    async def _body(self, request: web.Request) -> dict[str, Any]:
        return await read_json_object(request, self._bad_json)

    def _str_field(self, body: Mapping[str, Any], name: str) -> str:
        value = body.get(name)
        if not isinstance(value, str) or not value:
            raise self._missing_field(name)
        return value

    @staticmethod
    def _notify_param(request: web.Request) -> bool:
        return request.query.get("notify", "true").lower() != "false"

    async def _c_health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "ok": True,
                "base_url": self.base_url,
                "api_url": self.api_url,
                **self._health(),
                "now": self.now(),
            }
        )

    async def _c_add_client(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        client_id = self._str_field(body, "client_id")
        self.add_client(client_id, self._str_field(body, "client_secret"))
        return web.json_response({"client_id": client_id}, status=201)

    async def _c_add_redirect_uri(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        client_id = self._str_field(body, "client_id")
        if client_id not in self._clients:
            raise self._unknown(f"Unknown client {client_id}.")
        self.add_redirect_uri(client_id, self._str_field(body, "redirect_uri"))
        return web.json_response({"client_id": client_id}, status=201)

    async def _c_issue_refresh(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        client_id = self._str_field(body, "client_id")
        name = self.GRANT_SCOPE_FIELD
        ids = body.get(name)
        if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
            raise self._control_error(f"{name} must be a list of strings", name)
        if client_id not in self._clients:
            raise self._unknown(f"Unknown client {client_id}.")
        token = self.issue_refresh_token(client_id, cast("list[str] | None", ids))
        return web.json_response(
            {"refresh_token": token, "account": self.account_of(token)}, status=201
        )

    async def _c_expire_access(self, request: web.Request) -> web.Response:
        self.expire_access_tokens()
        return web.Response(status=204)

    async def _c_get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults.to_json())

    async def _c_set_faults(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        try:
            rules = [self.faults.rule_from_json(raw) for raw in body.get("rules") or []]
            drop = body.get("drop_push_probability")
            if drop is not None and not 0.0 <= float(drop) <= 1.0:
                raise ValueError("drop_push_probability must be within [0, 1]")
        except (TypeError, ValueError) as exc:
            raise self._control_error(str(exc), "rules") from None
        if body.get("replace"):
            self.faults.rules.clear()
        self.faults.rules.extend(rules)
        if drop is not None:
            self.faults.drop_push_probability = float(drop)
        if "seed" in body:
            self.faults.seed(body["seed"])
        return web.json_response(self.faults.to_json())

    async def _c_clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return web.Response(status=204)

    async def _c_requests(self, request: web.Request) -> web.Response:
        chosen = self.requests_for(
            account=request.query.get("account"), calendar_id=request.query.get("calendar_id")
        )
        return web.json_response([dataclasses.asdict(r) for r in chosen])

    async def _c_clear_requests(self, request: web.Request) -> web.Response:
        self.requests.clear()
        return web.Response(status=204)

    def _deliveries(self) -> Sequence[Any]:
        """Provider hook: the delivery log (dataclass records)."""
        return []

    async def _c_deliveries(self, request: web.Request) -> web.Response:
        return web.json_response([dataclasses.asdict(d) for d in self._deliveries()])

    async def _c_flush(self, request: web.Request) -> web.Response:
        await self.flush_pushes()
        return web.Response(status=204)

    async def _c_advance_clock(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        try:
            seconds = float(body.get("seconds", 0))
        except (TypeError, ValueError):
            raise self._control_error("seconds must be a number", "seconds") from None
        self.advance_clock(seconds)
        return web.json_response({"now": self.now()})


# --------------------------------------------------------------------------- the serve loop


async def serve_until_stopped(
    start: Callable[[], Awaitable[object]],
    aclose: Callable[[], Awaitable[None]],
    banner: Callable[[], Sequence[str]],
    stop: asyncio.Event | None = None,
) -> None:
    """Start an emulator, print ``banner()`` once listening, and serve until ``stop``
    is set or SIGINT/SIGTERM arrives; then close it (shared by every emulator's CLI)."""
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    try:
        await start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
        for line in banner():
            print(line, flush=True)
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await aclose()


async def serve_emulator(
    emu: BaseEmulator[Any, Any, Any],
    *,
    clients: Sequence[tuple[str, str]],
    stop: asyncio.Event | None,
    start: Callable[[], Awaitable[object]],
    banner: Callable[[], Sequence[str]],
) -> None:
    """Register ``clients`` (id, secret) on ``emu``, then :func:`serve_until_stopped`."""
    for client_id, secret in clients:
        emu.add_client(client_id, secret)
    await serve_until_stopped(start, emu.aclose, banner, stop)


def run_until_interrupted(main: Coroutine[Any, Any, None]) -> int:
    """``asyncio.run(main)``, Ctrl-C counting as a normal end; the CLI's exit status (0)."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main)
    return 0


def parse_pair(value: str, default_second: str | None = None) -> tuple[str, str]:
    """``A:B`` for argparse; with ``default_second``, ``A`` alone means ``A:default``."""
    first, sep, second = value.rpartition(":") if default_second is None else value.partition(":")
    if default_second is not None and not sep:
        return value, default_second
    if not sep or not first or not second:
        raise argparse.ArgumentTypeError(f"expected A:B, got {value!r}")
    return first, second


def emulator_parser(
    prog: str,
    description: str,
    *,
    default_port: int,
    calendars: tuple[str, str, str],
    client_help: str,
) -> argparse.ArgumentParser:
    """The options every emulator CLI has: ``--host``, ``--port``, the repeatable
    calendar option ``calendars`` = (flag, metavar, help) of ``ID[:TZ]`` pairs,
    ``--client ID:SECRET`` and ``--seed``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    flag, metavar, help_ = calendars
    parser.add_argument(
        flag,
        action="append",
        default=[],
        type=lambda v: parse_pair(v, "UTC"),
        metavar=metavar,
        help=help_,
    )
    parser.add_argument(
        "--client",
        action="append",
        default=[],
        type=parse_pair,
        metavar="ID:SECRET",
        help=client_help,
    )
    parser.add_argument("--seed", type=int, default=None)
    return parser
