"""The Google emulator, timing its own ``events.list``, and calendar fixtures."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiohttp import web

from calsync.emulators.google import GoogleEmulator


@dataclass(frozen=True, slots=True)
class ListCall:
    """One events.list call as the emulator served it."""

    calendar_id: str
    incremental: bool
    arrived: float  # time.time()
    service_s: float  # handler time, HTTP parsing and the network excluded


class TimedGoogleEmulator(GoogleEmulator):
    """The Google emulator, also timing its own events.list handler."""

    def __init__(self) -> None:
        super().__init__()
        self.list_calls: list[ListCall] = []

    async def _h_list(self, request: web.Request) -> web.Response:
        arrived, started = time.time(), time.perf_counter()
        try:
            return await super()._h_list(request)
        finally:
            self.list_calls.append(
                ListCall(
                    request.match_info["calendar_id"],
                    "syncToken" in request.query,
                    arrived,
                    time.perf_counter() - started,
                )
            )


def tomorrow() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)


def event_time(start: datetime) -> dict[str, dict[str, str]]:
    """The ``start`` and ``end`` of a 30-minute event at ``start``, as the Calendar API
    takes them."""
    return {
        "start": {"dateTime": start.isoformat()},
        "end": {"dateTime": (start + timedelta(minutes=30)).isoformat()},
    }


def insert_events(
    emulator: GoogleEmulator, calendar_id: str, n: int, *, start: datetime
) -> list[str]:
    """``n`` 30-minute events 5 minutes apart from ``start`` (all inside the horizon)."""
    ids = []
    for i in range(n):
        body = {"summary": f"bench {i}", **event_time(start + timedelta(minutes=5 * i))}
        ids.append(str(emulator.insert_event(calendar_id, body, notify=False)["id"]))
    return ids
