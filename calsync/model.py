"""calsync's own values: the unified event and the pieces it is made of.

A :class:`UnifiedEvent` is what leaves calsync on ``calsync.events``. It carries no
title, description, location, attendee or organizer: provider adapters reduce a
provider's event to an :class:`Occurrence` (times and busy state only) before
anything else sees it.
"""

from __future__ import annotations

import enum
import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

#: Namespace of the deterministic ``system_event_id`` (uuid5); never change it, or
#: every id changes and consumers see every event twice.
SYSTEM_EVENT_NAMESPACE = uuid.UUID("6f1e3a55-2c1e-5b6e-9d0c-4a8d1b0c7e21")


class ProviderOrigin(enum.StrEnum):
    GOOGLE = "google_calendar_v3"
    MICROSOFT = "microsoft_graph_v1"
    CALDAV = "caldav"


class ChangeKind(enum.StrEnum):
    UPSERT = "upsert"
    DELETE = "delete"


class Transparency(enum.StrEnum):
    OPAQUE = "opaque"
    TRANSPARENT = "transparent"


class StatusIntent(enum.StrEnum):
    BUSY = "busy"
    TENTATIVE = "tentative"
    FREE = "free"
    OUT_OF_OFFICE = "out_of_office"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Window:
    """The sync horizon: occurrences that end after ``start`` and begin before ``end``."""

    start: datetime
    end: datetime

    def overlaps(self, start: datetime, end: datetime) -> bool:
        return end > self.start and start < self.end

    @classmethod
    def around(cls, now: datetime, *, past_days: int, future_days: int) -> Window:
        """The horizon at ``now``: ``past_days`` back, ``future_days`` ahead."""
        return cls(now - timedelta(days=past_days), now + timedelta(days=future_days))


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One busy-relevant occurrence of a provider event, free of personal data.

    ``native_event_id`` identifies the occurrence at the provider (for Google with
    ``singleEvents=true`` that is the instance id); ``series_id`` is the id of the
    recurring series it belongs to, if any. ``start_utc``/``end_utc`` are aware
    UTC datetimes, start inclusive, end exclusive.
    """

    native_event_id: str
    start_utc: datetime
    end_utc: datetime
    is_all_day: bool
    transparency: Transparency
    status_intent: StatusIntent
    series_id: str | None = None
    #: A content hash: equal for two occurrences that mean the same busy time.
    version: str = field(init=False, repr=False, compare=False, default="")

    def __post_init__(self) -> None:
        material = "|".join(
            (
                self.start_utc.isoformat(),
                self.end_utc.isoformat(),
                str(self.is_all_day),
                self.transparency.value,
                self.status_intent.value,
                self.series_id or "",
            )
        )
        # computed once: the diff and the event both need it, for every occurrence
        object.__setattr__(self, "version", hashlib.sha256(material.encode()).hexdigest()[:32])


@dataclass(frozen=True, slots=True)
class Deletion:
    """The provider says ``native_event_id`` is gone."""

    native_event_id: str


Change = Occurrence | Deletion


_NAMESPACE_BYTES = SYSTEM_EVENT_NAMESPACE.bytes
#: the RFC 4122 variant bits over the top two bits of the 17th hex digit
_VARIANT = "89ab89ab89ab89ab"


def system_event_id(origin: ProviderOrigin, resource_id: str, native_event_id: str) -> str:
    """The deterministic id of an occurrence: the same inputs give the same id forever.

    ``str(uuid.uuid5(SYSTEM_EVENT_NAMESPACE, "<origin>\\x1f<resource>\\x1f<native id>"))``,
    spelled out: the SHA-1 of the namespace and the name, version and variant bits
    set, in the canonical form. ``uuid.UUID`` validates and converts through an int,
    which cost a tenth of a full sync's CPU (docs/benchmarks.md, section 3).
    """
    name = f"{origin.value}\x1f{resource_id}\x1f{native_event_id}".encode()
    h = hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[int(h[16], 16)]}{h[17:20]}-{h[20:32]}"


@dataclass(frozen=True, slots=True)
class UnifiedEvent:
    """One record of ``calsync.events`` (Avro schema ``codecs/unified_event.avsc``).

    For ``change == DELETE`` the temporal and operational fields are ``None``.
    ``latency_ms`` is the time from the provider notification (or command) that
    caused this emission to the emission itself.
    """

    system_event_id: str
    resource_id: str
    provider_origin: ProviderOrigin
    native_event_id: str
    change: ChangeKind
    version: str
    emitted_at: datetime
    sync_sequence_token: str | None = None
    latency_ms: int | None = None
    series_id: str | None = None
    start_utc: datetime | None = None
    end_utc: datetime | None = None
    is_all_day: bool | None = None
    transparency: Transparency | None = None
    status_intent: StatusIntent | None = None

    @classmethod
    def upsert(
        cls,
        origin: ProviderOrigin,
        resource_id: str,
        occurrence: Occurrence,
        *,
        emitted_at: datetime,
        sync_sequence_token: str | None = None,
        latency_ms: int | None = None,
    ) -> UnifiedEvent:
        return cls(
            system_event_id=system_event_id(origin, resource_id, occurrence.native_event_id),
            resource_id=resource_id,
            provider_origin=origin,
            native_event_id=occurrence.native_event_id,
            change=ChangeKind.UPSERT,
            version=occurrence.version,
            emitted_at=emitted_at,
            sync_sequence_token=sync_sequence_token,
            latency_ms=latency_ms,
            series_id=occurrence.series_id,
            start_utc=occurrence.start_utc,
            end_utc=occurrence.end_utc,
            is_all_day=occurrence.is_all_day,
            transparency=occurrence.transparency,
            status_intent=occurrence.status_intent,
        )

    @classmethod
    def delete(
        cls,
        origin: ProviderOrigin,
        resource_id: str,
        native_event_id: str,
        *,
        emitted_at: datetime,
        sync_sequence_token: str | None = None,
        latency_ms: int | None = None,
        series_id: str | None = None,
    ) -> UnifiedEvent:
        return cls(
            system_event_id=system_event_id(origin, resource_id, native_event_id),
            resource_id=resource_id,
            provider_origin=origin,
            native_event_id=native_event_id,
            change=ChangeKind.DELETE,
            version="",
            emitted_at=emitted_at,
            sync_sequence_token=sync_sequence_token,
            latency_ms=latency_ms,
            series_id=series_id,
        )
