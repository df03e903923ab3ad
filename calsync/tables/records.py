"""The values kept in calsync's tables (RocksDB in a worker, changelogged to Kafka)."""

from __future__ import annotations

import faust

from calsync.streams.records import Notification


class Resource(faust.Record, serializer="json", include_metadata=False):
    """A registered calendar. ``credentials`` holds ciphertexts only.

    ``busy_policy`` holds the :class:`calsync.normalize.busy.BusyPolicy` switches that differ
    from the defaults (field name to flag); ``None`` means the default policy.
    """

    provider: str
    calendar_id: str
    registered_at: float
    credentials: dict[str, str]
    time_zone: str | None = None
    state: str = "active"  # active | reauth_required | removed
    busy_policy: dict[str, bool] | None = None
    #: CalDAV: the owner's address, whose PARTSTAT decides declined/unanswered
    own_address: str | None = None


class SyncState(faust.Record, serializer="json", include_metadata=False):
    """Where the last successful sync of a resource left off.

    ``cursor`` is the provider's opaque delta cursor; ``index`` maps each known
    occurrence's native id to its content version, so a full listing can be diffed
    (what vanished becomes a delete, what is unchanged is not re-emitted).
    ``fetch_started_at`` is the wall-clock start of the fetch that produced this state:
    a push received before it is already covered. ``not_before`` is the earliest time
    the provider allowed the next request (its ``Retry-After``).

    ``cursor_expired_at`` is when the live lane found ``cursor`` expired and handed a
    full resync to the bulk lane; until that resync stores a new state, pushes go
    the same way without asking the provider. ``subscribe_failures`` counts the
    consecutive failed attempts to create (or renew) the resource's push
    subscription, and ``subscribe_retry_at`` is when the next one is due (0: none
    pending); the bulk lane does not try before then. ``failures`` and
    ``last_error`` describe syncs that failed since the last good one (a retry is
    pending while ``failures`` is not 0); a successful sync resets them.
    """

    cursor: str | None = None
    index: dict[str, str] | None = None
    fetch_started_at: float = 0.0
    synced_at: float = 0.0
    time_zone: str | None = None
    fetches: int = 0
    not_before: float = 0.0
    poll_interval: float = 0.0
    cursor_expired_at: float = 0.0
    subscribe_failures: int = 0
    subscribe_retry_at: float = 0.0
    #: syncs that failed since the last one that went through, and the last error
    failures: int = 0
    last_error: str = ""
    #: "refreshing" while the last failure was a transient token-refresh failure
    #: (:class:`~calsync.errors.TokenRefreshFailed`); "" otherwise. A good sync resets it.
    credentials: str = ""
    #: ``latency_ms`` of the last change emitted (notification received -> emitted)
    last_change_latency_ms: int = 0
    #: digest of the availability index value stored with this state (``busy`` table)
    busy_digest: str = ""


class Channel(faust.Record, serializer="json", include_metadata=False):
    """A live push channel: a Google watch channel or a Graph subscription.

    ``provider`` is the resource's provider name (empty in channels recorded before it
    was kept); ``last_message_number`` is the last push number seen (Google only).
    """

    channel_id: str
    provider_resource_id: str
    expires_at_ms: int
    created_at: float
    last_message_number: int = 0
    provider: str = ""


class Timer(faust.Record, serializer="json", include_metadata=False):
    """Work due at ``due_at``: the notification is released to the notifications topic then.

    Keys: ``retry:<envelope key>`` (a retry waiting for its time),
    ``reconcile:<resource id>`` (the next scheduled reconciliation),
    ``renew:<resource id>`` (the next subscription renewal, or the next attempt to
    create one after a failure) and ``poll:<resource id>`` (the next CalDAV poll).
    """

    due_at: float
    notification: Notification
