from __future__ import annotations

import random
from datetime import UTC, datetime

import httpx
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


def test_ratelimit_field_with_no_quota_left_asks_for_its_reset() -> None:
    assert retry_after_from_headers({"ratelimit": '"default";r=0;t=30'}, now=NOW) == 30
    assert retry_after_from_headers({"ratelimit": "default;r=0;t=2.5"}, now=NOW) == 2.5


def test_ratelimit_field_with_quota_left_asks_for_no_delay() -> None:
    assert retry_after_from_headers({"ratelimit": '"default";r=50;t=30'}, now=NOW) is None
    # ... and is authoritative: the older headers are not read.
    headers = {"ratelimit": '"default";r=5;t=30', "ratelimit-reset": "9", "x-ratelimit-reset": "7"}
    assert retry_after_from_headers(headers, now=NOW) is None


def test_ratelimit_field_takes_the_longest_exhausted_member() -> None:
    field = '"burst";r=0;t=5, "daily";r=0;t=3600, "hourly";r=10;t=60'
    assert retry_after_from_headers({"ratelimit": field}, now=NOW) == 3600
    # Structured-field quoting: delimiters inside a string are not delimiters.
    quoted = '"a,b;c";r=0;t=8, "x\\"y";r=0;t=4'
    assert retry_after_from_headers({"ratelimit": quoted}, now=NOW) == 8
    # Extra parameters, odd spacing and upper-case names are tolerated.
    spaced = ' "default" ; r=0 ; T=12 ; pk=:cHJvamVjdA==: '
    assert retry_after_from_headers({"ratelimit": spaced}, now=NOW) == 12


def test_ratelimit_field_dictionary_form_of_older_drafts() -> None:
    headers = {"ratelimit": "limit=100, remaining=0, reset=20"}
    assert retry_after_from_headers(headers, now=NOW) == 20
    assert (
        retry_after_from_headers({"ratelimit": "limit=100, remaining=3, reset=20"}, now=NOW) is None
    )


def test_ratelimit_field_without_usable_information_falls_through() -> None:
    for field in ("", "garbage", '"default";t=30', '"default";r=0', '"default";r=zero;t=3'):
        assert retry_after_from_headers({"ratelimit": field}, now=NOW) is None
        assert retry_after_from_headers({"ratelimit": field, "ratelimit-reset": "6"}, now=NOW) == 6
    exhausted_no_reset = {"ratelimit": '"a";r=0, "b";r=9;t=1', "x-ratelimit-reset": "4"}
    assert retry_after_from_headers(exhausted_no_reset, now=NOW) == 4


def test_old_draft_ratelimit_reset() -> None:
    assert retry_after_from_headers({"ratelimit-reset": "15"}, now=NOW) == 15
    zero_left = {"ratelimit-reset": "15", "ratelimit-remaining": "0"}
    assert retry_after_from_headers(zero_left, now=NOW) == 15
    quota_left = {"ratelimit-reset": "15", "ratelimit-remaining": "12", "x-ratelimit-reset": "3"}
    assert retry_after_from_headers(quota_left, now=NOW) is None
    unparsable = {"ratelimit-reset": "soon", "x-ratelimit-reset": "3"}
    assert retry_after_from_headers(unparsable, now=NOW) == 3


def test_rate_limit_header_precedence() -> None:
    everything = {
        "retry-after": "9",
        "ratelimit": '"default";r=0;t=30',
        "ratelimit-reset": "15",
        "ratelimit-remaining": "0",
        "x-ratelimit-reset": "3",
    }
    assert retry_after_from_headers(everything, now=NOW) == 9
    del everything["retry-after"]
    assert retry_after_from_headers(everything, now=NOW) == 30
    del everything["ratelimit"]
    assert retry_after_from_headers(everything, now=NOW) == 15
    del everything["ratelimit-reset"]
    assert retry_after_from_headers(everything, now=NOW) == 3
    del everything["x-ratelimit-reset"]
    assert retry_after_from_headers(everything, now=NOW) is None


def test_non_finite_reset_values_are_skipped() -> None:
    assert retry_after_from_headers({"x-ratelimit-reset": "inf"}, now=NOW) is None
    both = {"x-ratelimit-reset": "nan", "x-rate-limit-reset": "5"}
    assert retry_after_from_headers(both, now=NOW) == 5
    assert retry_after_from_headers({"ratelimit": '"d";r=0;t=inf'}, now=NOW) is None


def test_headers_work_with_httpx_headers() -> None:
    headers = httpx.Headers({"RateLimit": '"default";r=0;t=30', "X-RateLimit-Reset": "3"})
    assert retry_after_from_headers(headers, now=NOW) == 30


@given(
    members=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 10_000)), min_size=1, max_size=5)
)
def test_ratelimit_field_is_the_longest_exhausted_reset(members: list[tuple[int, int]]) -> None:
    field = ", ".join(f'"p{i}";r={r};t={t}' for i, (r, t) in enumerate(members))
    exhausted = [t for r, t in members if r == 0]
    expected = max(exhausted) if exhausted else None
    assert retry_after_from_headers({"ratelimit": field}, now=NOW) == expected
