"""Builds the provider of a resource from its (encrypted) credentials, once per credential.

Which provider, and how it is built, is its :class:`~calsync.providers.spec.ProviderSpec`
in :mod:`calsync.providers.registry`; nothing here knows a provider by name.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from calsync.clock import Clock
from calsync.crypto import SecretBox
from calsync.errors import CalsyncError
from calsync.normalize.busy import BusyPolicy
from calsync.providers import registry
from calsync.providers.base import Provider
from calsync.providers.netpolicy import GuardedTransport, NetworkPolicy
from calsync.providers.spec import BuildContext
from calsync.ratelimit import RateLimiter
from calsync.settings import Settings
from calsync.tables.records import Resource


def _fingerprint(resource: Resource) -> tuple[str, ...]:
    """What a cached provider was built from; a change means rebuild."""
    policy = repr(sorted((resource.busy_policy or {}).items()))
    return (
        resource.provider,
        resource.calendar_id,
        resource.own_address or "",
        policy,
        *sorted(resource.credentials.values()),
    )


def busy_policy(resource: Resource) -> BusyPolicy:
    """The resource's :class:`BusyPolicy` (the default when it has none); raises
    :class:`CalsyncError` for a switch that is unknown or not a bool."""
    switches = resource.busy_policy or {}
    if not all(isinstance(flag, bool) for flag in switches.values()):
        raise CalsyncError(f"busy_policy switches must be bools, got {switches!r}")
    try:
        return BusyPolicy(**switches)
    except TypeError as exc:
        raise CalsyncError(f"busy_policy has an unknown switch: {sorted(switches)}") from exc


def guarded_caldav_client(settings: Settings) -> httpx.AsyncClient:
    """The client CalDAV providers use: CalDAV URLs are chosen by whoever registers a
    resource, so every connection goes through the network policy
    (``CALSYNC_CALDAV_ALLOWED_NETWORKS``, :mod:`calsync.providers.netpolicy`); it trusts
    ``CALSYNC_CALDAV_CA_BUNDLE`` when set, never follows redirects by itself and reads
    no proxy settings from the environment."""
    transport = GuardedTransport(
        NetworkPolicy.from_setting(settings.caldav_allowed_networks),
        verify=settings.caldav_ca_bundle or True,
    )
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(30.0, connect=10.0),
        follow_redirects=False,
        trust_env=False,
    )


class ProviderFactory:
    """Caches one provider per resource (rebuilt when its credentials change) and one
    token source per credential, so a grant is refreshed by one request at a time.

    ``client_factory`` builds the client for Google and Graph (fixed, configured
    URLs); ``caldav_client_factory`` the one for CalDAV (user-supplied URLs), by
    default :func:`guarded_caldav_client`."""

    def __init__(
        self,
        settings: Settings,
        client_factory: Callable[[], httpx.AsyncClient],
        limiter: RateLimiter | None = None,
        *,
        clock: Clock = time.time,
        on_rotate: Callable[[str, dict[str, str]], Awaitable[None]] | None = None,
        caldav_client_factory: Callable[[], httpx.AsyncClient] | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._on_rotate = on_rotate
        self._secrets = SecretBox(settings.secret_key)
        self._client_factory = client_factory
        self._caldav_client_factory = caldav_client_factory or functools.partial(
            guarded_caldav_client, settings
        )
        self._client: httpx.AsyncClient | None = None
        self._caldav_client: httpx.AsyncClient | None = None
        self._cache: dict[str, tuple[tuple[str, ...], str, Provider]] = {}
        #: token sources shared by the resources of one account (Google grants)
        self._tokens: dict[str, Any] = {}
        self.limiter = limiter

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def _caldav_http(self) -> httpx.AsyncClient:
        if self._caldav_client is None:
            self._caldav_client = self._caldav_client_factory()
        return self._caldav_client

    def get(self, resource_id: str, resource: Resource) -> Provider:
        """The provider for ``resource``, deciding busy states by its ``busy_policy``;
        raises :class:`CalsyncError` for unknown providers or a malformed policy and
        :class:`~calsync.errors.CryptoError` for credentials made with another key."""
        fingerprint = _fingerprint(resource)
        cached = self._cache.get(resource_id)
        if cached is not None and cached[0] == fingerprint:
            return cached[2]
        provider_spec = registry.spec(resource.provider)
        policy = busy_policy(resource)
        kind = provider_spec.credential_kind(resource.credentials)
        if kind is None:
            raise CalsyncError(
                f"{resource.provider} credentials have the fields {sorted(resource.credentials)}"
            )
        credentials = {name: self._secrets.decrypt(resource.credentials[name]) for name in kind}
        account = provider_spec.account(resource, credentials)
        on_rotate = self._on_rotate
        provider = provider_spec.build(
            BuildContext(
                resource=resource,
                credentials=credentials,
                account=account,
                settings=self._settings,
                client=self._caldav_http() if provider_spec.user_supplied_urls else self._http(),
                limiter=self.limiter,
                policy=policy,
                clock=self._clock,
                on_rotate=functools.partial(on_rotate, resource_id) if on_rotate else None,
                token_cache=self._tokens,
            )
        )
        self._cache[resource_id] = (fingerprint, account, provider)
        return provider

    def adopt(self, resource_id: str, resource: Resource) -> None:
        """The cached provider rotated its own credentials into ``resource``: keep it
        (rebuilding it would throw away the token source holding the newest token)."""
        cached = self._cache.get(resource_id)
        if cached is not None:
            self._cache[resource_id] = (_fingerprint(resource), cached[1], cached[2])

    def forget(self, resource_id: str) -> None:
        """Drop the cached provider (and, if no other uses it, its shared token source)."""
        entry = self._cache.pop(resource_id, None)
        if entry is not None:
            account = entry[1]
            if not any(cached_account == account for _, cached_account, _ in self._cache.values()):
                self._tokens.pop(account, None)

    async def aclose(self) -> None:
        self._cache.clear()
        self._tokens.clear()
        for client in (self._client, self._caldav_client):
            if client is not None:
                await client.aclose()
        self._client = self._caldav_client = None
