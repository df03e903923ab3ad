"""Every provider calsync speaks, by name: the one list to extend when adding one.

``REGISTRY`` maps a provider's name (``"google"``, ``"microsoft"``, ``"caldav"``) to
its :class:`~calsync.providers.spec.ProviderSpec`. Code outside ``providers/`` asks
:func:`spec` (or iterates :data:`REGISTRY`) instead of comparing names; see
``docs/adding-a-provider.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from calsync.errors import CalsyncError
from calsync.providers import caldav, google, microsoft
from calsync.providers.spec import ProviderSpec, PushKind
from calsync.ratelimit import BucketSpec
from calsync.settings import Settings

__all__ = ["REGISTRY", "PushKind", "names", "rate_limit_specs", "spec"]

REGISTRY: Mapping[str, ProviderSpec] = MappingProxyType(
    {each.name: each for each in (google.SPEC, microsoft.SPEC, caldav.SPEC)}
)


def spec(name: str) -> ProviderSpec:
    """The spec of provider ``name``; raises :class:`CalsyncError` for an unknown one."""
    found = REGISTRY.get(name)
    if found is None:
        raise CalsyncError(f"provider {name!r} is not supported")
    return found


def names() -> list[str]:
    """The known provider names, sorted."""
    return sorted(REGISTRY)


def rate_limit_specs(settings: Settings) -> dict[str, tuple[BucketSpec, BucketSpec]]:
    """The :class:`~calsync.ratelimit.RateLimiter` specs of every provider: rates in
    requests per second, each provider's documented quotas (Google's from settings)."""
    return {name: each.rate_limits(settings) for name, each in REGISTRY.items()}
