"""The CalDAV network policy: which addresses are public, what the allow-list lets
through, and that the guarded transport checks the address it actually connects to
(a fake resolver and backend), plus the system resolver with a real local server."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path

import certifi
import httpcore
import httpx
import pytest

from calsync.errors import ConfigurationError
from calsync.providers.netpolicy import (
    AddressRefused,
    GuardedBackend,
    GuardedTransport,
    NetworkPolicy,
    is_public,
    literal_address_refusal,
    parse_networks,
)
from calsync.settings import Settings
from tests.conftest import ADMIN_TOKEN, SECRET_KEY, SettingsFactory

PUBLIC = "93.184.215.14"


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # shared (CGNAT)
        "0.0.0.0",
        "224.0.0.1",
        "192.0.0.8",
        "::1",
        "::",
        "fd00::1",  # ULA
        "fe80::1",
        "fe80::1%eth0",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:169.254.169.254",
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "ff02::1",
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert not is_public(address)
    assert not NetworkPolicy().permits(address)


@pytest.mark.parametrize(
    "address", [PUBLIC, "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses(address: str) -> None:
    assert is_public(address)
    assert NetworkPolicy().permits(address)


def test_the_allow_list_lets_its_networks_through_and_nothing_else() -> None:
    policy = NetworkPolicy.from_setting("127.0.0.0/8, 10.20.0.0/16")
    assert policy.permits("127.0.0.1") and policy.permits("10.20.3.4")
    assert policy.permits("::ffff:10.20.3.4")  # an IPv4-mapped form of an allowed address
    assert not policy.permits("10.21.0.1")
    assert not policy.permits("169.254.169.254")
    assert not policy.permits("::1")
    assert not policy.permits("not an address")


@pytest.mark.parametrize("text", ["10.0.0.0/33", "10.0.0.1/8", "example.com", "10.0.0.0/8,,x"])
def test_bad_allow_lists_are_configuration_errors(text: str) -> None:
    with pytest.raises(ConfigurationError, match="CALSYNC_CALDAV_ALLOWED_NETWORKS"):
        parse_networks(text)


def test_settings_refuse_a_bad_allow_list_at_start(make_settings: SettingsFactory) -> None:
    with pytest.raises(ConfigurationError):
        make_settings(caldav_allowed_networks="10.0.0.0/33")
    env = {"CALSYNC_CALDAV_ALLOWED_NETWORKS": "127.0.0.0/8", "CALSYNC_SECRET_KEY": SECRET_KEY}
    settings = Settings.from_env(env, admin_token=ADMIN_TOKEN)
    assert settings.caldav_allowed_networks == "127.0.0.0/8"


@pytest.mark.parametrize(
    ("host", "refused"),
    [
        ("127.0.0.1", True),
        ("[::1]", True),
        ("localhost", True),
        ("cal.localhost", True),
        ("169.254.169.254", True),
        ("[::ffff:10.0.0.1]", True),
        ("dav.example.com", False),  # a name: checked after resolution
        (PUBLIC, False),
    ],
)
def test_literal_refusal_at_registration(host: str, refused: bool) -> None:
    assert (literal_address_refusal(host, NetworkPolicy()) is not None) is refused
    allowed = NetworkPolicy.from_setting("127.0.0.0/8,::/0,10.0.0.0/8,169.254.0.0/16")
    assert literal_address_refusal(host, allowed) is None


# -- the guarded backend, with a fake resolver and a fake connection -------------------


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Connects nowhere: records the address asked for and hands back a mock stream."""

    def __init__(self, refuse: Iterable[str] = ()) -> None:
        self.connected: list[str] = []
        self._refuse = set(refuse)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connected.append(host)
        if host in self._refuse:
            raise httpcore.ConnectError("refused")
        return httpcore.AsyncMockStream(
            [b"HTTP/1.1 200 OK\r\n", b"Content-Length: 2\r\n\r\n", b"ok"]
        )


class Rebinding:
    """A resolver whose answer changes on every lookup (DNS rebinding)."""

    def __init__(self, *answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.lookups.append(host)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def guarded_client(
    resolver: Rebinding, backend: RecordingBackend, policy: NetworkPolicy | None = None
) -> httpx.AsyncClient:
    transport = GuardedTransport(policy or NetworkPolicy(), resolver=resolver, backend=backend)
    return httpx.AsyncClient(transport=transport)


async def test_connects_to_the_address_it_checked_not_to_a_second_lookup() -> None:
    resolver = Rebinding([PUBLIC], ["127.0.0.1"])
    backend = RecordingBackend()
    async with guarded_client(resolver, backend) as client:
        response = await client.get("http://dav.example.com/")
    assert response.text == "ok"
    assert resolver.lookups == ["dav.example.com"]  # one lookup
    assert backend.connected == [PUBLIC]  # and the connection went to its answer


async def test_a_name_resolving_only_to_private_addresses_is_refused() -> None:
    resolver = Rebinding(["10.0.0.5", "::ffff:169.254.169.254"])
    backend = RecordingBackend()
    async with guarded_client(resolver, backend) as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.get("http://internal.example.com/")
    assert backend.connected == []
    assert isinstance(caught.value.__cause__, AddressRefused)


async def test_refused_addresses_are_skipped_and_never_connected_to() -> None:
    resolver = Rebinding(["127.0.0.1", "10.0.0.5", PUBLIC])
    backend = RecordingBackend()
    async with guarded_client(resolver, backend) as client:
        await client.get("https://mixed.example.com/")
    assert backend.connected == [PUBLIC]


async def test_ip_literals_are_checked_too() -> None:
    resolver = Rebinding(["169.254.169.254"])
    backend = RecordingBackend()
    async with guarded_client(resolver, backend) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://169.254.169.254/latest/meta-data/")
    assert backend.connected == []


async def test_the_next_permitted_address_is_tried_when_one_does_not_answer() -> None:
    resolver = Rebinding(["10.20.0.1", "10.20.0.2"])
    backend = RecordingBackend(refuse={"10.20.0.1"})
    policy = NetworkPolicy.from_setting("10.20.0.0/16")
    async with guarded_client(resolver, backend, policy) as client:
        await client.get("http://dav.corp.example/")
    assert backend.connected == ["10.20.0.1", "10.20.0.2"]


async def test_a_slow_resolver_is_a_connect_timeout() -> None:
    async def hangs(host: str, port: int) -> Sequence[str]:
        await asyncio.sleep(10)
        return [PUBLIC]

    guarded = GuardedBackend(NetworkPolicy(), resolver=hangs, backend=RecordingBackend())
    with pytest.raises(httpcore.ConnectTimeout):
        await guarded.connect_tcp("slow.example.com", 443, timeout=0.05)


async def test_environment_proxies_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://10.0.0.1:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://10.0.0.1:3128")
    resolver = Rebinding([PUBLIC])
    backend = RecordingBackend()
    async with guarded_client(resolver, backend) as client:
        await client.get("http://dav.example.com/")
    assert backend.connected == [PUBLIC]


# -- the system resolver against a real local server ----------------------------------


@pytest.fixture
async def local_server() -> AsyncIterator[int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield port


async def test_localhost_is_refused_without_the_allow_list(local_server: int) -> None:
    transport = GuardedTransport(NetworkPolicy())
    async with httpx.AsyncClient(transport=transport) as client:
        for host in ("localhost", "127.0.0.1"):
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://{host}:{local_server}/")


async def test_localhost_is_reached_with_the_allow_list(local_server: int) -> None:
    # ::1 too: where localhost also resolves to ::1, that address is skipped, not fatal
    transport = GuardedTransport(NetworkPolicy.from_setting("127.0.0.0/8"))
    async with httpx.AsyncClient(transport=transport) as client:
        for host in ("localhost", "127.0.0.1"):
            response = await client.get(f"http://{host}:{local_server}/")
            assert response.text == "hello"


@pytest.mark.parametrize("bundle", ["file", "directory"])
def test_a_ca_bundle_path_is_taken_without_httpx_deprecation(bundle: str, tmp_path: Path) -> None:
    """``CALSYNC_CALDAV_CA_BUNDLE`` is a path; httpx 0.28 deprecates ``verify=<str>``
    (and a later httpx drops it), so the transport builds the context itself."""
    path = certifi.where() if bundle == "file" else str(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GuardedTransport(NetworkPolicy(), verify=path)
