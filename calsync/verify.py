"""``calsync verify``: does ``calsync.events`` say what the providers say now?

A truth checker, read-only. It folds ``calsync.events`` from the beginning up to the
end offsets it found at start into each resource's *view* (native id → interval), lists
each registered resource's calendar through the same provider adapters and
normalization the full sync uses (:meth:`~calsync.providers.base.Provider.fetch_changes`
without a cursor) into its *truth*, and compares the two inside the horizon:

* **missing**: the provider has the occurrence, the events do not;
* **extra**: the events have it, the provider does not;
* **stale**: both have it, but its start, end, busy state, transparency or all-day
  flag differ.

The horizon is the worker's (``horizon_past_days``/``horizon_future_days`` around now)
shrunk by a margin at both ends: the worker's horizon moves with the clock, and an
occurrence crossing one of its edges since the last full sync is not a disagreement.
Both sides are restricted to it.

Nothing is written to a provider (no channel, no subscription, no event). Resources
come from the ``resources`` table's changelog topic, credentials decrypted with
``CALSYNC_SECRET_KEY`` as a worker does. One write to calsync can happen: a Microsoft
refresh token rotates when used, and the rotated one is handed to the owning worker
as a ``rotate`` command, exactly as a worker does (otherwise the stored token would be
the one the identity platform may refuse next).

Pure parts (:func:`fold`, :func:`compare`, :class:`Report`) take plain values; the Kafka
and provider parts (:func:`read_view`, :func:`read_resources`, :func:`list_truth`,
:func:`verify`) wire them up.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer

from calsync.clock import make_clock
from calsync.codecs.avro import decode_event
from calsync.crypto import SecretBox
from calsync.errors import CalsyncError, ConfigurationError, ProviderError, RateLimited
from calsync.model import ChangeKind, Occurrence, UnifiedEvent, Window
from calsync.providers.base import Provider
from calsync.providers.factory import ProviderFactory
from calsync.providers.registry import REGISTRY, rate_limit_specs
from calsync.ratelimit import RateLimiter
from calsync.retry import retry_delay
from calsync.settings import Settings
from calsync.streams.records import Command, CommandKind
from calsync.streams.topics import changelog_topic, topic_partitions
from calsync.tables.records import Resource

__all__ = [
    "Difference",
    "Interval",
    "Report",
    "compare",
    "fold",
    "horizon",
    "list_truth",
    "read_resources",
    "read_view",
    "verify",
]

log = logging.getLogger(__name__)

#: resource id -> native event id -> interval
Busy = dict[str, dict[str, "Interval"]]


@dataclass(frozen=True, slots=True)
class Interval:
    """What one occurrence means for busy time: no title, no attendee, nothing personal."""

    start_utc: datetime
    end_utc: datetime
    status_intent: str
    transparency: str
    is_all_day: bool

    @classmethod
    def of_event(cls, event: UnifiedEvent) -> Interval | None:
        """The interval an upsert carries (``None`` for a delete or an incomplete one)."""
        if (
            event.change is not ChangeKind.UPSERT
            or event.start_utc is None
            or event.end_utc is None
            or event.status_intent is None
        ):
            return None
        return cls(
            event.start_utc,
            event.end_utc,
            event.status_intent.value,
            event.transparency.value if event.transparency else "opaque",
            bool(event.is_all_day),
        )

    @classmethod
    def of_occurrence(cls, occurrence: Occurrence) -> Interval:
        return cls(
            occurrence.start_utc,
            occurrence.end_utc,
            occurrence.status_intent.value,
            occurrence.transparency.value,
            occurrence.is_all_day,
        )

    def differing(self, other: Interval) -> list[str]:
        """The names of the fields in which ``other`` differs."""
        return [name for name in self.__slots__ if getattr(self, name) != getattr(other, name)]

    def asdict(self) -> dict[str, Any]:
        return {
            "start_utc": self.start_utc.isoformat(),
            "end_utc": self.end_utc.isoformat(),
            "status_intent": self.status_intent,
            "transparency": self.transparency,
            "is_all_day": self.is_all_day,
        }


def horizon(settings: Settings, now: datetime, margin: timedelta) -> Window:
    """The worker's sync horizon at ``now``, shrunk by ``margin`` at both ends."""
    window = Window.around(
        now, past_days=settings.horizon_past_days, future_days=settings.horizon_future_days
    )
    return Window(window.start + margin, window.end - margin)


def fold(
    events: Iterable[UnifiedEvent], busy: Busy | None = None, *, window: Window | None = None
) -> Busy:
    """Fold events in topic order as a consumer does: an upsert replaces the occurrence's
    interval, a delete removes it. Per resource order is the topic's (one partition per
    resource), so the last record of an occurrence wins. With ``window``, an upsert
    outside it removes the occurrence too (it cannot be compared), which keeps the view
    as small as the horizon."""
    view: Busy = busy if busy is not None else {}
    for event in events:
        interval = Interval.of_event(event)
        if interval is not None and (
            window is None or window.overlaps(interval.start_utc, interval.end_utc)
        ):
            view.setdefault(event.resource_id, {})[event.native_event_id] = interval
            continue
        intervals = view.get(event.resource_id)
        if intervals is not None:
            intervals.pop(event.native_event_id, None)
            if not intervals:
                del view[event.resource_id]
    return view


@dataclass(frozen=True, slots=True)
class Difference:
    """One disagreement: ``kind`` is ``missing``, ``extra`` or ``stale``."""

    kind: str
    resource_id: str
    native_event_id: str
    provider: Interval | None
    events: Interval | None

    def asdict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "resource_id": self.resource_id,
            "native_event_id": self.native_event_id,
            "provider": self.provider.asdict() if self.provider else None,
            "events": self.events.asdict() if self.events else None,
        }
        if self.provider is not None and self.events is not None:
            out["fields"] = self.provider.differing(self.events)
        return out

    def describe(self) -> str:
        def span(interval: Interval | None) -> str:
            if interval is None:
                return "-"
            return (
                f"{interval.start_utc:%Y-%m-%d %H:%M}..{interval.end_utc:%Y-%m-%d %H:%M} "
                f"{interval.status_intent}"
            )

        return (
            f"{self.kind:7} {self.resource_id} {self.native_event_id}: "
            f"provider {span(self.provider)} / events {span(self.events)}"
        )


KINDS = ("missing", "extra", "stale")


@dataclass(slots=True)
class ResourceCounts:
    provider: int = 0
    events: int = 0
    missing: int = 0
    extra: int = 0
    stale: int = 0

    def asdict(self) -> dict[str, int]:
        return {
            "provider": self.provider,
            "events": self.events,
            "missing": self.missing,
            "extra": self.extra,
            "stale": self.stale,
        }


@dataclass(slots=True)
class Report:
    """The outcome: counts per kind and per resource, at most ``limit`` examples,
    resources that could not be checked (``errors``) or were not (``skipped``)."""

    window: Window
    limit: int = 20
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    resources: dict[str, ResourceCounts] = field(default_factory=dict)
    examples: list[Difference] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    events_read: int = 0
    undecodable: int = 0
    #: resources that differed at first and were checked again (the counts are the second's)
    rechecked: list[str] = field(default_factory=list)

    @property
    def differences(self) -> int:
        return sum(self.counts.values())

    @property
    def exit_code(self) -> int:
        """2 when something could not be checked, 1 for differences, 0 when all agree."""
        if self.errors:
            return 2
        return 1 if self.differences else 0

    def add(self, difference: Difference) -> None:
        self.counts[difference.kind] += 1
        counts = self.resources.setdefault(difference.resource_id, ResourceCounts())
        setattr(counts, difference.kind, getattr(counts, difference.kind) + 1)
        if len(self.examples) < self.limit:
            self.examples.append(difference)

    def asdict(self) -> dict[str, Any]:
        return {
            "window": {"start": self.window.start.isoformat(), "end": self.window.end.isoformat()},
            "differences": self.differences,
            "counts": dict(self.counts),
            "resources": {rid: c.asdict() for rid, c in sorted(self.resources.items())},
            "examples": [d.asdict() for d in self.examples],
            "errors": dict(sorted(self.errors.items())),
            "skipped": dict(sorted(self.skipped.items())),
            "events_read": self.events_read,
            "undecodable": self.undecodable,
            "rechecked": list(self.rechecked),
        }

    def to_json(self) -> str:
        return json.dumps(self.asdict(), indent=2, sort_keys=True)

    def to_text(self) -> str:
        counts = self.counts
        lines = [
            f"horizon {self.window.start:%Y-%m-%d %H:%M} .. {self.window.end:%Y-%m-%d %H:%M} UTC; "
            f"{len(self.resources)} resources checked, {self.events_read} events read",
            f"missing {counts['missing']}, extra {counts['extra']}, stale {counts['stale']}",
        ]
        for rid, c in sorted(self.resources.items()):
            if c.missing or c.extra or c.stale:
                lines.append(
                    f"  {rid}: provider {c.provider}, events {c.events}; "
                    f"missing {c.missing}, extra {c.extra}, stale {c.stale}"
                )
        if self.examples:
            shown = len(self.examples)
            lines.append(f"examples ({shown} of {self.differences}):")
            lines.extend(f"  {d.describe()}" for d in self.examples)
        for rid, reason in sorted(self.skipped.items()):
            lines.append(f"skipped {rid}: {reason}")
        for rid, error in sorted(self.errors.items()):
            lines.append(f"error {rid}: {error}")
        if self.rechecked:
            lines.append(f"checked twice (they differed at first): {', '.join(self.rechecked)}")
        if self.undecodable:
            lines.append(f"{self.undecodable} records of the events topic could not be decoded")
        return "\n".join(lines)


def compare(
    report: Report,
    resource_id: str,
    truth: Mapping[str, Interval],
    view: Mapping[str, Interval],
) -> None:
    """Add to ``report`` how ``view`` (the events) differs from ``truth`` (the provider),
    both restricted to ``report.window``; examples in native id order."""
    window = report.window
    truth = {k: v for k, v in truth.items() if window.overlaps(v.start_utc, v.end_utc)}
    view = {k: v for k, v in view.items() if window.overlaps(v.start_utc, v.end_utc)}
    counts = report.resources.setdefault(resource_id, ResourceCounts())
    counts.provider, counts.events = len(truth), len(view)
    for native_id in sorted(truth.keys() | view.keys()):
        said, seen = truth.get(native_id), view.get(native_id)
        if said == seen:
            continue
        kind = "missing" if seen is None else "extra" if said is None else "stale"
        report.add(Difference(kind, resource_id, native_id, said, seen))


# -- reading Kafka ------------------------------------------------------------------


async def read_to_end(
    bootstrap: str,
    topic: str,
    on_record: Callable[[bytes | None, bytes | None, int], None],
    *,
    timeout: float = 300.0,
) -> int:
    """Feed every record of ``topic``, from the beginning up to the end offsets found at
    start, to ``on_record(key, value, timestamp_ms)``, partition by partition in offset order. No
    consumer group: nothing is committed. Returns how many records were read; raises
    :class:`ConfigurationError` when the topic does not exist or the broker cannot be
    reached, :class:`TimeoutError` after ``timeout`` seconds."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="calsync-verify",
    )
    try:
        await consumer.start()
    except Exception as exc:  # aiokafka's connection errors, in our words
        raise ConfigurationError(f"cannot reach Kafka at {bootstrap}: {exc!r}") from exc
    read = 0
    try:
        async with asyncio.timeout(timeout):
            try:
                tps = await topic_partitions(consumer, topic, timeout=min(timeout, 10.0))
            except TimeoutError:
                raise ConfigurationError(f"topic {topic} does not exist") from None
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            await consumer.seek_to_beginning(*tps)
            pending = {tp for tp in tps if ends[tp] > 0}
            while pending:
                for tp in list(pending):  # compaction can leave the position past the end
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
                if not pending:
                    break
                batches = await consumer.getmany(*pending, timeout_ms=500)
                for tp, messages in batches.items():
                    for message in messages:
                        if message.offset < ends[tp]:
                            on_record(message.key, message.value, message.timestamp)
                            read += 1
    finally:
        await consumer.stop()
    return read


async def read_view(settings: Settings, report: Report, only: frozenset[str] | None = None) -> Busy:
    """Fold ``calsync.events`` (up to its end at start) into each resource's busy set
    (only ``only``'s resources when given); counts go to ``report``."""
    view: Busy = {}

    def on_record(key: bytes | None, value: bytes | None, timestamp: int) -> None:
        report.events_read += 1
        if value is None:
            return
        if only is not None and key is not None and key.decode(errors="replace") not in only:
            return  # keyed by resource id: no need to decode another resource's events
        try:
            event = decode_event(value)
        except CalsyncError:
            report.undecodable += 1
            return
        if only is None or event.resource_id in only:
            fold((event,), view, window=report.window)

    await read_to_end(settings.kafka_bootstrap, settings.topic("events"), on_record)
    return view


async def read_resources(settings: Settings) -> dict[str, Resource]:
    """The registered resources, from the ``resources`` table's changelog (compacted:
    the last record of a key wins; a tombstone removes it). Credentials stay encrypted.

    A ``rotate`` command on ``calsync.commands`` newer than a resource's changelog record
    is one its worker has not applied yet (it is stopped, or behind): its credentials
    are the current ones (a Microsoft refresh token stops working once rotated, at the
    emulator at least), so they replace the stored ones here.
    """
    resources: dict[str, tuple[int, Resource]] = {}
    rotations: dict[str, tuple[int, dict[str, str]]] = {}

    def resource_id(key: bytes | None, *, as_json: bool) -> str | None:
        if key is None:
            return None
        if not as_json:
            return key.decode(errors="replace")
        try:
            rid = json.loads(key)  # Faust tables write JSON keys
        except ValueError:
            return None
        return rid if isinstance(rid, str) else None

    def on_resource(key: bytes | None, value: bytes | None, timestamp: int) -> None:
        rid = resource_id(key, as_json=True)
        if rid is None:
            return
        if value is None:
            resources.pop(rid, None)
            return
        try:
            resources[rid] = (timestamp, Resource.loads(value))
        except Exception:  # a damaged record: the worker cannot use it either
            log.warning("resources changelog record of %s cannot be decoded", rid)

    def on_command(key: bytes | None, value: bytes | None, timestamp: int) -> None:
        if value is None or b'"rotate"' not in value:
            return
        try:
            command = Command.loads(value)
        except Exception:  # the worker quarantines these; nothing to learn from it
            return
        if command.kind == CommandKind.ROTATE.value and command.credentials:
            rotations[command.resource_id] = (timestamp, dict(command.credentials))

    bootstrap = settings.kafka_bootstrap
    await read_to_end(bootstrap, changelog_topic(settings, "resources"), on_resource)
    await read_to_end(bootstrap, settings.topic("commands"), on_command)
    out: dict[str, Resource] = {}
    for rid, (stored_at, resource) in resources.items():
        rotated = rotations.get(rid)
        if rotated is not None and rotated[0] > stored_at:
            resource = resource.derive(credentials={**resource.credentials, **rotated[1]})
        out[rid] = resource
    return out


# -- asking the providers -------------------------------------------------------------


async def list_truth(
    provider: Provider, window: Window, *, attempts: int = 4, max_wait: float = 60.0
) -> dict[str, Interval]:
    """The provider's occurrences inside ``window`` now: a full listing (no cursor), the
    changes applied in page order as the full sync applies them. A rate limit or a
    transient failure restarts the listing after the delay the provider asked for
    (``attempts`` times in all); a longer wait than ``max_wait`` s, and any other
    :class:`ProviderError`, propagates."""
    for attempt in range(attempts):
        truth: dict[str, Interval] = {}
        try:
            async for page in provider.fetch_changes(None, window):
                for change in page.changes:
                    if isinstance(change, Occurrence) and window.overlaps(
                        change.start_utc, change.end_utc
                    ):
                        truth[change.native_event_id] = Interval.of_occurrence(change)
                    else:
                        truth.pop(change.native_event_id, None)
            return truth
        except ProviderError as exc:
            requested = exc.retry_after if isinstance(exc, RateLimited) else None
            delay = retry_delay(attempt, requested=requested, base=1.0, cap=max_wait)
            # never ask before the provider allows it: a longer wait is an error here
            if not exc.retriable or attempt + 1 >= attempts or delay > max_wait:
                raise
            log.info("listing failed (%s); again in %.1f s", exc, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _default_http_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0))


async def _hand_over_rotation(settings: Settings, rid: str, credentials: dict[str, str]) -> None:
    """A provider rotated its credentials while listing: write them, encrypted, as the
    ``rotate`` command a worker writes (:meth:`calsync.agents.commands.Commands.on_rotated`)."""
    from calsync.agents.commands import rotate_command
    from calsync.gateway.publisher import KafkaPublisher

    box = SecretBox(settings.secret_key)
    command = rotate_command(box, rid, credentials, issued_at=time.time())
    publisher = KafkaPublisher(settings.kafka_bootstrap, client_id=f"{settings.app_id}-verify")
    try:
        await publisher.publish(settings.topic("commands"), rid, command.dumps())
    finally:
        await publisher.aclose()


async def verify(
    settings: Settings,
    *,
    resource_ids: Iterable[str] = (),
    limit: int = 20,
    margin: timedelta = timedelta(hours=1),
    resource_timeout: float = 300.0,
    recheck_after: float = 0.0,
    http_client_factory: Callable[[], httpx.AsyncClient] = _default_http_client,
    on_rotate: Callable[[str, dict[str, str]], Awaitable[None]] | None = None,
) -> Report:
    """Compare ``calsync.events`` with what the providers answer now (see the module).

    ``resource_ids`` restricts the check (default: every registered resource, and every
    resource the events mention). A resource whose provider fails, or does not answer
    within ``resource_timeout`` seconds, is reported in ``errors``; a paused one, or one
    waiting for re-consent, in ``skipped``. A removed or unregistered resource has no
    truth to ask: whatever the events still hold for it is extra. Resources are listed
    one at a time, through a rate limiter with the worker's specs and one partition's
    share of an app-wide quota.

    Against a live deployment a change may be on its way (the worker syncs it within
    seconds, or at the next catch-up for a missed push): with ``recheck_after``
    the resources that differ are checked again that many seconds later, and only what
    still differs then is reported (those resources are listed in ``rechecked``).

    ``on_rotate(resource_id, credentials)`` receives credentials a provider rotated
    while listing (default: written as a ``rotate`` command for the owning worker).
    Raises :class:`ConfigurationError` when Kafka or the topics cannot be read.
    """
    check = functools.partial(
        _check,
        settings,
        limit=limit,
        margin=margin,
        resource_timeout=resource_timeout,
        http_client_factory=http_client_factory,
        on_rotate=on_rotate or functools.partial(_hand_over_rotation, settings),
    )
    first = await check(frozenset(resource_ids) or None)
    differing = sorted(rid for rid, c in first.resources.items() if c.missing or c.extra or c.stale)
    if recheck_after <= 0 or not differing:
        return first
    await asyncio.sleep(recheck_after)
    second = await check(frozenset(differing))
    agreeing = {rid: c for rid, c in first.resources.items() if rid not in differing}
    second.resources = {**agreeing, **second.resources}
    second.errors = {**first.errors, **second.errors}
    second.skipped = {**first.skipped, **second.skipped}
    second.rechecked = differing
    return second


async def _check(
    settings: Settings,
    only: frozenset[str] | None,
    *,
    limit: int,
    margin: timedelta,
    resource_timeout: float,
    http_client_factory: Callable[[], httpx.AsyncClient],
    on_rotate: Callable[[str, dict[str, str]], Awaitable[None]],
) -> Report:
    """One pass of :func:`verify` over ``only`` (or every resource)."""
    clock = make_clock(settings.clock_rate, settings.clock_origin)
    now = datetime.fromtimestamp(clock(), UTC)
    report = Report(window=horizon(settings, now, margin), limit=limit)
    resources = await read_resources(settings)
    view = await read_view(settings, report, only)
    wanted = sorted(only if only is not None else resources.keys() | view.keys())
    limiter = RateLimiter(rate_limit_specs(settings))
    for name, spec in REGISTRY.items():
        if spec.shares_app_quota:  # as much of the app's quota as one partition's owner
            limiter.set_share(name, 1 / max(1, settings.topic_partitions))
    factory = ProviderFactory(
        settings, http_client_factory, limiter, clock=clock, on_rotate=on_rotate
    )
    try:
        for rid in wanted:
            resource = resources.get(rid)
            events = view.get(rid, {})
            if resource is None and not events:
                report.skipped[rid] = "not registered, and no events"
                continue
            if resource is None or resource.state == "removed":
                compare(report, rid, {}, events)
                continue
            if resource.state != "active":
                report.skipped[rid] = f"resource is {resource.state}"
                continue
            try:
                provider = factory.get(rid, resource)
                async with asyncio.timeout(resource_timeout):
                    truth = await list_truth(provider, report.window)
            except TimeoutError:
                report.errors[rid] = f"the provider did not finish within {resource_timeout} s"
                continue
            except CalsyncError as exc:
                report.errors[rid] = f"{type(exc).__name__}: {exc}"
                continue
            compare(report, rid, truth, events)
    finally:
        await factory.aclose()
    return report
