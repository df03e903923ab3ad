"""The gateway's HTTP handlers (aiohttp), shared by the worker and ``calsync gateway``.

Status codes, each producing nothing unless it is 202:

* ``POST /webhooks/google``: 202 a notification was written; 200 a ``sync``
  handshake (acknowledged, nothing written); 400 malformed headers; 401 no channel
  token; 403 a token that does not verify; 413 a body over the limit; 503 the broker
  did not acknowledge (Google retries 5xx).
* ``POST /webhooks/microsoft?resource=<id>`` and ``.../microsoft/lifecycle?resource=<id>``:
  ``?validationToken=`` is echoed as ``200 text/plain``; otherwise every item of
  ``value[]`` must carry the resource's ``clientState`` (forged items are logged and
  produce nothing); 202 one notification per authentic item; 403 when none is
  authentic; 400 malformed.
* ``POST /api/resources`` (bearer ``CALSYNC_ADMIN_TOKEN``): 202 a register command was
  written; 400 the body says what is wrong; 401 missing or wrong bearer token.
* ``DELETE /api/resources/{id}``, ``POST /api/resources/{id}/resync``: 202.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import fields
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from calsync.busy import BusyPolicy
from calsync.clock import Clock
from calsync.crypto import SecretBox, WebhookSigner
from calsync.gateway.publisher import Publisher
from calsync.settings import Settings
from calsync.streams.records import Command, CommandKind, Notification, Reason

log = logging.getLogger(__name__)

RESOURCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}$")
_GOOGLE_STATES = frozenset({"sync", "exists", "not_exists"})
SUPPORTED_PROVIDERS = frozenset({"google", "microsoft", "caldav"})
_LIFECYCLE_EVENTS = frozenset({"missed", "subscriptionRemoved", "reauthorizationRequired"})
BUSY_POLICY_SWITCHES = frozenset(switch.name for switch in fields(BusyPolicy))


class RequestRejected(Exception):
    """A request the gateway refuses; becomes a JSON error response."""

    def __init__(self, status: int, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field

    def response(self) -> web.Response:
        body: dict[str, str] = {"error": self.message}
        if self.field:
            body["field"] = self.field
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return web.json_response(body, status=self.status, headers=headers)


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


def validate_registration(body: object, secrets: SecretBox, *, now: float) -> Command:
    """A register command from an API request body; credentials come out encrypted.

    ``busy_policy`` is optional: an object of :class:`~calsync.busy.BusyPolicy`
    switches (``declined_is_free``, ``unanswered_is_busy``, ``all_day_is_busy``,
    ``tentative_is_busy``), each a bool; a switch left out keeps its default.

    Raises :class:`RequestRejected` (400) naming the offending field.
    """
    if not isinstance(body, Mapping):
        raise RequestRejected(400, "the body must be a JSON object")
    resource_id = body.get("resource_id")
    if not isinstance(resource_id, str) or not RESOURCE_ID.match(resource_id):
        raise RequestRejected(
            400,
            "resource_id must be 1-128 characters of letters, digits and ._:@+=- "
            "starting with a letter or digit",
            field="resource_id",
        )
    provider = body.get("provider")
    if provider not in SUPPORTED_PROVIDERS:
        raise RequestRejected(
            400,
            f"provider must be one of {sorted(SUPPORTED_PROVIDERS)}, got {provider!r}",
            field="provider",
        )
    calendar_id = body.get("calendar_id")
    if not isinstance(calendar_id, str) or not 0 < len(calendar_id) <= 1024:
        raise RequestRejected(400, "calendar_id must be a non-empty string", field="calendar_id")
    time_zone = body.get("time_zone")
    if time_zone is not None:
        try:
            if not isinstance(time_zone, str):
                raise ValueError(time_zone)
            ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise RequestRejected(
                400, f"time_zone {time_zone!r} is not an IANA time zone", field="time_zone"
            ) from None
    credentials = body.get("credentials")
    if not isinstance(credentials, Mapping):
        raise RequestRejected(400, "credentials must be an object", field="credentials")
    needed: tuple[str, ...]
    if provider == "caldav":
        # calendar_id is the calendar collection URL, or the server's base URL
        if not calendar_id.startswith(("https://", "http://")):
            raise RequestRejected(
                400, "calendar_id must be the CalDAV server or calendar URL", field="calendar_id"
            )
        needed = ("username", "password")
    else:
        needed = ("refresh_token",)
    secrets_in: dict[str, str] = {}
    for name in needed:
        value = credentials.get(name)
        if not isinstance(value, str) or not value:
            raise RequestRejected(
                400, f"credentials.{name} must be a non-empty string", field="credentials"
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
        provider=str(provider),
        calendar_id=calendar_id,
        time_zone=time_zone,
        credentials={name: secrets.encrypt(value) for name, value in secrets_in.items()},
        busy_policy=busy_policy,
        own_address=own_address,
    )


class Gateway:
    """Request handlers bound to settings and a :class:`Publisher`."""

    def __init__(
        self, settings: Settings, publisher: Publisher, *, clock: Clock = time.time
    ) -> None:
        self._settings = settings
        self._publisher = publisher
        self._clock = clock
        self._signer = WebhookSigner(settings.secret_key)
        self._secrets = SecretBox(settings.secret_key)
        self._notifications = settings.topic("notifications")
        self._commands = settings.topic("commands")

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/webhooks/google", self.google_push),
            web.post("/webhooks/microsoft", self.graph_push),
            web.post("/webhooks/microsoft/lifecycle", self.graph_lifecycle),
            web.post("/api/resources", self.register_resource),
            web.delete("/api/resources/{resource_id}", self.remove_resource),
            web.post("/api/resources/{resource_id}/resync", self.resync_resource),
            web.get("/healthz", self.health),
        ]

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self._settings.gateway_max_body
        if request.content_length is not None and request.content_length > limit:
            raise RequestRejected(413, f"body larger than {limit} bytes")
        body = await request.content.read(limit + 1)
        if len(body) > limit:
            raise RequestRejected(413, f"body larger than {limit} bytes")
        return body

    async def _publish(self, topic: str, key: str, value: bytes) -> None:
        try:
            await self._publisher.publish(topic, key, value)
        except Exception as exc:
            log.warning("publish to %s failed: %r", topic, exc)
            raise RequestRejected(503, "the broker did not acknowledge the write") from exc

    async def google_push(self, request: web.Request) -> web.Response:
        """A Google push: check it, write one notification, answer 202."""
        try:
            received_at = self._clock()
            await self._read_body(request)  # Calendar pushes have no body; bound it anyway
            headers = request.headers
            channel_id = headers.get("X-Goog-Channel-ID", "")
            state = headers.get("X-Goog-Resource-State", "")
            if not channel_id or len(channel_id) > 64:
                raise RequestRejected(400, "X-Goog-Channel-ID is missing or longer than 64")
            if state not in _GOOGLE_STATES:
                raise RequestRejected(400, "X-Goog-Resource-State is missing or unknown")
            raw_number = headers.get("X-Goog-Message-Number", "")
            if not raw_number.isdigit():
                raise RequestRejected(400, "X-Goog-Message-Number is missing or not a number")
            token = headers.get("X-Goog-Channel-Token")
            if not token:
                raise RequestRejected(401, "X-Goog-Channel-Token is missing")
            resource_id = self._signer.verify_channel_token(channel_id, token)
            if resource_id is None:
                log.warning("forged google push refused (channel %s)", channel_id[:64])
                raise RequestRejected(403, "X-Goog-Channel-Token does not verify")
            if state == "sync":
                return web.json_response({"status": "acknowledged"}, status=200)
            notification = Notification(
                provider="google",
                resource_id=resource_id,
                reason=Reason.PUSH.value,
                received_at=received_at,
                channel_id=channel_id,
                message_number=int(raw_number),
            )
            await self._publish(self._notifications, resource_id, notification.dumps())
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
                # aiohttp has URL-decoded the query; Graph wants the decoded token back.
                return web.Response(text=token, content_type="text/plain")
            resource_id = request.query.get("resource", "")
            if not RESOURCE_ID.match(resource_id):
                raise RequestRejected(400, "the resource query parameter is missing or invalid")
            body = await self._json_body(request)
            items = body.get("value") if isinstance(body, Mapping) else None
            if not isinstance(items, list) or not items:
                raise RequestRejected(400, "the body must be an object with a non-empty value[]")
            notifications = []
            for item in items:
                if not isinstance(item, Mapping):
                    raise RequestRejected(400, "value[] items must be objects")
                state = item.get("clientState")
                if not isinstance(state, str) or not self._signer.verify_client_state(
                    resource_id, state
                ):
                    log.warning("forged graph notification item refused (%s)", resource_id)
                    continue
                subscription_id = item.get("subscriptionId")
                event = item.get("lifecycleEvent") if lifecycle else None
                if lifecycle and event not in _LIFECYCLE_EVENTS:
                    raise RequestRejected(400, f"unknown lifecycleEvent {event!r}")
                notifications.append(
                    Notification(
                        provider="microsoft",
                        resource_id=resource_id,
                        reason=(Reason.LIFECYCLE if lifecycle else Reason.PUSH).value,
                        received_at=received_at,
                        channel_id=subscription_id if isinstance(subscription_id, str) else None,
                        lifecycle=event if isinstance(event, str) else None,
                        full=event in ("missed", "subscriptionRemoved"),
                    )
                )
            if not notifications:
                raise RequestRejected(403, "no item carried a valid clientState")
            for notification in notifications:
                await self._publish(self._notifications, resource_id, notification.dumps())
            return web.json_response(
                {"status": "accepted", "items": len(notifications)}, status=202
            )
        except RequestRejected as exc:
            return exc.response()

    def _check_admin(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        expected = self._settings.admin_token.encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected):
            raise RequestRejected(401, "a valid 'Authorization: Bearer <admin token>' is required")

    async def _json_body(self, request: web.Request) -> Any:
        body = await self._read_body(request)
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise RequestRejected(400, "the body is not valid JSON") from None

    async def register_resource(self, request: web.Request) -> web.Response:
        try:
            self._check_admin(request)
            command = validate_registration(
                await self._json_body(request), self._secrets, now=self._clock()
            )
            await self._publish(self._commands, command.resource_id, command.dumps())
            return web.json_response(
                {"status": "accepted", "resource_id": command.resource_id}, status=202
            )
        except RequestRejected as exc:
            return exc.response()

    async def _simple_command(self, request: web.Request, kind: CommandKind) -> web.Response:
        try:
            self._check_admin(request)
            resource_id = request.match_info["resource_id"]
            if not RESOURCE_ID.match(resource_id):
                raise RequestRejected(400, "resource_id is not valid", field="resource_id")
            command = Command(kind=kind.value, resource_id=resource_id, issued_at=self._clock())
            await self._publish(self._commands, resource_id, command.dumps())
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


def build_gateway_app(
    settings: Settings, publisher: Publisher, *, clock: Clock = time.time
) -> web.Application:
    """A standalone aiohttp application serving the gateway routes."""
    app = web.Application(client_max_size=settings.gateway_max_body)
    app.add_routes(Gateway(settings, publisher, clock=clock).routes())
    return app
