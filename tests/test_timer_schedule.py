"""Property tests of the timer schedule (calsync.retry.next_reconcile/renewal/poll)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from calsync.retry import next_poll, next_reconcile, next_renewal

NOW = st.floats(min_value=0, max_value=4e9, allow_nan=False)
SEED = st.integers(min_value=0, max_value=2**32)


@given(
    NOW,
    st.floats(min_value=1, max_value=30 * 86400),
    st.floats(min_value=0, max_value=0.5),
    SEED,
)
def test_reconcile_is_a_period_away_within_the_jitter(
    now: float, period: float, jitter: float, seed: int
) -> None:
    due = next_reconcile(now, period=period, jitter=jitter, rng=random.Random(seed))
    spread = period * jitter
    assert now + period - spread - 1e-6 <= due <= now + period + spread + 1e-6
    assert due > now  # jitter below the period: never in the past


@given(
    NOW,
    st.floats(min_value=1, max_value=30 * 86400),
    st.floats(min_value=0.01, max_value=0.9),
    SEED,
)
def test_renewal_comes_before_expiry_and_after_now(
    now: float, lifetime: float, fraction: float, seed: int
) -> None:
    expires = now + lifetime
    due = next_renewal(now, expires, fraction=fraction, rng=random.Random(seed))
    lead = lifetime * fraction
    assert now <= due < expires
    assert abs((expires - due) - lead) <= lead / 10 + 1e-6


@given(
    NOW,
    st.floats(min_value=0, max_value=10_000),
    st.booleans(),
    st.floats(min_value=0.1, max_value=60),
    st.floats(min_value=1, max_value=100),
    SEED,
)
def test_poll_interval_backs_off_within_bounds(
    now: float, previous: float, changed: bool, low: float, factor: float, seed: int
) -> None:
    high = low * factor
    due, interval = next_poll(
        now, previous, changed=changed, low=low, high=high, rng=random.Random(seed)
    )
    assert low <= interval <= high
    if changed or not previous:
        assert interval == low
    else:
        assert interval == min(high, max(low, previous * 2))
    assert interval * 0.9 - 1e-6 <= due - now <= interval * 1.1 + 1e-6


@given(st.integers(min_value=1, max_value=30), st.floats(min_value=0.1, max_value=60))
def test_a_quiet_calendar_reaches_the_longest_interval_and_stays(steps: int, low: float) -> None:
    high = low * 16
    rng = random.Random(0)
    interval = 0.0
    seen = []
    for _ in range(steps):
        _, interval = next_poll(0.0, interval, changed=False, low=low, high=high, rng=rng)
        seen.append(interval)
    assert seen == sorted(seen)  # never shorter while nothing changes
    if steps >= 5:
        assert interval == high
