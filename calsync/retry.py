"""When to try again: the retry delay policy and timer scheduling, as plain functions.

One policy for every provider: the delay the provider asked for wins (``Retry-After``
as seconds, fractional seconds or an HTTP date, else the rate-limit headers); without
one, exponential backoff with full jitter, capped (:func:`retry_delay`). A refused
subscription waits a doubling delay (:func:`doubling_delay`).

The timers the agents keep are scheduled here too, without I/O: the next
reconciliation (:func:`next_reconcile`), subscription renewal (:func:`next_renewal`)
and CalDAV poll (:func:`next_poll`). Times are epoch seconds; ``rng`` is the jitter.
"""

from __future__ import annotations

import email.utils
import math
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
    """The delay a response asks for, in seconds, or ``None`` if it asks for none.

    ``headers`` is looked up with lower-case names (``httpx.Headers`` is case-insensitive).
    The first of these that applies decides:

    1. ``Retry-After`` (see :func:`parse_retry_after`).
    2. ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers -10, a structured-field list
       like ``"default";r=0;t=30``): the largest ``t`` among members with no quota left
       (``r=0``). If every member still has quota, ``None``: the server says there is no
       reason to wait, so no older header is consulted. Members without ``r``, or with
       ``r=0`` but no ``t``, say nothing and the older headers are read.
    3. ``RateLimit-Reset`` (drafts up to -06, delta seconds), only when
       ``RateLimit-Remaining`` is 0 or absent; a positive remaining means ``None``.
    4. ``X-RateLimit-Reset`` / ``X-Rate-Limit-Reset``: epoch milliseconds (>= 1e12),
       epoch seconds (>= 1e9) or delta seconds.

    Unparsable or non-finite values are skipped; delays are never negative.
    """
    delay = parse_retry_after(headers.get("retry-after"), now=now)
    if delay is not None:
        return delay
    decided, delay = _ratelimit_field(headers.get("ratelimit"))
    if decided:
        return delay
    reset = _reset_seconds(headers.get("ratelimit-reset"), now=now)
    if reset is not None:
        remaining = _number(headers.get("ratelimit-remaining"))
        return reset if remaining is None or remaining <= 0 else None
    for name in ("x-ratelimit-reset", "x-rate-limit-reset"):
        reset = _reset_seconds(headers.get(name), now=now)
        if reset is not None:
            return reset
    return None


def _number(raw: str | None) -> float | None:
    """A finite number, or ``None``."""
    if raw is None:
        return None
    try:
        number = float(raw.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _reset_seconds(raw: str | None, *, now: datetime) -> float | None:
    """Seconds until a reset given as epoch ms, epoch seconds or delta seconds."""
    number = _number(raw)
    if number is None:
        return None
    epoch = now.timestamp()
    if number >= 1e12:  # epoch milliseconds
        return max(0.0, number / 1000 - epoch)
    if number >= 1e9:  # epoch seconds
        return max(0.0, number - epoch)
    return max(0.0, number)


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    """Split ``text`` on ``separator`` except inside double-quoted strings."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _ratelimit_field(raw: str | None) -> tuple[bool, float | None]:
    """Whether a ``RateLimit`` field decides the delay, and the delay it asks for
    (``None``: quota is left, no wait).

    Parsed leniently: list members ``"policy";r=<remaining>;t=<reset>`` (draft -10), and
    also the dictionary form ``limit=10, remaining=0, reset=5`` of drafts -07 to -09.
    """
    if raw is None or not raw.strip():
        return False, None
    members: list[dict[str, str]] = []
    dictionary: dict[str, str] = {}
    for member in _split_outside_quotes(raw, ","):
        item, *params = (part.strip() for part in _split_outside_quotes(member, ";"))
        if not params and "=" in item and not item.startswith('"'):
            key, _, value = item.partition("=")
            dictionary[key.strip().lower()] = value.strip()
            continue
        parsed: dict[str, str] = {}
        for param in params:
            key, _, value = param.partition("=")
            parsed[key.strip().lower()] = value.strip()
        members.append(parsed)
    if dictionary:
        members.append({"r": dictionary.get("remaining", ""), "t": dictionary.get("reset", "")})
    waits: list[float] = []
    exhausted_without_reset = quota_left = False
    for values in members:
        remaining = _number(values.get("r"))
        if remaining is None:
            continue
        if remaining > 0:
            quota_left = True
            continue
        reset = _number(values.get("t"))
        if reset is None:
            exhausted_without_reset = True
        else:
            waits.append(max(0.0, reset))
    if waits:
        return True, max(waits)
    return quota_left and not exhausted_without_reset, None


def backoff_delay(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Full-jitter exponential backoff: uniform in ``[0, min(cap, base * 2**attempt)]``."""
    ceiling = min(cap, base * (2 ** max(0, attempt)))
    return (rng or random).uniform(0, ceiling)


def doubling_delay(
    failures: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """The wait after the ``failures``-th consecutive failure of something retried until
    it works (a push subscription): ``base``, doubling per failure, capped at ``cap``,
    jittered by a tenth either way so that many resources do not retry in step.

    Unlike :func:`backoff_delay` the wait never drops near zero: a refusal is not
    fixed by hammering the provider sooner.
    """
    ceiling = min(cap, base * 2.0 ** max(0, failures - 1))
    return ceiling * (rng or random).uniform(0.9, 1.1)


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


def next_reconcile(now: float, *, period: float, jitter: float, rng: random.Random) -> float:
    """The next reconciliation: ``period`` from ``now``, give or take ``jitter`` of it."""
    spread = period * jitter
    return now + period + rng.uniform(-spread, spread)


def next_renewal(now: float, expires_at: float, *, fraction: float, rng: random.Random) -> float:
    """The renewal of a subscription expiring at ``expires_at``: ``fraction`` of its
    remaining lifetime before expiry, jittered by a tenth of that lead."""
    remaining = expires_at - now
    lead = remaining * fraction
    return now + remaining - lead + rng.uniform(-lead / 10, lead / 10)


def next_catchup(now: float, *, interval: float, rng: random.Random) -> float:
    """The next catch-up delta of a pushed calendar: ``interval`` from ``now``, give or
    take a tenth of it (so calendars registered together do not ask together)."""
    return now + interval * rng.uniform(0.9, 1.1)


def next_poll(
    now: float,
    previous: float,
    *,
    changed: bool,
    low: float,
    high: float,
    rng: random.Random,
) -> tuple[float, float]:
    """The next poll and its interval: ``low`` after a change (or the first time),
    else ``previous`` doubled within ``[low, high]``; the due time is jittered by a
    tenth either way."""
    interval = low if changed or not previous else min(high, max(low, previous * 2))
    return now + interval * rng.uniform(0.9, 1.1), interval
