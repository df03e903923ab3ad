"""A standalone consumer of calsync.events: kafka-python + fastavro, no calsync import.

    python examples/consume_events.py --bootstrap 127.0.0.1:9092 [--group my-service]

Each record is one occurrence (key = resource id): an ``upsert`` carries UTC start
and end and the busy state; a ``delete`` only the ids. ``system_event_id`` is
deterministic, so applying records twice is harmless.
"""

from __future__ import annotations

import argparse
import io
import json
import pathlib

import fastavro
from kafka import KafkaConsumer

SCHEMA = pathlib.Path(__file__).parent.parent / "calsync" / "codecs" / "unified_event.avsc"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="calsync.events")
    parser.add_argument("--group", default=None, help="consumer group (default: none)")
    parser.add_argument("--max-events", type=int, default=0, help="stop after N (0: never)")
    parser.add_argument("--idle-timeout", type=float, default=0, help="stop when idle (s)")
    args = parser.parse_args()

    schema = fastavro.parse_schema(json.loads(SCHEMA.read_text()))
    consumer = KafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        auto_offset_reset="earliest",
        consumer_timeout_ms=int(args.idle_timeout * 1000) if args.idle_timeout else float("inf"),
    )
    busy: dict[str, dict[str, object]] = {}  # a toy availability view: system id -> occurrence
    for count, message in enumerate(consumer, start=1):
        event = fastavro.schemaless_reader(io.BytesIO(message.value), schema)
        if event["change"] == "delete":
            busy.pop(event["system_event_id"], None)
        else:
            busy[event["system_event_id"]] = event
        window = event["temporal_vector"]
        print(
            event["resource_id"],
            event["change"],
            window["start_utc"].isoformat() if window else "-",
            window["end_utc"].isoformat() if window else "-",
            (event["operational_state"] or {}).get("status_intent", "-"),
            f"(known occurrences: {len(busy)})",
            flush=True,
        )
        if args.max_events and count >= args.max_events:
            break
    consumer.close()


if __name__ == "__main__":
    main()
