"""Where a CalDAV provider's requests (and Basic credentials) may go, what its errors
say about the network, and how it bounds what it reads. MockTransport scenarios."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import httpx
import pytest

from calsync.errors import ProviderRejected, ResponseTooLarge, TransientProviderError
from calsync.providers.caldav import UNREACHABLE, CalDAVProvider
from calsync.providers.netpolicy import GuardedTransport, NetworkPolicy
from tests.providers.caldav_contract import collect, upserts
from tests.providers.test_caldav import CAL, CALENDAR_PROPS, PATH, multiget_body, sync_body
from tests.providers.test_netpolicy import RecordingBackend

Handler = Callable[[httpx.Request], httpx.Response]
ROOT = "https://dav.example.com/"


def principal_props(href: str) -> str:
    return (
        '<d:multistatus xmlns:d="DAV:"><d:response><d:href>/</d:href><d:propstat><d:prop>'
        f"<d:current-user-principal><d:href>{href}</d:href></d:current-user-principal>"
        "</d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response></d:multistatus>"
    )


def home_props(href: str) -> str:
    return (
        '<d:multistatus xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"><d:response>'
        "<d:href>/p/</d:href><d:propstat><d:prop>"
        f"<c:calendar-home-set><d:href>{href}</d:href></c:calendar-home-set>"
        "</d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response></d:multistatus>"
    )


def home_listing(calendar_path: str) -> str:
    return CALENDAR_PROPS.replace(f"<d:href>{PATH}</d:href>", f"<d:href>{calendar_path}</d:href>")


class Recorder:
    """Answers by (host, path); records every request with whether it carried credentials."""

    def __init__(self, routes: dict[tuple[str, str], Handler]) -> None:
        self.routes = routes
        self.seen: list[tuple[str, str, str, bool]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        self.seen.append((url.scheme, url.host, url.path, "authorization" in request.headers))
        route = self.routes.get((url.host, url.path))
        if route is None:
            return httpx.Response(404)
        return route(request)

    def hosts_with_credentials(self) -> set[str]:
        return {host for _, host, _, auth in self.seen if auth}


def provider(handler: Handler, url: str = ROOT, **kwargs: object) -> CalDAVProvider:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return CalDAVProvider(client=client, url=url, username="u", password="pw", **kwargs)  # type: ignore[arg-type]


def answer(status: int, text: str = "", **headers: str) -> Handler:
    return lambda request: httpx.Response(status, text=text, headers=headers)


# -- redirects -------------------------------------------------------------------------


async def test_a_redirect_to_another_host_is_not_followed() -> None:
    recorder = Recorder(
        {
            ("dav.example.com", "/.well-known/caldav"): answer(
                301, Location="https://evil.example.net/collect"
            ),
            ("evil.example.net", "/collect"): answer(207, principal_props("/p/")),
        }
    )
    with pytest.raises(ProviderRejected, match="another origin"):
        await provider(recorder).discover_calendars()
    assert recorder.hosts_with_credentials() == {"dav.example.com"}
    assert all(host != "evil.example.net" for _, host, _, _ in recorder.seen)


async def test_a_redirect_down_to_http_is_not_followed() -> None:
    recorder = Recorder(
        {
            ("dav.example.com", "/.well-known/caldav"): answer(
                301, Location="http://dav.example.com/dav/"
            ),
        }
    )
    with pytest.raises(ProviderRejected):
        await provider(recorder).discover_calendars()
    assert {scheme for scheme, *_ in recorder.seen} == {"https"}


async def test_a_redirect_to_another_port_is_not_followed() -> None:
    recorder = Recorder(
        {
            ("dav.example.com", "/.well-known/caldav"): answer(
                307, Location="https://dav.example.com:8443/"
            ),
        }
    )
    with pytest.raises(ProviderRejected):
        await provider(recorder).discover_calendars()
    assert len(recorder.seen) == 1


async def test_same_origin_redirects_are_followed_with_credentials() -> None:
    recorder = Recorder(
        {
            ("dav.example.com", "/.well-known/caldav"): answer(301, Location="/dav/"),
            ("dav.example.com", "/dav/"): answer(207, principal_props("/p/")),
            ("dav.example.com", "/p/"): answer(207, home_props("/home/")),
            ("dav.example.com", "/home/"): answer(207, home_listing("/home/work/")),
        }
    )
    (calendar,) = await provider(recorder).discover_calendars()
    assert calendar.url == "https://dav.example.com/home/work/"
    assert all(auth for *_, auth in recorder.seen)


# -- discovered hrefs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "home",
    [
        "https://evil.example.net/home/",
        "http://dav.example.com/home/",  # down to http
        "https://169.254.169.254/latest/",
        "https://u:pw@dav.example.com/home/",  # userinfo
    ],
)
async def test_a_home_set_elsewhere_gets_no_request(home: str) -> None:
    recorder = Recorder(
        {
            ("dav.example.com", "/.well-known/caldav"): answer(207, principal_props("/p/")),
            ("dav.example.com", "/p/"): answer(207, home_props(home)),
        }
    )
    with pytest.raises(ProviderRejected):
        await provider(recorder).discover_calendars()
    assert [path for *_, path, _ in recorder.seen] == ["/.well-known/caldav", "/p/"]


async def test_a_principal_on_another_host_gets_no_request() -> None:
    recorder = Recorder(
        {
            ("dav.example.com", "/.well-known/caldav"): answer(
                207, principal_props("https://evil.example.net/p/")
            ),
        }
    )
    with pytest.raises(ProviderRejected):
        await provider(recorder).discover_calendars()
    assert recorder.hosts_with_credentials() == {"dav.example.com"}


async def test_icloud_partition_hosts_are_reached_over_https() -> None:
    partition = "p42-caldav.icloud.com"
    recorder = Recorder(
        {
            ("caldav.icloud.com", "/.well-known/caldav"): answer(207, principal_props("/1/p/")),
            ("caldav.icloud.com", "/1/p/"): answer(
                207, home_props(f"https://{partition}:443/1/calendars/")
            ),
            (partition, "/1/calendars/"): answer(207, home_listing("/1/calendars/work/")),
        }
    )
    (calendar,) = await provider(recorder, "https://caldav.icloud.com/").discover_calendars()
    assert calendar.url == f"https://{partition}:443/1/calendars/work/"
    assert recorder.hosts_with_credentials() == {"caldav.icloud.com", partition}


async def test_a_calendar_url_with_userinfo_is_refused_before_any_request() -> None:
    recorder = Recorder({})
    with pytest.raises(ProviderRejected, match="credentials"):
        await collect(provider(recorder, "https://u:pw@dav.example.com/cal/"), None)
    assert recorder.seen == []


# -- what errors say -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ConnectTimeout("timed out"),
        httpx.ConnectError("[SSL: WRONG_VERSION_NUMBER] wrong version number"),
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
)
async def test_network_failures_all_say_the_same(failure: httpx.TransportError) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise failure

    with pytest.raises(TransientProviderError) as caught:
        await collect(provider(handler, CAL), None)
    assert str(caught.value) == UNREACHABLE


async def test_a_refused_address_reads_like_a_closed_port() -> None:
    async def resolve(host: str, port: int) -> Sequence[str]:
        return {"metadata.example.com": ["169.254.169.254"]}.get(host, ["93.184.215.14"])

    messages = []
    for url in ("https://metadata.example.com/cal/", "https://closed.example.com/cal/"):
        transport = GuardedTransport(
            NetworkPolicy(), resolver=resolve, backend=RecordingBackend(refuse={"93.184.215.14"})
        )
        async with httpx.AsyncClient(transport=transport) as client:
            dav = CalDAVProvider(client=client, url=url, username="u", password="pw")
            with pytest.raises(TransientProviderError) as caught:
                await collect(dav, None)
            messages.append((type(caught.value), str(caught.value)))
    assert messages[0] == messages[1] == (TransientProviderError, UNREACHABLE)


# -- sizes ------------------------------------------------------------------------------------


def _big_scenario(big_href: str, hrefs: list[str]) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "PROPFIND":
            return httpx.Response(207, text=CALENDAR_PROPS)
        if b"sync-collection" in request.content:
            return httpx.Response(207, text=sync_body("t1", *((h, 200) for h in hrefs)))
        asked = [
            part.split(b"</d:href>")[0].decode() for part in request.content.split(b"<d:href>")[1:]
        ]
        body = multiget_body(*asked)
        if big_href in asked:
            body = body.replace("</d:multistatus>", "<!--" + "x" * 20_000 + "--></d:multistatus>")
        return httpx.Response(207, text=body)

    return handle


async def test_an_oversized_resource_is_quarantined_and_the_rest_arrives() -> None:
    hrefs = [f"{PATH}{name}.ics" for name in ("a", "b", "c")]
    dav = provider(_big_scenario(hrefs[1], hrefs), CAL, max_response_bytes=10_000)
    pages, cursor = await collect(dav, None)
    assert set(upserts(pages)) == {"a", "c"}
    (quarantined,) = [q for page in pages for q in page.quarantined]
    assert "10000 bytes" in quarantined.reason
    assert cursor


async def test_an_oversized_listing_is_response_too_large() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(207, text=CALENDAR_PROPS + " " * 20_000)

    with pytest.raises(ResponseTooLarge) as caught:
        await collect(provider(handle, CAL, max_response_bytes=10_000), None)
    assert not caught.value.retriable
