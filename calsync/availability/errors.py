"""Errors of the availability core.

::

    CalsyncError, ValueError
    └── InvalidAvailabilityRequest   a request that can never be answered as asked
        └── RequestTooLarge          a request past a limit; carries limit and value

Both are :class:`ValueError`\\ s too: a web handler answers them with ``400`` and
the message, never with a retry (``retriable`` is ``False``). A stored index value
that cannot be decoded raises :class:`calsync.errors.CodecError` instead.
"""

from __future__ import annotations

from calsync.errors import CalsyncError


class InvalidAvailabilityRequest(CalsyncError, ValueError):
    """The request is malformed: naive datetimes, a non-positive duration, N > M, ..."""


class RequestTooLarge(InvalidAvailabilityRequest):
    """The request passes ``limit`` (its name) of ``maximum``; it asked for ``value``."""

    def __init__(self, message: str, *, limit: str, maximum: object, value: object) -> None:
        super().__init__(message)
        self.limit = limit
        self.maximum = maximum
        self.value = value
