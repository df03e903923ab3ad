"""Rate-limit arithmetic and the retry delay policy: plain functions, no I/O.

One policy for every provider: the delay the provider asked for wins (``Retry-After``
as seconds, fractional seconds or an HTTP date); without one, exponential backoff
with full jitter, capped.
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Mapping
from datetime import UTC, datetime


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Seconds to wait according to a ``Retry-After`` value, or ``None`` if absent/unparsable.

    Integer and decimal seconds (Graph sends ``2.128``) and HTTP dates (IMF-fixdate and
    the obsolete forms) are understood; a date in the past means 0.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN is not a delay
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def retry_after_from_headers(headers: Mapping[str, str], *, now: datetime) -> float | None:
    """The delay a response asks for: ``Retry-After`` first, then ``X-RateLimit-Reset``."""
    delay = parse_retry_after(headers.get("retry-after"), now=now)
    if delay is not None:
        return delay
    for name in ("x-ratelimit-reset", "x-rate-limit-reset"):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            number = float(raw)
        except ValueError:
            continue
        epoch = now.timestamp()
        if number >= 1e12:  # epoch milliseconds
            return max(0.0, number / 1000 - epoch)
        if number >= 1e9:  # epoch seconds
            return max(0.0, number - epoch)
        return max(0.0, number)
    return None


def backoff_delay(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Full-jitter exponential backoff: uniform in ``[0, min(cap, base * 2**attempt)]``."""
    ceiling = min(cap, base * (2 ** max(0, attempt)))
    return (rng or random).uniform(0, ceiling)


def retry_delay(
    attempt: int,
    *,
    requested: float | None,
    base: float,
    cap: float,
    rng: random.Random | None = None,
) -> float:
    """The delay before ``attempt``: what the provider asked for, else jittered backoff.

    A provider's request is honoured even above ``cap``: no request is ever sent
    before the time a provider asked for.
    """
    if requested is not None:
        return requested
    return backoff_delay(attempt, base=base, cap=cap, rng=rng)
