"""Bulk registration: hundreds of rooms from one CSV or JSON-lines file.

Each row is one registration, validated exactly as ``POST /api/resources`` validates
a body (:func:`calsync.gateway.http.validate_registration`). The whole file is
checked before anything is written: one bad row refuses the file, naming its line,
and writes nothing. Registering is idempotent on the resource id (a row registers
the resource again, with what the row says), so a file can be applied twice; a
resource id twice in one file is refused.

* JSON lines: one registration object per line (blank lines skipped).
* CSV (a header row, UTF-8): the columns ``resource_id``, ``provider``,
  ``calendar_id``, ``time_zone``, ``own_address``, any
  ``busy_policy.<switch>`` (``true``/``false``) and the credential fields of each row's
  kind (``refresh_token``; ``username``, ``password``; ``service_account_key``,
  ``subject``; ``tenant``); empty cells are left out.

Limits: :data:`MAX_ROWS` rows and :data:`MAX_BULK_BYTES` bytes.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from typing import Any

from calsync.crypto import SecretBox
from calsync.providers.netpolicy import NetworkPolicy
from calsync.providers.registry import REGISTRY
from calsync.streams.records import Command

MAX_ROWS = 5_000
MAX_BULK_BYTES = 8 * 1024 * 1024
_TOP_LEVEL = frozenset({"resource_id", "provider", "calendar_id", "time_zone", "own_address"})
_CREDENTIALS = frozenset(
    name for spec in REGISTRY.values() for kind in spec.credential_kinds for name in kind
)


class BulkRejected(ValueError):
    """A file that cannot be registered; ``line`` is 1-based (the CSV header is line 1)."""

    def __init__(self, message: str, *, line: int | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.line = line
        self.field = field


def _csv_row(row: Mapping[str, str | None], line: int) -> dict[str, Any]:
    body: dict[str, Any] = {}
    credentials: dict[str, str] = {}
    policy: dict[str, bool] = {}
    for column, raw in row.items():
        if column is None:
            raise BulkRejected("the row has more cells than the header", line=line)
        value = (raw or "").strip()
        if not value:
            continue
        if column in _TOP_LEVEL:
            body[column] = value
        elif column in _CREDENTIALS:
            credentials[column] = value
        elif column.startswith("busy_policy."):
            if value.lower() not in ("true", "false"):
                raise BulkRejected(f"{column} must be true or false", line=line, field=column)
            policy[column.removeprefix("busy_policy.")] = value.lower() == "true"
        else:
            raise BulkRejected(f"unknown column {column!r}", line=line, field=column)
    body["credentials"] = credentials
    if policy:
        body["busy_policy"] = policy
    return body


def parse_rows(content: bytes, *, csv_format: bool) -> list[tuple[int, Any]]:
    """``(line, registration body)`` of every row. Raises :class:`BulkRejected`."""
    if len(content) > MAX_BULK_BYTES:
        raise BulkRejected(f"the file is larger than {MAX_BULK_BYTES} bytes")
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BulkRejected("the file is not UTF-8") from None
    rows: list[tuple[int, Any]] = []
    if csv_format:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            for row in reader:
                if len(rows) >= MAX_ROWS:
                    raise BulkRejected(f"more than {MAX_ROWS} rows")
                rows.append((reader.line_num, _csv_row(row, reader.line_num)))
        except csv.Error as exc:
            raise BulkRejected(f"the CSV does not parse: {exc}", line=reader.line_num) from None
        return rows
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if len(rows) >= MAX_ROWS:
            raise BulkRejected(f"more than {MAX_ROWS} rows")
        try:
            rows.append((number, json.loads(line)))
        except (ValueError, RecursionError):
            raise BulkRejected("the line is not a JSON object", line=number) from None
    return rows


def validate_rows(
    rows: Iterable[tuple[int, Any]],
    secrets: SecretBox,
    *,
    now: float,
    caldav_networks: NetworkPolicy | None = None,
) -> list[Command]:
    """The register command of every row (credentials encrypted), or
    :class:`BulkRejected` for the first bad row or a repeated resource id."""
    from calsync.gateway.http import RequestRejected, validate_registration

    commands: list[Command] = []
    seen: dict[str, int] = {}
    for line, body in rows:
        try:
            command = validate_registration(body, secrets, now=now, caldav_networks=caldav_networks)
        except RequestRejected as exc:
            raise BulkRejected(exc.message, line=line, field=exc.field) from None
        first = seen.setdefault(command.resource_id, line)
        if first != line:
            raise BulkRejected(
                f"resource_id {command.resource_id!r} is also on line {first}",
                line=line,
                field="resource_id",
            )
        commands.append(command)
    if not commands:
        raise BulkRejected("the file has no rows")
    return commands
