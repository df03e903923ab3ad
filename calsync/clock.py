"""Wall clocks. Production uses :func:`time.time`; tests can run days in seconds.

A :class:`ScaledClock` runs ``rate`` times faster than real time from ``origin``
on; the worker and an emulator given the same origin and rate agree on "now", so
subscription lifetimes of days pass in seconds without changing any logic.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class ScaledClock:
    origin: float
    rate: float

    def __call__(self) -> float:
        return self.origin + (time.time() - self.origin) * self.rate


def make_clock(rate: float, origin: float) -> Clock:
    """``time.time`` at rate 1, else a :class:`ScaledClock`."""
    if rate == 1.0:
        return time.time
    return ScaledClock(origin=origin, rate=rate)
