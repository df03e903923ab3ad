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
``expect``: the status that counts as success; ``client``: ``"lean"`` for
:class:`LeanClient` with precise scheduling) and writes a JSON :class:`LoadResult` to
stdout.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

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
    precise: bool = False,
) -> LoadResult:
    """Run ``call(i)`` at ``rate`` per second for ``warmup + duration`` seconds.

    ``call`` returns ``True`` on success, or a short failure label (or ``False``); an
    exception counts as a failure named by its type. The first ``warmup`` seconds of
    requests are sent but not reported.

    ``precise``: sleep until :data:`SPIN_S` before each due time, then yield to the loop
    until it is due. Plain ``asyncio.sleep`` wakes up to a millisecond late (epoll's
    timeout is whole milliseconds), and that lateness is counted in the latency.
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
        if precise:
            if delay > SPIN_S:
                await asyncio.sleep(delay - SPIN_S)
            # a spin on the clock, not a wait for an event: answers are read meanwhile
            while loop.time() < due:  # noqa: ASYNC110
                await asyncio.sleep(0)
        elif delay > 0:
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


#: with ``precise``, how long before a due time :func:`open_loop` stops sleeping
SPIN_S = 0.002

#: How long :class:`LeanClient` keeps a connection idle for reuse: below the 10 s after
#: which calsync's servers close an idle one (``gateway_read_timeout``), as httpx's 5 s.
KEEPALIVE_S = 5.0


class LeanClient:
    """A minimal HTTP/1.1 client for load generation: keep-alive connections to one
    ``host:port``, one request at a time each (a new connection when all are busy), the
    request written in one piece, the answer read by ``Content-Length`` or chunks.

    It does a few microseconds of Python per request where a full client (aiohttp's)
    does about a millisecond on a small machine; that millisecond would be counted as
    the server's latency. It speaks only what a calsync worker answers (no redirects,
    no compression, no TLS).

    Like any client that keeps connections alive, it never reuses one the server has
    closed or is about to close: one idle for :data:`KEEPALIVE_S` or at its end is
    dropped. (Writing a request into a connection the server closed meanwhile fails
    with ``IncompleteReadError``: a failure of the client, not of the server.)"""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"LeanClient speaks plain http to a host: {url}")
        self.host, self.port = parts.hostname, parts.port or 80
        #: idle connections, the most recently used last, each with when it went idle
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None
    ) -> tuple[int, dict[str, str], bytes]:
        """``(status, headers with lower-case names, body)`` of one request."""
        reader, writer = await self._connection()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {len(body or b'')}")
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split(" ", 2)[1])
            got = {}
            for line in header_lines:
                name, sep, value = line.partition(":")
                if sep:
                    got[name.strip().lower()] = value.strip()
            if "content-length" in got:
                content = await reader.readexactly(int(got["content-length"]))
            elif got.get("transfer-encoding", "").lower() == "chunked":
                content = await _chunks(reader)
            else:
                raise ValueError("an answer with neither Content-Length nor chunks")
        except BaseException:
            writer.close()
            raise
        if got.get("connection", "").lower() == "close":
            writer.close()
        else:
            self._idle.append((reader, writer, time.monotonic()))
        return status, got, content

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """An idle connection still open, or a new one."""
        while self._idle:
            reader, writer, since = self._idle.pop()
            if time.monotonic() - since < KEEPALIVE_S and not (
                reader.at_eof() or writer.is_closing()
            ):
                return reader, writer
            writer.close()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def aclose(self) -> None:
        for _, writer, _ in self._idle:
            writer.close()
        self._idle.clear()


async def _chunks(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers from our servers
            return bytes(out)
        out += await reader.readexactly(size)
        await reader.readexactly(2)


#: ``send(body, headers) -> (status, headers of the answer)``: one request of a load
Sender = Callable[[bytes | None, dict[str, str]], Awaitable[tuple[int, Mapping[str, str]]]]


async def _http_load(spec: dict[str, Any]) -> LoadResult:
    """Requests to ``spec["url"]``: ``method`` (POST), ``headers`` (a list, taken in
    turn), ``bodies`` (JSON values taken in turn; none: an empty body), ``expect``
    (the status that counts as success, 202); ``client``: ``"aiohttp"`` (the default)
    or ``"lean"`` (:class:`LeanClient`, with precise scheduling)."""
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
    lean = spec.get("client", "aiohttp") == "lean"
    server: dict[int, float] = {}
    async with AsyncExitStack() as stack:
        send: Sender
        if lean:
            client = LeanClient(url)
            stack.push_async_callback(client.aclose)
            parts = urlsplit(url)
            path = parts.path + (f"?{parts.query}" if parts.query else "")

            async def send(
                data: bytes | None, sent: dict[str, str]
            ) -> tuple[int, Mapping[str, str]]:
                status, got, _ = await asyncio.wait_for(
                    client.request(method, path, sent, data), 30
                )
                return status, got
        else:
            session = await stack.enter_async_context(
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0, force_close=False),
                    timeout=aiohttp.ClientTimeout(total=30),
                )
            )

            async def send(
                data: bytes | None, sent: dict[str, str]
            ) -> tuple[int, Mapping[str, str]]:
                async with session.request(method, url, data=data, headers=sent) as resp:
                    await resp.read()
                    return resp.status, resp.headers  # names case-insensitive

        async def call(i: int) -> bool | str:
            status, got = await send(bodies[i % len(bodies)], headers[i % len(headers)])
            spent = server_timing(got.get("server-timing", ""))
            if spent is not None and status == expect:
                server[i] = spent
            return True if status == expect else str(status)

        rate, warmup = float(spec["rate"]), float(spec.get("warmup", 0.0))
        result = await open_loop(
            call, rate=rate, duration=float(spec["duration"]), warmup=warmup, precise=lean
        )
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
