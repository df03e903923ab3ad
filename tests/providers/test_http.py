"""The bounded read every provider response goes through (httpx), and its twin for the
token endpoints (requests): a body over the limit is refused after at most the limit,
streamed without a Content-Length, declared by one, or compressed."""

from __future__ import annotations

import asyncio
import functools
import gzip
import http.server
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import trustme

from calsync.errors import (
    AuthorizationRevoked,
    ResponseTooLarge,
    TokenRefreshFailed,
    TransientProviderError,
)
from calsync.model import Window
from calsync.providers.google import GoogleProvider, GoogleTokenSource
from calsync.providers.http import (
    JSON_PAGE_LIMIT,
    TOKEN_RESPONSE_LIMIT,
    BoundedSession,
    read_ahead,
    send_bounded,
)
from calsync.providers.microsoft import MicrosoftTokenSource

LIMIT = 64 * 1024


class Endless(httpx.AsyncByteStream):
    """A body with no Content-Length that never ends; counts the chunks it gave."""

    def __init__(self) -> None:
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            self.sent += 1
            yield b"x" * 4096


async def test_a_streamed_body_over_the_limit_is_refused_after_the_limit() -> None:
    body = Endless()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(ResponseTooLarge) as caught:
            await send_bounded(client, "GET", "https://x.test/", limit=LIMIT, what="test")
    assert caught.value.limit == LIMIT and not caught.value.retriable
    assert body.sent <= LIMIT // 4096 + 1  # stopped reading right after the limit


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    body = Endless()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Length": str(LIMIT + 1)}, stream=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(ResponseTooLarge):
            await send_bounded(client, "GET", "https://x.test/", limit=LIMIT, what="test")
    assert body.sent == 0


async def test_a_compressed_body_is_counted_decoded() -> None:
    bomb = gzip.compress(b"\0" * (LIMIT * 4))
    assert len(bomb) < LIMIT

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=bomb)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(ResponseTooLarge):
            await send_bounded(client, "GET", "https://x.test/", limit=LIMIT, what="test")


async def test_a_body_under_the_limit_is_a_normal_response() -> None:
    data = gzip.compress(b'{"ok": true}')

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["X-Test"] == "1"
        return httpx.Response(
            207, headers={"Content-Encoding": "gzip", "ETag": '"e"'}, content=data
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        response = await send_bounded(
            client, "GET", "https://x.test/", limit=LIMIT, what="test", headers={"X-Test": "1"}
        )
    assert response.status_code == 207
    assert response.json() == {"ok": True}
    assert response.headers["ETag"] == '"e"'
    assert response.request.url == "https://x.test/"


async def test_a_trickling_body_is_cut_off_at_the_deadline() -> None:
    class Trickle(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            while True:
                await asyncio.sleep(0.02)
                yield b"x"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Trickle())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await send_bounded(
                client, "GET", "https://x.test/", limit=LIMIT, what="test", deadline=0.2
            )


# -- requests (token endpoints) --------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    size = 0

    def do_GET(self) -> None:
        # Read the request body first: closing a socket with unread input sends a
        # reset, which the client could see before it reaches the cap.
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        left = self.size
        try:
            while left > 0:
                chunk = b"x" * min(left, 8192)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                left -= len(chunk)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading: what the cap is for

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


def _serve(tls: trustme.LeafCert | None) -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("H", (_Handler,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.configure_cert(context)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    scheme = "https" if tls is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}/", handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def chunked_server() -> Iterator[tuple[str, type[_Handler]]]:
    yield from _serve(None)


def test_the_requests_session_refuses_a_body_over_the_limit(
    chunked_server: tuple[str, type[_Handler]],
) -> None:
    url, handler = chunked_server
    handler.size = LIMIT * 8
    with BoundedSession(limit=LIMIT) as session, pytest.raises(ResponseTooLarge):
        session.get(url)


def test_the_requests_session_reads_a_body_under_the_limit(
    chunked_server: tuple[str, type[_Handler]],
) -> None:
    url, handler = chunked_server
    handler.size = LIMIT
    with BoundedSession(limit=LIMIT) as session:
        response = session.get(url)
    assert response.content == b"x" * LIMIT
    assert response.text == "x" * LIMIT


async def test_the_google_token_endpoint_is_read_under_the_cap(
    chunked_server: tuple[str, type[_Handler]],
) -> None:
    url, handler = chunked_server
    handler.size = TOKEN_RESPONSE_LIMIT * 2
    tokens = GoogleTokenSource(
        refresh_token="rt", token_url=f"{url}token", client_id="c", client_secret="s"
    )
    with pytest.raises(ResponseTooLarge):
        await tokens.access_token()


async def test_the_microsoft_authority_is_read_under_the_cap(tmp_path: Path) -> None:
    # MSAL takes a requests session as http_client: the cap applies to the OpenID
    # configuration it fetches first and to the token endpoint after it
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    for url, handler in _serve(ca.issue_cert("127.0.0.1")):
        handler.size = TOKEN_RESPONSE_LIMIT * 2
        tokens = MicrosoftTokenSource(
            refresh_token="rt",
            authority=f"{url}tenant",
            client_id="c",
            client_secret="s",
            ca_bundle=str(bundle),
        )
        with pytest.raises(ResponseTooLarge):
            await tokens.access_token()
        await tokens.aclose()


class StaticTokens:
    """A Google token source that needs no token endpoint."""

    async def access_token(self, *, force_refresh: bool = False) -> str:
        return "at"


async def test_a_google_page_over_the_limit_is_response_too_large() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        items = [{"id": f"e{i}", "status": "cancelled"} for i in range(500)]
        return httpx.Response(200, json={"items": items, "nextSyncToken": "s1"})

    def build(limit: int) -> GoogleProvider:
        return GoogleProvider(
            client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
            api_url="https://google.test/calendar/v3",
            calendar_id="room@example.com",
            tokens=StaticTokens(),  # type: ignore[arg-type]
            max_response_bytes=limit,
        )

    window = Window(datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    pages = [page async for page in build(JSON_PAGE_LIMIT).fetch_changes(None, window)]
    assert pages[-1].cursor == "s1"
    with pytest.raises(ResponseTooLarge):
        async for _ in build(4096).fetch_changes(None, window):
            pass


class _TokenEndpoint(http.server.BaseHTTPRequestHandler):
    """A token endpoint answering ``status`` with ``body``."""

    status = 503
    body = b'{"error": "backendError"}'

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("status", "body", "raised"),
    [
        (503, b'{"error": "backendError"}', TokenRefreshFailed),
        (429, b'{"error": "rate_limit_exceeded"}', TokenRefreshFailed),
        (400, b'{"error": "invalid_grant"}', AuthorizationRevoked),
    ],
)
async def test_a_token_endpoint_failure_is_refreshing_or_revoked(
    status: int, body: bytes, raised: type[Exception]
) -> None:
    handler = type("T", (_TokenEndpoint,), {"status": status, "body": body})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tokens = GoogleTokenSource(
            refresh_token="rt",
            token_url=f"http://127.0.0.1:{server.server_address[1]}/token",
            client_id="c",
            client_secret="s",
        )
        provider = GoogleProvider(
            client=httpx.AsyncClient(
                transport=httpx.MockTransport(lambda r: httpx.Response(200, json={}))
            ),
            api_url="https://google.test/calendar/v3",
            calendar_id="room@example.com",
            tokens=tokens,
        )
        window = Window(datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
        with pytest.raises(raised):
            async for _ in provider.fetch_changes(None, window):
                pass
    finally:
        server.shutdown()
        server.server_close()


# -- read_ahead: the next page is requested while the caller works on this one -----


class Pages:
    """Three pages behind requests whose start and end are logged; ``fail_at`` fails one."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.log: list[str] = []
        self.fail_at = fail_at
        self.cancelled: list[int] = []

    async def request(self, number: int) -> int:
        self.log.append(f"request {number}")
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.cancelled.append(number)
            raise
        if number == self.fail_at:
            raise TransientProviderError(f"page {number} failed")
        return number

    def after(self, page: int) -> Callable[[], Awaitable[int]] | None:
        return None if page == 3 else functools.partial(self.request, page + 1)


async def test_read_ahead_requests_the_next_page_before_handing_out_this_one() -> None:
    pages = Pages()
    async for page in read_ahead(functools.partial(pages.request, 1), pages.after):
        pages.log.append(f"handled {page}")
    assert pages.log == [
        "request 1",
        "request 2",
        "handled 1",
        "request 3",
        "handled 2",
        "handled 3",
    ]


async def test_read_ahead_raises_a_failed_request_at_its_page_in_order() -> None:
    pages = Pages(fail_at=2)
    handled: list[int] = []
    with pytest.raises(TransientProviderError, match="page 2 failed"):
        async for page in read_ahead(functools.partial(pages.request, 1), pages.after):
            handled.append(page)
    assert handled == [1]


async def test_read_ahead_cancels_the_request_in_flight_when_the_caller_stops() -> None:
    pages = Pages()
    listing = read_ahead(functools.partial(pages.request, 1), pages.after)
    async for page in listing:
        assert page == 1
        break
    await listing.aclose()  # what the event loop's finalizer does for a dropped walk
    await asyncio.sleep(0.05)
    assert pages.cancelled == [2]
    assert "request 3" not in pages.log
