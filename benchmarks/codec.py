"""avro versus fastavro on ``calsync.events`` values, one UnifiedEvent per record.

Builds ``n`` realistic, distinct events (the three providers in turn, one in ten a
delete, Graph ids and deltaLinks at their real lengths), turns them into the dict form
once, then times, best of three passes each:

- ``fastavro`` encode / decode: ``schemaless_writer`` / ``schemaless_reader`` with the
  schema parsed once;
- ``avro`` encode / decode: the Apache library's ``DatumWriter`` / ``DatumReader``
  (created once) over a ``BinaryEncoder`` / ``BinaryDecoder`` per record;
- ``encode_event`` / ``decode_event``: calsync's hot path, fastavro plus the
  conversion from and to :class:`~calsync.model.UnifiedEvent` and its checks.

It fails (``RuntimeError``) unless both libraries write identical bytes for every
record and read back equal records. :func:`run` returns the numbers, ``BENCHMARK`` is its
section of ``python -m benchmarks.run``; ``python -m benchmarks.codec [-n N]`` prints a
markdown table.
"""

from __future__ import annotations

import argparse
import gc
import io
import random
import string
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import avro.io
import avro.schema
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from benchmarks.harness.benchmark import Benchmark, Context
from benchmarks.harness.report import Section
from calsync.codecs.avro import SCHEMA_PATH, decode_event, encode_event, load_schema, to_record
from calsync.model import (
    Occurrence,
    ProviderOrigin,
    StatusIntent,
    Transparency,
    UnifiedEvent,
)

REPEATS = 3
DEFAULT_N = 20000

_T = TypeVar("_T")

_BASE32HEX = "0123456789abcdefghijklmnopqrstuv"
_BASE64 = string.ascii_letters + string.digits + "+/"


def realistic_events(n: int, *, seed: int = 20261125) -> list[UnifiedEvent]:
    """``n`` distinct events as the sync agent emits them, the same for the same seed."""
    rng = random.Random(seed)
    base = datetime(2026, 12, 1, tzinfo=UTC)

    def chars(alphabet: str, k: int) -> str:
        return "".join(rng.choices(alphabet, k=k))

    events: list[UnifiedEvent] = []
    for i in range(n):
        origin = (ProviderOrigin.GOOGLE, ProviderOrigin.MICROSOFT, ProviderOrigin.CALDAV)[i % 3]
        resource_id = f"res_{rng.getrandbits(48):012x}"
        start = base + timedelta(minutes=15 * rng.randrange(90 * 24 * 4))
        if origin is ProviderOrigin.GOOGLE:
            series = chars(_BASE32HEX, 26)
            native = f"{series}_{start:%Y%m%dT%H%M%SZ}"
            token = chars(_BASE64, 26) + "=="
        elif origin is ProviderOrigin.MICROSOFT:
            series = "AAMkAGI2" + chars(_BASE64, 144)
            native = "AAMkAGI2" + chars(_BASE64, 144)
            token = (
                "https://graph.microsoft.com/v1.0/users/"
                f"{rng.getrandbits(128):032x}/calendarView/delta?$deltatoken="
                + chars(_BASE64 + "-_", 180)
            )
        else:
            series = f"{rng.getrandbits(128):032x}@calendar.example.com"
            native = f"{series}#{start:%Y%m%dT%H%M%SZ}"
            token = f"http://radicale.org/ns/sync/{rng.getrandbits(160):040x}"
        emitted_at = base - timedelta(days=1) + timedelta(milliseconds=37 * i)
        latency_ms = rng.randrange(40, 2500)
        if i % 10 == 9:
            events.append(
                UnifiedEvent.delete(
                    origin,
                    resource_id,
                    native,
                    emitted_at=emitted_at,
                    sync_sequence_token=token,
                    latency_ms=latency_ms,
                    series_id=series,
                )
            )
            continue
        all_day = rng.random() < 0.05
        occurrence = Occurrence(
            native_event_id=native,
            start_utc=start.replace(hour=0, minute=0) if all_day else start,
            end_utc=(start.replace(hour=0, minute=0) + timedelta(days=1))
            if all_day
            else start + timedelta(minutes=rng.choice((15, 30, 45, 60, 90, 120))),
            is_all_day=all_day,
            transparency=Transparency.TRANSPARENT if all_day else Transparency.OPAQUE,
            status_intent=rng.choice(
                (StatusIntent.BUSY,) * 6
                + (StatusIntent.TENTATIVE, StatusIntent.FREE, StatusIntent.OUT_OF_OFFICE)
            ),
            series_id=series if rng.random() < 0.6 else None,
        )
        events.append(
            UnifiedEvent.upsert(
                origin,
                resource_id,
                occurrence,
                emitted_at=emitted_at,
                sync_sequence_token=token,
                latency_ms=latency_ms,
            )
        )
    return events


def _best_of(work: Callable[[], _T], repeats: int = REPEATS) -> tuple[float, _T]:
    """The shortest of ``repeats`` runs of ``work`` (seconds, with GC off as in timeit)
    and the result of the last run."""
    best = float("inf")
    result: _T | None = None
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            started = time.perf_counter()
            result = work()
            best = min(best, time.perf_counter() - started)
        finally:
            gc.enable()
    assert result is not None
    return best, result


def run(n: int = DEFAULT_N) -> dict[str, float]:
    """Time both libraries on ``n`` records; see the module docstring for the keys'
    meaning. Every ``*_records_per_s`` has a matching ``*_us_per_record``;
    ``encode_speedup``/``decode_speedup`` are fastavro's rate over avro's."""
    if n < 1:
        raise ValueError("n must be at least 1")
    events = realistic_events(n)
    records = [to_record(event) for event in events]

    fast_schema = parse_schema(load_schema())
    reference_schema = avro.schema.parse(SCHEMA_PATH.read_text(encoding="utf-8"))
    datum_writer = avro.io.DatumWriter(reference_schema)
    datum_reader = avro.io.DatumReader(reference_schema)

    def fastavro_encode() -> list[bytes]:
        out = []
        for record in records:
            buf = io.BytesIO()
            schemaless_writer(buf, fast_schema, record)
            out.append(buf.getvalue())
        return out

    def avro_encode() -> list[bytes]:
        out = []
        for record in records:
            buf = io.BytesIO()
            datum_writer.write(record, avro.io.BinaryEncoder(buf))
            out.append(buf.getvalue())
        return out

    def calsync_encode() -> list[bytes]:
        return [encode_event(event) for event in events]

    timings: dict[str, float] = {}
    timings["fastavro_encode"], fast_bytes = _best_of(fastavro_encode)
    timings["avro_encode"], reference_bytes = _best_of(avro_encode)
    timings["encode_event"], calsync_bytes = _best_of(calsync_encode)
    if not fast_bytes == reference_bytes == calsync_bytes:
        raise RuntimeError("fastavro, avro and encode_event wrote different bytes")

    def fastavro_decode() -> list[Any]:
        return [schemaless_reader(io.BytesIO(data), fast_schema, None) for data in fast_bytes]

    def avro_decode() -> list[Any]:
        return [datum_reader.read(avro.io.BinaryDecoder(io.BytesIO(data))) for data in fast_bytes]

    def calsync_decode() -> list[UnifiedEvent]:
        return [decode_event(data) for data in fast_bytes]

    timings["fastavro_decode"], fast_records = _best_of(fastavro_decode)
    timings["avro_decode"], reference_records = _best_of(avro_decode)
    timings["decode_event"], decoded_events = _best_of(calsync_decode)
    # Aware datetimes compare by instant, so avro's own UTC tzinfo compares equal.
    if not records == fast_records == reference_records or decoded_events != events:
        raise RuntimeError("fastavro, avro and decode_event read different records")

    results: dict[str, float] = {
        "n": float(n),
        "repeats": float(REPEATS),
        "payload_bytes_mean": sum(map(len, fast_bytes)) / n,
        "identical_bytes": 1.0,
    }
    for name, seconds in timings.items():
        results[f"{name}_records_per_s"] = n / seconds
        results[f"{name}_us_per_record"] = seconds / n * 1e6
    results["encode_speedup"] = timings["avro_encode"] / timings["fastavro_encode"]
    results["decode_speedup"] = timings["avro_decode"] / timings["fastavro_decode"]
    return results


def markdown(results: dict[str, float]) -> str:
    """The results as a small markdown table."""
    rows: Sequence[tuple[str, str]] = (
        ("fastavro encode (`schemaless_writer`)", "fastavro_encode"),
        ("avro encode (`DatumWriter`)", "avro_encode"),
        ("calsync `encode_event` (fastavro + model conversion)", "encode_event"),
        ("fastavro decode (`schemaless_reader`)", "fastavro_decode"),
        ("avro decode (`DatumReader`)", "avro_decode"),
        ("calsync `decode_event` (fastavro + model conversion)", "decode_event"),
    )
    lines = [
        f"UnifiedEvent Avro codec, {int(results['n']):,} records, best of "
        f"{int(results['repeats'])}, mean payload {results['payload_bytes_mean']:.0f} bytes, "
        "avro and fastavro bytes identical",
        "",
        "| path | records/s | µs/record |",
        "| --- | ---: | ---: |",
    ]
    for label, key in rows:
        lines.append(
            f"| {label} | {results[f'{key}_records_per_s']:,.0f} "
            f"| {results[f'{key}_us_per_record']:.1f} |"
        )
    lines += [
        "",
        f"fastavro / avro: encode {results['encode_speedup']:.1f}x, "
        f"decode {results['decode_speedup']:.1f}x",
    ]
    return "\n".join(lines)


async def section(ctx: Context) -> Section:
    r = run(ctx.opts.codec_records)
    body = [
        "`benchmarks.codec.run()`: the events in memory, no broker; best of "
        f"{int(r['repeats'])} passes. Informational, no target.",
        "",
        *markdown(r).splitlines(),
    ]
    row = (
        f"| fastavro vs avro encode | {r['encode_speedup']:.1f}x "
        f"({r['fastavro_encode_us_per_record']:.1f} vs {r['avro_encode_us_per_record']:.1f} "
        "µs/record) | — | — |"
    )
    return Section(body, [row])


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--codec-records", type=int, default=DEFAULT_N, help="(%(default)s)")


def check(opts: argparse.Namespace) -> str | None:
    return "--codec-records must be ≥ 1" if opts.codec_records < 1 else None


BENCHMARK = Benchmark(
    "codec", "Avro codec: avro vs fastavro per record", section, add_arguments, check, broker=False
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "-n", "--records", type=int, default=DEFAULT_N, help="records per pass (%(default)s)"
    )
    args = parser.parse_args(argv)
    print(markdown(run(args.records)))


if __name__ == "__main__":
    main()
