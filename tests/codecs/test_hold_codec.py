"""``calsync.holds`` records: round trips, the reference Avro library, and evolution."""

from __future__ import annotations

import dataclasses
import io
import json

import avro.io
import avro.schema
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from calsync.availability.holds import Conflict, HoldEvent, HoldEventKind
from calsync.codecs.holds import (
    decode_hold_event,
    encode_hold_event,
    load_hold_schema,
    to_hold_record,
)

EVENT = HoldEvent(
    hold_id="room:a~" + "0" * 32,
    resource_id="room:b",
    kind=HoldEventKind.REJECTED,
    start=1_800_000_000,
    end=1_800_001_800,
    home="room:a",
    participants=("room:a", "room:b"),
    emitted_at=1_799_999_000.25,
    expires_at=None,
    conflict=Conflict("room:b", "busy", 1_800_000_600, 1_800_000_900, 1, "e-1", None, "busy"),
    detail="",
)


def test_round_trip() -> None:
    confirmed = dataclasses.replace(
        EVENT,
        kind=HoldEventKind.CONFIRMED,
        conflict=None,
        expires_at=1_800_001_800.0,
        booking={"state": "not_written", "provider_event_id": None},
    )
    for event in (EVENT, confirmed):
        assert decode_hold_event(encode_hold_event(event)) == event


def test_the_reference_avro_library_reads_our_bytes() -> None:
    schema = avro.schema.parse(json.dumps(load_hold_schema()))
    reader = avro.io.DatumReader(schema)
    record = reader.read(avro.io.BinaryDecoder(io.BytesIO(encode_hold_event(EVENT))))
    assert record["kind"] == "rejected" and record["conflict"]["system_event_id"] == "e-1"


def test_a_newer_writer_with_more_kinds_and_fields_is_readable() -> None:
    """The evolution rules the schema is written for: a later writer adds a kind and a
    field; today's reader resolves the kind to 'unknown' and skips the field."""
    newer = load_hold_schema()
    kind = next(f for f in newer["fields"] if f["name"] == "kind")
    kind["type"]["symbols"].append("rescheduled")
    newer["fields"].append({"name": "channel", "type": "string", "default": ""})
    record = {**to_hold_record(EVENT), "kind": "rescheduled", "channel": "web"}
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(newer), record)
    buf.seek(0)
    read = schemaless_reader(buf, parse_schema(newer), parse_schema(load_hold_schema()))
    assert read["kind"] == "unknown" and "channel" not in read
    assert read["hold_id"] == EVENT.hold_id
