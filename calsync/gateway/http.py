"""The gateway's HTTP handlers (aiohttp), shared by the worker and ``calsync gateway``.

Every refusal is a JSON ``{"error": ..., "field"?: ...}`` and writes nothing. Any
request whose body is over ``gateway_max_body`` (chunked or not) gets 413; one whose
body does not arrive within ``gateway_read_timeout`` gets 408. Status codes:

* ``POST /webhooks/google``: 202 a notification was written; 200 a ``sync``
  handshake (acknowledged, nothing written); 400 malformed headers (a channel id
  outside Google's alphabet ``[A-Za-z0-9_+/=-]{1,64}``, an unknown resource state, a
  message number that is not 1-16 ASCII digits up to 2**53); 401 no channel token;
  403 a token that does not verify, or whose channel has expired (the expiry is in the
  signed token; ``X-Goog-Channel-Expiration`` is not trusted); 503 the broker did not
  acknowledge within ``gateway_publish_timeout`` (Google retries 5xx).
* ``POST /webhooks/microsoft?resource=<id>`` and ``.../microsoft/lifecycle?resource=<id>``:
  ``?validationToken=`` (at most 1,024 characters, else 400) is echoed as
  ``200 text/plain`` with ``X-Content-Type-Options: nosniff``; otherwise every item of
  ``value[]`` must carry the resource's ``clientState``. Graph batches a resource's
  notifications into one request whose items all carry that one ``clientState``, so the
  first item that does not is taken as forgery of the whole request: 403, nothing
  written, one log line. 202 one notification per distinct subscription (and lifecycle
  event) of the batch; 413 more than :data:`MAX_GRAPH_ITEMS` items; 400 malformed.
* ``POST /api/resources[?wait=<seconds>]`` (bearer ``CALSYNC_ADMIN_TOKEN``): the
  register command is written, then without ``wait``: 202, ``Location`` the
  registration's status URL. With ``wait`` (``10``, ``10s`` or ``500ms``, at most
  :data:`MAX_WAIT` seconds) the answer waits for the worker's outcome on
  ``calsync.status``: 200 once it is known, ``ok`` true for ``synced``, false for
  ``reauth_required``/``failed``/``removed`` (the resource is registered either
  way; register it again with a fix); 202 if it is still pending when the wait is
  over. 400 the body says what is wrong; 401 missing or wrong bearer token.
* ``GET /api/resources/{id}/registration?since=<issued_at>[&wait=<seconds>]``
  (bearer): the same outcome body; 200 known, 202 pending; 400 bad parameters.
  It reads the status topic, so it works in the standalone gateway (which has no
  tables), for registrations of the last ten minutes or made since it started.
* ``DELETE /api/resources/{id}``, ``POST /api/resources/{id}/resync``,
  ``.../pause`` (no provider calls until resumed), ``.../resume`` (and a full resync): 202.
* ``POST /api/resources/bulk`` (bearer): many registrations in one CSV or JSON-lines
  file, all or nothing (:mod:`calsync.gateway.bulk`): 202, or 400 naming the line.
* ``POST /api/connect`` (bearer): 201 a one-time connect link for a calendar's owner
  (``{"resource_id", "provider", "calendar_id"?, "time_zone"?, "busy_policy"?}``);
  the ``/connect/*`` pages it leads to are in :mod:`calsync.gateway.connect`.
* Any request that writes: 503 with ``Retry-After`` when the broker does not acknowledge
  the write within ``gateway_publish_timeout`` seconds (broker down or unreachable), so
  a webhook does not hang for the whole outage. The producer keeps the record, so it
  may still be written once the broker is back; a retry makes that harmless.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import fields
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from aiohttp import web

from calsync.clock import Clock
from calsync.connect.store import StoreFull
from calsync.crypto import SecretBox, WebhookSigner
from calsync.errors import MalformedProviderData
from calsync.gateway.bulk import MAX_BULK_BYTES, BulkRejected, parse_rows, validate_rows
from calsync.gateway.connect import CONNECT_PROVIDERS, ConnectFlows
from calsync.gateway.publisher import Publisher
from calsync.gateway.status import Registration, StatusFollower, StatusSource
from calsync.normalize.busy import BusyPolicy
from calsync.normalize.windows_zones import zone_for
from calsync.providers.netpolicy import NetworkPolicy
from calsync.providers.registry import REGISTRY
from calsync.settings import Settings
from calsync.streams.records import Command, CommandKind, Notification, Reason
from calsync.web.auth import Role, bearer_matches, role_of, token_digest
from calsync.web.metrics import Metrics
from calsync.web.openapi import PARSED_BODY, serve_document
from calsync.web.sites import Surface, new_application, select_routes

log = logging.getLogger(__name__)

#: Matched with ``fullmatch``: ``$`` would let a trailing newline through.
RESOURCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}")
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,253}")
#: Google's documented channel id alphabet and length.
_CHANNEL_ID = re.compile(r"[A-Za-z0-9_+/=-]{1,64}")
#: ASCII digits only (``str.isdigit`` takes '٣' and '²'); at most 2**53, below.
_MESSAGE_NUMBER = re.compile(r"[0-9]{1,16}")
MAX_MESSAGE_NUMBER = 2**53
#: Graph delivers notifications in small batches (it documents no maximum); a bigger
#: one is refused unread rather than verified item by item.
MAX_GRAPH_ITEMS = 100
MAX_VALIDATION_TOKEN = 1024
#: The longest credential field (a service account's JSON key is about 2,400 bytes).
MAX_CREDENTIAL = 16 * 1024
#: The longest ``?wait=`` of the registration endpoints, in seconds.
MAX_WAIT = 30.0
_WAIT = re.compile(r"([0-9]{1,5}(?:\.[0-9]{1,3})?)(s|ms)?")
_SINCE = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,6})?")
_GOOGLE_STATES = frozenset({"sync", "exists", "not_exists"})
_LIFECYCLE_EVENTS = frozenset({"missed", "subscriptionRemoved", "reauthorizationRequired"})
BUSY_POLICY_SWITCHES = frozenset(switch.name for switch in fields(BusyPolicy))


class RequestRejected(Exception):
    """A request the gateway refuses; becomes a JSON error response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.retry_after = retry_after

    def response(self) -> web.Response:
        body: dict[str, str] = {"error": self.message}
        if self.field:
            body["field"] = self.field
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return web.json_response(body, status=self.status, headers=headers or None)


def _busy_policy(value: object) -> dict[str, bool] | None:
    """The optional ``busy_policy`` object: switches of :class:`BusyPolicy`, each a bool."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise RequestRejected(400, "busy_policy must be an object", field="busy_policy")
    unknown = sorted(str(key) for key in value if key not in BUSY_POLICY_SWITCHES)
    if unknown:
        raise RequestRejected(
            400,
            f"busy_policy has unknown switches {unknown}; known are {sorted(BUSY_POLICY_SWITCHES)}",
            field="busy_policy",
        )
    for key, flag in value.items():
        if not isinstance(flag, bool):
            raise RequestRejected(
                400, f"busy_policy.{key} must be true or false", field="busy_policy"
            )
    return {str(key): bool(flag) for key, flag in value.items()}


def _time_zone(time_zone: object) -> str | None:
    """An IANA name as given, or the IANA zone of a Windows name (as Graph's mailbox
    settings show them; CalDAV and Google read IANA names only); None stays None."""
    if time_zone is None:
        return None
    try:
        if not isinstance(time_zone, str):
            raise ValueError(time_zone)
        try:
            ZoneInfo(time_zone)
            return time_zone
        except (ZoneInfoNotFoundError, ValueError):
            return zone_for(time_zone).key
    except (MalformedProviderData, ValueError):
        raise RequestRejected(
            400,
            f"time_zone {time_zone!r} is neither an IANA nor a Windows time zone"[:300],
            field="time_zone",
        ) from None


def _resource_id(body: Mapping[str, Any]) -> str:
    resource_id = body.get("resource_id")
    if not isinstance(resource_id, str) or not RESOURCE_ID.fullmatch(resource_id):
        raise RequestRejected(
            400,
            "resource_id must be 1-128 characters of letters, digits and ._:@+=- "
            "starting with a letter or digit",
            field="resource_id",
        )
    return resource_id


def validate_connect(body: object) -> dict[str, Any]:
    """The keyword arguments of :meth:`ConnectFlows.create_link` from a ``POST
    /api/connect`` body: ``resource_id``, ``provider`` (``google``), optional
    ``calendar_id`` (else the owner picks), ``time_zone`` (IANA or Windows; else each
    calendar's own) and ``busy_policy``. Raises :class:`RequestRejected` (400)."""
    if not isinstance(body, Mapping):
        raise RequestRejected(400, "the body must be a JSON object")
    resource_id = _resource_id(body)
    provider = body.get("provider")
    if provider not in CONNECT_PROVIDERS:
        raise RequestRejected(
            400,
            f"provider must be one of {list(CONNECT_PROVIDERS)} (CalDAV has no consent "
            "screen: register it with its app password)",
            field="provider",
        )
    calendar_id = body.get("calendar_id")
    if calendar_id is not None and (
        not isinstance(calendar_id, str) or not 0 < len(calendar_id) <= 1024
    ):
        raise RequestRejected(400, "calendar_id must be a non-empty string", field="calendar_id")
    return {
        "resource_id": resource_id,
        "provider": str(provider),
        "calendar_id": calendar_id,
        "time_zone": _time_zone(body.get("time_zone")),
        "busy_policy": _busy_policy(body.get("busy_policy")),
    }


def validate_registration(
    body: object,
    secrets: SecretBox,
    *,
    now: float,
    caldav_networks: NetworkPolicy | None = None,
) -> Command:
    """A register command from an API request body; credentials come out encrypted.

    ``time_zone`` is optional: an IANA name or a Windows one (``"Pacific Standard
    Time"``, as Outlook and Graph's mailbox settings show it); the command carries
    the IANA name either way.

    A CalDAV ``calendar_id`` must be an http(s) URL without userinfo whose host, if
    written as an IP address (or ``localhost``), is public or inside
    ``caldav_networks`` (public only when ``None``); host names are checked after
    DNS resolution when the worker connects.

    ``busy_policy`` is optional: an object of :class:`~calsync.normalize.busy.BusyPolicy`
    switches (``declined_is_free``, ``unanswered_is_busy``, ``all_day_is_busy``,
    ``tentative_is_busy``), each a bool; a switch left out keeps its default.

    Raises :class:`RequestRejected` (400) naming the offending field.
    """
    if not isinstance(body, Mapping):
        raise RequestRejected(400, "the body must be a JSON object")
    resource_id = _resource_id(body)
    provider = body.get("provider")
    provider_spec = REGISTRY.get(provider) if isinstance(provider, str) else None
    if provider_spec is None:
        raise RequestRejected(
            400,
            f"provider must be one of {sorted(REGISTRY)}, got {provider!r}",
            field="provider",
        )
    calendar_id = body.get("calendar_id")
    if not isinstance(calendar_id, str) or not 0 < len(calendar_id) <= 1024:
        raise RequestRejected(400, "calendar_id must be a non-empty string", field="calendar_id")
    time_zone = _time_zone(body.get("time_zone"))
    credentials = body.get("credentials")
    if not isinstance(credentials, Mapping):
        raise RequestRejected(400, "credentials must be an object", field="credentials")
    if provider_spec.check_calendar is not None:
        try:
            provider_spec.check_calendar(calendar_id, caldav_networks or NetworkPolicy())
        except ValueError as exc:
            raise RequestRejected(400, str(exc), field="calendar_id") from None
    kind = provider_spec.credential_kind(credentials)
    if kind is None:
        kinds = " or ".join(str(list(k)) for k in provider_spec.credential_kinds)
        raise RequestRejected(
            400,
            f"{provider_spec.name} credentials must have the fields {kinds}",
            field="credentials",
        )
    secrets_in: dict[str, str] = {}
    for name in kind:
        value = credentials.get(name)
        if not isinstance(value, str) or not value or len(value) > MAX_CREDENTIAL:
            raise RequestRejected(
                400,
                f"credentials.{name} must be a non-empty string of at most "
                f"{MAX_CREDENTIAL} characters",
                field="credentials",
            )
        secrets_in[name] = value
    busy_policy = _busy_policy(body.get("busy_policy"))
    own_address = body.get("own_address")
    if own_address is not None and (not isinstance(own_address, str) or "@" not in own_address):
        raise RequestRejected(
            400,
            "own_address must be the calendar owner's email address (CalDAV: to read their "
            "replies to invitations)",
            field="own_address",
        )
    return Command(
        kind=CommandKind.REGISTER.value,
        resource_id=resource_id,
        issued_at=now,
        provider=provider_spec.name,
        calendar_id=calendar_id,
        time_zone=time_zone,
        credentials={name: secrets.encrypt(value) for name, value in secrets_in.items()},
        busy_policy=busy_policy,
        own_address=own_address,
    )


class Gateway:
    """Request handlers bound to settings and a :class:`Publisher`.

    ``statuses`` tells what became of registrations (``?wait=`` and the status URL);
    by default a :class:`~calsync.gateway.status.StatusFollower` of the status topic,
    started on first use. :meth:`aclose` stops it.
    """

    def __init__(
        self,
        settings: Settings,
        publisher: Publisher,
        *,
        clock: Clock = time.time,
        statuses: StatusSource | None = None,
        connect_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._settings = settings
        self._publisher = publisher
        self._clock = clock
        self._signer = WebhookSigner(settings.secret_key)
        self._secrets = SecretBox(settings.secret_key)
        self._admin_digest = token_digest(settings.admin_token)
        self._caldav_networks = NetworkPolicy.from_setting(settings.caldav_allowed_networks)
        self._notifications = settings.topic("notifications")
        self._commands = settings.topic("commands")
        self._statuses = statuses
        self.connect = ConnectFlows(
            settings, self._publish, self._secrets, clock=clock, client=connect_client
        )

    def routes(self) -> list[web.RouteDef]:
        return [
            *self.connect.routes(self.create_connect_link),
            web.post("/api/connect/microsoft/admin-consent", self.create_admin_consent),
            web.post("/webhooks/google", self.google_push),
            web.post("/webhooks/microsoft", self.graph_push),
            web.post("/webhooks/microsoft/lifecycle", self.graph_lifecycle),
            web.post("/api/resources", self.register_resource),
            web.post("/api/resources/bulk", self.register_bulk),
            web.get("/api/resources/{resource_id}/registration", self.registration_status),
            web.delete("/api/resources/{resource_id}", self.remove_resource),
            web.post("/api/resources/{resource_id}/resync", self.resync_resource),
            web.post("/api/resources/{resource_id}/pause", self.pause_resource),
            web.post("/api/resources/{resource_id}/resume", self.resume_resource),
            web.get("/healthz", self.health),
        ]

    async def aclose(self) -> None:
        """Stop the status follower if one was started. Idempotent."""
        await self.connect.aclose()
        statuses, self._statuses = self._statuses, None
        if statuses is not None:
            await statuses.aclose()

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _read_body(self, request: web.Request) -> bytes:
        """The whole body, chunked or not, within the size limit and the read timeout.

        ``request.read()`` also honours the application's ``client_max_size`` (and
        caches the body for whoever reads it next); the limit is checked here too in
        case the application allows more.
        """
        limit = self._settings.gateway_max_body
        too_large = RequestRejected(413, f"body larger than {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        timeout = self._settings.gateway_read_timeout
        try:
            async with asyncio.timeout(timeout):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        except TimeoutError:
            raise RequestRejected(408, f"the body did not arrive within {timeout:g}s") from None
        if len(body) > limit:
            raise too_large
        return body

    async def _publish(self, topic: str, key: str, value: bytes) -> None:
        timeout = self._settings.gateway_publish_timeout
        try:
            async with asyncio.timeout(timeout):
                await self._publisher.publish(topic, key, value)
        except Exception as exc:  # TimeoutError included: the broker is away
            log.warning("publish to %s failed: %r", topic, exc)
            raise RequestRejected(
                503,
                f"the broker did not acknowledge the write within {timeout:g}s",
                retry_after=max(1, math.ceil(timeout)),
            ) from exc

    async def google_push(self, request: web.Request) -> web.Response:
        """A Google push: check it, write one notification, answer 202."""
        try:
            received_at = self._clock()
            await self._read_body(request)  # Calendar pushes have no body; bound it anyway
            headers = request.headers
            channel_id = headers.get("X-Goog-Channel-ID", "")
            state = headers.get("X-Goog-Resource-State", "")
            if not _CHANNEL_ID.fullmatch(channel_id):
                raise RequestRejected(
                    400, "X-Goog-Channel-ID is missing, longer than 64 or not [A-Za-z0-9_+/=-]"
                )
            if state not in _GOOGLE_STATES:
                raise RequestRejected(400, "X-Goog-Resource-State is missing or unknown")
            raw_number = headers.get("X-Goog-Message-Number", "")
            if not _MESSAGE_NUMBER.fullmatch(raw_number) or int(raw_number) > MAX_MESSAGE_NUMBER:
                raise RequestRejected(
                    400, "X-Goog-Message-Number is missing or not a number from 0 to 2**53"
                )
            token = headers.get("X-Goog-Channel-Token")
            if not token:
                raise RequestRejected(401, "X-Goog-Channel-Token is missing")
            claim = self._signer.verify_channel_token(channel_id, token)
            if claim is None:
                log.warning("forged google push refused (channel %s)", channel_id)
                raise RequestRejected(403, "X-Goog-Channel-Token does not verify")
            if claim.expired(received_at):
                log.info("google push on expired channel %s refused", channel_id)
                raise RequestRejected(403, "X-Goog-Channel-Token belongs to an expired channel")
            if state == "sync":
                return web.json_response({"status": "acknowledged"}, status=200)
            notification = Notification(
                provider="google",
                resource_id=claim.resource_id,
                reason=Reason.PUSH.value,
                received_at=received_at,
                channel_id=channel_id,
                message_number=int(raw_number),
            )
            await self._publish(self._notifications, claim.resource_id, notification.dumps())
            return web.json_response({"status": "accepted"}, status=202)
        except RequestRejected as exc:
            return exc.response()

    async def graph_push(self, request: web.Request) -> web.Response:
        """Graph change notifications: validation handshake, clientState per item, 202."""
        return await self._graph(request, lifecycle=False)

    async def graph_lifecycle(self, request: web.Request) -> web.Response:
        """Graph lifecycle notifications (missed, subscriptionRemoved, reauthorizationRequired)."""
        return await self._graph(request, lifecycle=True)

    async def _graph(self, request: web.Request, *, lifecycle: bool) -> web.Response:
        try:
            received_at = self._clock()
            token = request.query.get("validationToken")
            if token is not None:
                if len(token) > MAX_VALIDATION_TOKEN:
                    raise RequestRejected(
                        400, f"validationToken is longer than {MAX_VALIDATION_TOKEN} characters"
                    )
                # aiohttp has URL-decoded the query; Graph wants the decoded token back.
                # nosniff: the echo is attacker-chosen text, never to be run as HTML.
                return web.Response(
                    text=token,
                    content_type="text/plain",
                    headers={"X-Content-Type-Options": "nosniff"},
                )
            resource_id = request.query.get("resource", "")
            if not RESOURCE_ID.fullmatch(resource_id):
                raise RequestRejected(400, "the resource query parameter is missing or invalid")
            body = await self._json_body(request)
            items = body.get("value") if isinstance(body, Mapping) else None
            if not isinstance(items, list) or not items:
                raise RequestRejected(400, "the body must be an object with a non-empty value[]")
            if len(items) > MAX_GRAPH_ITEMS:
                raise RequestRejected(413, f"value[] has more than {MAX_GRAPH_ITEMS} items")
            notifications: dict[tuple[str | None, str | None], Notification] = {}
            for index, item in enumerate(items):
                if not isinstance(item, Mapping):
                    raise RequestRejected(400, f"value[{index}] is not an object")
                state = item.get("clientState")
                if not isinstance(state, str) or not self._signer.verify_client_state(
                    resource_id, state
                ):
                    log.warning(
                        "forged graph notification refused (%s: value[%d] of %d)",
                        resource_id,
                        index,
                        len(items),
                    )
                    raise RequestRejected(403, f"value[{index}] has no valid clientState")
                event = item.get("lifecycleEvent") if lifecycle else None
                if lifecycle and (not isinstance(event, str) or event not in _LIFECYCLE_EVENTS):
                    raise RequestRejected(400, f"unknown lifecycleEvent {event!r}"[:200])
                subscription_id = item.get("subscriptionId")
                if not isinstance(subscription_id, str) or len(subscription_id) > 128:
                    subscription_id = None
                # Notifications are pings: one per subscription and event covers the batch.
                notifications.setdefault(
                    (subscription_id, event),
                    Notification(
                        provider="microsoft",
                        resource_id=resource_id,
                        reason=(Reason.LIFECYCLE if lifecycle else Reason.PUSH).value,
                        received_at=received_at,
                        channel_id=subscription_id,
                        lifecycle=event,
                        full=event in ("missed", "subscriptionRemoved"),
                    ),
                )
            for notification in notifications.values():
                await self._publish(self._notifications, resource_id, notification.dumps())
            return web.json_response(
                {"status": "accepted", "items": len(items), "written": len(notifications)},
                status=202,
            )
        except RequestRejected as exc:
            return exc.response()

    def _check_admin(self, request: web.Request) -> None:
        # The middleware already checked; this keeps the handlers safe on any app. A
        # role it granted (the read token, or a session) is enough for a GET: the
        # middleware refuses the read role anything else.
        granted = role_of(request)
        if granted is Role.ADMIN or (granted is Role.READ and request.method == "GET"):
            return
        if not bearer_matches(request.headers.get("Authorization"), self._admin_digest):
            raise RequestRejected(401, "a valid 'Authorization: Bearer <admin token>' is required")

    async def json_body(self, request: web.Request) -> Any:
        """The request's JSON body, bounded like every body (:class:`RequestRejected`)."""
        return await self._json_body(request)

    async def publish(self, topic: str, key: str, value: bytes) -> None:
        """Write one record; a broker that does not acknowledge it is a 503."""
        await self._publish(topic, key, value)

    async def _json_body(self, request: web.Request) -> Any:
        body = await self._read_body(request)
        if PARSED_BODY in request:  # parsed (and checked) by the validation middleware
            return request[PARSED_BODY]
        try:
            return json.loads(body)
        except RecursionError:
            raise RequestRejected(400, "the body is JSON nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:
            # ValueError covers integers over Python's digit limit, with its own words
            raise RequestRejected(400, f"the body is not valid JSON: {exc}"[:300]) from None

    async def _status_source(self) -> StatusSource:
        if self._statuses is None:
            self._statuses = StatusFollower(
                self._settings.kafka_bootstrap,
                self._settings.topic("status"),
                client_id=f"{self._settings.app_id}-status",
            )
        await self._statuses.ready()
        return self._statuses

    async def register_resource(self, request: web.Request) -> web.Response:
        try:
            self._check_admin(request)
            wait = wait_seconds(request)
            # Milliseconds, so the status URL's ``since`` names it exactly.
            now = round(self._clock(), 3)
            command = validate_registration(
                await self._json_body(request),
                self._secrets,
                now=now,
                caldav_networks=self._caldav_networks,
            )
            statuses: StatusSource | None = None
            mark = 0
            if wait:
                try:  # before the write, so that no status of it can be missed
                    statuses = await self._status_source()
                    mark = statuses.mark()
                except Exception as exc:
                    log.warning("cannot follow the status topic: %r", exc)
            await self._publish(self._commands, command.resource_id, command.dumps())
            rid = command.resource_id
            url = f"/api/resources/{quote(rid, safe='')}/registration?since={now:.3f}"
            headers = {"Location": url}
            if statuses is None:
                body = {"status": "accepted", "resource_id": rid, "issued_at": now}
                return web.json_response({**body, "status_url": url}, status=202, headers=headers)
            found = await statuses.registration(rid, now, wait=wait, after=mark)
            return _registration_response(found, url, headers)
        except RequestRejected as exc:
            return exc.response()

    async def register_bulk(self, request: web.Request) -> web.Response:
        """``POST /api/resources/bulk``: a CSV (``text/csv``) or JSON-lines
        (``application/x-ndjson``) file of registrations, all or nothing: 202
        ``{"accepted": n, "resource_ids": [...]}``; 400 naming the first bad line; 413
        over :data:`~calsync.gateway.bulk.MAX_BULK_BYTES`; 415 another content type."""
        try:
            self._check_admin(request)
            kind = request.content_type
            if kind not in ("text/csv", "application/x-ndjson", "application/jsonl"):
                raise RequestRejected(
                    415, "send text/csv or application/x-ndjson (one registration per line)"
                )
            content = await self._read_limited(request, MAX_BULK_BYTES)
            now = round(self._clock(), 3)
            try:
                commands = validate_rows(
                    parse_rows(content, csv_format=kind == "text/csv"),
                    self._secrets,
                    now=now,
                    caldav_networks=self._caldav_networks,
                )
            except BulkRejected as exc:
                where = f"line {exc.line}: " if exc.line is not None else ""
                raise RequestRejected(400, f"{where}{exc.message}"[:500], field=exc.field) from None
            for command in commands:
                await self._publish(self._commands, command.resource_id, command.dumps())
            ids = [c.resource_id for c in commands]
            return web.json_response(
                {"status": "accepted", "accepted": len(ids), "resource_ids": ids, "issued_at": now},
                status=202,
            )
        except RequestRejected as exc:
            return exc.response()

    async def _read_limited(self, request: web.Request, limit: int) -> bytes:
        """The body, read from the stream (past the application's ``client_max_size``)
        up to ``limit`` bytes (413 beyond), within the read timeout (408)."""
        too_large = RequestRejected(413, f"body larger than {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._settings.gateway_read_timeout * 6):
                async for chunk in request.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > limit:
                        raise too_large
                    chunks.append(chunk)
        except TimeoutError:
            raise RequestRejected(408, "the body did not arrive in time") from None
        return b"".join(chunks)

    async def create_admin_consent(self, request: web.Request) -> web.Response:
        """``POST /api/connect/microsoft/admin-consent`` ``{"tenant": "<id or domain>"}``:
        201 ``{admin_consent_url, ...}`` for the tenant's administrator; 400 without a
        specific tenant."""
        try:
            self._check_admin(request)
            body = await self._json_body(request)
            tenant = body.get("tenant") if isinstance(body, Mapping) else None
            if (
                not isinstance(tenant, str)
                or not _TENANT.fullmatch(tenant)
                or tenant.lower() in ("common", "organizations", "consumers")
            ):
                raise RequestRejected(
                    400, "tenant must be the tenant's id or domain (not common)", field="tenant"
                )
            try:
                answer = self.connect.create_admin_consent(tenant)
            except StoreFull:
                raise RequestRejected(503, "too many connect links are pending") from None
            return web.json_response(answer, status=201)
        except RequestRejected as exc:
            return exc.response()

    async def create_connect_link(self, request: web.Request) -> web.Response:
        """``POST /api/connect``: 201 with the link's ``connect_url``; 400 a bad body."""
        try:
            self._check_admin(request)
            options = validate_connect(await self._json_body(request))
            try:
                body = self.connect.create_link(**options)
            except StoreFull:
                raise RequestRejected(503, "too many connect links are pending") from None
            return web.json_response(body, status=201)
        except RequestRejected as exc:
            return exc.response()

    async def registration_status(self, request: web.Request) -> web.Response:
        """What became of the registration of ``{resource_id}`` issued at ``?since=``."""
        try:
            self._check_admin(request)
            rid = request.match_info["resource_id"]
            if not RESOURCE_ID.fullmatch(rid):
                raise RequestRejected(400, "resource_id is not valid", field="resource_id")
            since = request.query.get("since", "")
            if not _SINCE.fullmatch(since):
                raise RequestRejected(
                    400, "since must be the registration's issued_at (epoch seconds)"
                )
            wait = wait_seconds(request)
            try:
                statuses = await self._status_source()
            except Exception as exc:
                log.warning("cannot follow the status topic: %r", exc)
                raise RequestRejected(503, "the status topic cannot be read now") from exc
            found = await statuses.registration(rid, float(since), wait=wait)
            return _registration_response(found, str(request.rel_url), {})
        except RequestRejected as exc:
            return exc.response()

    async def _simple_command(self, request: web.Request, kind: CommandKind) -> web.Response:
        try:
            self._check_admin(request)
            resource_id = request.match_info["resource_id"]
            await self.send_command(kind, resource_id)
            return web.json_response(
                {"status": "accepted", "resource_id": resource_id, "command": kind.value},
                status=202,
            )
        except RequestRejected as exc:
            return exc.response()

    async def remove_resource(self, request: web.Request) -> web.Response:
        return await self._simple_command(request, CommandKind.REMOVE)

    async def resync_resource(self, request: web.Request) -> web.Response:
        return await self._simple_command(request, CommandKind.RESYNC)

    async def pause_resource(self, request: web.Request) -> web.Response:
        return await self._simple_command(request, CommandKind.PAUSE)

    async def resume_resource(self, request: web.Request) -> web.Response:
        return await self._simple_command(request, CommandKind.RESUME)

    async def send_command(self, kind: CommandKind, resource_id: str) -> None:
        """Write one command of ``kind`` (no payload) for ``resource_id``: the path the
        admin API and the dashboard's buttons share (see :func:`write_command`). Raises
        :class:`RequestRejected` (400 bad id, 503 broker down)."""
        await write_command(self._publish, self._commands, kind, resource_id, self._clock())


async def write_command(
    publish: Callable[[str, str, bytes], Awaitable[None]],
    topic: str,
    kind: CommandKind,
    resource_id: str,
    issued_at: float,
) -> Command:
    """Write one command of ``kind`` (no payload: resync, pause, resume, remove) for
    ``resource_id`` to ``topic`` (``calsync.commands``) with ``publish``, and return it.

    The one command path of the admin API, the dashboard's buttons
    (:meth:`Gateway.send_command`) and ``calsync resources resync|pause|resume|remove``.
    Raises :class:`RequestRejected` (400) for an invalid resource id before writing
    anything, and whatever ``publish`` raises.
    """
    if not RESOURCE_ID.fullmatch(resource_id):
        raise RequestRejected(400, "resource_id is not valid", field="resource_id")
    command = Command(kind=kind.value, resource_id=resource_id, issued_at=issued_at)
    await publish(topic, resource_id, command.dumps())
    return command


def wait_seconds(request: web.Request) -> float:
    """``?wait=`` in seconds (``10``, ``10s``, ``500ms``); 0 when absent."""
    raw = request.query.get("wait")
    if raw is None:
        return 0.0
    match = _WAIT.fullmatch(raw)
    if match is None:
        raise RequestRejected(400, "wait must be seconds like 10, 10s or 500ms", field="wait")
    seconds = float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)
    if seconds > MAX_WAIT:
        raise RequestRejected(400, f"wait must be at most {MAX_WAIT:g}s", field="wait")
    return seconds


def _registration_response(
    found: Registration, status_url: str, headers: dict[str, str]
) -> web.Response:
    """200 with the outcome when it is known, 202 while it is pending."""
    body = {
        "status": found.outcome if found.done else "accepted",
        "resource_id": found.resource_id,
        "issued_at": found.issued_at,
        "status_url": status_url,
        "registration": found.to_json(),
    }
    return web.json_response(body, status=200 if found.done else 202, headers=headers)


def server_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner`` / ``web.run_app`` serving the gateway.

    aiohttp has no header-read timeout of its own, but in 3.14.5 (what calsync is
    tested with; older releases arm it only after a first response) its keep-alive
    timer starts when a connection opens and is re-armed only by a response; when it
    fires while the connection waits for a request head, the connection is closed,
    however many bytes trickled in. So ``keepalive_timeout`` bounds how long a client
    may hold a connection without completing a request head (from connecting, or
    between keep-alive requests). It never fires into a request being handled, so a
    ``?wait=`` of the registration endpoints is not cut short. The body has its own
    limit (``gateway_read_timeout`` again, in the handlers).
    """
    return {"keepalive_timeout": settings.gateway_read_timeout}


def build_gateway_app(
    settings: Settings,
    publisher: Publisher,
    *,
    clock: Clock = time.time,
    surface: str = "all",
    metrics: Metrics | None = None,
    gateway: Gateway | None = None,
) -> web.Application:
    """A standalone aiohttp application serving the gateway routes of ``surface``.

    ``surface`` is a :class:`calsync.web.Surface` value: ``"all"`` (one address),
    ``"public"`` (the webhooks, the connect pages and ``/healthz``) or ``"admin"`` (the
    API, ``/metrics``, ``/openapi.json`` and ``/healthz``); anything else raises
    :class:`ValueError`. ``metrics`` (shared by the sites of one process) counts the
    webhooks. Every route but the webhooks, the connect pages and ``/healthz`` answers
    only to the admin token (:mod:`calsync.web`). Pass one ``gateway`` to the public
    and the admin application of a process, so that a connect link made on the admin
    address works on the public one. Cleanup stops the gateway's status follower.
    """

    gateway = gateway or Gateway(settings, publisher, clock=clock)
    metrics = metrics or Metrics()
    extra = [web.get("/metrics", metrics.handle), web.get("/openapi.json", serve_document)]
    routes = select_routes([*gateway.routes(), *extra], Surface(surface))
    app = new_application(settings, routes)
    app.middlewares.append(metrics.middleware())

    async def close_gateway(_: web.Application) -> None:
        await gateway.aclose()

    app.on_cleanup.append(close_gateway)
    return app
