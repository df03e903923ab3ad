"""``/metrics``: what a worker (or gateway) did, for Prometheus (``prometheus-client``).

Names follow Prometheus conventions: counters end in ``_total``, durations are
``_seconds``. Every label has a small, fixed set of values (a provider name, an HTTP
status, a lane, a topic partition), never a resource id: a deployment of tens of
thousands of calendars would otherwise make tens of thousands of series. How stale
resources are is therefore a *distribution* (``calsync_resource_sync_age_seconds``, a
gauge histogram over the resources this worker owns, computed at scrape time) plus
its maximum, not a gauge per resource; the dashboard names the stale ones.

Each :class:`Metrics` has its own registry, so two apps in one process (tests) do not
collide.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from calsync.agents.outbox import Outbox
from calsync.model import UnifiedEvent
from calsync.providers.registry import REGISTRY
from calsync.streams.records import (
    Command,
    HoldRequest,
    Notification,
    RetryEnvelope,
    StatusEvent,
)

#: Webhook → response: the gateway only checks and writes one record, so milliseconds.
RESPONSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: An availability or holds API answer inside the worker: a query's target is 5 ms.
API_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
    5.0,
)
#: The API routes timed (``calsync_api_request_seconds``, ``Server-Timing``).
API_PREFIXES = ("/api/availability", "/api/holds")
#: Webhook → event on ``calsync.events``: a provider round trip or several.
EVENT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
#: Ages of the last successful sync.
AGE_BUCKETS = (60.0, 300.0, 900.0, 3600.0, 6 * 3600.0, 24 * 3600.0, 7 * 24 * 3600.0)

#: Events name their origin (``google_calendar_v3``); metrics use the provider's name.
_PROVIDER_OF_ORIGIN = {spec.origin.value: name for name, spec in REGISTRY.items()}
#: What a scrape-time collector reads from the worker (awaited: a walk over the
#: worker's tables gives the event loop turns); see :class:`WorkerFigures`.
Snapshot = Callable[[], Awaitable[Mapping[str, Any]]]


class Metrics:
    """The counters and histograms calsync updates as it works, in one registry."""

    def __init__(self) -> None:
        # ``*_created`` series (one per labelled child) say nothing Prometheus needs
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus-client
        self.registry = CollectorRegistry(auto_describe=True)
        self._figures: list[WorkerFigures] = []
        r = self.registry
        self.webhook_requests = Counter(
            "calsync_webhook_requests",
            "Webhook requests answered, by provider and HTTP status.",
            ["provider", "status"],
            registry=r,
        )
        self.webhook_response = Histogram(
            "calsync_webhook_response_seconds",
            "Time from a webhook request's arrival to its response (202 once written).",
            ["provider"],
            buckets=RESPONSE_BUCKETS,
            registry=r,
        )
        self.api_request = Histogram(
            "calsync_api_request_seconds",
            "Time this worker spent on an availability or holds API request, from the "
            "handler's start to its answer (forwarding to the owner included), by route.",
            ["route"],
            buckets=API_BUCKETS,
            registry=r,
        )
        self.webhook_to_event = Histogram(
            "calsync_webhook_to_event_seconds",
            "Time from the notification that caused an event to the event's emission "
            "(the event's latency_ms).",
            ["provider"],
            buckets=EVENT_BUCKETS,
            registry=r,
        )
        self.events = Counter(
            "calsync_events_emitted",
            "Events written to calsync.events, by provider and change.",
            ["provider", "change"],
            registry=r,
        )
        self.provider_requests = Counter(
            "calsync_provider_requests",
            "Requests to providers, by provider and HTTP status.",
            ["provider", "status"],
            registry=r,
        )
        self.retries = Counter(
            "calsync_retries",
            "Work sent to the retry topic, by provider.",
            ["provider"],
            registry=r,
        )
        self.rate_limit_waits = Counter(
            "calsync_rate_limit_waits",
            "Times a provider request waited for a rate-limit token, by provider.",
            ["provider"],
            registry=r,
        )
        self.rate_limit_wait_seconds = Counter(
            "calsync_rate_limit_wait_seconds",
            "Seconds provider requests spent waiting for rate-limit tokens, by provider.",
            ["provider"],
            registry=r,
        )
        self.notifications = Counter(
            "calsync_notifications_handled",
            "Notifications handled by the sync agent, by reason.",
            ["reason"],
            registry=r,
        )

        #: Plain running totals the worker's heartbeat carries (events, notifications).
        self.totals: dict[str, int] = {"events": 0, "notifications": 0}

    def observe_events(self, events: Iterable[UnifiedEvent]) -> None:
        # Counted per label set, not per event: ``labels()`` costs more than the rest
        # of an event's bookkeeping, and a page of a full sync is hundreds of events
        # of one provider (the full-sync benchmark, docs/benchmarks.md).
        counts: collections.Counter[tuple[str, str]] = collections.Counter()
        latencies: dict[str, list[float]] = {}
        for event in events:
            origin = event.provider_origin.value
            provider = _PROVIDER_OF_ORIGIN.get(origin, origin)
            counts[provider, event.change.value] += 1
            if event.latency_ms is not None:
                latencies.setdefault(provider, []).append(event.latency_ms / 1000)
        for (provider, change), count in counts.items():
            self.events.labels(provider, change).inc(count)
            self.totals["events"] += count
        for provider, seconds in latencies.items():
            histogram = self.webhook_to_event.labels(provider)
            for value in seconds:
                histogram.observe(value)

    def observe_notification(self, reason: str) -> None:
        self.notifications.labels(reason).inc()
        self.totals["notifications"] += 1

    def observe_response(self, provider: str, status: int) -> None:
        self.provider_requests.labels(provider, str(status)).inc()

    def observe_wait(self, provider: str, seconds: float) -> None:
        self.rate_limit_waits.labels(provider).inc()
        self.rate_limit_wait_seconds.labels(provider).inc(seconds)

    def add(self, collector: WorkerFigures) -> None:
        """Register a scrape-time collector, refreshed before each scrape."""
        self.registry.register(collector)
        self._figures.append(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def handle(self, request: web.Request) -> web.Response:
        """``GET /metrics`` (behind the token like every non-webhook route)."""
        for figures in self._figures:
            await figures.refresh()
        return web.Response(
            body=self.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )

    def middleware(self) -> Middleware:
        """Times every ``/webhooks/<provider>...`` request and counts it by status; times
        every availability and holds API request (:data:`API_PREFIXES`) by route, and
        says how long it took in its ``Server-Timing`` header (``app;dur=<ms>``), so a
        client can tell the worker's time from the network's and its own."""

        @web.middleware
        async def time_webhooks(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path.startswith(API_PREFIXES):
                return await time_api(request, handler)
            if not request.path.startswith("/webhooks/"):
                return await handler(request)
            provider = request.path.split("/")[2] or "unknown"
            provider = provider if provider in ("google", "microsoft") else "other"
            started = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                self.webhook_response.labels(provider).observe(time.perf_counter() - started)
                self.webhook_requests.labels(provider, str(status)).inc()

        async def time_api(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = time.perf_counter()
            response = await handler(request)
            spent = time.perf_counter() - started
            # the route's pattern, never the resource id in the path (module docstring)
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            self.api_request.labels(route).observe(spent)
            if not response.prepared:  # a streamed answer has sent its headers already
                response.headers["Server-Timing"] = f"app;dur={spent * 1000:.3f}"
            return response

        return time_webhooks


class WorkerFigures(Collector):
    """Gauges read from the worker at scrape time: resources per state, how long ago
    they synced, consumer lag per partition, rate-limit tokens per provider.

    ``snapshot()`` returns ``{"states": {state: n}, "sync_ages": [seconds, ...],
    "consumer_lag": {(topic, partition): n}, "rate_limits": {provider: tokens}}``.
    """

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._figures: Mapping[str, Any] | None = None

    async def refresh(self) -> None:
        """Read the figures for the next :meth:`collect` (the scrape awaits this; the
        collector interface itself is synchronous)."""
        try:
            self._figures = await self._snapshot()
        except Exception:  # a scrape must not fail because the tables are recovering
            self._figures = None

    def collect(self) -> Iterable[Metric]:
        figures, self._figures = self._figures, None
        if figures is None:
            return
        states = GaugeMetricFamily(
            "calsync_resources", "Resources this worker owns, by state.", labels=["state"]
        )
        for state, count in sorted(figures.get("states", {}).items()):
            states.add_metric([state], count)
        yield states
        ages = sorted(figures.get("sync_ages", []))
        buckets = [(str(bound), sum(1 for a in ages if a <= bound)) for bound in AGE_BUCKETS]
        buckets.append(("+Inf", len(ages)))
        yield GaugeHistogramMetricFamily(
            "calsync_resource_sync_age_seconds",
            "Seconds since each owned active resource's last successful sync (a "
            "distribution: no per-resource series).",
            buckets=buckets,
            gsum_value=sum(ages),
        )
        oldest = GaugeMetricFamily(
            "calsync_resource_sync_age_seconds_max",
            "The oldest last successful sync among owned active resources, in seconds.",
        )
        oldest.add_metric([], max(ages, default=0.0))
        yield oldest
        lag = GaugeMetricFamily(
            "calsync_consumer_lag",
            "Records of a partition this worker owns not yet handled (highwater - committed).",
            labels=["topic", "partition"],
        )
        for (topic, partition), count in sorted(figures.get("consumer_lag", {}).items()):
            lag.add_metric([topic, str(partition)], count)
        yield lag
        tokens = GaugeMetricFamily(
            "calsync_rate_limit_tokens",
            "Tokens in each provider's application rate-limit bucket on this worker.",
            labels=["provider"],
        )
        for provider, level in sorted(figures.get("rate_limits", {}).items()):
            tokens.add_metric([provider], level)
        yield tokens


class MeteredOutbox:
    """An :class:`~calsync.agents.outbox.Outbox` that counts what goes through it
    (events and their latency, retries) before handing it on."""

    def __init__(self, inner: Outbox, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    async def events(self, resource_id: str, events: list[UnifiedEvent]) -> None:
        await self._inner.events(resource_id, events)
        self._metrics.observe_events(events)

    async def notify(self, notification: Notification) -> None:
        await self._inner.notify(notification)

    async def notify_all(self, notifications: list[Notification]) -> None:
        await self._inner.notify_all(notifications)

    async def retry(self, envelope: RetryEnvelope) -> None:
        await self._inner.retry(envelope)
        self._metrics.retries.labels(envelope.notification.provider).inc()

    async def command(self, command: Command) -> None:
        await self._inner.command(command)

    async def status(self, event: StatusEvent) -> None:
        await self._inner.status(event)

    async def deadletter(self, resource_id: str, payload: dict[str, Any]) -> None:
        await self._inner.deadletter(resource_id, payload)

    async def holds(self, records: list[tuple[str, bytes]]) -> None:
        await self._inner.holds(records)

    async def hold_requests(self, requests: list[HoldRequest]) -> None:
        await self._inner.hold_requests(requests)
