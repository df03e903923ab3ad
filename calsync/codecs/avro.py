"""The Avro wire format of ``calsync.events``: :class:`~calsync.model.UnifiedEvent`.

A value on the topic is the **plain Avro binary body** of one ``calsync.v1.UnifiedEvent``
record (``unified_event.avsc``, shipped in this package), written with fastavro's
schemaless writer. There is no Confluent framing (no magic byte, no schema id): no
schema registry is in the loop, producer and consumers read the schema from the
package. The cost is that a reader must know the writer's schema; a schema change is
therefore a coordinated rollout, and the enum ``default`` symbols and nullable
``default: null`` fields are there so that a reader given the old writer schema can
resolve it against a newer one.

Two entry points, one format:

- :func:`encode_event` / :func:`decode_event`: plain functions over one schema parsed
  at import; :func:`encode_events` writes the same bytes for a page of events without
  fastavro, the hot path of the sync agent, which produces events in pipelined batches
  through the producer rather than through Faust's ``topic.send``.
- :class:`UnifiedEventCodec`: a Faust codec (registered by :func:`register_codecs`
  under :data:`CODEC_NAME`) that writes and reads the dict form of
  :func:`to_record` / :func:`from_record`, for topics and Records that name it.

Timestamps: ``start_utc``/``end_utc`` are ``timestamp-micros`` and round-trip exactly;
``emitted_at`` is ``timestamp-millis``, so :func:`to_record` truncates it (towards the
past) to the millisecond. Naive datetimes are refused; aware ones in any zone are
written as the same instant, and read back as aware UTC datetimes.

Every failure is a :class:`~calsync.errors.CodecError`; no fastavro exception escapes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, Final, TypedDict, TypeVar

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.types import Schema
from faust.serializers import codecs
from faust.types.codecs import CodecT

from calsync.errors import CodecError
from calsync.model import ChangeKind, ProviderOrigin, StatusIntent, Transparency, UnifiedEvent

__all__ = [
    "CODEC_NAME",
    "SCHEMA_PATH",
    "OperationalStateRecord",
    "SynchronizationMetadataRecord",
    "TemporalVectorRecord",
    "UnifiedEventCodec",
    "UnifiedEventRecord",
    "decode_event",
    "encode_event",
    "encode_events",
    "from_record",
    "load_schema",
    "register_codecs",
    "to_record",
]

#: The name the codec is registered under (``value_serializer=CODEC_NAME``).
CODEC_NAME: Final = "calsync_unified_event"

#: The shipped schema, as package data.
SCHEMA_PATH: Final[Traversable] = resources.files("calsync.codecs") / "unified_event.avsc"


class SynchronizationMetadataRecord(TypedDict):
    sync_sequence_token: str | None
    latency_ms: int | None
    emitted_at: datetime


class TemporalVectorRecord(TypedDict):
    start_utc: datetime
    end_utc: datetime
    is_all_day: bool


class OperationalStateRecord(TypedDict):
    transparency: str
    status_intent: str


class UnifiedEventRecord(TypedDict):
    """The dict form of a ``calsync.v1.UnifiedEvent``: what fastavro writes and reads."""

    system_event_id: str
    resource_id: str
    provider_origin: str
    native_event_id: str
    series_id: str | None
    change: str
    version: str
    synchronization_metadata: SynchronizationMetadataRecord
    temporal_vector: TemporalVectorRecord | None
    operational_state: OperationalStateRecord | None


def load_schema() -> dict[str, Any]:
    """The schema as JSON, a fresh dict on every call (callers may mutate it)."""
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


# What fastavro raises on bytes that are not a record of the schema (EOFError for a
# short read, UnicodeDecodeError, IndexError for an enum or union index out of range,
# OverflowError for a timestamp outside datetime's range) or on a dict it cannot write.
_FASTAVRO_ERRORS: Final = (EOFError, ValueError, IndexError, OverflowError, TypeError, KeyError)

_SCHEMA: Final[Schema] = parse_schema(load_schema())


# -- dict form ---------------------------------------------------------------------


def _utc(value: object, field: str) -> datetime:
    if not isinstance(value, datetime):
        raise CodecError(f"{field} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise CodecError(f"{field} must be timezone-aware, got naive {value.isoformat()}")
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value


_E = TypeVar("_E", bound=StrEnum)


def _enum(kind: type[_E], value: object, field: str) -> _E:
    if isinstance(value, kind):
        return value
    if not isinstance(value, str):
        raise CodecError(f"{field} must be a {kind.__name__} or str, not {type(value).__name__}")
    try:
        return kind(value)
    except ValueError as exc:
        raise CodecError(f"{field}: {value!r} is not one of {[m.value for m in kind]}") from exc


def to_record(event: UnifiedEvent) -> UnifiedEventRecord:
    """The dict form of ``event``, ready for an Avro writer.

    Datetimes become aware UTC datetimes; ``emitted_at`` is truncated to the
    millisecond, so that ``from_record(to_record(e))`` equals what a reader decodes.

    Raises :class:`CodecError` for a naive datetime, a value outside an enum, an
    upsert without times and state, or a delete with them.
    """
    change = _enum(ChangeKind, event.change, "change")
    temporal: TemporalVectorRecord | None = None
    operational: OperationalStateRecord | None = None
    times = (event.start_utc, event.end_utc, event.is_all_day)
    states = (event.transparency, event.status_intent)
    if change is ChangeKind.UPSERT:
        if None in times or None in states:
            raise CodecError(
                f"upsert {event.system_event_id} needs start_utc, end_utc, is_all_day, "
                "transparency and status_intent"
            )
        if not isinstance(event.is_all_day, bool):
            raise CodecError(f"is_all_day must be a bool, not {type(event.is_all_day).__name__}")
        temporal = {
            "start_utc": _utc(event.start_utc, "start_utc"),
            "end_utc": _utc(event.end_utc, "end_utc"),
            "is_all_day": event.is_all_day,
        }
        operational = {
            "transparency": _enum(Transparency, event.transparency, "transparency").value,
            "status_intent": _enum(StatusIntent, event.status_intent, "status_intent").value,
        }
    elif times != (None, None, None) or states != (None, None):
        raise CodecError(f"delete {event.system_event_id} must not carry times or state")
    emitted_at = _utc(event.emitted_at, "emitted_at")
    return {
        "system_event_id": event.system_event_id,
        "resource_id": event.resource_id,
        "provider_origin": _enum(ProviderOrigin, event.provider_origin, "provider_origin").value,
        "native_event_id": event.native_event_id,
        "series_id": event.series_id,
        "change": change.value,
        "version": event.version,
        "synchronization_metadata": {
            "sync_sequence_token": event.sync_sequence_token,
            "latency_ms": event.latency_ms,
            "emitted_at": emitted_at.replace(microsecond=emitted_at.microsecond // 1000 * 1000),
        },
        "temporal_vector": temporal,
        "operational_state": operational,
    }


def from_record(record: Mapping[str, Any]) -> UnifiedEvent:
    """The :class:`UnifiedEvent` a dict form describes (datetimes come back aware UTC).

    Accepts what any Avro reader of the schema returns (fastavro's, or the Apache
    ``avro`` library's with its own UTC tzinfo). Raises :class:`CodecError` when a
    field is missing or of the wrong kind, or when the change kind and the presence
    of times and state disagree.
    """
    try:
        change = _enum(ChangeKind, record["change"], "change")
        meta = record["synchronization_metadata"]
        temporal = record["temporal_vector"]
        operational = record["operational_state"]
        if change is ChangeKind.UPSERT and (temporal is None or operational is None):
            raise CodecError(f"upsert {record['system_event_id']} lacks times or state")
        if change is ChangeKind.DELETE and (temporal is not None or operational is not None):
            raise CodecError(f"delete {record['system_event_id']} carries times or state")
        return UnifiedEvent(
            system_event_id=record["system_event_id"],
            resource_id=record["resource_id"],
            provider_origin=_enum(ProviderOrigin, record["provider_origin"], "provider_origin"),
            native_event_id=record["native_event_id"],
            change=change,
            version=record["version"],
            emitted_at=_utc(meta["emitted_at"], "emitted_at"),
            sync_sequence_token=meta["sync_sequence_token"],
            latency_ms=meta["latency_ms"],
            series_id=record["series_id"],
            start_utc=None if temporal is None else _utc(temporal["start_utc"], "start_utc"),
            end_utc=None if temporal is None else _utc(temporal["end_utc"], "end_utc"),
            is_all_day=None if temporal is None else temporal["is_all_day"],
            transparency=None
            if operational is None
            else _enum(Transparency, operational["transparency"], "transparency"),
            status_intent=None
            if operational is None
            else _enum(StatusIntent, operational["status_intent"], "status_intent"),
        )
    except (KeyError, TypeError) as exc:
        raise CodecError(f"not a calsync.v1.UnifiedEvent record: {exc!r}") from exc


# -- bytes -------------------------------------------------------------------------


def write_record(schema: Schema, record: Mapping[str, Any], *, key: str) -> bytes:
    """The Avro body of ``record``; ``key`` names its id field in an error."""
    buf = io.BytesIO()
    try:
        schemaless_writer(buf, schema, record)
    except _FASTAVRO_ERRORS as exc:
        raise CodecError(f"cannot encode {record.get(key)!r}: {exc}") from exc
    return buf.getvalue()


def read_record(
    schema: Schema, data: bytes, *, name: str = "calsync.v1.UnifiedEvent"
) -> dict[str, Any]:
    """The record an Avro body of ``schema`` holds, all of it and nothing after it."""
    try:
        buf = io.BytesIO(data)
        record = schemaless_reader(buf, schema, None)
    except _FASTAVRO_ERRORS as exc:
        raise CodecError(f"not a {name}: {exc!r}") from exc
    if buf.tell() != len(data):
        raise CodecError(f"not a {name}: {len(data) - buf.tell()} bytes after the record")
    assert isinstance(record, dict)  # the schema's top level is a record
    return record


def encode_event(event: UnifiedEvent) -> bytes:
    """The Avro body of ``event``; the same event always gives the same bytes.

    Raises :class:`CodecError` (see :func:`to_record`, plus values Avro cannot hold,
    such as a ``latency_ms`` outside a signed 64-bit long).
    """
    return write_record(_SCHEMA, to_record(event), key="system_event_id")


def encode_events(events: Sequence[UnifiedEvent]) -> list[bytes]:
    """The Avro bodies of ``events``: byte for byte ``[encode_event(e) for e in events]``.

    The hot path of a full sync, where one page is hundreds of events of one resource
    with one sync token, latency and emission time: those parts are encoded once per
    call, and the rest is written here directly rather than through the dict form and
    fastavro (about 6 µs per event instead of 22). An event that is not plainly valid
    (a zone other than UTC, a value outside an enum, an upsert without times, ...)
    goes through :func:`encode_event`, which writes it the same way or raises its
    :class:`CodecError`. A test holds the two to the same bytes.
    """
    out: list[bytes] = []
    strings: dict[str, bytes] = {}  # resource ids, mostly one per call
    metadata: dict[tuple[str | None, int | None, datetime], bytes] = {}
    for event in events:
        try:
            body = _fast_body(event, strings, metadata)
        except (AttributeError, TypeError, KeyError, UnicodeEncodeError):
            body = None  # not a plain event: encode_event writes it or says why not
        out.append(encode_event(event) if body is None else body)
    return out


def _zigzag(n: int) -> bytes:
    """An Avro ``long``: zigzag, then base-128 groups, least significant first."""
    n = (n << 1) ^ (n >> 63)
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL: Final = [bytes((n,)) for n in range(0x80)]
_LONG_MIN: Final = -(2**63)
_LONG_MAX: Final = 2**63 - 1
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _string(value: str) -> bytes:
    data = value.encode()
    return _zigzag(len(data)) + data


def _enum_bytes(name: str) -> dict[str, bytes]:
    """Each symbol of the schema's enum ``name``, as the ``long`` of its index."""

    def find(node: Any) -> list[str] | None:
        if isinstance(node, dict):
            if node.get("type") == "enum" and node.get("name") == name:
                symbols: list[str] = node["symbols"]
                return symbols
            return next((f for f in map(find, node.values()) if f is not None), None)
        if isinstance(node, list):
            return next((f for f in map(find, node) if f is not None), None)
        return None

    symbols = find(load_schema())
    if symbols is None:
        raise CodecError(f"the schema has no enum {name}")
    return {symbol: _zigzag(i) for i, symbol in enumerate(symbols)}


def _micros(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_ORIGINS: Final = _enum_bytes("ProviderOrigin")
_CHANGES: Final = _enum_bytes("ChangeKind")
_TRANSPARENCY: Final = _enum_bytes("Transparency")
_INTENTS: Final = _enum_bytes("StatusIntent")
# every nullable field of the schema is ["null", X]: branch 0 is null, branch 1 the value
_NULL: Final = b"\x00"
_VALUE: Final = b"\x02"
_BOOL: Final = {False: b"\x00", True: b"\x01"}


def _fast_body(
    event: UnifiedEvent,
    strings: dict[str, bytes],
    metadata: dict[tuple[str | None, int | None, datetime], bytes],
) -> bytes | None:
    """``event``'s Avro body, or None when it is not plainly valid (see :func:`encode_events`)."""
    origin = event.provider_origin
    change = event.change
    if type(origin) is not ProviderOrigin or type(change) is not ChangeKind:
        return None
    if change is ChangeKind.UPSERT:
        start, end, all_day = event.start_utc, event.end_utc, event.is_all_day
        transparency, intent = event.transparency, event.status_intent
        if (
            start is None
            or end is None
            or start.tzinfo is not UTC
            or end.tzinfo is not UTC
            or type(all_day) is not bool
            or type(transparency) is not Transparency
            or type(intent) is not StatusIntent
        ):
            return None
        temporal = _VALUE + _zigzag(_micros(start)) + _zigzag(_micros(end)) + _BOOL[all_day]
        operational = _VALUE + _TRANSPARENCY[transparency.value] + _INTENTS[intent.value]
    elif (
        event.start_utc is None
        and event.end_utc is None
        and event.is_all_day is None
        and event.transparency is None
        and event.status_intent is None
    ):
        temporal = operational = _NULL
    else:
        return None
    token, latency, emitted = event.sync_sequence_token, event.latency_ms, event.emitted_at
    if latency is not None and type(latency) is not int:
        return None
    key = (token, latency, emitted)
    meta = metadata.get(key)
    if meta is None:
        if emitted.tzinfo is not UTC or not (latency is None or _LONG_MIN <= latency <= _LONG_MAX):
            return None
        millis = _micros(emitted) // 1000  # floored, as to_record floors it
        meta = metadata[key] = b"".join(
            (
                _NULL if token is None else _VALUE + _string(token),
                _NULL if latency is None else _VALUE + _zigzag(latency),
                _zigzag(millis),
            )
        )
    resource = strings.get(event.resource_id)
    if resource is None:
        resource = strings[event.resource_id] = _string(event.resource_id)
    series = event.series_id
    return b"".join(
        (
            _string(event.system_event_id),
            resource,
            _ORIGINS[origin.value],
            _string(event.native_event_id),
            _NULL if series is None else _VALUE + _string(series),
            _CHANGES[change.value],
            _string(event.version),
            meta,
            temporal,
            operational,
        )
    )


def decode_event(data: bytes) -> UnifiedEvent:
    """The event an Avro body holds. Raises :class:`CodecError` for anything else,
    including a valid record followed by extra bytes."""
    return from_record(read_record(_SCHEMA, data))


# -- Faust -------------------------------------------------------------------------


class UnifiedEventCodec(codecs.Codec):
    """Faust codec for ``calsync.events`` values: plain Avro body, no framing.

    Writes with fastavro the dict form of :func:`to_record`; accepts a
    :class:`UnifiedEvent` or a dict form (e.g. ``Record.to_representation()`` of a
    Record with ``include_metadata=False``), which it validates and normalizes
    through :func:`from_record`/:func:`to_record` first. Reads back the dict form,
    validated; ``from_record`` turns it into a :class:`UnifiedEvent`.

    There is no Confluent header (magic byte + schema id) because no schema
    registry is in the loop: the schema ships in this package as
    ``unified_event.avsc`` and every producer and consumer reads it from there.

    The schema is parsed once, here in ``__init__``. Raises :class:`CodecError`.
    """

    def __init__(self, children: tuple[CodecT, ...] | None = None, **kwargs: Any) -> None:
        super().__init__(children, **kwargs)
        self._schema: Schema = parse_schema(load_schema())

    def _dumps(self, obj: Any) -> bytes:
        if isinstance(obj, UnifiedEvent):
            record = to_record(obj)
        elif isinstance(obj, Mapping):
            record = to_record(from_record(obj))
        else:
            raise CodecError(f"cannot encode a {type(obj).__name__} as a UnifiedEvent")
        return write_record(self._schema, record, key="system_event_id")

    def _loads(self, s: bytes) -> Any:
        record = read_record(self._schema, s)
        from_record(record)  # validate: a reader of this codec gets a meaningful dict
        return record


def register_codecs() -> None:
    """Register :class:`UnifiedEventCodec` as :data:`CODEC_NAME` with Faust.

    Idempotent: a second call keeps the registered instance. Call it before any
    model or topic that names the codec is used, or install the package so the
    ``faust.codecs`` entry point does it.
    """
    if not isinstance(codecs.codecs.get(CODEC_NAME), UnifiedEventCodec):
        codecs.register(CODEC_NAME, UnifiedEventCodec())
