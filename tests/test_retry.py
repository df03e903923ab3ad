from __future__ import annotations

import random
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from calsync.retry import backoff_delay, parse_retry_after, retry_after_from_headers, retry_delay

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


def test_retry_after_forms() -> None:
    assert parse_retry_after("120", now=NOW) == 120
    assert parse_retry_after("2.128", now=NOW) == 2.128
    assert parse_retry_after("Wed, 25 Nov 2026 12:00:30 GMT", now=NOW) == 30
    assert parse_retry_after("Wed, 25 Nov 2026 11:00:00 GMT", now=NOW) == 0
    assert parse_retry_after("soon", now=NOW) is None
    assert parse_retry_after(None, now=NOW) is None
    assert parse_retry_after("-5", now=NOW) == 0


def test_rate_limit_reset_headers() -> None:
    epoch = NOW.timestamp()
    assert retry_after_from_headers({"x-ratelimit-reset": str(int(epoch) + 7)}, now=NOW) == 7
    assert retry_after_from_headers({"x-rate-limit-reset": "3"}, now=NOW) == 3
    assert (
        retry_after_from_headers({"x-ratelimit-reset": str(int(epoch * 1000) + 1500)}, now=NOW)
        == 1.5
    )
    both = {"retry-after": "9", "x-ratelimit-reset": "3"}
    assert retry_after_from_headers(both, now=NOW) == 9


@given(attempt=st.integers(0, 40), seed=st.integers())
def test_backoff_is_bounded(attempt: int, seed: int) -> None:
    delay = backoff_delay(attempt, base=0.5, cap=60, rng=random.Random(seed))
    assert 0 <= delay <= min(60, 0.5 * 2**attempt)


def test_requested_delay_wins_even_above_the_cap() -> None:
    assert retry_delay(3, requested=600.0, base=1, cap=60) == 600.0
