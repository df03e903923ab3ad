"""The one error tree of calsync.

::

    CalsyncError
    ├── ConfigurationError          settings missing or invalid; raised at start
    ├── CodecError                  a record could not be encoded or decoded
    ├── CryptoError                 a ciphertext was forged, truncated or made with another key
    ├── InternalError               an unexpected failure while syncing (retriable = True)
    ├── KafkaBrokerError            the local test/demo broker could not be built or started
    └── ProviderError               anything a provider adapter raises (retriable = False)
        ├── TransientProviderError  5xx, timeouts, connection errors (retriable = True)
        │   ├── RateLimited         429/403 rate limits and throttling 503s; carries retry_after
        │   └── TokenRefreshFailed  the token endpoint failed transiently: credentials "refreshing"
        ├── CursorExpired           the stored sync cursor is no longer valid: do a full resync
        │                           (retriable = True: a refused full listing is listed again)
        ├── AuthorizationRevoked    the grant is gone (invalid_grant): the user must re-consent
        ├── ProviderRejected        a 4xx that retrying will not fix
        ├── ResponseTooLarge        a response body over its size limit; carries limit
        ├── CalendarTooLarge        more events in the horizon than a worker keeps: paused
        └── MalformedProviderData   an item the normalizer cannot represent; quarantine it

Foreign exceptions (httpx, google.auth, fastavro, ...) are translated into these at
the boundary with ``raise ... from exc``; no foreign exception reaches an agent. The
retry policy reads the ``retriable`` class attribute instead of a list of types.
"""

from __future__ import annotations


class CalsyncError(Exception):
    """Root of every error calsync raises on purpose."""

    retriable: bool = False


class ConfigurationError(CalsyncError):
    """A setting is missing or invalid."""


class CodecError(CalsyncError):
    """A record could not be encoded or decoded."""


class CryptoError(CalsyncError):
    """A ciphertext or signed token failed authentication."""


class InternalError(CalsyncError):
    """An unexpected failure mid-sync (a bug, a producer error): retried, then dead-lettered."""

    retriable = True


class KafkaBrokerError(CalsyncError):
    """The local broker (:mod:`calsync.testing.broker`) could not be built or started."""


class ProviderError(CalsyncError):
    """A provider call failed; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientProviderError(ProviderError):
    """The provider failed in a way that may go away on its own (5xx, network)."""

    retriable = True


class RateLimited(TransientProviderError):
    """The provider asked us to slow down; ``retry_after`` is in seconds, if it said."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class TokenRefreshFailed(TransientProviderError):
    """The access token could not be refreshed for a transient reason (the token endpoint
    answered 5xx/429 or was unreachable): the grant is fine, a retry will refresh it.
    Unlike :class:`AuthorizationRevoked`, nobody has to reconnect anything; the
    resource's credentials show as "refreshing" until the next successful sync."""


class CursorExpired(ProviderError):
    """The sync cursor is no longer valid; the caller must run a full resync.

    Retriable: when the full listing itself is refused this way (a page token that
    expired in the middle of the walk, a provider's storm of 410s), the way on is to
    list in full again after a backoff, not to give the calendar up."""

    retriable = True


class AuthorizationRevoked(ProviderError):
    """The credential was revoked or expired; the resource needs new credentials."""


class ProviderRejected(ProviderError):
    """The provider refused the request (4xx) and retrying will not help."""


class ResponseTooLarge(ProviderError):
    """A response body passed ``limit`` bytes and was dropped unread past that point."""

    def __init__(self, message: str, *, limit: int, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.limit = limit


class CalendarTooLarge(ProviderError):
    """A calendar holds more events inside the horizon than a worker keeps for one
    resource (``max_events_per_calendar``): its stored state would pass the table value
    limit. The resource is paused, never retried: every walk would hit the bound again."""

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class MalformedProviderData(ProviderError):
    """An item from the provider cannot be normalized; ``item_id`` names it."""

    def __init__(self, message: str, *, item_id: str | None = None) -> None:
        super().__init__(message)
        self.item_id = item_id
