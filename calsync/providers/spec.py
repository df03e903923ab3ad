"""What calsync needs to know about a provider, in one value: :class:`ProviderSpec`.

Each provider module (``google.py``, ``microsoft.py``, ``caldav.py``) defines one
``SPEC``; :mod:`calsync.providers.registry` lists them. Everything outside
``providers/`` (the factory, the gateway, the sync service, the app, the timers)
asks the registry instead of comparing a provider's name.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import httpx

from calsync.clock import Clock
from calsync.model import ProviderOrigin
from calsync.normalize.busy import BusyPolicy
from calsync.providers.base import Provider
from calsync.providers.netpolicy import NetworkPolicy
from calsync.ratelimit import BucketSpec, RateLimiter
from calsync.settings import Settings
from calsync.tables.records import Resource

_T = TypeVar("_T")


def account_key(provider: str, secret: str) -> str:
    """The rate-limit account of a credential: resources sharing a grant share a bucket."""
    return f"{provider}:{hashlib.sha256(secret.encode()).hexdigest()[:16]}"


class PushKind(enum.StrEnum):
    """How a provider tells calsync that a calendar changed."""

    #: Watch channels that cannot be renewed, only replaced (Google): the push carries
    #: a channel token signed with the channel's expiry and a message number.
    CHANNEL = "channel"
    #: Subscriptions renewed in place (Graph): the push carries ``clientState``, the
    #: notification URL ``?resource=<id>``; lifecycle events go to ``<webhook>/lifecycle``.
    SUBSCRIPTION = "subscription"
    #: No push at all (CalDAV): calsync polls, adaptively.
    POLL = "poll"


@dataclass(frozen=True, slots=True)
class BuildContext:
    """Everything :attr:`ProviderSpec.build` may use to build one resource's provider.

    ``credentials`` are the resource's credentials decrypted; ``account`` is
    :attr:`ProviderSpec.account` of them; ``client`` is the shared client, or the
    network-guarded one for a spec with ``user_supplied_urls``; ``on_rotate``
    receives credentials the provider rotated (see :mod:`calsync.providers.http`).
    """

    resource: Resource
    credentials: Mapping[str, str]
    account: str
    settings: Settings
    client: httpx.AsyncClient
    limiter: RateLimiter | None
    policy: BusyPolicy
    clock: Clock
    on_rotate: Callable[[dict[str, str]], Awaitable[None]] | None
    token_cache: dict[str, Any] = field(default_factory=dict)

    def shared(self, make: Callable[[], _T]) -> _T:
        """One object per account (a token source refreshing a shared grant), made once."""
        found = self.token_cache.get(self.account)
        if found is None:
            found = self.token_cache[self.account] = make()
        return cast(_T, found)


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One provider, as the rest of calsync sees it.

    * ``name``: the word in registrations, tables, notifications and the rate limiter;
    * ``origin``: the ``provider_origin`` of its events (``codecs/unified_event.avsc``);
    * ``credential_fields``: the non-empty strings a registration must carry;
      ``other_credentials``: further kinds of credential it may carry instead, each a
      tuple of field names (an application's access to a whole organisation);
      :meth:`credential_kind` picks one;
    * ``check_calendar``: refuses a ``calendar_id`` with :class:`ValueError` (its
      message is shown to the caller), given the network policy for user-supplied URLs;
    * ``push`` and ``subscription_ttl`` (seconds asked of the provider, from settings),
      ``webhook_path`` (where its pushes arrive, ``None`` when it has none);
    * ``rate_limits``: (per-account, per-application) token buckets, from settings;
      ``shares_app_quota``: the application bucket is one quota for the whole
      deployment, so each worker takes the share of it its partitions own;
    * ``user_supplied_urls``: the provider connects where the registrant says, so it
      gets the network-guarded client;
    * ``connect``: a calendar's owner can grant access through a connect link
      (an OAuth consent, :mod:`calsync.gateway.connect`);
    * ``account``: the rate-limit account of a resource, from its plaintext credentials;
    * ``build``: the provider of one resource.
    """

    name: str
    origin: ProviderOrigin
    credential_fields: tuple[str, ...]
    push: PushKind
    rate_limits: Callable[[Settings], tuple[BucketSpec, BucketSpec]]
    account: Callable[[Resource, Mapping[str, str]], str]
    build: Callable[[BuildContext], Provider]
    subscription_ttl: Callable[[Settings], int] | None = None
    webhook_path: str | None = None
    check_calendar: Callable[[str, NetworkPolicy], None] | None = None
    shares_app_quota: bool = False
    user_supplied_urls: bool = False
    connect: bool = False
    other_credentials: tuple[tuple[str, ...], ...] = ()

    @property
    def credential_kinds(self) -> tuple[tuple[str, ...], ...]:
        """Every accepted set of credential fields, the usual one first."""
        return (self.credential_fields, *self.other_credentials)

    def credential_kind(self, names: Iterable[str]) -> tuple[str, ...] | None:
        """The kind whose fields are exactly ``names``, else None."""
        given = frozenset(names)
        return next((kind for kind in self.credential_kinds if frozenset(kind) == given), None)
