"""The dashboard's picture of the whole deployment, folded from ``calsync.status``.

Every worker writes its resources' status changes to ``calsync.status`` (registered,
synced, reauth_required, retry_scheduled, ...). On top of those, each worker writes

* a **heartbeat** every ``CALSYNC_HEARTBEAT_INTERVAL`` seconds, keyed
  ``@worker/<name>`` (a key no resource id can take: resource ids start with a letter
  or digit): its partitions, consumer lag, rate-limit buckets and counters;
* a **summary** of each resource it owns (provider, calendar, state, last sync,
  channel expiry, retry backlog), so a resource whose last change fell out of the
  topic's retention is still shown, and so is whatever a status change does not
  carry: every ``CALSYNC_SUMMARY_INTERVAL`` seconds the summaries that changed, an
  unchanged one again after ``CALSYNC_SUMMARY_REFRESH`` seconds, and after a
  rebalance those of the partitions the worker gained
  (:class:`~calsync.web.heartbeat.Heartbeat`).

Why the topic and not each worker's ``/api/status``: a worker that owns nothing, or
that just lost its partitions, or that is down, cannot answer for "its" resources, and
asking every worker means knowing them all and waiting for the slowest. The topic
already holds every worker's writes in order, survives a worker's death, and one
group-less consumer per dashboard reads it (the same as the gateway's
:class:`~calsync.gateway.status.StatusFollower`). The price: the picture is as fresh as
the last status change, heartbeat or summary (seconds), and a dead worker's resources
show their last known state until their new owner writes; the header says which
workers have gone silent.

:class:`Fleet` is the fold (memory bounded: a fixed history per resource);
:class:`FleetFollower` feeds it from the topic.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from calsync.gateway.status import StatusFollower
from calsync.providers.registry import REGISTRY
from calsync.streams.records import StatusEvent

WORKER_PREFIX = "@worker/"
HEARTBEAT = "heartbeat"
SUMMARY = "summary"
#: Statuses that are problems, and what a person should make of them: (cause, what to do).
EXPLANATIONS: dict[str, tuple[str, str]] = {
    "reauth_required": (
        "The provider refused the stored credentials: the grant was revoked, expired "
        "or its password changed.",
        "Reconnect the calendar: register it again with a new refresh token or password.",
    ),
    "failed": (
        "A sync failed on its last attempt; the work went to the dead-letter topic.",
        "Read the detail, fix the cause, then replay the dead letters.",
    ),
    "too_large": (
        "The calendar holds more events inside the horizon than a worker keeps for one "
        "calendar, so calsync paused it (the first events stay on the topic).",
        "Raise CALSYNC_MAX_EVENTS_PER_CALENDAR on every worker, then resume the resource.",
    ),
    "rate_limited": (
        "The provider is throttling requests for this account.",
        "Nothing: calsync waits as asked and retries. If it lasts, ask for more quota.",
    ),
    "retry_scheduled": (
        "A temporary error (network, provider 5xx, throttling); calsync retries by itself.",
        "Nothing, unless it keeps happening: then check the provider's status.",
    ),
    "subscription_lost": (
        "Push notifications could not be set up or were lost; changes arrive only by "
        "reconciliation until calsync succeeds again.",
        "Check that the public URL is reachable by the provider (CALSYNC_PUBLIC_URL).",
    ),
    "quarantined": (
        "An item could not be read and was skipped; everything else syncs.",
        "Nothing urgent. If it persists, report the item hash to the calsync maintainers.",
    ),
    "cursor_expired": (
        "The provider forgot where the last sync left off; a full resync runs.",
        "Nothing: the resync repairs it.",
    ),
}
_ERRORS = frozenset(EXPLANATIONS) - {"cursor_expired"}
_TIMELINE = 60
_LAG_POINTS = 240
_WORKER_SILENT_AFTER = 3.0  # heartbeat intervals


def explain(status: str) -> tuple[str, str]:
    """The plain-language cause of a status and what to do about it."""
    return EXPLANATIONS.get(status, ("", ""))


@dataclass(slots=True)
class ResourceView:
    """What the dashboard knows of one resource."""

    resource_id: str
    provider: str = ""
    calendar_id: str = ""
    state: str = "pending"  # pending | ok | failing | reauth_required | paused | removed
    credential: str = "ok"  # ok | refreshing | reauth_required
    registered_at: float | None = None
    synced_at: float | None = None
    lag_ms: int | None = None
    channel_expires_at: float | None = None
    subscription_lost: bool = False
    #: why calsync itself paused it ("too_large"); "" when an operator did
    paused_reason: str = ""
    poll_interval: float | None = None
    retries: int = 0
    next_retry_at: float | None = None
    quarantined: int = 0
    worker: str = ""
    updated_at: float = 0.0
    errors: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=5))
    timeline: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=_TIMELINE))
    lags: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=_LAG_POINTS))

    @property
    def push(self) -> str:
        spec = REGISTRY.get(self.provider)
        return spec.push.value if spec is not None else ""

    @property
    def problem(self) -> bool:
        too_large = self.state == "paused" and self.paused_reason == "too_large"
        return self.state in ("failing", "reauth_required") or self.subscription_lost or too_large

    def to_json(self, now: float, *, detail: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "resource_id": self.resource_id,
            "provider": self.provider,
            "calendar_id": self.calendar_id,
            "state": self.state,
            "credential": self.credential,
            "synced_at": self.synced_at,
            "sync_age": now - self.synced_at if self.synced_at else None,
            "lag_ms": self.lag_ms,
            "push": self.push,
            "channel_expires_at": self.channel_expires_at,
            "subscription_lost": self.subscription_lost,
            "poll_interval": self.poll_interval,
            "retries": self.retries,
            "next_retry_at": self.next_retry_at,
            "quarantined": self.quarantined,
            "worker": self.worker,
            "problem": self.problem,
            "updated_at": self.updated_at,
            "errors": list(self.errors),
        }
        if detail:
            out["timeline"] = list(self.timeline)
            out["lags"] = [[at, lag] for at, lag in self.lags]
        return out


@dataclass(slots=True)
class WorkerView:
    """One worker as its heartbeats describe it."""

    name: str
    at: float
    data: dict[str, Any]
    previous: tuple[float, dict[str, Any]] | None = None

    def rate(self, counter: str) -> float:
        """Per second, between the last two heartbeats."""
        if self.previous is None:
            return 0.0
        at, data = self.previous
        span = self.at - at
        if span <= 0:
            return 0.0
        now_count = float(self.data.get("counters", {}).get(counter, 0))
        then_count = float(data.get("counters", {}).get(counter, 0))
        return max(0.0, now_count - then_count) / span


class Fleet:
    """Every resource and worker of the deployment, as the status topic tells it."""

    def __init__(self, *, heartbeat_interval: float = 5.0, max_resources: int = 100_000) -> None:
        self.resources: dict[str, ResourceView] = {}
        self.workers: dict[str, WorkerView] = {}
        self._heartbeat_interval = heartbeat_interval
        self._max_resources = max_resources
        #: Bumped on every change; the page polls with it to skip unchanged answers.
        self.version = 0

    def feed(self, event: StatusEvent) -> None:
        self.version += 1
        if event.resource_id.startswith(WORKER_PREFIX):
            if event.status == HEARTBEAT:
                self._heartbeat(event)
            return
        view = self.resources.get(event.resource_id)
        if view is None:
            if len(self.resources) >= self._max_resources:
                return
            view = self.resources[event.resource_id] = ResourceView(event.resource_id)
        view.updated_at = max(view.updated_at, event.at)
        data = event.data or {}
        if event.status == SUMMARY:
            self._summary(view, event, data)
            return
        view.timeline.append(
            {"at": event.at, "status": event.status, "detail": event.detail[:300], "data": data}
        )
        status = event.status
        if status == "registered":
            view.provider = str(data.get("provider") or view.provider)
            view.calendar_id = str(data.get("calendar_id") or view.calendar_id)
            view.registered_at = event.at
            view.state, view.credential = "pending", "ok"
            view.retries, view.next_retry_at = 0, None
        elif status == "synced":
            view.synced_at = event.at
            if view.state not in ("paused", "removed"):
                view.state = "ok"
            view.credential = "ok"
            view.retries, view.next_retry_at = 0, None
            lag = data.get("lag_ms")
            if isinstance(lag, int | float):
                view.lag_ms = int(lag)
                view.lags.append((event.at, int(lag)))
        elif status == "reauth_required":
            view.state, view.credential = "reauth_required", "reauth_required"
        elif status == "recovered":
            view.credential = "ok"
            view.state = "pending"
        elif status in ("retry_scheduled", "failed"):
            view.state = "failing" if view.state != "reauth_required" else view.state
            if data.get("credentials") == "refreshing" and view.credential != "reauth_required":
                # the token endpoint failed transiently: "refreshing" until a good sync
                view.credential = "refreshing"
            if status == "retry_scheduled":
                view.retries += 1
                delay = data.get("delay")
                if isinstance(delay, int | float):
                    view.next_retry_at = event.at + float(delay)
        elif status == "quarantined":
            view.quarantined += 1
        elif status == "subscription_renewed":
            expires = data.get("expires_at_ms")
            if isinstance(expires, int | float):
                view.channel_expires_at = float(expires) / 1000
            view.subscription_lost = False
        elif status == "subscription_lost":
            view.subscription_lost = True
        elif status == "paused":
            view.state = "paused"
            view.paused_reason = str(data.get("reason") or "")
        elif status == "resumed":
            view.state = "pending"
            view.paused_reason = ""
        elif status == "removed":
            view.state = "removed"
        # "too_large" is no status of its own: a paused status saying why
        why = "too_large" if status == "paused" and view.paused_reason == "too_large" else status
        if why in _ERRORS:
            cause, action = explain(why)
            view.errors.append(
                {
                    "at": event.at,
                    "status": status,
                    "detail": event.detail[:300],
                    "cause": cause,
                    "action": action,
                }
            )

    def _summary(self, view: ResourceView, event: StatusEvent, data: dict[str, Any]) -> None:
        """A worker's periodic account of a resource it owns: fills in what is known."""
        view.provider = str(data.get("provider") or view.provider)
        view.calendar_id = str(data.get("calendar_id") or view.calendar_id)
        view.worker = str(data.get("worker") or view.worker)
        state = data.get("state")
        if state == "reauth_required":
            view.state, view.credential = "reauth_required", "reauth_required"
        elif state in ("paused", "removed"):
            view.state = str(state)
        elif state == "active" and view.state in ("paused", "removed", "reauth_required"):
            view.state, view.credential = "pending", "ok"
        credentials = data.get("credentials")
        if state == "active" and credentials == "refreshing":
            view.credential = "refreshing"
        elif credentials == "ok" and view.credential == "refreshing":
            view.credential = "ok"
        synced = data.get("synced_at")
        if isinstance(synced, int | float) and synced > (view.synced_at or 0):
            view.synced_at = float(synced)
            if view.state == "pending":
                view.state = "ok"
        expires = data.get("channel_expires_at")
        view.channel_expires_at = float(expires) if isinstance(expires, int | float) else None
        interval = data.get("poll_interval")
        view.poll_interval = float(interval) if isinstance(interval, int | float) else None
        retries = data.get("retries")
        if isinstance(retries, int):
            view.retries = retries
            nxt = data.get("next_retry_at")
            view.next_retry_at = float(nxt) if isinstance(nxt, int | float) else None

    def _heartbeat(self, event: StatusEvent) -> None:
        name = event.resource_id[len(WORKER_PREFIX) :]
        data = dict(event.data or {})
        known = self.workers.get(name)
        previous = (known.at, known.data) if known is not None else None
        self.workers[name] = WorkerView(name, event.at, data, previous)

    def header(self, now: float | None = None) -> dict[str, Any]:
        """The deployment's figures: resources per state, rates, buckets, lag, workers."""
        now = time.time() if now is None else now
        states: dict[str, int] = {}
        credentials: dict[str, int] = {}
        for view in self.resources.values():
            states[view.state] = states.get(view.state, 0) + 1
            credentials[view.credential] = credentials.get(view.credential, 0) + 1
        workers = []
        events_rate = notifications_rate = 0.0
        rate_limits: dict[str, Any] = {}
        lag: dict[str, int] = {}
        for name, worker in sorted(self.workers.items()):
            silent = now - worker.at > _WORKER_SILENT_AFTER * self._heartbeat_interval
            if not silent:
                events_rate += worker.rate("events")
                notifications_rate += worker.rate("notifications")
                for key, bucket in (worker.data.get("rate_limits") or {}).items():
                    rate_limits[f"{key} ({name})"] = bucket
                for key, value in (worker.data.get("consumer_lag") or {}).items():
                    lag[key] = int(value)
            workers.append(
                {
                    "name": name,
                    "url": worker.data.get("url", ""),
                    "partitions": worker.data.get("partitions", []),
                    "resources": worker.data.get("resources", 0),
                    "heard_ago": now - worker.at,
                    "silent": silent,
                }
            )
        return {
            "now": now,
            "version": self.version,
            "resources": len(self.resources),
            "states": states,
            "credentials": credentials,
            "problems": sum(1 for v in self.resources.values() if v.problem),
            "events_per_second": round(events_rate, 2),
            "notifications_per_second": round(notifications_rate, 2),
            "rate_limits": rate_limits,
            "consumer_lag": dict(sorted(lag.items())),
            "workers": workers,
        }


class FleetFollower(StatusFollower):
    """A group-less follower of ``calsync.status`` that feeds a :class:`Fleet`
    (instead of the registrations board of its base class)."""

    def __init__(self, bootstrap: str, topic: str, fleet: Fleet, *, lookback: float) -> None:
        super().__init__(
            bootstrap, topic, lookback=lookback, client_id="calsync-dashboard", max_resources=1
        )
        self.fleet = fleet

    def feed(self, event: StatusEvent) -> None:
        self.fleet.feed(event)
