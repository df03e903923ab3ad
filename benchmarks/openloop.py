"""Open-loop load: requests start at fixed times, latency counts from the scheduled time.

A closed-loop client (send, wait, send the next) slows down when the server stalls and so
never measures the stall it caused ("coordinated omission"). Here request ``i`` is due at
``start + i / rate`` whatever happened before; it is started as soon as the loop gets to it,
and its latency is measured from when it was *due*, so a stall shows up in every request
that should have been sent during it.

:func:`open_loop` drives any ``call(i) -> bool`` (used in-process for the raw aiokafka
baseline). ``python -m benchmarks.openloop`` is the HTTP load generator that
``benchmarks/run.py`` starts as a separate process, so the client does not share an event
loop (or the GIL) with an in-process server: it reads a JSON spec on stdin (``url``,
``rate``, ``duration``, ``warmup``, ``headers``: a list of header dicts used in turn, and
``expect``: the status that counts as success) and writes a JSON :class:`LoadResult` to
stdout.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["LoadResult", "open_loop", "percentile", "summarize"]


@dataclass(slots=True)
class LoadResult:
    """Latencies (ms, from the scheduled time) of the measured requests, warm-up excluded.

    ``lag_ms`` is how late each request was *started* (the load generator's own delay, part
    of its latency); ``failures`` maps an outcome (status code or exception name) to its
    count; only successful requests have a latency in ``latencies_ms``. ``server_ms`` holds
    the time the server says it spent on each measured answer that carried a
    ``Server-Timing: app;dur=<ms>`` header (the calsync API does), in no particular order.
    """

    rate: float
    duration: float
    warmup: float
    sent: int
    latencies_ms: list[float] = field(default_factory=list)
    lag_ms: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    server_ms: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> LoadResult:
        return cls(**raw)


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (``p`` in 0..100) of ``values``."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(values: Sequence[float]) -> dict[str, float]:
    """n, mean, p50, p95, p99 and max of ``values``."""
    if not values:
        nan = math.nan
        return {"n": 0.0, "mean": nan, "p50": nan, "p95": nan, "p99": nan, "max": nan}
    return {
        "n": float(len(values)),
        "mean": sum(values) / len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values),
    }


async def open_loop(
    call: Callable[[int], Awaitable[bool | str]],
    *,
    rate: float,
    duration: float,
    warmup: float = 0.0,
) -> LoadResult:
    """Run ``call(i)`` at ``rate`` per second for ``warmup + duration`` seconds.

    ``call`` returns ``True`` on success, or a short failure label (or ``False``); an
    exception counts as a failure named by its type. The first ``warmup`` seconds of
    requests are sent but not reported.
    """
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    loop = asyncio.get_running_loop()
    warm = int(warmup * rate)
    total = warm + int(duration * rate)
    interval = 1.0 / rate
    latencies: list[float | None] = [None] * total
    lags: list[float] = [0.0] * total
    outcomes: list[str] = [""] * total

    async def one(i: int, due: float) -> None:
        try:
            result = await call(i)
        except Exception as exc:
            outcomes[i] = type(exc).__name__
            return
        if result is True:
            latencies[i] = (loop.time() - due) * 1000
        else:
            outcomes[i] = str(result or "failed")

    tasks: list[asyncio.Task[None]] = []
    start = loop.time() + 0.05
    for i in range(total):
        due = start + i * interval
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        lags[i] = (loop.time() - due) * 1000
        tasks.append(loop.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start

    measured = range(warm, total)
    return LoadResult(
        rate=rate,
        duration=duration,
        warmup=warmup,
        sent=len(measured),
        latencies_ms=[v for i in measured if (v := latencies[i]) is not None],
        lag_ms=[lags[i] for i in measured],
        failures=dict(Counter(outcomes[i] for i in measured if outcomes[i])),
        elapsed_s=elapsed,
    )


async def _http_load(spec: dict[str, Any]) -> LoadResult:
    """Requests to ``spec["url"]``: ``method`` (POST), ``headers`` (a list, taken in
    turn), ``bodies`` (JSON values taken in turn; none: an empty body), ``expect``
    (the status that counts as success, 202)."""
    import aiohttp

    url = str(spec["url"])
    method = str(spec.get("method", "POST"))
    expect = int(spec.get("expect", 202))
    headers: list[dict[str, str]] = spec["headers"]
    raw = spec.get("bodies")
    bodies: list[bytes | None] = (
        [None if b is None else json.dumps(b).encode() for b in raw] if raw else [b""]
    )
    if any(b for b in bodies):
        headers = [{**h, "Content-Type": "application/json"} for h in headers]
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    server: dict[int, float] = {}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def call(i: int) -> bool | str:
            data, sent = bodies[i % len(bodies)], headers[i % len(headers)]
            async with session.request(method, url, data=data, headers=sent) as resp:
                await resp.read()
                spent = server_timing(resp.headers.get("Server-Timing", ""))
                if spent is not None and resp.status == expect:
                    server[i] = spent
                return True if resp.status == expect else str(resp.status)

        rate, warmup = float(spec["rate"]), float(spec.get("warmup", 0.0))
        result = await open_loop(call, rate=rate, duration=float(spec["duration"]), warmup=warmup)
    warm = int(warmup * rate)  # open_loop's warm-up requests: not reported
    result.server_ms = [ms for i, ms in server.items() if i >= warm]
    return result


def server_timing(header: str) -> float | None:
    """The ``dur`` of the ``app`` metric in a ``Server-Timing`` header, in ms, or None."""
    for metric in header.split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        if name != "app":
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "dur":
                try:
                    return float(value)
                except ValueError:
                    return None
    return None


def main() -> None:
    spec = json.load(sys.stdin)
    result = asyncio.run(_http_load(spec))
    json.dump(result.to_json(), sys.stdout)


if __name__ == "__main__":
    main()
