from __future__ import annotations

import math
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from calsync.providers.registry import rate_limit_specs
from calsync.ratelimit import (
    CONCURRENCY_POLL,
    BucketSpec,
    RateLimiter,
    TokenBucket,
)
from calsync.settings import Settings

# Each grant may round up by ~1e-9 of a token; far below this.
SLACK = 1e-6


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


GENEROUS = BucketSpec(rate=1e6, burst=1e6)


def make_limiter(
    account: BucketSpec, app: BucketSpec = GENEROUS, **kwargs: float
) -> tuple[RateLimiter, Clock]:
    clock = Clock()
    return RateLimiter({"p": (account, app)}, clock=clock, **kwargs), clock


def integral(rates: list[tuple[float, float]], start: float, end: float) -> float:
    """∫ rate over [start, end] for a step function given as (from_time, rate) records."""
    total = 0.0
    for (since, rate), (until, _) in zip(rates, [*rates[1:], (math.inf, 0.0)], strict=True):
        low, high = max(since, start), min(until, end)
        if high > low:
            total += rate * (high - low)
    return total


def assert_within_bound(
    grants: list[float], rates: list[tuple[float, float]], burst: float
) -> None:
    """No closed interval [grants[i], grants[j]] holds more than burst + ∫ rate grants."""
    for i, start in enumerate(grants):
        for j in range(i, len(grants)):
            count = j - i + 1
            allowed = burst + integral(rates, start, grants[j]) + SLACK * count
            assert count <= allowed, (start, grants[j], count, allowed)


# --- the whole limiter, driven by Hypothesis -------------------------------------------

ACCOUNT = BucketSpec(rate=5.0, burst=3.0, concurrency=2)
APP = BucketSpec(rate=8.0, burst=4.0, concurrency=4)
ACCOUNTS = ("a", "b", "c")


class LimiterMachine(RuleBasedStateMachine):
    """Random reserve/release/throttle/success/share/advance sequences over three accounts.

    Checks after every step: a refused reserve changes nothing and never undercuts a hold;
    tokens stay in [0, burst]; in-flight counts respect concurrency. At the end: no
    bucket granted more than burst + ∫ effective_rate in any interval.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.limiter = RateLimiter(
            {"p": (ACCOUNT, APP)}, clock=self.clock, cooldown=1.0, app_window=1.0
        )
        self.grants: dict[str, list[float]] = {}
        self.rates: dict[str, list[tuple[float, float]]] = {}
        self.in_flight = dict.fromkeys(ACCOUNTS, 0)
        self.holds = dict.fromkeys(ACCOUNTS, -math.inf)

    @rule(seconds=st.floats(0, 2) | st.sampled_from([0.0, 0.2, 1 / 3]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(account=st.sampled_from(ACCOUNTS), follow=st.booleans())
    def reserve(self, account: str, follow: bool) -> None:
        before = self.limiter.snapshot()
        delay = self.limiter.reserve("p", account)
        if delay > 0:
            after = self.limiter.snapshot()
            assert {name: after[name] for name in before} == before  # nothing taken
            for name in after.keys() - before.keys():  # a bucket created by this call
                assert after[name]["tokens"] == ACCOUNT.burst
                assert after[name]["in_flight"] == 0
            assert self.clock.now + delay >= self.holds[account]
            if follow:  # a well-behaved caller waits exactly what it was told
                self.clock.advance(delay)
            return
        assert self.clock.now >= self.holds[account]
        self.in_flight[account] += 1
        self.grants.setdefault(f"p/{account}", []).append(self.clock.now)
        self.grants.setdefault("p", []).append(self.clock.now)

    @precondition(lambda self: any(self.in_flight.values()))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        busy = sorted(name for name, count in self.in_flight.items() if count)
        account = data.draw(st.sampled_from(busy))
        self.in_flight[account] -= 1
        self.limiter.release("p", account)

    @rule(
        account=st.sampled_from(ACCOUNTS),
        retry_after=st.none() | st.floats(0, 5) | st.just(-1.0),
    )
    def throttled(self, account: str, retry_after: float | None) -> None:
        self.limiter.throttled("p", account, retry_after)
        if retry_after is not None:
            self.holds[account] = max(self.holds[account], self.clock.now + max(0.0, retry_after))

    @rule(account=st.sampled_from(ACCOUNTS))
    def succeeded(self, account: str) -> None:
        self.limiter.succeeded("p", account)

    @rule(share=st.floats(0.05, 1.0))
    def set_share(self, share: float) -> None:
        self.limiter.set_share("p", share)

    @invariant()
    def buckets_are_sane(self) -> None:
        for name, state in self.limiter.snapshot().items():
            spec = APP if name == "p" else ACCOUNT
            assert 0 <= state["tokens"] <= spec.burst
            assert spec.concurrency is not None
            assert state["in_flight"] <= spec.concurrency
            assert state["effective_rate"] <= spec.rate * state["share"]
            self.rates.setdefault(name, []).append((self.clock.now, state["effective_rate"]))
        for account, count in self.in_flight.items():
            if count:
                assert self.limiter.snapshot()[f"p/{account}"]["in_flight"] == count

    def teardown(self) -> None:
        for name, grants in self.grants.items():
            burst = APP.burst if name == "p" else ACCOUNT.burst
            assert_within_bound(grants, self.rates[name], burst)


LimiterMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=60)
test_limiter_machine = LimiterMachine.TestCase


# --- rate bound, liveness --------------------------------------------------------------


@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("advance"), st.floats(0, 1.5)),
            st.tuples(st.just("reserve"), st.just(0.0)),
            st.tuples(st.just("throttle"), st.just(0.0)),
            st.tuples(st.just("succeed"), st.just(0.0)),
        ),
        max_size=200,
    ),
    rate=st.floats(0.5, 50),
    burst=st.floats(1, 20),
)
def test_never_more_than_burst_plus_rate_times_interval(
    steps: list[tuple[str, float]], rate: float, burst: float
) -> None:
    limiter, clock = make_limiter(BucketSpec(rate=rate, burst=burst), cooldown=0.5)
    grants: list[float] = []
    for kind, seconds in steps:
        if kind == "advance":
            clock.advance(seconds)
        elif kind == "reserve":
            # A greedy caller: waits exactly the delay it is told, then asks again.
            while (delay := limiter.reserve("p", "a")) > 0:
                clock.advance(delay)
            grants.append(clock.now)
            limiter.release("p", "a")
        elif kind == "throttle":
            limiter.throttled("p", "a", None)
        else:
            limiter.succeeded("p", "a")
    # The loose, documented form: at most burst + rate * T, penalties or not.
    assert_within_bound(grants, [(-math.inf, rate)], burst)


@given(rate=st.floats(0.5, 50), burst=st.integers(1, 20), horizon=st.floats(1, 60))
def test_a_greedy_caller_gets_the_whole_rate(rate: float, burst: int, horizon: float) -> None:
    limiter, clock = make_limiter(BucketSpec(rate=rate, burst=burst))
    start = clock.now
    grants = 0
    while True:
        delay = limiter.reserve("p", "a")
        if delay > 0:
            if clock.now + delay > start + horizon:
                break
            clock.advance(delay)
            continue
        grants += 1
        limiter.release("p", "a")
    assert grants >= burst + math.floor(rate * horizon - 1e-6)
    assert grants <= burst + rate * horizon + SLACK * grants


# --- holds -----------------------------------------------------------------------------


@given(
    retry_after=st.floats(0.01, 120),
    spent=st.integers(0, 10),
    probes=st.lists(st.floats(0, 1), max_size=30),
)
def test_throttle_holds_until_retry_after(
    retry_after: float, spent: int, probes: list[float]
) -> None:
    limiter, clock = make_limiter(BucketSpec(rate=10, burst=10))
    for _ in range(spent):
        assert limiter.reserve("p", "a") == 0
        limiter.release("p", "a")
    throttled_at = clock.now
    limiter.throttled("p", "a", retry_after)
    end = throttled_at + retry_after
    for step in probes:
        clock.advance(step * retry_after)
        delay = limiter.reserve("p", "a")
        if clock.now < end:
            assert delay > 0
            assert delay >= end - clock.now
        if delay == 0:
            limiter.release("p", "a")
    # A caller that waits the returned delay is never early, and is then served.
    delay = limiter.reserve("p", "a")
    if delay > 0:
        clock.advance(delay)
        assert limiter.reserve("p", "a") == 0
    assert clock.now >= end


def test_hold_keeps_the_latest_and_releases_without_a_burst() -> None:
    bucket = TokenBucket(BucketSpec(rate=2, burst=10), now=0.0)
    bucket.hold_until(30.0)
    bucket.hold_until(5.0)
    assert bucket.held_until == 30.0
    assert bucket.delay(0.0) == 30.0  # a full bucket: the hold alone
    bucket.penalize(0.0)  # empty, rate 1/s
    assert bucket.delay(10.0) == pytest.approx(21.0)
    # No tokens accrued while held: one second after the hold, exactly one token.
    assert bucket.tokens(31.0) == pytest.approx(1.0)
    assert bucket.delay(31.0) == 0.0


def test_retry_after_edge_values() -> None:
    limiter, _ = make_limiter(BucketSpec(rate=10, burst=10))
    limiter.throttled("p", "a", -5.0)
    assert limiter.snapshot()["p/a"]["held_for"] == 0.0
    limiter.throttled("p", "b", math.inf)  # no hold forever: only the penalty
    assert limiter.snapshot()["p/b"]["held_until"] == 0.0
    assert limiter.reserve("p", "b") == pytest.approx(1 / 5)  # penalized: 5/s, emptied


# --- AIMD ------------------------------------------------------------------------------


def test_penalty_lowers_the_rate_and_successes_restore_it() -> None:
    limiter, clock = make_limiter(BucketSpec(rate=8, burst=8), cooldown=10.0)
    limiter.reserve("p", "a")
    limiter.release("p", "a")
    limiter.throttled("p", "a", None)
    assert limiter.snapshot()["p/a"]["effective_rate"] == 4.0
    assert limiter.snapshot()["p/a"]["tokens"] == 0.0  # emptied: no burst after a throttle
    limiter.throttled("p", "a", None)
    assert limiter.snapshot()["p/a"]["effective_rate"] == 2.0

    clock.advance(9.9)
    for _ in range(20):
        limiter.succeeded("p", "a")  # within the cooldown: ignored
    assert limiter.snapshot()["p/a"]["effective_rate"] == 2.0

    clock.advance(0.2)
    rates = []
    for _ in range(20):
        limiter.succeeded("p", "a")
        rates.append(limiter.snapshot()["p/a"]["effective_rate"])
    assert rates == sorted(rates)
    assert rates[0] == 2.5  # + 1/16 of 8 per success
    assert rates[-1] == 8.0  # back to full speed, never above


def test_the_penalty_has_a_floor() -> None:
    bucket = TokenBucket(BucketSpec(rate=32, burst=1), now=0.0)
    for _ in range(20):
        bucket.penalize(0.0)
    assert bucket.multiplier == 1 / 32
    assert bucket.effective_rate == 1.0


def test_reward_credits_elapsed_time_at_the_old_rate() -> None:
    bucket = TokenBucket(BucketSpec(rate=4, burst=4), now=0.0, cooldown=0.0)
    bucket.penalize(0.0)  # rate 2/s, empty
    bucket.reward(0.5)  # one token accrued at 2/s before the rate rises
    assert bucket.tokens(0.5) == pytest.approx(1.0)
    assert bucket.effective_rate == pytest.approx(2.25)


def test_one_hot_account_does_not_slow_the_others() -> None:
    limiter, clock = make_limiter(BucketSpec(rate=10, burst=10), app_window=5.0)
    for _ in range(5):
        limiter.throttled("p", "a", None)
        clock.advance(1)
    assert limiter.snapshot()["p"]["multiplier"] == 1.0


def test_throttles_from_several_accounts_slow_the_app_lightly() -> None:
    limiter, clock = make_limiter(BucketSpec(rate=10, burst=10), app_window=5.0)
    limiter.throttled("p", "a", 3.0)
    clock.advance(1)
    limiter.throttled("p", "b", 3.0)
    app = limiter.snapshot()["p"]
    assert app["multiplier"] == 0.75
    assert app["held_for"] == 0.0  # Retry-After holds one account, never the app
    clock.advance(6)
    limiter.throttled("p", "c", None)  # too long after b's: no corroboration
    assert limiter.snapshot()["p"]["multiplier"] == 0.75


# --- concurrency, share, misc ----------------------------------------------------------


def test_concurrency_limit_blocks_the_fifth_request() -> None:
    limiter, _ = make_limiter(BucketSpec(rate=10, burst=10, concurrency=4))
    assert [limiter.reserve("p", "a") for _ in range(4)] == [0.0] * 4
    before = limiter.snapshot()
    assert limiter.reserve("p", "a") == CONCURRENCY_POLL
    assert limiter.snapshot() == before  # nothing taken
    assert limiter.reserve("p", "b") == 0.0  # per account
    limiter.release("p", "a")
    assert limiter.reserve("p", "a") == 0.0


def test_concurrency_and_tokens_blocking_together_return_the_longer_wait() -> None:
    limiter, _ = make_limiter(BucketSpec(rate=1, burst=1, concurrency=1))
    assert limiter.reserve("p", "a") == 0.0
    assert limiter.reserve("p", "a") == pytest.approx(1.0)


def test_extra_releases_are_ignored() -> None:
    limiter, _ = make_limiter(BucketSpec(rate=10, burst=10, concurrency=1))
    limiter.release("p", "a")  # never reserved
    assert limiter.reserve("p", "a") == 0.0
    limiter.release("p", "a")
    limiter.release("p", "a")
    assert limiter.snapshot()["p/a"]["in_flight"] == 0
    assert limiter.reserve("p", "a") == 0.0
    assert limiter.reserve("p", "a") == CONCURRENCY_POLL


def test_set_share_quarters_the_app_rate() -> None:
    limiter, clock = make_limiter(
        BucketSpec(rate=1e6, burst=1e6), app=BucketSpec(rate=100, burst=1)
    )
    limiter.set_share("p", 0.25)
    assert limiter.snapshot()["p"]["effective_rate"] == 25.0
    start = clock.now
    grants = 0
    accounts = [f"acct{i}" for i in range(10)]
    while clock.now < start + 10:
        delays = [limiter.reserve("p", name) for name in accounts]
        grants += delays.count(0.0)
        for name, delay in zip(accounts, delays, strict=True):
            if delay == 0:
                limiter.release("p", name)
        clock.advance(min((d for d in delays if d > 0), default=0.0))
    assert 1 + 25 * 10 - 2 <= grants <= 1 + 25 * 10 + 1
    with pytest.raises(ValueError):
        limiter.set_share("p", 0.0)
    with pytest.raises(ValueError):
        limiter.set_share("p", 1.5)


def test_set_share_credits_elapsed_time_at_the_old_share() -> None:
    limiter, clock = make_limiter(GENEROUS, app=BucketSpec(rate=10, burst=10))
    for _ in range(10):
        assert limiter.reserve("p", "a") == 0.0
    clock.advance(0.5)  # five tokens at full share
    limiter.set_share("p", 0.1)
    assert limiter.snapshot()["p"]["tokens"] == pytest.approx(5.0)


def test_unknown_provider_is_unlimited() -> None:
    limiter, _ = make_limiter(BucketSpec(rate=1, burst=1))
    for _ in range(100):
        assert limiter.reserve("caldav", "x") == 0.0
    limiter.release("caldav", "x")
    limiter.throttled("caldav", "x", 30.0)
    limiter.succeeded("caldav", "x")
    limiter.set_share("caldav", 0.5)
    assert limiter.reserve("caldav", "x") == 0.0
    assert set(limiter.snapshot()) == {"p"}


def test_take_without_a_token_is_refused() -> None:
    bucket = TokenBucket(BucketSpec(rate=1, burst=1), now=0.0)
    bucket.take(0.0)
    with pytest.raises(ValueError):
        bucket.take(0.5)
    assert bucket.tokens(0.5) == 0.5
    bucket.hold_until(5.0)
    with pytest.raises(ValueError):
        bucket.take(2.0)


def test_a_clock_going_backwards_credits_nothing() -> None:
    bucket = TokenBucket(BucketSpec(rate=1, burst=1), now=10.0)
    bucket.take(10.0)
    bucket.refill(5.0)
    assert bucket.tokens(5.0) == 0.0
    assert bucket.delay(10.5) == pytest.approx(0.5)


def test_snapshot_describes_every_bucket() -> None:
    limiter, _ = make_limiter(BucketSpec(rate=10, burst=5, concurrency=4))
    assert limiter.reserve("p", "a") == 0.0
    limiter.throttled("p", "b", 7.0)
    snapshot = limiter.snapshot()
    assert set(snapshot) == {"p", "p/a", "p/b"}
    assert snapshot["p/a"] == {
        "effective_rate": 10.0,
        "multiplier": 1.0,
        "share": 1.0,
        "tokens": 4.0,
        "in_flight": 1.0,
        "held_until": 0.0,
        "held_for": 0.0,
    }
    assert snapshot["p/b"]["held_until"] == 1_007.0
    assert snapshot["p/b"]["held_for"] == 7.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate": 0.0, "burst": 1.0},
        {"rate": -1.0, "burst": 1.0},
        {"rate": math.inf, "burst": 1.0},
        {"rate": 1.0, "burst": 0.5},
        {"rate": 1.0, "burst": math.nan},
        {"rate": 1.0, "burst": 1.0, "concurrency": 0},
    ],
)
def test_bucket_spec_rejects_impossible_quotas(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BucketSpec(**kwargs)  # type: ignore[arg-type]


KEY, TOKEN = secrets.token_urlsafe(32), secrets.token_urlsafe(32)


def test_provider_specs_follow_the_documented_quotas() -> None:
    specs = rate_limit_specs(Settings(secret_key=KEY, admin_token=TOKEN))
    google_user, google_app = specs["google"]
    assert google_user == BucketSpec(rate=10.0, burst=10.0)
    assert google_app.rate * 60 == pytest.approx(10_000)
    mailbox, graph_app = specs["microsoft"]
    assert mailbox.rate * 600 == pytest.approx(10_000)
    assert mailbox.concurrency == 4
    assert graph_app.rate * 10 == pytest.approx(130_000)
    assert specs["caldav"][0] == BucketSpec(rate=5.0, burst=10.0)  # polite polling
    custom = rate_limit_specs(Settings(secret_key=KEY, admin_token=TOKEN, google_user_rate=5.0))
    assert custom["google"][0].rate == 5.0
