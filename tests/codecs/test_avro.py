"""The Avro UnifiedEvent codec: round trips, interop with the Apache ``avro`` library,
determinism and rejection of bytes that are not a UnifiedEvent.

Timestamps: ``start_utc``/``end_utc`` are ``timestamp-micros`` and round-trip exactly;
``emitted_at`` is ``timestamp-millis`` and is truncated (floored) to the millisecond on
encode. The round-trip properties therefore draw ``emitted_at`` at millisecond
precision; ``test_emitted_at_is_floored_to_the_millisecond`` covers the truncation.
"""

from __future__ import annotations

import dataclasses
import io
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import avro.io
import avro.schema
import pytest
from faust.serializers import codecs
from hypothesis import given, settings
from hypothesis import strategies as st

from calsync.codecs.avro import (
    CODEC_NAME,
    SCHEMA_PATH,
    UnifiedEventCodec,
    decode_event,
    encode_event,
    encode_events,
    from_record,
    load_schema,
    register_codecs,
    to_record,
)
from calsync.errors import CodecError
from calsync.model import (
    ChangeKind,
    Occurrence,
    ProviderOrigin,
    StatusIntent,
    Transparency,
    UnifiedEvent,
)

CET = timezone(timedelta(hours=1))


# -- factories ---------------------------------------------------------------------


def make_upsert(**overrides: Any) -> UnifiedEvent:
    occurrence = Occurrence(
        native_event_id="7kq3pd0v1e8b2g5h9m4n6s3t1u_20261201T090000Z",
        start_utc=datetime(2026, 12, 1, 9, 0, tzinfo=UTC),
        end_utc=datetime(2026, 12, 1, 9, 30, 0, 250, tzinfo=UTC),
        is_all_day=False,
        transparency=Transparency.OPAQUE,
        status_intent=StatusIntent.TENTATIVE,
        series_id="7kq3pd0v1e8b2g5h9m4n6s3t1u",
    )
    event = UnifiedEvent.upsert(
        ProviderOrigin.GOOGLE,
        "res_8f2c1a",
        occurrence,
        emitted_at=datetime(2026, 11, 30, 12, 0, 0, 123000, tzinfo=UTC),
        sync_sequence_token="CPDAlvWDx70CEPDAlvWDx70CGAU=",
        latency_ms=142,
    )
    return dataclasses.replace(event, **overrides)


def make_delete(**overrides: Any) -> UnifiedEvent:
    event = UnifiedEvent.delete(
        ProviderOrigin.MICROSOFT,
        "res_8f2c1a",
        "AAMkAGI2TG93AAA=",
        emitted_at=datetime(2026, 11, 30, 12, 0, 1, tzinfo=UTC),
    )
    return dataclasses.replace(event, **overrides)


def _floor_ms(value: datetime) -> datetime:
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


utc_datetimes = st.datetimes(
    min_value=datetime(1970, 1, 1),
    max_value=datetime(2200, 12, 31, 23, 59, 59, 999999),
    timezones=st.just(UTC),
)
texts = st.text(max_size=60)  # Hypothesis leaves out lone surrogates, which UTF-8 cannot hold
optional_texts = st.none() | texts
longs = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@st.composite
def unified_events(draw: st.DrawFn) -> UnifiedEvent:
    change = draw(st.sampled_from(ChangeKind))
    upsert = change is ChangeKind.UPSERT
    return UnifiedEvent(
        system_event_id=draw(texts),
        resource_id=draw(texts),
        provider_origin=draw(st.sampled_from(ProviderOrigin)),
        native_event_id=draw(texts),
        change=change,
        version=draw(texts),
        emitted_at=draw(utc_datetimes.map(_floor_ms)),
        sync_sequence_token=draw(optional_texts),
        latency_ms=draw(st.none() | longs),
        series_id=draw(optional_texts),
        start_utc=draw(utc_datetimes) if upsert else None,
        end_utc=draw(utc_datetimes) if upsert else None,
        is_all_day=draw(st.booleans()) if upsert else None,
        transparency=draw(st.sampled_from(Transparency)) if upsert else None,
        status_intent=draw(st.sampled_from(StatusIntent)) if upsert else None,
    )


# -- the Apache reference implementation -------------------------------------------

REFERENCE_SCHEMA = avro.schema.parse(SCHEMA_PATH.read_text(encoding="utf-8"))


def reference_encode(record: Any) -> bytes:
    buf = io.BytesIO()
    avro.io.DatumWriter(REFERENCE_SCHEMA).write(record, avro.io.BinaryEncoder(buf))
    return buf.getvalue()


def reference_decode(data: bytes) -> Any:
    buf = io.BytesIO(data)
    record = avro.io.DatumReader(REFERENCE_SCHEMA).read(avro.io.BinaryDecoder(buf))
    assert buf.tell() == len(data)
    return record


# -- the schema --------------------------------------------------------------------


def _walk(schema: Any) -> Any:
    """Every named type and field of the schema, depth first."""
    if isinstance(schema, list):
        for branch in schema:
            yield from _walk(branch)
    elif isinstance(schema, dict):
        yield schema
        for field in schema.get("fields", []):
            yield field
            yield from _walk(field["type"])
        if isinstance(schema.get("type"), dict | list):
            yield from _walk(schema["type"])


def test_schema_is_calsync_v1_unified_event() -> None:
    schema = load_schema()
    assert (schema["namespace"], schema["name"]) == ("calsync.v1", "UnifiedEvent")
    assert [f["name"] for f in schema["fields"]] == [
        "system_event_id",
        "resource_id",
        "provider_origin",
        "native_event_id",
        "series_id",
        "change",
        "version",
        "synchronization_metadata",
        "temporal_vector",
        "operational_state",
    ]


def test_every_field_and_type_has_a_doc_and_every_enum_a_default() -> None:
    named = [node for node in _walk(load_schema()) if "name" in node]
    assert len(named) == 26  # 1 + 3 records, 4 enums, 18 fields
    for node in named:
        assert node.get("doc"), node["name"]
    enums = [node for node in named if node.get("type") == "enum"]
    assert len(enums) == 4
    for node in enums:
        assert node["default"] in node["symbols"], node["name"]


@pytest.mark.parametrize(
    "enum_name, enum",
    [
        ("ProviderOrigin", ProviderOrigin),
        ("ChangeKind", ChangeKind),
        ("Transparency", Transparency),
        ("StatusIntent", StatusIntent),
    ],
)
def test_enum_symbols_match_the_model(enum_name: str, enum: Any) -> None:
    (node,) = [n for n in _walk(load_schema()) if n.get("name") == enum_name]
    assert node["symbols"] == [member.value for member in enum]


def test_load_schema_returns_a_fresh_dict() -> None:
    load_schema()["name"] = "Mutated"
    assert load_schema()["name"] == "UnifiedEvent"


# -- round trips -------------------------------------------------------------------


@pytest.mark.parametrize("event", [make_upsert(), make_delete()], ids=["upsert", "delete"])
def test_encode_decode_round_trip(event: UnifiedEvent) -> None:
    decoded = decode_event(encode_event(event))
    assert decoded == event
    for value in (decoded.emitted_at, decoded.start_utc, decoded.end_utc):
        assert value is None or value.tzinfo is UTC


def test_other_zones_are_written_as_the_same_instant_and_read_as_utc() -> None:
    event = make_upsert(
        start_utc=datetime(2026, 12, 1, 10, 0, tzinfo=CET),
        emitted_at=datetime(2026, 11, 30, 13, 0, 0, 123000, tzinfo=CET),
    )
    decoded = decode_event(encode_event(event))
    assert decoded.start_utc == datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    assert decoded.start_utc is not None and decoded.start_utc.tzinfo is UTC
    assert decoded.emitted_at.tzinfo is UTC
    assert decoded == event


@given(unified_events())
def test_any_valid_event_round_trips_exactly(event: UnifiedEvent) -> None:
    assert decode_event(encode_event(event)) == event
    assert from_record(to_record(event)) == event


@given(utc_datetimes)
def test_emitted_at_is_floored_to_the_millisecond(emitted_at: datetime) -> None:
    event = make_delete(emitted_at=emitted_at)
    assert to_record(event)["synchronization_metadata"]["emitted_at"] == _floor_ms(emitted_at)
    assert decode_event(encode_event(event)).emitted_at == _floor_ms(emitted_at)


# -- the Faust codec ---------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    register_codecs()


def test_register_codecs_is_idempotent() -> None:
    first = codecs.get_codec(CODEC_NAME)
    register_codecs()
    assert codecs.get_codec(CODEC_NAME) is first
    assert isinstance(first, UnifiedEventCodec)


@pytest.mark.parametrize("event", [make_upsert(), make_delete()], ids=["upsert", "delete"])
def test_faust_codec_round_trip_by_name(event: UnifiedEvent) -> None:
    data = codecs.dumps(CODEC_NAME, event)
    assert data == encode_event(event)
    record = codecs.loads(CODEC_NAME, data)
    assert record == to_record(event)
    assert from_record(record) == event


@pytest.mark.parametrize("event", [make_upsert(), make_delete()], ids=["upsert", "delete"])
def test_faust_codec_encodes_the_dict_form(event: UnifiedEvent) -> None:
    codec = codecs.get_codec(CODEC_NAME)
    data = codec.dumps(to_record(event))
    assert data == encode_event(event)
    assert from_record(codec.loads(data)) == event


def test_faust_codec_chains() -> None:
    event = make_upsert()
    data = codecs.dumps(f"{CODEC_NAME}|binary", event)
    assert from_record(codecs.loads(f"{CODEC_NAME}|binary", data)) == event


def test_faust_codec_refuses_what_is_not_an_event() -> None:
    codec = codecs.get_codec(CODEC_NAME)
    with pytest.raises(CodecError):
        codec.dumps(["not", "an", "event"])
    with pytest.raises(CodecError):
        codec.dumps({"change": "upsert"})
    with pytest.raises(CodecError):
        codec.loads(b"\xff\xff")


# -- interop with the Apache avro library ------------------------------------------


@pytest.mark.parametrize("event", [make_upsert(), make_delete()], ids=["upsert", "delete"])
def test_fastavro_bytes_read_by_reference_library(event: UnifiedEvent) -> None:
    record = reference_decode(encode_event(event))
    assert record == to_record(event)
    assert from_record(record) == event


@pytest.mark.parametrize("event", [make_upsert(), make_delete()], ids=["upsert", "delete"])
def test_reference_library_bytes_read_by_us(event: UnifiedEvent) -> None:
    data = reference_encode(to_record(event))
    assert data == encode_event(event)
    assert decode_event(data) == event


@settings(max_examples=50)
@given(unified_events())
def test_interop_with_reference_library(event: UnifiedEvent) -> None:
    ours = encode_event(event)
    assert reference_encode(to_record(event)) == ours
    assert from_record(reference_decode(ours)) == event
    assert decode_event(reference_encode(to_record(event))) == event


# -- determinism -------------------------------------------------------------------


def test_same_event_same_bytes() -> None:
    assert encode_event(make_upsert()) == encode_event(make_upsert())
    assert encode_event(make_delete()) == encode_event(make_delete())
    event = make_upsert()
    assert encode_event(event) == encode_event(event)


def test_same_instant_in_another_zone_same_bytes() -> None:
    utc = make_upsert()
    assert utc.start_utc is not None
    cet = make_upsert(start_utc=utc.start_utc.astimezone(CET))
    assert encode_event(cet) == encode_event(utc)


# -- what is refused ---------------------------------------------------------------

VALID = encode_event(make_upsert())


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\xff" * 16,
        b"\x80" * 11,  # a varint that never ends
        VALID[:-1],  # truncated
        VALID + b"\x00",  # trailing bytes
        b"not avro at all, just text",
        "a str, not bytes",
    ],
    ids=["empty", "zero", "ff", "endless-varint", "truncated", "trailing", "text", "str"],
)
def test_garbage_is_a_codec_error(data: Any) -> None:
    with pytest.raises(CodecError):
        decode_event(data)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_an_event_or_a_codec_error(data: bytes) -> None:
    try:
        event = decode_event(data)
    except CodecError:
        return
    # Not necessarily the same bytes (Avro readers accept over-long varints), but a
    # valid event that survives its own round trip.
    assert decode_event(encode_event(event)) == event


def test_schema_valid_upsert_without_times_is_a_codec_error() -> None:
    record = {**to_record(make_upsert()), "temporal_vector": None}
    with pytest.raises(CodecError, match="upsert"):
        decode_event(reference_encode(record))


def test_schema_valid_delete_with_state_is_a_codec_error() -> None:
    record = {
        **to_record(make_delete()),
        "operational_state": to_record(make_upsert())["operational_state"],
    }
    with pytest.raises(CodecError, match="delete"):
        decode_event(reference_encode(record))


@pytest.mark.parametrize(
    "event",
    [
        make_upsert(start_utc=datetime(2026, 12, 1, 9, 0)),  # naive
        make_upsert(emitted_at=datetime(2026, 12, 1, 9, 0)),  # naive
        make_upsert(end_utc=None),
        make_upsert(status_intent=None),
        make_delete(start_utc=datetime(2026, 12, 1, 9, 0, tzinfo=UTC)),
        make_upsert(provider_origin="outlook"),
        make_upsert(latency_ms=2**63),
        make_upsert(series_id=42),
        make_upsert(version="\ud800"),  # a lone surrogate is not UTF-8
    ],
    ids=[
        "naive-start",
        "naive-emitted",
        "upsert-no-end",
        "upsert-no-status",
        "delete-with-start",
        "unknown-provider",
        "latency-overflow",
        "int-series",
        "surrogate",
    ],
)
def test_unrepresentable_event_is_a_codec_error(event: UnifiedEvent) -> None:
    with pytest.raises(CodecError):
        encode_event(event)


def test_from_record_missing_field_is_a_codec_error() -> None:
    record: dict[str, Any] = dict(to_record(make_upsert()))
    del record["resource_id"]
    with pytest.raises(CodecError):
        from_record(record)


# -- encode_events: a page at once, the same bytes -----------------------------------

any_datetimes = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from([UTC, UTC, UTC, CET]),
)
#: values an event should not carry: each must give encode_event's bytes or its error
broken_fields = st.sampled_from(
    [
        {"start_utc": datetime(2026, 12, 1, 9, 0)},  # naive
        {"emitted_at": datetime(2026, 12, 1, 9, 0)},
        {"start_utc": None},
        {"transparency": None},
        {"is_all_day": 1},
        {"status_intent": "busy"},  # the value, not the enum member
        {"status_intent": "maybe"},
        {"provider_origin": "google_calendar_v3"},
        {"change": "upsert"},
        {"latency_ms": 2**63},
        {"latency_ms": True},
        {"latency_ms": 1.5},
        {"native_event_id": "\ud800"},  # a lone surrogate: not UTF-8
        {"sync_sequence_token": 7},
        {"version": None},
    ]
)


@st.composite
def pages(draw: st.DrawFn) -> list[UnifiedEvent]:
    """A page as a sync emits it (one resource, token, latency and emission time,
    mostly), with some events that differ in those or are broken."""
    shared = {
        "resource_id": draw(texts),
        "sync_sequence_token": draw(optional_texts),
        "latency_ms": draw(st.none() | longs),
        "emitted_at": draw(any_datetimes),
    }
    page = []
    for _ in range(draw(st.integers(0, 8))):
        change = draw(st.sampled_from(ChangeKind))
        base = make_upsert() if change is ChangeKind.UPSERT else make_delete()
        fields: dict[str, Any] = {
            "system_event_id": draw(texts),
            "native_event_id": draw(texts),
            "version": draw(texts),
            "series_id": draw(optional_texts),
            "provider_origin": draw(st.sampled_from(ProviderOrigin)),
            **shared,
        }
        if change is ChangeKind.UPSERT:
            fields |= {
                "start_utc": draw(any_datetimes),
                "end_utc": draw(any_datetimes),
                "is_all_day": draw(st.booleans()),
                "transparency": draw(st.sampled_from(Transparency)),
                "status_intent": draw(st.sampled_from(StatusIntent)),
            }
        if draw(st.integers(0, 9)) == 0:
            fields |= {"emitted_at": draw(any_datetimes), "latency_ms": draw(longs)}
        if draw(st.integers(0, 9)) == 0:
            fields |= draw(broken_fields)
        page.append(dataclasses.replace(base, **fields))
    return page


def _outcome(encode: Any) -> Any:
    try:
        return encode()
    except CodecError as exc:
        return ("CodecError", str(exc))


@settings(max_examples=400)
@given(pages())
def test_encode_events_writes_what_encode_event_writes_or_fails_alike(
    page: list[UnifiedEvent],
) -> None:
    expected = _outcome(lambda: [encode_event(e) for e in page])
    assert _outcome(lambda: encode_events(page)) == expected
    if not isinstance(expected, tuple):
        assert [decode_event(data) for data in expected] == [
            from_record(to_record(e)) for e in page
        ]


@pytest.mark.parametrize("latency", [0, 63, 64, -64, -65, 2**63 - 1, -(2**63)])
def test_encode_events_writes_varint_edges_like_fastavro(latency: int) -> None:
    events = [make_upsert(latency_ms=latency), make_delete(latency_ms=latency)]
    assert encode_events(events) == [encode_event(e) for e in events]
