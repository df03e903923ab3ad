"""The one Faust application: topics, tables, agents and web pages, built from Settings.

``create_app(settings)`` is the only constructor; ``calsync worker`` calls it with
``Settings.from_env(os.environ)``. Every topic and table is keyed by resource id and
has ``settings.topic_partitions`` partitions, so the worker that owns a partition is
the single writer of every resource in it.

The web server is Faust's (aiohttp), guarded by :mod:`calsync.web`: only the webhooks
and ``/healthz`` answer without the admin token. Faust's own pages are mounted only
with ``CALSYNC_FAUST_PAGES``. With ``CALSYNC_ADMIN_BIND`` Faust's server takes the
admin address and a second server (:class:`~calsync.web.sites.SiteServer`) serves
the public routes on ``CALSYNC_WEB_PORT``.
"""

from __future__ import annotations

import asyncio
import functools
import html
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar
from urllib.parse import quote

import faust
import httpx
from aiohttp import web
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.web.drivers import aiohttp as aiohttp_driver
from mode import ServiceT
from yarl import URL

from calsync.agents.dispatch import NotificationDispatcher
from calsync.agents.holds import HoldService
from calsync.agents.offsets import ConsumerOffsets
from calsync.agents.outbox import KafkaOutbox
from calsync.agents.quarantine import Quarantine
from calsync.agents.service import Lane, SyncService, lane_of
from calsync.agents.supervision import Health, fatal
from calsync.agents.sync import COMMANDS, HOLDS, NAME, RETRIES, install_dispatched_agent
from calsync.agents.timers import TimerDispatcher, install_timer_task
from calsync.clock import make_clock
from calsync.codecs.avro import register_codecs
from calsync.connect.store import StoreFull
from calsync.deadletters import replay_deadletters
from calsync.gateway.connect import CONNECT_PROVIDERS
from calsync.gateway.holds import HoldFollower
from calsync.gateway.http import Gateway, server_options
from calsync.gateway.publisher import KafkaPublisher
from calsync.pacing import paced
from calsync.providers.factory import ProviderFactory
from calsync.providers.registry import REGISTRY, rate_limit_specs
from calsync.ratelimit import RateLimiter
from calsync.settings import Settings
from calsync.streams.records import (
    Command,
    CommandKind,
    HoldRequest,
    Notification,
    RetryEnvelope,
)
from calsync.streams.topics import changelog_topic, declare_topics, record_limit
from calsync.tables.declare import TableWrites, declare_tables
from calsync.tables.reads import DecodedReads, DecodedScan
from calsync.tables.records import Resource, SyncState
from calsync.web.auth import access_middleware, session_signer
from calsync.web.availability import AvailabilityApi, IndexTables
from calsync.web.dashboard import Dashboard
from calsync.web.fleet import Fleet, FleetFollower
from calsync.web.heartbeat import Heartbeat
from calsync.web.holds import HoldsApi
from calsync.web.metrics import MeteredOutbox, Metrics, WorkerFigures
from calsync.web.openapi import body_validation, serve_document
from calsync.web.routing import ROUTED, Router
from calsync.web.sites import Site, SiteServer, Surface, new_application, select_routes

log = logging.getLogger(__name__)

R = TypeVar("R", bound=faust.Record)


class IdempotentProducer(aiokafka_driver.Producer):
    """Faust's aiokafka producer with idempotence on outside transactions too."""

    def _settings_extra(self) -> dict[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


class IdempotentTransport(aiokafka_driver.Transport):
    Producer = IdempotentProducer


class CalsyncWeb(aiohttp_driver.Web):
    """Faust's aiohttp web server without its always-on index page at ``/``.

    Faust mounts ``/`` (``{"status": "OK"}``) whatever its settings say; the other
    built-in pages follow the ``web_*_enabled`` settings that :func:`create_app` sets
    from ``CALSYNC_FAUST_PAGES``. The runner gets the gateway's connection timeouts.
    """

    production_blueprints = []  # the index at "/" has no setting of its own

    def __init__(self, app: CalsyncApp, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._runner = web.AppRunner(self.web_app, access_log=None, **server_options(app.settings))


def _summary_fields(state: SyncState) -> tuple[float | None, float | None, str]:
    """The fields of a sync state that a resource summary shows."""
    return (state.synced_at or None, state.poll_interval or None, state.credentials or "ok")


#: what a resource summary says of a resource without a sync state
_NO_SUMMARY_FIELDS = _summary_fields(SyncState())


class CalsyncApp(faust.App):
    """A Faust app that knows its settings and mounts the gateway on its web server.

    Stopping it closes what :func:`create_app` opened beside Faust: the publisher
    (outbox and gateway share it), the gateway's status follower and, with
    ``CALSYNC_ADMIN_BIND``, the public web server.
    """

    settings: Settings
    sync_service: SyncService
    gateway: Gateway
    publisher: KafkaPublisher
    limiter: RateLimiter
    dispatcher: TimerDispatcher
    #: the public (webhooks + ``/healthz``) server, when CALSYNC_ADMIN_BIND separates it
    public_server: SiteServer | None = None
    notification_dispatcher: NotificationDispatcher
    command_dispatcher: NotificationDispatcher
    retry_dispatcher: NotificationDispatcher
    hold_dispatcher: NotificationDispatcher
    quarantine: Quarantine
    health: Health
    holds: HoldService
    #: forwards requests about a resource to its owner (Faust's own ``router`` finds it)
    routing: Router
    availability: AvailabilityApi
    holds_api: HoldsApi
    metrics: Metrics
    fleet_follower: FleetFollower
    dashboard: Dashboard
    heartbeat: Heartbeat

    #: the table writes the broker has not acknowledged yet, which commits wait for
    table_writes: TableWrites

    #: set once the first assignment's tables are restored (Faust's ``on_rebalance_end``)
    _restored_once = False
    #: the notification partitions this worker owned after the last rebalance
    _owned_before: frozenset[int] | set[int] = frozenset()

    def on_rebalance_end(self) -> None:
        super().on_rebalance_end()
        self._restored_once = True
        heartbeat = getattr(self, "heartbeat", None)
        if heartbeat is not None:  # announce the resources of the partitions gained
            topic = self.settings.topic("notifications")
            owned = {tp.partition for tp in self.assignor.assigned_actives() if tp.topic == topic}
            heartbeat.forget(owned - self._owned_before)
            self._owned_before = owned

    def tables_ready(self) -> bool:
        """Whether this worker's tables can answer: assigned, and not being restored."""
        restoring = self.rebalancing or getattr(self, "in_recovery", False)
        return self._restored_once and not restoring

    def _new_producer_transport(self) -> Any:
        return IdempotentTransport(self.conf.broker_producer, self)

    def _new_web(self) -> CalsyncWeb:
        return CalsyncWeb(self)

    def on_init_dependencies(self) -> Iterable[ServiceT]:
        services = list(super().on_init_dependencies())
        web_enabled = self.boot_strategy.enable_web
        if web_enabled is None:  # not forced either way: Faust's web_enabled setting decides
            web_enabled = self.conf.web_enabled
        if web_enabled and self.public_server is not None:
            # last to start, so first to stop: webhooks stop arriving before the rest
            services.append(self.public_server)
        return services

    async def on_shutdown(self) -> None:
        # After every agent, task and child service stopped: nothing sends any more.
        await super().on_shutdown()
        for close in (
            self.fleet_follower.aclose,
            self.holds_api.aclose,
            self.routing.aclose,
            self.gateway.aclose,
            self.publisher.aclose,
        ):
            try:
                await close()
            except Exception:
                log.exception("closing %s at shutdown failed", close.__qualname__)

    def on_webserver_init(self, web_server: Any) -> None:
        web_server.web_app.middlewares.append(self.health.middleware)
        web_server.web_app.middlewares.append(self.metrics.middleware())
        surface = Surface.ALL if self.settings.admin_address is None else Surface.ADMIN
        web_server.web_app.add_routes(select_routes(self.gateway.routes(), surface))
        for api in (self.availability, self.holds_api):
            web_server.web_app.add_routes(select_routes(api.routes(), surface))
        if not self.settings.faust_pages:  # else "/" is Faust's index
            web_server.web_app.add_routes([web.get("/", _to_dashboard)])
        web_server.web_app.add_routes(
            [
                web.get("/status/", self.status_page),
                web.get("/api/resources/{resource_id}", self.resource_status),
                web.post("/api/resources/{resource_id}/reconnect", self.reconnect_link),
                web.get("/api/status", self.worker_status),
                web.get("/metrics", self.metrics.handle),
                web.get("/openapi.json", serve_document),
                web.post("/api/deadletters/replay", self.replay_deadletters),
                *self.dashboard.routes(),
            ]
        )

    def owner(self, resource_id: str) -> str | None:
        """The base URL of the worker that owns ``resource_id``; ``None`` for this one.

        Faust's table routing: the URLs the workers announced in the group, by active
        partition of the ``resources`` table (``app.router.table_metadata``). The
        partition is the one the gateway's producer picks for the raw resource id
        (Faust's own ``key_store`` would hash the table's JSON-encoded key instead).
        Raises :class:`LookupError` while the partition has no owner, and while this
        worker is rebalancing or recovering its tables: a table still being restored
        from its changelog would answer from an old state.
        """
        if not self.tables_ready():
            raise LookupError(resource_id)
        owners = self._owners()
        partition = self.partition_of(resource_id)
        if partition not in owners:
            raise LookupError(resource_id)
        return owners[partition]

    def _owners(self) -> dict[int, str | None]:
        """Partition of ``resources`` -> its owner's URL (``None``: this worker), computed
        once per assignment: the assignor replaces its distribution map on every
        rebalance (never changes it in place), so the map object is the cache key. A
        query asks this for every resource it names."""
        distribution = self.router.tables_metadata()
        cached: tuple[object, dict[int, str | None]] | None = self.__dict__.get("_owners_of")
        if cached is not None and cached[0] is distribution:
            return cached[1]
        changelog = changelog_topic(self.settings, "resources")
        here = _urlident(str(self.conf.canonical_url))
        owners: dict[int, str | None] = {}
        for url, topics in self.router.table_metadata("resources").items():
            owner = None if _urlident(str(url)) == here else str(url)
            for partition in topics.get(changelog, ()):
                owners.setdefault(partition, owner)
        self.__dict__["_owners_of"] = (distribution, owners)
        return owners

    def partition_of(self, resource_id: str) -> int:
        """The partition of ``resource_id``, as the producer picks it (murmur2 in Python,
        so remembered: the partition count of a running app does not change)."""
        known: dict[str, int] = self.__dict__.setdefault("_partition_of_id", {})
        partition = known.get(resource_id)
        if partition is None:
            topic = self.settings.topic("notifications")
            partition = self.producer.key_partition(topic, resource_id.encode()).partition
            if len(known) >= 65_536:
                known.clear()
            known[resource_id] = partition
        return partition

    async def replay_deadletters(self, request: web.Request) -> web.Response:
        """Replay every dead letter not replayed before (admin; see :mod:`calsync.deadletters`)."""
        try:
            replayed = await replay_deadletters(self.settings, self.publisher)
        except Exception as exc:
            log.warning("replaying dead letters failed: %r", exc)
            return web.json_response(
                {"error": "the dead-letter topic cannot be read now"}, status=503
            )
        return web.json_response({"replayed": replayed})

    async def resource_status(self, request: web.Request) -> web.Response:
        """JSON sync state of one resource (no secrets), from the worker that owns it."""
        rid = request.match_info["resource_id"]
        try:
            owner = self.owner(rid)
        except LookupError:
            owner = None
        if owner is not None and not request.headers.get(ROUTED):
            return await self.routing.forward(request, owner)
        resource = self.sync_service.resources.get(rid)
        if resource is None:
            return web.json_response({"error": f"unknown resource {rid!r}"}, status=404)
        return web.json_response(_describe(rid, resource, self.sync_service))

    async def reconnect_link(self, request: web.Request) -> web.Response:
        """A one-time connect link that re-grants access to a resource owned by this
        worker, keeping its provider, calendar, zone and busy policy: 201
        ``{connect_url, ...}``; 404 unknown here; 409 its provider has no consent flow."""
        rid = request.match_info["resource_id"]
        resource = self.sync_service.resources.get(rid)
        if resource is None or resource.state == "removed":
            return web.json_response({"error": f"unknown resource {rid!r}"}, status=404)
        if resource.provider not in CONNECT_PROVIDERS:
            return web.json_response(
                {"error": f"{resource.provider} resources are re-registered with new credentials"},
                status=409,
            )
        try:
            body = self.gateway.connect.create_link(
                resource_id=rid,
                provider=resource.provider,
                calendar_id=resource.calendar_id,
                time_zone=resource.time_zone,
                busy_policy=resource.busy_policy,
            )
        except StoreFull:
            return web.json_response({"error": "too many connect links are pending"}, status=503)
        return web.json_response(body, status=201)

    async def worker_status(self, request: web.Request) -> web.Response:
        """JSON: resources owned, timers waiting, the notification dispatcher's partitions
        (offsets, pending runs, last hole repair), quarantined records, rate-limit
        buckets. No secrets, no record contents."""
        service = self.sync_service
        timers = [key for key, _ in service.timers.items()]
        return web.json_response(
            {
                "resources": sum(1 for _ in service.resources),
                "timers": {
                    "total": len(timers),
                    "retries": sum(1 for k in timers if k.startswith("retry:")),
                    "reconciliations": sum(1 for k in timers if k.startswith("reconcile:")),
                },
                "dispatcher": self.dispatcher.describe(),
                "notifications": self.notification_dispatcher.describe(),
                "commands": self.command_dispatcher.describe(),
                "retries": self.retry_dispatcher.describe(),
                "hold_requests": self.hold_dispatcher.describe(),
                "quarantined": dict(self.quarantine.counts),
                "rate_limits": self.limiter.snapshot(),
            }
        )

    async def status_page(self, request: web.Request) -> web.Response:
        """An HTML overview of the resources this worker owns and how fresh they are."""
        rows = []
        for rid, resource in sorted(self.sync_service.resources.items()):
            d = _describe(rid, resource, self.sync_service)
            cells = (
                rid,
                d["provider"],
                d["state"] + (f" (reconnect: POST {d['reconnect']})" if d["reconnect"] else ""),
                d["synced_ago"],
                d["occurrences"],
                d["fetches"],
                d["channel_expires_in"],
            )
            rows.append(
                "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"
            )
        page = _STATUS_PAGE.format(
            app_id=html.escape(self.settings.app_id),
            links=_status_links(faust_pages=self.settings.faust_pages),
            rows="\n".join(rows) or '<tr><td colspan="7">no resources yet</td></tr>',
        )
        return web.Response(text=page, content_type="text/html")


@functools.lru_cache(maxsize=256)
def _urlident(url: str) -> tuple[str, int]:
    parsed = URL(url)
    return parsed.host or "", parsed.port or 80


async def _to_dashboard(request: web.Request) -> web.Response:
    raise web.HTTPFound("/dashboard/")


def _span(seconds: float) -> str:
    """A duration as people read it: 12.6s, 4m 03s, 6d 23h."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s"


def _describe(rid: str, resource: Resource, service: SyncService) -> dict[str, Any]:
    state = service.sync_state.get(rid) or SyncState()
    channel = service.channels.get(rid)
    now = service.clock()
    return {
        "resource_id": rid,
        "provider": resource.provider,
        "calendar_id": resource.calendar_id,
        "state": resource.state,
        "synced_at": state.synced_at or None,
        "synced_ago": f"{_span(now - state.synced_at)} ago" if state.synced_at else "never",
        "occurrences": len(state.index or {}),
        "fetches": state.fetches,
        "has_cursor": state.cursor is not None,
        "failures": state.failures,
        "last_error": state.last_error or None,
        # ok | refreshing (the token endpoint failed transiently; a retry waits) | reauth_required
        "credentials": (
            "reauth_required" if resource.state == "reauth_required" else state.credentials or "ok"
        ),
        "last_change_latency_ms": state.last_change_latency_ms or None,
        "channel_expires_in": (
            _span(channel.expires_at_ms / 1000 - now) if channel is not None else "none"
        ),
        # a refused subscription is retried with backoff; say when, so "no pushes" has a why
        "subscribe_failures": state.subscribe_failures,
        # the grant was revoked: POST here for a link the calendar's owner can open
        "reconnect": (
            f"/api/resources/{quote(rid, safe='')}/reconnect"
            if resource.state == "reauth_required" and resource.provider in CONNECT_PROVIDERS
            else None
        ),
        "next_subscribe_attempt_in": (
            _span(max(0.0, state.subscribe_retry_at - now)) if state.subscribe_retry_at else None
        ),
    }


_STATUS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>calsync · {app_id}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}}</style></head>
<body><h1>calsync worker <code>{app_id}</code></h1>
<p>Resources owned by this worker. Other pages: {links}.</p>
<table><thead><tr><th>resource</th><th>provider</th><th>state</th><th>last sync</th>
<th>occurrences</th><th>fetches</th><th>channel expires in</th></tr></thead>
<tbody>
{rows}
</tbody></table></body></html>
"""


def _status_links(*, faust_pages: bool) -> str:
    """The status page's links: only to pages this worker serves on the same address."""
    links = [
        ("/dashboard/", "the dashboard (every worker's resources)"),
        ("/api/status", "timers and rate limits"),
        ("/metrics", "metrics"),
        ("/healthz", "health"),
    ]
    if faust_pages:
        links = [("/table/", "tables"), ("/router/", "router"), *links]
    return ", ".join(f'<a href="{href}">{text}</a>' for href, text in links)


def _install_operator_views(
    app: CalsyncApp, settings: Settings, offsets: ConsumerOffsets, clock: Callable[[], float]
) -> None:
    """The dashboard (fed from the status topic), its heartbeat and ``/metrics``."""
    notifications = settings.topic("notifications")
    fleet = Fleet(heartbeat_interval=settings.heartbeat_interval)
    follower = FleetFollower(
        settings.kafka_bootstrap,
        settings.topic("status"),
        fleet,
        lookback=settings.dashboard_lookback,
    )
    app.fleet_follower = follower
    name = f"{socket.gethostname()}:{settings.web_port}"

    async def send_command(kind: CommandKind, resource_id: str) -> None:
        await app.gateway.send_command(kind, resource_id)

    async def replay() -> int:
        return await replay_deadletters(settings, app.publisher)

    app.dashboard = Dashboard(
        fleet,
        signer=session_signer(settings),
        send_command=send_command,
        replay=replay,
        ready=follower.ready,
        app_id=settings.app_id,
        secure_cookie=settings.public_url.startswith("https://"),
    )

    def owned() -> list[Any]:
        return sorted(
            (tp for tp in app.assignor.assigned_actives() if tp.topic == notifications),
            key=lambda tp: tp.partition,
        )

    def consumer_lag() -> dict[tuple[str, int], int]:
        described = app.notification_dispatcher.describe()["partitions"]
        lag: dict[tuple[str, int], int] = {}
        for tp in owned():
            highwater = offsets.highwater(tp)
            committed = described.get(f"{tp.topic}:{tp.partition}", {}).get("committed")
            if highwater is not None and committed is not None:
                lag[(tp.topic, tp.partition)] = max(0, highwater - committed)
        return lag

    # The heartbeat counts the owned resources every few seconds, the summaries walk
    # them each CALSYNC_SUMMARY_INTERVAL, /metrics at each scrape: the scans read only
    # the partitions written to since their last walk, decode only what changed, and of
    # a sync state (its occurrence index is kilobytes) keep three fields. Reading and
    # decoding all of it each time cost 1.3 s of the event loop a minute for 5,000
    # resources, and the paced walks delayed the availability API (docs/benchmarks.md §6).
    service = app.sync_service
    resources_scan = DecodedScan(service.resources)
    channels_scan = DecodedScan(service.channels)
    states_scan = DecodedScan(service.sync_state, project=_summary_fields)
    retries_scan = DecodedScan(
        service.timers, project=lambda timer: (timer.notification.resource_id, timer.due_at)
    )

    def app_buckets() -> dict[str, dict[str, float]]:
        return {k: v for k, v in app.limiter.snapshot().items() if "/" not in k}

    async def describe() -> dict[str, Any]:
        return {
            "url": f"http://{app.conf.web_host}:{app.conf.web_port}",
            "partitions": [tp.partition for tp in owned()],
            "resources": await resources_scan.count(),
            "consumer_lag": {f"{t}:{p}": n for (t, p), n in consumer_lag().items()},
            "rate_limits": rate_limit_levels(app.limiter.snapshot()),
            "counters": dict(app.metrics.totals),
            "quarantined": dict(app.quarantine.counts),
        }

    def summaries() -> Iterator[tuple[str, dict[str, Any]] | None]:
        # A generator, and it yields None for every timer, state and channel: a worker
        # owning thousands of resources must not hold the event loop for the whole walk
        # (Heartbeat.beat walks it paced).
        retries: dict[str, list[float]] = {}
        for key, (rid, due_at) in retries_scan.items():
            yield None
            if key.startswith("retry:"):
                retries.setdefault(rid, []).append(due_at)
        states: dict[str, tuple[float | None, float | None, str]] = {}
        for rid, fields in states_scan.items():
            yield None
            states[rid] = fields
        expiries: dict[str, float] = {}
        for rid, channel in channels_scan.items():
            yield None
            expiries[rid] = channel.expires_at_ms / 1000
        for rid, resource in resources_scan.items():
            synced_at, poll_interval, credentials = states.get(rid, _NO_SUMMARY_FIELDS)
            due = retries.get(rid, [])
            yield (
                rid,
                {
                    "provider": resource.provider,
                    "calendar_id": resource.calendar_id,
                    "state": resource.state,
                    "synced_at": synced_at,
                    "channel_expires_at": expiries.get(rid),
                    "poll_interval": poll_interval,
                    "credentials": credentials,
                    "retries": len(due),
                    "next_retry_at": min(due) if due else None,
                    "worker": name,
                },
            )

    async def figures() -> dict[str, Any]:
        now = clock()
        states: dict[str, int] = {}
        ages: list[float] = []
        fields = {rid: kept async for rid, kept in paced(states_scan.items())}
        async for rid, resource in paced(resources_scan.items()):
            synced, _, credentials = fields.get(rid, _NO_SUMMARY_FIELDS)
            label = resource.state
            if label == "active" and credentials == "refreshing":
                label = "refreshing"  # its token could not be refreshed yet; a retry waits
            states[label] = states.get(label, 0) + 1
            if resource.state == "active":
                ages.append(max(0.0, now - synced) if synced else now - resource.registered_at)
        return {
            "states": states,
            "sync_ages": ages,
            "consumer_lag": consumer_lag(),
            "rate_limits": {k: v["tokens"] for k, v in app_buckets().items()},
        }

    app.metrics.add(WorkerFigures(figures))

    async def send(key: str, value: bytes) -> Awaitable[Any]:
        return await app.publisher.send(settings.topic("status"), key.encode(), value)

    heartbeat = Heartbeat(
        name,
        send,
        describe,
        summaries,
        interval=settings.heartbeat_interval,
        summary_interval=settings.summary_interval,
        summary_refresh=settings.summary_refresh,
        partition_of=app.partition_of,
        shown=lambda rid: None if (view := fleet.resources.get(rid)) is None else view.worker,
    )
    app.heartbeat = heartbeat

    @app.task  # type: ignore[untyped-decorator]  # faust types task() loosely
    async def beat() -> None:
        await heartbeat.run()

    @app.task  # type: ignore[untyped-decorator]
    async def follow_status() -> None:
        while True:  # the dashboard's picture: start following, retry until it works
            try:
                await follower.ready()
                return
            except Exception as exc:
                log.warning("the dashboard cannot follow the status topic yet: %r", exc)
                await asyncio.sleep(5.0)


#: Account buckets a heartbeat names: the emptiest ones (a deployment has thousands).
_ACCOUNT_BUCKETS_SHOWN = 10


def rate_limit_levels(snapshot: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Every provider's application bucket, and the emptiest account buckets (held
    ones first), for the heartbeat: ``{"google": ..., "google/<account>": ...}``."""
    levels = {
        name: {"tokens": round(b["tokens"], 2), "held_for": round(b["held_for"], 2)}
        for name, b in snapshot.items()
    }
    apps = {name: level for name, level in levels.items() if "/" not in name}
    accounts = sorted(
        (name for name in levels if "/" in name),
        key=lambda name: (-levels[name]["held_for"], levels[name]["tokens"]),
    )
    return {**apps, **{name: levels[name] for name in accounts[:_ACCOUNT_BUCKETS_SHOWN]}}


def _share_updater(
    app: faust.App, limiter: RateLimiter, topic: str, partitions: int
) -> Callable[[], None]:
    """Every few seconds, give this worker the share of the app quota its partitions own."""
    last = [0.0]

    def update() -> None:
        now = time.monotonic()
        if now - last[0] < 2.0:
            return
        last[0] = now
        owned = sum(1 for tp in app.assignor.assigned_actives() if tp.topic == topic)
        for name, provider in REGISTRY.items():
            if provider.shares_app_quota:
                limiter.set_share(name, max(owned, 1) / partitions)

    return update


def _default_http_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0))


#: Seconds over which a provider's retries released early are spread (the limiter
#: spaces the calls themselves; this keeps the release from being one burst).
RELEASE_SPREAD = 5.0


def _release_retries(dispatcher: TimerDispatcher, provider: str) -> None:
    moved = dispatcher.release_early(provider, spread=RELEASE_SPREAD, rng=random.Random())
    if moved:
        log.info("%s answers again: %d waiting retries released early", provider, moved)


def create_app(
    settings: Settings,
    *,
    http_client_factory: Callable[[], httpx.AsyncClient] = _default_http_client,
) -> CalsyncApp:
    """Build the Faust app for ``settings``: RocksDB (rocksdict) tables, every agent."""
    register_codecs()
    partitions = settings.topic_partitions
    bootstrap = f"kafka://{settings.kafka_bootstrap}"
    # Faust's web server is the admin one when CALSYNC_ADMIN_BIND separates the two.
    web_bind, web_port = settings.admin_address or (settings.web_bind, settings.web_port)
    pages = settings.faust_pages
    app = CalsyncApp(
        settings.app_id,
        broker=bootstrap,
        store="rocksdb://",
        datadir=str(settings.data_dir / settings.app_id),
        topic_partitions=partitions,
        topic_replication_factor=settings.replication_factor,
        producer_acks=-1,
        # table values (a large calendar's index) can pass Kafka's default 1 MiB
        producer_max_request_size=record_limit(settings),
        consumer_max_fetch_size=record_limit(settings),
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.kafka_session_timeout,
        # A dead worker is noticed after the session timeout; the survivors' next
        # heartbeat learns of the rebalance, so heartbeats are frequent.
        broker_heartbeat_interval=min(1.0, settings.kafka_session_timeout / 6),
        consumer_group_instance_id=settings.group_instance_id or None,
        web_port=web_port,
        web_bind=web_bind,
        web_host="127.0.0.1" if web_bind in ("127.0.0.1", "0.0.0.0") else web_bind,
        web_application_options={
            "client_max_size": settings.gateway_max_body,
            "middlewares": [
                access_middleware(settings),
                body_validation(settings.gateway_read_timeout),
            ],
        },
        # Faust's pages show table contents and the cluster's layout: off unless asked.
        web_tables_enabled=pages,
        web_router_enabled=pages,
        web_stats_enabled=pages,
        web_graph_enabled=pages,
        web_metrics_enabled=pages,
        # Standbys keep a warm copy of the tables on another worker: a takeover
        # replays seconds of changelog, not all of it (docs/benchmarks.md).
        table_standby_replicas=settings.standby_replicas,
        autodiscover=False,
    )
    app.settings = settings

    topics = declare_topics(app, settings)
    app.table_writes = TableWrites()
    tables = declare_tables(app, partitions, app.table_writes)
    resources, sync_state = tables.resources, tables.sync_state
    channels, timers = tables.channels, tables.timers

    publisher = KafkaPublisher(settings.kafka_bootstrap, client_id=f"{settings.app_id}-out")
    app.publisher = publisher
    metrics = Metrics()
    app.metrics = metrics
    outbox = MeteredOutbox(KafkaOutbox(settings, publisher.send, publisher.send_many), metrics)
    clock = make_clock(settings.clock_rate, settings.clock_origin)
    limiter = RateLimiter(rate_limit_specs(settings))
    limiter.on_response = metrics.observe_response
    limiter.on_wait = metrics.observe_wait
    app.limiter = limiter
    dispatcher = TimerDispatcher(
        timers=timers,
        channels=channels,
        outbox=outbox,
        clock=clock,
        on_tick=_share_updater(app, limiter, settings.topic("notifications"), partitions),
    )
    app.dispatcher = dispatcher
    providers = ProviderFactory(
        settings,
        http_client_factory,
        limiter,
        clock=clock,
        on_rotate=lambda rid, credentials: app.sync_service.on_rotated(rid, credentials),
    )
    app.sync_service = SyncService(
        settings,
        resources=resources,
        sync_state=sync_state,
        channels=channels,
        timers=timers,
        outbox=outbox,
        providers=providers,
        clock=clock,
        on_timer=dispatcher.schedule,
        busy=tables.busy,
        on_busy=lambda rid, changed: app.holds.on_busy(rid, changed),
        on_holds_due=lambda rid: app.holds.housekeep(rid),
        durable=tables.sync_state.written,
        on_recovered=lambda provider: _release_retries(dispatcher, provider),
    )
    app.holds = HoldService(
        busy=tables.busy,
        holds=tables.holds,
        resources=resources,
        outbox=outbox,
        scheduler=app.sync_service.scheduler,
        clock=clock,
        durable=tables.holds.written,
    )
    app.gateway = Gateway(settings, publisher, clock=clock)
    app.routing = Router(settings, app)
    app.availability = AvailabilityApi(
        settings,
        app.gateway,
        IndexTables(
            *(
                DecodedReads(table, partition_of=app.partition_of)
                for table in (resources, sync_state, channels, tables.busy, tables.holds)
            )
        ),
        app.routing,
        clock=clock,
    )
    app.holds_api = HoldsApi(
        settings,
        app.gateway,
        tables.holds,
        app.routing,
        lambda: HoldFollower(
            settings.kafka_bootstrap, settings.topic("holds"), client_id=f"{settings.app_id}-holds"
        ),
        clock=clock,
    )
    health = Health()
    health.tables_ready = app.tables_ready
    app.health = health
    # A refused table write: stop, so that a restart replays and rebuilds the tables.
    app.table_writes.on_lost = lambda exc: fatal(app, health, "tables", exc)
    if settings.admin_address is not None:
        public = new_application(settings, select_routes(app.gateway.routes(), Surface.PUBLIC))
        public.middlewares.append(health.middleware)  # a load balancer's /healthz is here
        public.middlewares.append(metrics.middleware())
        app.public_server = SiteServer(
            Site(public, settings.web_bind, settings.web_port, server_options(settings))
        )
    quarantine = Quarantine(outbox.status, clock=clock)
    app.quarantine = quarantine
    service = app.sync_service

    async def handle(notification: Notification, lane: Lane) -> None:
        if lane_of(notification) is lane:
            metrics.observe_notification(notification.reason)
        await service.on_notification(notification, lane)

    offsets = ConsumerOffsets(app, app.table_writes)
    sync_dispatcher = NotificationDispatcher(
        handle,
        offsets,
        topic=settings.topic("notifications"),
        live_slots=settings.live_concurrency,
        bulk_slots=settings.bulk_concurrency,
        ready=lambda: not app.rebalancing,
        on_fatal=lambda exc: fatal(app, health, NAME, exc),
        quarantine=quarantine,
    )
    app.notification_dispatcher = sync_dispatcher

    def one_lane(
        handler: Callable[[Any], Awaitable[None]],
        topic: str,
        name: str,
        record_type: type[Any],
        resource_of: Callable[[Any], str] | None = None,
    ) -> NotificationDispatcher:
        """A dispatcher of one lane: a resource's records one at a time, in order;
        resources in parallel."""

        async def run(record: Any, lane: Lane) -> None:
            await handler(record)

        return NotificationDispatcher(
            run,
            offsets,
            topic=settings.topic(topic),
            live_slots=settings.live_concurrency,
            ready=lambda: not app.rebalancing,
            on_fatal=lambda exc: fatal(app, health, name, exc),
            quarantine=quarantine,
            record_type=record_type,
            lane_for=lambda _: Lane.LIVE,
            resource_of=resource_of,
        )

    app.command_dispatcher = one_lane(service.on_command, "commands", COMMANDS, Command)
    app.retry_dispatcher = one_lane(
        service.on_retry,
        "retries",
        RETRIES,
        RetryEnvelope,
        lambda envelope: str(envelope.notification.resource_id),
    )
    app.hold_dispatcher = one_lane(app.holds.on_request, "hold-requests", HOLDS, HoldRequest)
    _install_operator_views(app, settings, offsets, clock)

    for topic, dispatched, name in (
        (topics.notifications, sync_dispatcher, NAME),
        (topics.commands, app.command_dispatcher, COMMANDS),
        (topics.retries, app.retry_dispatcher, RETRIES),
        (topics.hold_requests, app.hold_dispatcher, HOLDS),
    ):
        install_dispatched_agent(app, health, topic, dispatched, settings, name=name)
    install_timer_task(app, dispatcher)
    return app
