"""Fault injection and request accounting shared by the provider emulators.

Each emulator owns one :class:`FaultInjector`, built with the fault kinds it
knows and a function that renders a firing rule as that provider's error
response (Google's ``{"error": {"errors", "code", "message"}}`` envelope, Graph's
``{"error": {"code", "message", "innerError"}}`` one). Rules, their matching,
probability, ``count`` and ``Retry-After`` handling are the same everywhere, and
so is the JSON a separate process sends to ``POST /_emulator/faults``.

Every emulated API call is kept as a :class:`RecordedRequest`.
"""

from __future__ import annotations

import dataclasses
import email.utils
import math
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Final, Generic, TypeVar, cast

from aiohttp import web

__all__ = [
    "DROPPED",
    "LATENCY",
    "DroppedMark",
    "FaultDecision",
    "FaultInjector",
    "FaultRule",
    "RecordedRequest",
    "format_retry_after",
    "retry_after_seconds",
]

DROPPED: Final = "dropped"
"""``DeliveryRecord.error`` of a push the fault injector dropped."""


class DroppedMark:
    """What every emulator's ``DeliveryRecord`` tells of itself beyond its fields."""

    __slots__ = ()

    status: int | None
    error: str | None

    @property
    def dropped(self) -> bool:
        """Whether the fault injector dropped this push (it never left the emulator)."""
        return self.status is None and self.error == DROPPED


LATENCY: Final = "latency"
"""The one fault kind every emulator knows: delay the call, then let it go on."""

K = TypeVar("K", bound=str)


def format_retry_after(value: float | str) -> str:
    """The ``Retry-After`` header for a rule's ``retry_after``.

    Strings verbatim (HTTP-dates, odd values); whole numbers without a fraction
    (``10``); other numbers as Python writes them (``2.128``).
    """
    if isinstance(value, str):
        return value
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def retry_after_seconds(value: str, now: float) -> float | None:
    """What a ``Retry-After`` value asks for, in seconds from ``now`` (RFC 9110 §10.2.3).

    delay-seconds (fractions too) as written; an HTTP-date as ``max(0, date - now)``;
    None for anything else.
    """
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = max(0.0, when.timestamp() - now)
    return seconds if math.isfinite(seconds) else None


@dataclass(slots=True)
class FaultRule(Generic[K]):
    """One fault: which API calls it hits, how often, and what it answers.

    A rule matches a call when ``method`` (if set) equals the HTTP method and
    ``path`` (if set; a regular expression) is found in the request path. A
    matching rule fires with ``probability``; ``count`` (if set) is how many more
    times it may fire ("the next N calls"). ``retry_after`` (seconds, possibly
    fractional, or an HTTP-date string) is sent verbatim as ``Retry-After``;
    None sends no ``Retry-After``. ``latency`` rules sleep ``seconds`` and let
    the call go on; the others answer with the error body of their kind.

    Which kinds exist is up to the emulator: :meth:`FaultInjector.add` and
    :meth:`FaultInjector.rule_from_json` reject the ones it does not know.
    """

    kind: K
    probability: float = 1.0
    count: int | None = None
    path: str | None = None
    method: str | None = None
    retry_after: float | str | None = None
    seconds: float = 0.0
    fired: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str):
            raise ValueError(f"fault kind must be a string, got {self.kind!r}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        if self.count is not None and self.count < 0:
            raise ValueError("count must be >= 0")
        if self.seconds < 0:
            raise ValueError("seconds must be >= 0")
        if self.path is not None:
            re.compile(self.path)

    def matches(self, method: str, path: str) -> bool:
        """Whether this rule applies to the call (ignoring probability and count)."""
        if self.count is not None and self.count <= 0:
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path is None or re.search(self.path, path) is not None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> FaultRule[Any]:
        """Build a rule from the JSON accepted by ``POST /_emulator/faults``
        (without checking ``kind``; :meth:`FaultInjector.rule_from_json` does)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"fired"}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown fault rule fields: {sorted(unknown)}")
        return cls(**{k: v for k, v in raw.items() if k in known})

    def to_json(self) -> dict[str, Any]:
        """The rule as JSON (what ``GET /_emulator/faults`` shows)."""
        return dataclasses.asdict(self)


@dataclass(slots=True)
class FaultDecision(Generic[K]):
    """What the rules decided for one call: total ``latency`` and the error rule, if any."""

    latency: float = 0.0
    rule: FaultRule[K] | None = None
    fired_latency: bool = False


Responder = Callable[[FaultRule[K], web.Request], web.Response]
"""Renders a firing error rule as the provider's error response (no ``Retry-After``)."""


class FaultInjector(Generic[K]):
    """Seedable fault rules for API calls and a drop rate for pushes.

    ``kinds`` are the fault kinds the emulator knows (``"latency"`` among them);
    ``respond`` renders a firing error rule for the request it hit. Rules are
    checked in order: every firing ``latency`` rule adds its delay, the first
    firing error rule answers the call. Which calls are subject to faults is up
    to the emulator: API calls, never control routes; a token endpoint only to rules
    whose ``path`` matches it (Google's ``/token``).
    """

    def __init__(self, kinds: Iterable[K], respond: Responder[K], seed: int | None = None) -> None:
        self.kinds: tuple[K, ...] = tuple(kinds)
        self.rules: list[FaultRule[K]] = []
        self.drop_push_probability: float = 0.0
        self.rng = random.Random(seed)
        self._respond = respond

    def seed(self, seed: int | None) -> None:
        """Reseed the random source, for reproducible runs."""
        self.rng.seed(seed)

    def _check_kind(self, kind: str) -> None:
        if kind not in self.kinds:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {self.kinds}")

    def add(
        self,
        kind: K,
        *,
        probability: float = 1.0,
        count: int | None = None,
        path: str | None = None,
        method: str | None = None,
        retry_after: float | str | None = None,
        seconds: float = 0.0,
    ) -> FaultRule[K]:
        """Append a rule and return it (mutate or remove it to change the plan).

        Raises ValueError for a kind this emulator does not know or bad values.
        """
        self._check_kind(kind)
        rule = FaultRule(
            kind=kind,
            probability=probability,
            count=count,
            path=path,
            method=method,
            retry_after=retry_after,
            seconds=seconds,
        )
        self.rules.append(rule)
        return rule

    def rule_from_json(self, raw: Mapping[str, Any]) -> FaultRule[K]:
        """A rule from control-route JSON; ValueError/TypeError when it is not valid here."""
        rule = FaultRule.from_json(raw)
        self._check_kind(rule.kind)
        return cast("FaultRule[K]", rule)

    def clear(self) -> None:
        """Remove every rule and stop dropping pushes."""
        self.rules.clear()
        self.drop_push_probability = 0.0

    def decide(self, method: str, path: str, *, explicit: bool = False) -> FaultDecision[K]:
        """Roll the dice for one call; consumes ``count`` of the rules that fire.

        ``explicit``: only rules with a ``path`` apply (a token endpoint's calls).
        """
        decision: FaultDecision[K] = FaultDecision()
        for rule in self.rules:
            if explicit and rule.path is None:
                continue
            if not rule.matches(method, path):
                continue
            if rule.probability < 1.0 and self.rng.random() >= rule.probability:
                continue
            if rule.count is not None:
                rule.count -= 1
            rule.fired += 1
            if rule.kind == LATENCY:
                decision.latency += rule.seconds
                decision.fired_latency = True
                continue
            decision.rule = rule
            break
        return decision

    def respond(self, rule: FaultRule[K], request: web.Request) -> web.Response:
        """The error response of a firing rule, with its ``Retry-After`` if it has one."""
        response = self._respond(rule, request)
        if rule.retry_after is not None:
            response.headers["Retry-After"] = format_retry_after(rule.retry_after)
        return response

    def should_drop_push(self) -> bool:
        """Whether the next push is silently lost."""
        p = self.drop_push_probability
        return p > 0.0 and self.rng.random() < p

    def to_json(self) -> dict[str, Any]:
        """The whole plan as JSON."""
        return {
            "rules": [r.to_json() for r in self.rules],
            "drop_push_probability": self.drop_push_probability,
        }


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One emulated API or token-endpoint call as the emulator answered it.

    ``time`` is the emulator clock at arrival; ``fault`` names the injected
    fault kind, if any (Graph also names ``"mailbox_concurrency"`` here when it
    answered 429 for a fifth concurrent call on one mailbox).

    ``retry_after`` is the delay the response asked for in its ``Retry-After``
    header, in seconds: a delay-seconds value as sent (fractions kept), an
    HTTP-date converted against the emulator clock when the response was made
    (a date in the past counts as 0). None when the response had no
    ``Retry-After`` or its value is neither a number nor an HTTP-date.

    ``account`` identifies the OAuth grant behind the bearer token (see the
    emulators' ``account_of``) whenever the token was minted by this emulator,
    also when it was answered 401 because it had expired or its grant was
    revoked (``status`` tells). None without a bearer token, for a token the
    emulator never minted, and for token-endpoint calls.

    ``calendar_id`` is the calendar the call was about: the Google calendar named
    in the path (``primary`` resolved the way the API resolves it for that
    grant), or the Graph mailbox's user id (the address it was registered with,
    also when the path used its object id); None for calls without one.
    """

    time: float
    method: str
    path: str
    query: dict[str, list[str]]
    status: int
    fault: str | None = None
    retry_after: float | None = None
    account: str | None = None
    calendar_id: str | None = None
