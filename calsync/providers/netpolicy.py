"""Which network addresses calsync may connect to for URLs its users supply (CalDAV).

A CalDAV URL is chosen by whoever registers the resource, so without a policy it
could name the worker's own loopback, the cloud metadata service
(``169.254.169.254``) or any host of the internal network. The policy is enforced
where the connection is made, **after DNS resolution**:

* :class:`GuardedBackend` (an ``httpcore`` network backend) resolves a host name
  once, checks every address it resolved to, and connects only to an address it
  checked, so a name that resolves to a public address for a check and to a private
  one for the connection (DNS rebinding) gains nothing: there is no second lookup.
  Addresses the policy refuses are skipped; when none is left the connection fails
  with :class:`AddressRefused`, a :class:`httpcore.ConnectError`, which httpx turns
  into :class:`httpx.ConnectError` like any unreachable host (callers must not tell
  the two apart in what they report: that would make calsync a port scanner).
* :class:`GuardedTransport` is an :class:`httpx.AsyncHTTPTransport` whose pool uses
  that backend; it never reads proxy settings from the environment (a proxy would
  resolve and connect on our behalf, out of the policy's sight).

An address is **public** when it is globally routable: not loopback, private
(RFC 1918, IPv6 ULA), link-local, shared (CGNAT), multicast, reserved, unspecified,
documentation or benchmarking space. IPv4 addresses embedded in IPv6 ones
(IPv4-mapped ``::ffff:a.b.c.d``, the NAT64 prefix ``64:ff9b::/96``, 6to4 ``2002::/16``)
are judged by their IPv4 address. ``NetworkPolicy.allowed`` (the setting
``CALSYNC_CALDAV_ALLOWED_NETWORKS``, comma-separated CIDRs) lets non-public
networks through: self-hosted servers inside a company network, local test servers.

:func:`literal_address_refusal` is the cheap check made at registration, on the
URL's text alone (an IP literal or ``localhost``); the transport's check is the one
that counts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import httpcore
import httpx

from calsync.errors import ConfigurationError

__all__ = [
    "AddressRefused",
    "GuardedBackend",
    "GuardedTransport",
    "NetworkPolicy",
    "Resolver",
    "is_public",
    "literal_address_refusal",
    "parse_networks",
    "system_resolver",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: ``host, port -> addresses`` (as text, in the order to try them).
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
#: Ranges Python 3.11's ``is_global`` still calls global but that are not routable
#: destinations (IETF protocol assignments; RFC 6890).
_NOT_GLOBAL_EXTRA: tuple[Network, ...] = (ipaddress.IPv4Network("192.0.0.0/24"),)
_DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def parse_networks(text: str) -> tuple[Network, ...]:
    """The networks of a comma-separated CIDR list (``"127.0.0.0/8, 10.20.0.0/16"``).

    A bare address is a one-address network. Raises :class:`ConfigurationError`
    naming the entry that does not parse (or has host bits set).
    """
    networks: list[Network] = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=True))
        except ValueError as exc:
            raise ConfigurationError(
                f"CALSYNC_CALDAV_ALLOWED_NETWORKS: {entry!r} is not a network in CIDR form ({exc})"
            ) from None
    return tuple(networks)


def _address(value: str | Address) -> Address:
    if isinstance(value, str):
        # getaddrinfo writes link-local IPv6 addresses with a scope ("fe80::1%eth0")
        return ipaddress.ip_address(value.split("%", 1)[0])
    return value


def _embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return address.sixtofour


def is_public(value: str | Address) -> bool:
    """Whether ``value`` is a globally routable unicast address (see the module docstring)."""
    address = _address(value)
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return is_public(embedded)
    return (
        address.is_global
        and not address.is_multicast
        and not address.is_reserved
        and not address.is_unspecified
        and not address.is_link_local
        and not any(address in network for network in _NOT_GLOBAL_EXTRA)
    )


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    """Public addresses, plus those inside ``allowed``."""

    allowed: tuple[Network, ...] = ()

    @classmethod
    def from_setting(cls, text: str) -> NetworkPolicy:
        """The policy of a ``CALSYNC_CALDAV_ALLOWED_NETWORKS`` value; raises
        :class:`ConfigurationError` for an entry that is not a CIDR."""
        return cls(parse_networks(text))

    def permits(self, value: str | Address) -> bool:
        """Whether a connection to ``value`` (an IP address) is allowed."""
        try:
            address = _address(value)
        except ValueError:
            return False
        candidates = [address]
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            candidates.append(embedded)
        for candidate in candidates:
            for network in self.allowed:
                if candidate.version == network.version and candidate in network:
                    return True
        return is_public(address)


def literal_address_refusal(host: str, policy: NetworkPolicy) -> str | None:
    """Why ``host`` (a URL's host, as text) is refused before any lookup, or ``None``.

    Only IP literals and the loopback names are judged here; any other name is
    checked after resolution, when the connection is made.
    """
    bare = host.strip("[]").rstrip(".").lower()
    if bare in _LOCAL_NAMES or bare.endswith(".localhost"):
        bare = "127.0.0.1"
    try:
        address = _address(bare)
    except ValueError:
        return None
    if policy.permits(address):
        return None
    return (
        f"{host} is not a public address; a server inside your network must be allowed "
        "with CALSYNC_CALDAV_ALLOWED_NETWORKS"
    )


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``getaddrinfo`` gives for ``host`` (TCP), unique, in its order."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    seen: dict[str, None] = {}
    for _family, _type, _proto, _name, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]), None)
    return list(seen)


class AddressRefused(httpcore.ConnectError):
    """No address of the host is allowed by the :class:`NetworkPolicy`."""


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An ``httpcore`` network backend that connects only to addresses ``policy`` permits.

    ``resolver`` (default :func:`system_resolver`) is asked once per connection;
    ``backend`` (default :class:`httpcore.AnyIOBackend`) makes the connection to the
    checked address. TLS is started by httpcore afterwards with the URL's host name as
    SNI and for certificate checks, so connecting by address changes nothing there.
    The connect timeout covers the lookup and every attempt together. Unix sockets
    are refused.
    """

    def __init__(
        self,
        policy: NetworkPolicy,
        *,
        resolver: Resolver = system_resolver,
        backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._policy = policy
        self._resolver = resolver
        self._backend = backend if backend is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):
                addresses = list(await self._resolver(host, port))
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"resolving {host} failed: {exc}") from exc
        permitted = [address for address in addresses if self._policy.permits(address)]
        if not permitted:
            raise AddressRefused(
                f"{host} resolves to {addresses}, none of which the network policy allows"
            )
        failure: Exception = AddressRefused(f"{host}: no address to try")
        for address in permitted:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await self._backend.connect_tcp(
                    address,
                    port,
                    timeout=remaining,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("unix sockets are not allowed by the network policy")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """An httpx transport whose every connection goes through a :class:`GuardedBackend`.

    ``verify`` is as for httpx (``True``, a CA bundle path or an
    :class:`ssl.SSLContext`). Environment proxies are never used.
    """

    def __init__(
        self,
        policy: NetworkPolicy,
        *,
        verify: ssl.SSLContext | str | bool = True,
        limits: httpx.Limits = _DEFAULT_LIMITS,
        resolver: Resolver = system_resolver,
        backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        if isinstance(verify, str):  # a CA bundle: httpx 0.28 deprecates the path itself
            if os.path.isdir(verify):
                verify = ssl.create_default_context(capath=verify)
            else:
                verify = ssl.create_default_context(cafile=verify)
        context = httpx.create_ssl_context(verify=verify, trust_env=False)
        super().__init__(verify=context, trust_env=False, limits=limits)
        # httpx offers no network_backend argument: replace the pool it built with
        # the same one on the guarded backend (handle_async_request reads _pool).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy, resolver=resolver, backend=backend),
        )
