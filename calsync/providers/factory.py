"""Builds the provider of a resource from its (encrypted) credentials, once per credential."""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Awaitable, Callable

import httpx

from calsync.busy import BusyPolicy
from calsync.clock import Clock
from calsync.crypto import SecretBox
from calsync.errors import CalsyncError
from calsync.providers.base import Provider
from calsync.providers.caldav import CalDAVProvider
from calsync.providers.google import GoogleProvider, GoogleTokenSource
from calsync.providers.microsoft import MicrosoftProvider, MicrosoftTokenSource
from calsync.providers.netpolicy import GuardedTransport, NetworkPolicy
from calsync.ratelimit import RateLimiter
from calsync.settings import Settings
from calsync.tables.records import Resource


def account_key(provider: str, secret: str) -> str:
    """The rate-limit account of a credential: resources sharing a grant share a bucket."""
    return f"{provider}:{hashlib.sha256(secret.encode()).hexdigest()[:16]}"


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
        self._cache: dict[str, tuple[tuple[str, ...], Provider]] = {}
        self._google_tokens: dict[str, GoogleTokenSource] = {}
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
            return cached[1]
        settings = self._settings
        policy = busy_policy(resource)
        provider: Provider
        if resource.provider == "google":
            refresh_token = self._secrets.decrypt(resource.credentials["refresh_token"])
            account = account_key("google", refresh_token)
            tokens = self._google_tokens.get(account)
            if tokens is None:
                tokens = self._google_tokens[account] = GoogleTokenSource(
                    refresh_token=refresh_token,
                    token_url=settings.google_token_url,
                    client_id=settings.google_client_id,
                    client_secret=settings.google_client_secret,
                )
            provider = GoogleProvider(
                client=self._http(),
                api_url=settings.google_api_url,
                calendar_id=resource.calendar_id,
                tokens=tokens,
                time_zone=resource.time_zone,
                limiter=self.limiter,
                account=account,
                max_inline_wait=settings.max_inline_wait,
                policy=policy,
            )
        elif resource.provider == "microsoft":
            refresh_token = self._secrets.decrypt(resource.credentials["refresh_token"])
            # Graph limits per mailbox, and the grant rotates its refresh token on every
            # use, so the mailbox (not the token) is the account.
            account = account_key("microsoft", resource.calendar_id.lower())
            provider = MicrosoftProvider(
                client=self._http(),
                api_url=settings.graph_api_url,
                user_id=resource.calendar_id,
                tokens=MicrosoftTokenSource(
                    refresh_token=refresh_token,
                    authority=settings.microsoft_authority,
                    client_id=settings.microsoft_client_id,
                    client_secret=settings.microsoft_client_secret,
                    ca_bundle=settings.microsoft_ca_bundle or None,
                ),
                time_zone=resource.time_zone,
                limiter=self.limiter,
                account=account,
                max_inline_wait=settings.max_inline_wait,
                clock=self._clock,
                on_rotate=(
                    functools.partial(self._on_rotate, resource_id) if self._on_rotate else None
                ),
                policy=policy,
            )
        elif resource.provider == "caldav":
            username = self._secrets.decrypt(resource.credentials["username"])
            password = self._secrets.decrypt(resource.credentials["password"])
            provider = CalDAVProvider(
                client=self._caldav_http(),
                url=resource.calendar_id,
                username=username,
                password=password,
                time_zone=resource.time_zone,
                limiter=self.limiter,
                account=account_key("caldav", f"{resource.calendar_id}\x1f{username}"),
                max_inline_wait=settings.max_inline_wait,
                policy=policy,
                own_address=resource.own_address,
            )
        else:
            raise CalsyncError(f"provider {resource.provider!r} is not supported")
        self._cache[resource_id] = (fingerprint, provider)
        return provider

    def adopt(self, resource_id: str, resource: Resource) -> None:
        """The cached provider rotated its own credentials into ``resource``: keep it
        (rebuilding it would throw away the token source holding the newest token)."""
        cached = self._cache.get(resource_id)
        if cached is not None:
            self._cache[resource_id] = (_fingerprint(resource), cached[1])

    def forget(self, resource_id: str) -> None:
        """Drop the cached provider (and, if unused, its token source)."""
        entry = self._cache.pop(resource_id, None)
        if entry is not None and isinstance(entry[1], GoogleProvider):
            account = entry[1].account
            if not any(
                isinstance(p, GoogleProvider) and p.account == account
                for _, p in self._cache.values()
            ):
                self._google_tokens.pop(account, None)

    async def aclose(self) -> None:
        self._cache.clear()
        self._google_tokens.clear()
        for client in (self._client, self._caldav_client):
            if client is not None:
                await client.aclose()
        self._client = self._caldav_client = None
