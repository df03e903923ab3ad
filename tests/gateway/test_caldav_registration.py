"""Registration: CalDAV URLs (userinfo, non-public literals, the allow-list) and time
zones (Windows names accepted and stored as IANA), through validate_registration and
through the gateway's HTTP handler with settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from calsync.crypto import SecretBox
from calsync.gateway.http import RequestRejected, build_gateway_app, validate_registration
from calsync.providers.netpolicy import NetworkPolicy
from calsync.streams.records import Command
from tests.conftest import ADMIN_TOKEN, SECRET_KEY, SettingsFactory

BOX = SecretBox(SECRET_KEY)
CALDAV: dict[str, Any] = {
    "resource_id": "cal-1",
    "provider": "caldav",
    "calendar_id": "https://dav.example.com/alice/cal/",
    "credentials": {"username": "alice", "password": "pw"},
}
GRAPH: dict[str, Any] = {
    "resource_id": "room-1",
    "provider": "microsoft",
    "calendar_id": "room-1@acme.com",
    "credentials": {"refresh_token": "rt"},
}


def register(body: dict[str, Any], networks: NetworkPolicy | None = None) -> Command:
    return validate_registration(body, BOX, now=1.0, caldav_networks=networks)


@pytest.mark.parametrize(
    "url",
    [
        "https://alice:secret@dav.example.com/cal/",
        "https://alice@dav.example.com/cal/",
        "https://:secret@dav.example.com/cal/",
    ],
)
def test_urls_with_userinfo_are_refused(url: str) -> None:
    with pytest.raises(RequestRejected) as caught:
        register({**CALDAV, "calendar_id": url})
    assert caught.value.status == 400 and caught.value.field == "calendar_id"
    assert "secret" not in caught.value.message


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:5232/alice/",
        "http://localhost:5232/",
        "http://169.254.169.254/latest/meta-data/",
        "https://10.0.0.5/dav/",
        "https://192.168.1.10/dav/",
        "https://[::1]:8443/",
        "https://[fd12:3456::1]/dav/",
        "https://[::ffff:127.0.0.1]/",
        "http://0.0.0.0:5232/",
    ],
)
def test_non_public_literal_addresses_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(RequestRejected) as caught:
        register({**CALDAV, "calendar_id": url})
    assert caught.value.status == 400 and caught.value.field == "calendar_id"
    assert "CALSYNC_CALDAV_ALLOWED_NETWORKS" in caught.value.message
    everything = NetworkPolicy.from_setting("0.0.0.0/0,::/0")
    assert register({**CALDAV, "calendar_id": url}, everything).calendar_id == url


@pytest.mark.parametrize(
    "url",
    ["https://dav.example.com/alice/", "https://93.184.215.14/dav/", "http://[2606:4700::1]/"],
)
def test_public_urls_and_names_pass(url: str) -> None:
    assert register({**CALDAV, "calendar_id": url}).calendar_id == url


def test_a_url_with_a_bad_port_is_refused() -> None:
    with pytest.raises(RequestRejected):
        register({**CALDAV, "calendar_id": "https://dav.example.com:99999/"})


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("Pacific Standard Time", "America/Los_Angeles"),
        ("W. Europe Standard Time", "Europe/Berlin"),
        ("pacific standard time", "America/Los_Angeles"),
        ("Europe/Zurich", "Europe/Zurich"),
        ("UTC", "UTC"),
    ],
)
def test_windows_time_zones_are_accepted_and_stored_as_iana(given: str, stored: str) -> None:
    assert register({**GRAPH, "time_zone": given}).time_zone == stored
    assert register({**CALDAV, "time_zone": given}).time_zone == stored


@pytest.mark.parametrize("zone", ["Mars/Base", "tzone://Microsoft/Custom", "", 7, "../etc/passwd"])
def test_unknown_time_zones_are_refused(zone: object) -> None:
    with pytest.raises(RequestRejected) as caught:
        register({**GRAPH, "time_zone": zone})
    assert caught.value.field == "time_zone"


class _Publisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes]] = []

    async def publish(self, topic: str, key: str, value: bytes) -> None:
        self.sent.append((topic, key, value))


@pytest.fixture
async def gateway(make_settings: SettingsFactory) -> AsyncIterator[TestClient[Any, Any]]:
    settings = make_settings(caldav_allowed_networks="127.0.0.0/8")
    app = build_gateway_app(settings, _Publisher())
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_the_gateway_applies_the_allow_list_from_settings(
    gateway: TestClient[Any, Any],
) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    allowed = {**CALDAV, "calendar_id": "http://127.0.0.1:5232/alice/"}
    refused = {**CALDAV, "calendar_id": "http://10.0.0.5:5232/alice/"}
    response = await gateway.post("/api/resources", json=allowed, headers=headers)
    assert response.status == 202
    response = await gateway.post("/api/resources", json=refused, headers=headers)
    assert response.status == 400
    assert (await response.json())["field"] == "calendar_id"
