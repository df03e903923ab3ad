"""The JSON records of ``calsync.notifications``, ``.retries``, ``.commands``, ``.status``
and ``.hold-requests``.

They are Faust records without Faust metadata (``include_metadata=False``), so any
Kafka client (the standalone gateway, the CLI, a consumer in another language) can
write and read them as plain JSON. ``calsync.events`` carries Avro instead
(:mod:`calsync.codecs.avro`).
"""

from __future__ import annotations

import enum
from typing import Any

import faust


class Reason(enum.StrEnum):
    """Why a notification asks for a sync."""

    PUSH = "push"
    POLL = "poll"
    RECONCILE = "reconcile"
    RETRY = "retry"
    COMMAND = "command"
    RENEW = "renew"
    LIFECYCLE = "lifecycle"
    #: a timer: the resource's holds have something due (expiry, a vote deadline)
    HOLDS = "holds"


class CommandKind(enum.StrEnum):
    REGISTER = "register"
    REMOVE = "remove"
    RESYNC = "resync"
    ROTATE = "rotate"
    PAUSE = "pause"
    RESUME = "resume"


class Notification(faust.Record, serializer="json", include_metadata=False):
    """A ping: "resource ``resource_id`` may have changed". Never carries provider data.

    ``received_at`` is the wall-clock time (epoch seconds) the gateway or scheduler
    saw the cause; the sync agent uses it to coalesce bursts and to compute
    ``latency_ms``. ``full`` asks for a full resync instead of a delta; ``attempt``
    counts how often this work was retried (its reason stays what caused it);
    ``timer_key`` names the timer that released it, which the consuming agent clears;
    ``lifecycle`` carries a Graph lifecycle event (``missed``, ``subscriptionRemoved``,
    ``reauthorizationRequired``).
    """

    provider: str
    resource_id: str
    reason: str
    received_at: float
    channel_id: str | None = None
    message_number: int | None = None
    full: bool = False
    attempt: int = 0
    timer_key: str | None = None
    lifecycle: str | None = None


class RetryEnvelope(faust.Record, serializer="json", include_metadata=False):
    """A notification that could not run now, with when it may run again.

    ``key`` is unique per envelope; the worker keeps the envelope as timer
    ``retry:<key>`` until the released notification has been consumed.
    """

    notification: Notification
    attempt: int
    due_at: float
    last_error: str
    key: str = ""


class Command(faust.Record, serializer="json", include_metadata=False):
    """An administrative request, keyed by resource id.

    ``credentials`` values are ciphertexts (:class:`calsync.crypto.SecretBox`): no
    plaintext secret is ever written to a topic. ``busy_policy`` (register only)
    holds :class:`calsync.normalize.busy.BusyPolicy` switches by field name; ``None`` means
    the default policy.
    """

    kind: str
    resource_id: str
    issued_at: float
    provider: str | None = None
    calendar_id: str | None = None
    time_zone: str | None = None
    credentials: dict[str, str] | None = None
    busy_policy: dict[str, bool] | None = None
    #: CalDAV: the owner's address, whose PARTSTAT decides declined/unanswered
    own_address: str | None = None


class StatusEvent(faust.Record, serializer="json", include_metadata=False):
    """One state change of a resource on ``calsync.status``."""

    resource_id: str
    status: str
    at: float
    detail: str = ""
    data: dict[str, Any] | None = None


class HoldRequestKind(enum.StrEnum):
    """What a record of ``calsync.hold-requests`` asks of one resource's holds."""

    PREPARE = "prepare"  # decide a new hold for this resource
    VOTE = "vote"  # to the home: a participant's yes or no
    COMMIT = "commit"  # from the home: every participant said yes
    ABORT = "abort"  # from the home: drop the reservation
    RELEASE = "release"
    CONFIRM = "confirm"
    EXPIRE = "expire"  # from the home: the TTL ran out
    RESOLVE = "resolve"  # to the home: a participant asks what was decided


class HoldRequest(faust.Record, serializer="json", include_metadata=False):
    """One request to the holds of ``resource_id`` (the Kafka key), decided in that
    resource's partition order (:mod:`calsync.availability.holds`).

    ``start``/``end`` are epoch seconds, ``ttl`` seconds; ``blocking`` is the
    :class:`~calsync.availability.intervals.Flag` mask of busy time that refuses the
    hold; ``fingerprint`` ties an idempotency key to one request.
    """

    kind: str
    hold_id: str
    resource_id: str
    issued_at: float
    home: str = ""
    participants: list[str] | None = None
    start: int = 0
    end: int = 0
    ttl: float = 0.0
    fingerprint: str = ""
    blocking: int = 5  # Flag.BUSY | Flag.OUT_OF_OFFICE
    voter: str | None = None
    ok: bool = False
    conflict: dict[str, Any] | None = None
    expires_at: float = 0.0
