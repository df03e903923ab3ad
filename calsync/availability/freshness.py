"""How fresh an availability answer is: the ``as_of`` block, from a resource's tables.

An answer is **fresh** when calsync has every reason to believe that it knows every
change the provider has: the resource is active (its credentials work), it was
synced at least once, no sync has failed since the last good one, and changes
reach calsync within seconds: its push channel (Google) or subscription (Graph) is
live, or (CalDAV, which has no push) its last poll is recent. Anything else makes it
stale, with the reason in words; a stale answer is still the best calsync knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from calsync.providers.spec import PushKind
from calsync.tables.records import Channel, Resource, SyncState

__all__ = ["Freshness", "as_of"]


@dataclass(frozen=True, slots=True)
class Freshness:
    """The ``as_of`` block of one resource."""

    synced_at: float | None
    fresh: bool
    reason: str
    push: dict[str, Any]
    credentials: str
    pending_retries: int
    last_error: str

    def to_json(self) -> dict[str, Any]:
        return {
            "synced_at": self.synced_at,
            "fresh": self.fresh,
            "reason": self.reason,
            "push": self.push,
            "credentials": self.credentials,
            "pending_retries": self.pending_retries,
            "last_error": self.last_error or None,
        }


_CREDENTIALS = {
    "active": "ok",
    "reauth_required": "revoked: needs reconnecting",
    "removed": "removed",
}


def as_of(
    resource: Resource,
    state: SyncState | None,
    channel: Channel | None,
    *,
    push: PushKind,
    now: float,
    poll_limit: float,
) -> Freshness:
    """The freshness of ``resource`` at ``now``; ``poll_limit`` is how old a CalDAV
    resource's last sync may be and still count as fresh (seconds)."""
    state = state or SyncState()
    synced_at = state.synced_at or None
    credentials = _CREDENTIALS.get(resource.state, resource.state)
    if push is PushKind.POLL:
        poll: dict[str, Any] = {"kind": "poll", "healthy": False, "expires_at": None}
        if synced_at is not None and now - synced_at <= poll_limit:
            poll["healthy"] = True
        channel_state = poll
    else:
        expires = channel.expires_at_ms / 1000 if channel is not None else None
        channel_state = {
            "kind": push.value,
            "healthy": expires is not None and expires > now,
            "expires_at": expires,
        }
    reason = ""
    if resource.state != "active":
        reason = f"credentials: {credentials}"
    elif synced_at is None:
        reason = "not synced yet"
    elif state.failures:
        reason = f"the last {state.failures} sync(s) failed ({state.last_error}); a retry is due"
    elif not channel_state["healthy"]:
        if push is PushKind.POLL:
            reason = f"the last poll was {now - synced_at:.0f}s ago"
        elif channel is None:
            reason = "no push channel: changes arrive with the next catch-up or reconciliation"
        else:
            reason = (
                "the push channel expired: changes arrive with the next catch-up or reconciliation"
            )
    fresh = not reason
    if fresh:
        how = "polled" if push is PushKind.POLL else "push channel live"
        reason = f"{how}; last synced {max(0.0, now - (synced_at or now)):.0f}s ago"
    return Freshness(
        synced_at=synced_at,
        fresh=fresh,
        reason=reason,
        push=channel_state,
        credentials=credentials,
        pending_retries=state.failures,
        last_error=state.last_error,
    )
