"""Client-side rate limiting: token buckets with AIMD and hard holds, no I/O, no sleeping.

Every worker keeps one :class:`RateLimiter`. It holds a bucket per (provider, account) —
the quota a provider counts per user or mailbox — and a bucket per provider application,
the quota counted per OAuth client (Google project, Entra app), of which this worker may
use only a :meth:`~RateLimiter.set_share` (owned partitions / all partitions).

Everything is synchronous and clock-injected: :meth:`RateLimiter.reserve` either grants a
request now or says how many seconds to wait, and the caller does the waiting (or hands
the work to the retry topic when the wait is long). Times are seconds on one monotonic
clock. Nothing here is thread-safe: one limiter belongs to one event loop.

Provider feedback adjusts the rate (AIMD, as TCP does): a throttle
(:meth:`~RateLimiter.throttled`) halves the account's rate and empties its bucket, and
honours ``Retry-After`` as a hard hold; successes (:meth:`~RateLimiter.succeeded`) add
the rate back in small steps once a cooldown has passed since the last throttle.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "CONCURRENCY_POLL",
    "BucketSpec",
    "RateLimiter",
    "TokenBucket",
]

#: The delay :meth:`RateLimiter.reserve` returns when only the concurrency limit blocks:
#: a release cannot be foreseen, so the caller polls this often.
CONCURRENCY_POLL = 0.05

# A bucket holding 1 - _EPSILON tokens counts as holding one: float rounding must not
# turn "wait exactly the returned delay" into an endless run of nanosecond waits.
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """The full-speed shape of one quota.

    ``rate`` is tokens per second (> 0), ``burst`` the capacity (>= 1, so a token can
    ever accumulate), ``concurrency`` the most requests in flight at once (``None``:
    unlimited). Raises :class:`ValueError` for anything else.
    """

    rate: float
    burst: float
    concurrency: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"rate must be a positive number, not {self.rate!r}")
        if not (math.isfinite(self.burst) and self.burst >= 1):
            raise ValueError(f"burst must be at least 1, not {self.burst!r}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1 or None, not {self.concurrency!r}")


class TokenBucket:
    """Token bucket with an adaptive multiplier (AIMD) and a hard hold.

    Contract:

    * The bucket starts full (``spec.burst`` tokens) at ``now`` and refills at
      :attr:`effective_rate` up to ``spec.burst``; no tokens accrue while a hold is in
      force, so a hold never ends in a burst.
    * :meth:`take` never drives the token count below zero; hence in any closed
      interval ``[a, b]`` at most ``burst + ∫ effective_rate`` tokens are taken, which is
      at most ``burst + spec.rate * share * (b - a)``.
    * A rate change (:meth:`penalize`, :meth:`reward`, :meth:`refill` before setting
      :attr:`share`) first credits the time elapsed at the old rate.
    * Times passed in must come from one monotonic clock; a time earlier than the last
      one seen is treated as that last time.

    ``decrease`` (0 < d < 1) multiplies the rate on each penalty, down to ``floor``;
    ``increase`` is added on each reward, up to 1.0; ``cooldown`` is how long after a
    penalty rewards are ignored. The in-flight counter (:meth:`acquire_slot`,
    :meth:`release_slot`) is bookkeeping for ``spec.concurrency``; :meth:`delay` and
    :meth:`take` look only at tokens and holds.
    """

    __slots__ = (
        "_cooldown",
        "_decrease",
        "_floor",
        "_held_until",
        "_in_flight",
        "_increase",
        "_multiplier",
        "_penalized_at",
        "_share",
        "_tokens",
        "_updated",
        "spec",
    )

    def __init__(
        self,
        spec: BucketSpec,
        *,
        now: float,
        decrease: float = 0.5,
        floor: float = 1 / 32,
        increase: float = 1 / 16,
        cooldown: float = 10.0,
    ) -> None:
        if not 0 < decrease < 1:
            raise ValueError(f"decrease must be in (0, 1), not {decrease!r}")
        if not 0 < floor <= 1:
            raise ValueError(f"floor must be in (0, 1], not {floor!r}")
        if not increase > 0:
            raise ValueError(f"increase must be positive, not {increase!r}")
        if not cooldown >= 0:
            raise ValueError(f"cooldown must be >= 0, not {cooldown!r}")
        self.spec = spec
        self._decrease = decrease
        self._floor = floor
        self._increase = increase
        self._cooldown = cooldown
        self._tokens = spec.burst
        self._updated = now
        self._multiplier = 1.0
        self._share = 1.0
        self._held_until = -math.inf
        self._penalized_at = -math.inf
        self._in_flight = 0

    @property
    def multiplier(self) -> float:
        """The AIMD factor in ``[floor, 1.0]``: 1.0 is full speed."""
        return self._multiplier

    @property
    def share(self) -> float:
        """The fraction ``(0, 1]`` of ``spec.rate`` this bucket may use (default 1.0).

        Setting it does not credit elapsed time at the old rate; call :meth:`refill`
        first for that. Raises :class:`ValueError` outside ``(0, 1]``.
        """
        return self._share

    @share.setter
    def share(self, value: float) -> None:
        if not 0 < value <= 1:
            raise ValueError(f"share must be in (0, 1], not {value!r}")
        self._share = value

    @property
    def effective_rate(self) -> float:
        """Tokens per second right now: ``spec.rate * multiplier * share``."""
        return self.spec.rate * self._multiplier * self._share

    @property
    def held_until(self) -> float:
        """The end of the current hold (``-inf`` if there never was one)."""
        return self._held_until

    @property
    def in_flight(self) -> int:
        """Requests counted by :meth:`acquire_slot` and not yet released."""
        return self._in_flight

    @property
    def has_slot(self) -> bool:
        """Whether ``spec.concurrency`` allows one more request in flight."""
        return self.spec.concurrency is None or self._in_flight < self.spec.concurrency

    def tokens(self, now: float) -> float:
        """The tokens the bucket holds at ``now``; changes nothing."""
        start = max(self._updated, self._held_until)
        if now <= start:
            return self._tokens
        return min(self.spec.burst, self._tokens + (now - start) * self.effective_rate)

    def delay(self, now: float) -> float:
        """Seconds from ``now`` until one token can be taken; 0.0 if it can be now.

        Exact at the current rate: at least the remaining hold, plus the time to refill
        the missing fraction of a token after it. Consumes nothing.
        """
        missing = 1.0 - self.tokens(now)
        refill = missing / self.effective_rate if missing > _EPSILON else 0.0
        return max(0.0, self._held_until - now) + refill

    def take(self, now: float) -> None:
        """Consume one token at ``now``.

        Raises :class:`ValueError` (and changes nothing) unless ``delay(now) == 0``.
        """
        if self.delay(now) > 0:
            raise ValueError("no token available: check delay() first")
        self.refill(now)
        self._tokens = max(0.0, self._tokens - 1.0)

    def refill(self, now: float) -> None:
        """Credit the tokens accrued up to ``now`` at the current rate."""
        if now <= self._updated:
            return
        self._tokens = self.tokens(now)
        self._updated = now

    def hold_until(self, until: float) -> None:
        """Grant no token before ``until`` (a ``Retry-After``); the latest hold wins.

        No tokens accrue during the hold. An earlier ``until`` than the current hold
        changes nothing.
        """
        self._held_until = max(self._held_until, until)

    def penalize(self, now: float) -> None:
        """A throttle was seen at ``now``: multiply the rate by ``decrease`` (not below
        ``floor``), empty the bucket, and ignore rewards for ``cooldown`` seconds.

        Penalties compound: a provider that keeps refusing is backed off from quickly.
        """
        self.refill(now)
        self._multiplier = max(self._floor, self._multiplier * self._decrease)
        self._tokens = 0.0
        self._penalized_at = max(self._penalized_at, now)

    def reward(self, now: float) -> None:
        """A request succeeded at ``now``: add ``increase`` to the multiplier (up to 1.0),
        unless the last penalty is less than ``cooldown`` seconds old."""
        if now - self._penalized_at < self._cooldown or self._multiplier >= 1.0:
            return
        self.refill(now)
        self._multiplier = min(1.0, self._multiplier + self._increase)

    def acquire_slot(self) -> None:
        """Count one more request in flight (callers check :attr:`has_slot` first)."""
        self._in_flight += 1

    def release_slot(self) -> None:
        """Count one request fewer in flight; never below zero."""
        self._in_flight = max(0, self._in_flight - 1)


class RateLimiter:
    """All buckets of one worker: one per (provider, account key) plus one per provider application.

    A request must get a token from both its account bucket and its provider's app
    bucket, and a free slot in both if their specs limit concurrency. Account buckets are
    created on first use.

    Throttles: :meth:`throttled` always penalizes the account bucket and holds it for
    ``retry_after``. The app bucket is never held (a ``Retry-After`` on one account's
    response says nothing about the others) and is penalized only lightly
    (``app_decrease``, 0.75 by default), and only when a throttle from another account of
    the same provider arrived less than ``app_window`` seconds earlier: one hot account
    is that account's problem, several at once point at the shared quota.
    """

    def __init__(
        self,
        specs: Mapping[str, tuple[BucketSpec, BucketSpec]],
        *,
        clock: Callable[[], float] = time.monotonic,
        cooldown: float = 10.0,
        app_decrease: float = 0.75,
        app_window: float = 10.0,
        concurrency_poll: float = CONCURRENCY_POLL,
    ) -> None:
        """``specs`` maps a provider name (:func:`calsync.providers.registry.rate_limit_specs`) to
        its (per-account spec, per-application spec); providers not in it are unlimited.
        ``cooldown`` is how long after a throttle successes do not restore the rate."""
        if not concurrency_poll > 0:
            raise ValueError(f"concurrency_poll must be positive, not {concurrency_poll!r}")
        self._clock = clock
        self._cooldown = cooldown
        self._app_window = app_window
        self._concurrency_poll = concurrency_poll
        now = clock()
        self._account_specs = {provider: account for provider, (account, _) in specs.items()}
        self._apps = {
            provider: TokenBucket(app, now=now, decrease=app_decrease, cooldown=cooldown)
            for provider, (_, app) in specs.items()
        }
        self._accounts: dict[tuple[str, str], TokenBucket] = {}
        self._last_throttle: dict[str, tuple[str, float]] = {}
        #: Told of every provider response (provider, HTTP status): ``/metrics``.
        self.on_response: Callable[[str, int], None] | None = None
        #: Told of every inline wait for a token (provider, seconds): ``/metrics``.
        self.on_wait: Callable[[str, float], None] | None = None

    def _account(self, provider: str, account: str, now: float) -> TokenBucket:
        key = (provider, account)
        bucket = self._accounts.get(key)
        if bucket is None:
            spec = self._account_specs[provider]
            bucket = self._accounts[key] = TokenBucket(spec, now=now, cooldown=self._cooldown)
        return bucket

    def reserve(self, provider: str, account: str) -> float:
        """Ask to send one request now.

        If both buckets hold a token and have a free slot: take a token from each, count
        one request in flight, and return 0.0 — the caller must then :meth:`release`.
        Otherwise take nothing and return the seconds (> 0) until the tokens would be
        there, at least the remaining hold; when only concurrency blocks, the poll
        interval (``concurrency_poll``, 0.05 s by default). Unknown provider: 0.0 and
        nothing is counted.
        """
        app = self._apps.get(provider)
        if app is None:
            return 0.0
        now = self._clock()
        bucket = self._account(provider, account, now)
        wait = max(bucket.delay(now), app.delay(now))
        if not (bucket.has_slot and app.has_slot):
            wait = max(wait, self._concurrency_poll)
        if wait > 0:
            return wait
        bucket.take(now)
        app.take(now)
        bucket.acquire_slot()
        app.acquire_slot()
        return 0.0

    def release(self, provider: str, account: str) -> None:
        """One request of ``account`` granted by :meth:`reserve` has finished (whatever
        its outcome). Extra releases are ignored; unknown provider or account: no-op."""
        app = self._apps.get(provider)
        bucket = self._accounts.get((provider, account))
        if app is None or bucket is None or bucket.in_flight == 0:
            return
        bucket.release_slot()
        app.release_slot()

    def throttled(self, provider: str, account: str, retry_after: float | None) -> None:
        """The provider answered 429/503/rate-limit for ``account``.

        Penalizes the account bucket and, for a finite ``retry_after`` (seconds; negative
        counts as 0), holds it until then: every :meth:`reserve` before that returns at
        least the remaining hold. See the class docstring for the app bucket.
        Unknown provider: no-op.
        """
        app = self._apps.get(provider)
        if app is None:
            return
        now = self._clock()
        bucket = self._account(provider, account, now)
        bucket.penalize(now)
        if retry_after is not None and math.isfinite(retry_after):
            bucket.hold_until(now + max(0.0, retry_after))
        previous = self._last_throttle.get(provider)
        if previous is not None and previous[0] != account and now - previous[1] < self._app_window:
            app.penalize(now)
        self._last_throttle[provider] = (account, now)

    def succeeded(self, provider: str, account: str) -> None:
        """A request of ``account`` succeeded: reward its bucket and the app bucket (each
        ignores the reward within its cooldown after a penalty)."""
        app = self._apps.get(provider)
        bucket = self._accounts.get((provider, account))
        if app is None:
            return
        now = self._clock()
        if bucket is not None:
            bucket.reward(now)
        app.reward(now)

    def set_share(self, provider: str, share: float) -> None:
        """Let this worker use ``share`` (in ``(0, 1]``) of ``provider``'s app rate.

        Tokens accrued so far are credited at the old share first. Raises
        :class:`ValueError` outside ``(0, 1]``; unknown provider: no-op.
        """
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], not {share!r}")
        app = self._apps.get(provider)
        if app is None:
            return
        app.refill(self._clock())
        app.share = share

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Every bucket's state for status pages and logs.

        Keys are ``"<provider>"`` for app buckets and ``"<provider>/<account>"`` for
        account buckets; values hold ``effective_rate``, ``multiplier``, ``share``,
        ``tokens``, ``in_flight``, ``held_until`` (clock time, 0.0 if never held) and
        ``held_for`` (seconds of hold left).
        """
        now = self._clock()
        named = [(provider, bucket) for provider, bucket in self._apps.items()]
        named += [(f"{p}/{a}", bucket) for (p, a), bucket in self._accounts.items()]
        return {name: _describe(bucket, now) for name, bucket in named}


def _describe(bucket: TokenBucket, now: float) -> dict[str, float]:
    held = bucket.held_until
    return {
        "effective_rate": bucket.effective_rate,
        "multiplier": bucket.multiplier,
        "share": bucket.share,
        "tokens": bucket.tokens(now),
        "in_flight": float(bucket.in_flight),
        "held_until": held if math.isfinite(held) else 0.0,
        "held_for": max(0.0, held - now),
    }
