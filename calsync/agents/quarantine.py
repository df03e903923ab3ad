"""Poison records: decoded in one place, quarantined, never fatal.

The dispatched agents (:mod:`calsync.agents.sync`: notifications, commands,
retries, hold requests) read raw bytes and decode them here. A record that is not
UTF-8 JSON, not an object, or does not have the shape of its record type (a missing
required field, a field of the wrong JSON type) is *quarantined*: one warning is
logged and one ``quarantined`` status event names its topic, partition and offset
(never its contents, which may be anything, secrets included); the caller then
counts it as finished and goes on. So malformed input never blocks a partition and
never kills a worker (a crash replays from the committed offset, and would meet the
same record again: a crash loop).

Only the shape is checked here; what a well-formed record *means* (an unknown command
kind, a register without credentials) is the sync service's business.

Poison records are not copied to ``calsync.deadletter``: that topic holds failed
*work* that ``calsync deadletter replay`` puts back on the notifications topic, and a
record nobody can read is not work. The topic, partition and offset in the status
event are enough to fetch it for inspection while the topic retains it.
"""

from __future__ import annotations

import json
import logging
import typing
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import faust

from calsync.streams.records import StatusEvent

log = logging.getLogger(__name__)

R = TypeVar("R", bound=faust.Record)

#: Status of the event that reports a quarantined record.
QUARANTINED = "quarantined"


class Malformed(ValueError):
    """A record that does not decode to its type; ``reason`` names no payload content."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_record(record_type: type[R], value: bytes | None) -> R:
    """``value`` (JSON bytes) as a ``record_type``; raises :class:`Malformed` if it is
    not UTF-8 JSON, not an object, or a field is missing or of the wrong JSON type
    (nested records are checked the same way)."""
    if value is None:
        raise Malformed("empty record (tombstone)")
    try:
        data = json.loads(value)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError both are
        raise Malformed("not UTF-8 JSON") from None
    _check_shape(record_type, data, record_type.__name__)
    try:
        record = record_type.from_data(data)
    except Exception as exc:  # Faust's own coercion; the message may quote the value
        raise Malformed(f"does not fit {record_type.__name__} ({type(exc).__name__})") from None
    return record


def _check_shape(record_type: type[faust.Record], data: Any, where: str) -> None:
    if not isinstance(data, dict):
        raise Malformed(f"{where}: not a JSON object")
    for name, descriptor in record_type._options.descriptors.items():
        if name not in data or data[name] is None:
            if descriptor.required:
                raise Malformed(f"{where}.{name}: missing")
            continue
        _check_value(descriptor.type, data[name], f"{where}.{name}")


def _check_value(annotation: Any, value: Any, where: str) -> None:
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if args and origin not in (dict, list, tuple, set):  # a union such as ``str | None``
        kinds = [a for a in args if a is not type(None)]
        annotation = kinds[0] if len(kinds) == 1 else Any
        origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, faust.Record):
        _check_shape(annotation, value, where)
        return
    expected: tuple[type, ...] | None = {
        str: (str,),
        bool: (bool,),
        int: (int,),
        float: (int, float),
        dict: (dict,),
        list: (list,),
    }.get(origin or annotation)
    if expected is None:
        return  # Any or a type this module does not know: Faust decides
    if isinstance(value, bool) and bool not in expected:
        raise Malformed(f"{where}: wrong type")
    if not isinstance(value, expected):
        raise Malformed(f"{where}: wrong type")


Report = Callable[[StatusEvent], Awaitable[None]]


class Quarantine:
    """Decodes records for the agents and quarantines the ones that do not decode.

    ``report`` sends a status event (the outbox's ``status``; it returns once the
    broker acknowledged it); if it raises, :meth:`decode` raises too and the agent
    dies: a producer that cannot write is a broken worker, and the restart replays
    the record rather than skipping it unreported.
    """

    def __init__(self, report: Report, *, clock: Callable[[], float]) -> None:
        self._report = report
        self._clock = clock
        #: quarantined records per topic, for ``/api/status``
        self.counts: dict[str, int] = {}

    async def decode(
        self,
        record_type: type[R],
        value: bytes | None,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None = None,
    ) -> R | None:
        """The record, or None once a malformed one has been quarantined (ack it)."""
        try:
            return decode_record(record_type, value)
        except Malformed as exc:
            reason = exc.reason
        self.counts[topic] = self.counts.get(topic, 0) + 1
        # The key is the resource id (routing, not content); undecodable keys are dropped.
        try:
            resource_id = key.decode()[:200] if key is not None else ""
        except UnicodeDecodeError:
            resource_id = ""
        log.warning(
            "quarantined the record at %s[%d]@%d (resource %r): %s",
            topic,
            partition,
            offset,
            resource_id,
            reason,
        )
        await self._report(
            StatusEvent(
                resource_id=resource_id,
                status=QUARANTINED,
                at=self._clock(),
                detail=f"malformed {record_type.__name__}: {reason}",
                data={"topic": topic, "partition": partition, "offset": offset},
            )
        )
        return None
