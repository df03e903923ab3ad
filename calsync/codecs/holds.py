"""The Avro wire format of ``calsync.holds``: :class:`~calsync.availability.holds.HoldEvent`.

Like ``calsync.events`` (:mod:`calsync.codecs.avro`): the plain Avro binary body of one
``calsync.v1.HoldEvent`` (``hold_event.avsc``, shipped in this package), no framing.
Times are epoch seconds in calsync and ``timestamp-millis`` on the wire. Every failure
is a :class:`~calsync.errors.CodecError`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, Final

from fastavro import parse_schema
from fastavro.types import Schema

from calsync.availability.holds import Conflict, HoldEvent, HoldEventKind
from calsync.codecs.avro import read_record, write_record
from calsync.errors import CodecError

__all__ = ["HOLD_SCHEMA_PATH", "decode_hold_event", "encode_hold_event", "load_hold_schema"]

HOLD_SCHEMA_PATH: Final[Traversable] = resources.files("calsync.codecs") / "hold_event.avsc"


def load_hold_schema() -> dict[str, Any]:
    """The schema as JSON, a fresh dict on every call."""
    schema: dict[str, Any] = json.loads(HOLD_SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


_SCHEMA: Final[Schema] = parse_schema(load_hold_schema())


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _seconds(value: Any) -> float:
    if not isinstance(value, datetime):
        raise CodecError(f"a timestamp was expected, not {type(value).__name__}")
    return value.timestamp()


def to_hold_record(event: HoldEvent) -> dict[str, Any]:
    conflict = event.conflict
    return {
        "hold_id": event.hold_id,
        "resource_id": event.resource_id,
        "kind": event.kind.value,
        "start_utc": _at(event.start),
        "end_utc": _at(event.end),
        "home": event.home,
        "participants": list(event.participants),
        "emitted_at": _at(event.emitted_at),
        "expires_at": _at(event.expires_at) if event.expires_at is not None else None,
        "conflict": None
        if conflict is None
        else {
            "resource_id": conflict.resource_id,
            "source": conflict.source,
            "start_utc": _at(conflict.start),
            "end_utc": _at(conflict.end),
            "flags": conflict.flags,
            "system_event_id": conflict.system_event_id,
            "hold_id": conflict.hold_id,
            "detail": conflict.detail,
        },
        "detail": event.detail,
        "booking": event.booking,
    }


def from_hold_record(record: dict[str, Any]) -> HoldEvent:
    try:
        kind = HoldEventKind(record["kind"])
    except ValueError as exc:
        raise CodecError(f"hold event of unknown kind {record.get('kind')!r}") from exc
    raw = record.get("conflict")
    conflict = None
    if raw is not None:
        conflict = Conflict(
            resource_id=raw["resource_id"],
            source=raw["source"],
            start=int(_seconds(raw["start_utc"])),
            end=int(_seconds(raw["end_utc"])),
            flags=raw["flags"],
            system_event_id=raw["system_event_id"],
            hold_id=raw["hold_id"],
            detail=raw["detail"],
        )
    expires = record.get("expires_at")
    return HoldEvent(
        hold_id=record["hold_id"],
        resource_id=record["resource_id"],
        kind=kind,
        start=int(_seconds(record["start_utc"])),
        end=int(_seconds(record["end_utc"])),
        home=record["home"],
        participants=tuple(record["participants"]),
        emitted_at=_seconds(record["emitted_at"]),
        expires_at=_seconds(expires) if expires is not None else None,
        conflict=conflict,
        detail=record["detail"],
        booking=record.get("booking"),
    )


def encode_hold_event(event: HoldEvent) -> bytes:
    """The Avro body of ``event``."""
    return write_record(_SCHEMA, to_hold_record(event), key="hold_id")


def decode_hold_event(data: bytes) -> HoldEvent:
    """The event an Avro body holds; :class:`CodecError` for anything else."""
    return from_hold_record(read_record(_SCHEMA, data, name="calsync.v1.HoldEvent"))
