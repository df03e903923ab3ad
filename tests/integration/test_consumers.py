"""What a consumer sees: records on the real topic decode with the Apache ``avro`` library,
``calsync events tail`` and the standalone example print them."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import avro.io
import avro.schema
from aiokafka import AIOKafkaProducer

from calsync.codecs.avro import SCHEMA_PATH, encode_event
from calsync.model import (
    Occurrence,
    ProviderOrigin,
    StatusIntent,
    Transparency,
    UnifiedEvent,
)
from calsync.streams.topics import ensure_topics
from calsync.testing.topics import TopicReader

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2026, 12, 1, 9, tzinfo=UTC)


def sample_events() -> list[UnifiedEvent]:
    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    occurrence = Occurrence(
        "ev1", START, START + timedelta(hours=1), False, Transparency.OPAQUE, StatusIntent.BUSY
    )
    return [
        UnifiedEvent.upsert(
            ProviderOrigin.GOOGLE, "room-1", occurrence, emitted_at=now, latency_ms=5
        ),
        UnifiedEvent.delete(ProviderOrigin.GOOGLE, "room-1", "ev1", emitted_at=now, latency_ms=7),
    ]


async def produce(settings, events: list[UnifiedEvent]) -> None:  # type: ignore[no-untyped-def]
    await asyncio.to_thread(ensure_topics, settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(
                settings.topic("events"), encode_event(event), key=event.resource_id.encode()
            )
    finally:
        await producer.stop()


async def test_topic_records_decode_with_the_reference_avro_library(kafka_settings) -> None:
    settings = kafka_settings()
    await produce(settings, sample_events())
    reader = await TopicReader(settings.kafka_bootstrap, settings.topic("events")).start()
    try:
        await reader.wait_for(lambda r: len(r.values) >= 2, timeout=30)
    finally:
        await reader.aclose()
    schema = avro.schema.parse(Path(str(SCHEMA_PATH)).read_text())
    datum_reader = avro.io.DatumReader(schema)
    decoded = [datum_reader.read(avro.io.BinaryDecoder(io.BytesIO(v))) for v in reader.values]
    upsert, delete = decoded
    assert upsert["change"] == "upsert" and upsert["resource_id"] == "room-1"
    assert upsert["temporal_vector"]["start_utc"] == START
    assert upsert["operational_state"]["status_intent"] == "busy"
    assert upsert["synchronization_metadata"]["latency_ms"] == 5
    assert delete["change"] == "delete" and delete["temporal_vector"] is None
    assert upsert["system_event_id"] == delete["system_event_id"]


async def test_events_tail_and_the_example_print_the_events(kafka_settings) -> None:
    settings = kafka_settings()
    await produce(settings, sample_events())
    env = {**os.environ, **settings.to_env()}
    tail = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "calsync.cli",
            "events",
            "tail",
            "--max-events",
            "2",
            "--timeout",
            "20",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tail.returncode == 0, tail.stderr
    lines = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [line["change"] for line in lines] == ["upsert", "delete"]

    example = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            str(ROOT / "examples" / "consume_events.py"),
            "--bootstrap",
            settings.kafka_bootstrap,
            "--topic",
            settings.topic("events"),
            "--max-events",
            "2",
            "--idle-timeout",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert example.returncode == 0, example.stderr
    out = example.stdout.splitlines()
    assert out[0].startswith("room-1 upsert 2026-12-01T09:00:00+00:00")
    assert out[1].startswith("room-1 delete") and "known occurrences: 0" in out[1]
