"""The one busy policy: how a provider's status words become a :class:`StatusIntent`.

Every provider adapter (Google, Microsoft Graph, CalDAV) calls :func:`status_intent`
with the words its provider sent; three small tables normalize the three
vocabularies first, so the decision itself is written once:

* ``status`` -- the event-level state: CalDAV ``STATUS``, Google ``status``, or
  Graph ``showAs`` (Graph callers pass ``"cancelled"`` when ``isCancelled``);
  see :data:`STATUS_WORDS`.
* ``own_response`` -- the calendar owner's own answer: CalDAV ``PARTSTAT``, Google
  ``attendees[self].responseStatus``, Graph ``responseStatus.response``; see
  :data:`RESPONSE_WORDS`.
* ``kind`` -- Google ``eventType``; see :data:`KIND_WORDS`.

Words are matched case-insensitively, ignoring ``-`` and ``_`` (so CalDAV
``NEEDS-ACTION`` and Google ``needsAction`` are one word). Unknown or missing
words count as "nothing said": when unsure, the slot stays busy.

The decision, first match wins:

1. cancelled → ``CANCELLED``;
2. out of office (Graph ``oof``, Google ``outOfOffice``) → ``OUT_OF_OFFICE``;
3. transparent, or a free word (Graph ``free``/``workingElsewhere``, Google
   ``workingLocation``/``birthday``) → ``FREE``;
4. declined → ``FREE`` if ``declined_is_free``;
5. all-day → ``FREE`` unless ``all_day_is_busy``;
6. unanswered → busy if ``unanswered_is_busy``, else treated as tentative;
7. tentative (status or response) → ``TENTATIVE``, or ``BUSY`` if
   ``tentative_is_busy``;
8. otherwise ``BUSY``.

The returned :class:`Transparency` is the one given, except that a word that
itself says free (rule 3) makes it ``TRANSPARENT`` and a word that says busy or
away (Graph ``busy``/``oof``/``tentative``) makes it ``OPAQUE``: Graph has no
separate transparency field, its ``showAs`` is both.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from calsync.model import StatusIntent, Transparency

__all__ = [
    "KIND_WORDS",
    "RESPONSE_WORDS",
    "STATUS_WORDS",
    "BusyPolicy",
    "Response",
    "Signal",
    "status_intent",
]


@dataclass(frozen=True, slots=True)
class BusyPolicy:
    """Switches of the busy decision; the defaults are what most people expect."""

    #: An invitation the owner declined does not block the slot.
    declined_is_free: bool = True
    #: An invitation the owner has not answered blocks the slot (else: tentative).
    unanswered_is_busy: bool = True
    #: All-day events block the whole day (else: they are free).
    all_day_is_busy: bool = True
    #: Tentative events block the slot (else: they are reported as tentative).
    tentative_is_busy: bool = False


class Signal(enum.Enum):
    """What an event-level word (``status``, ``showAs``, ``eventType``) says."""

    NOTHING = "nothing"  # confirmed/default/busy/unknown: no reason to leave busy
    CANCELLED = "cancelled"
    OUT_OF_OFFICE = "out_of_office"
    FREE = "free"
    TENTATIVE = "tentative"


class Response(enum.Enum):
    """The owner's own answer to an invitation, in one vocabulary."""

    NONE = "none"  # organizer, no attendee list, or an unknown word
    ACCEPTED = "accepted"
    TENTATIVE = "tentative"
    DECLINED = "declined"
    UNANSWERED = "unanswered"


def _key(word: str) -> str:
    return word.casefold().replace("-", "").replace("_", "")


#: Event-level words, keyed by normalized word: (signal, transparency the word implies).
STATUS_WORDS: Mapping[str, tuple[Signal, Transparency | None]] = MappingProxyType(
    {
        # CalDAV STATUS (RFC 5545 3.8.1.11) and Google ``status``
        "confirmed": (Signal.NOTHING, None),  # CalDAV CONFIRMED, Google confirmed
        "tentative": (Signal.TENTATIVE, None),  # CalDAV TENTATIVE, Google tentative, Graph showAs
        # CalDAV CANCELLED, Google cancelled, Graph isCancelled (passed as "cancelled")
        "cancelled": (Signal.CANCELLED, None),
        # Graph ``showAs`` (tentative shares the row above)
        "free": (Signal.FREE, Transparency.TRANSPARENT),
        "busy": (Signal.NOTHING, Transparency.OPAQUE),
        "oof": (Signal.OUT_OF_OFFICE, Transparency.OPAQUE),
        # working, only not at the office: bookable, so not busy
        "workingelsewhere": (Signal.FREE, Transparency.TRANSPARENT),
        "unknown": (Signal.NOTHING, None),  # Graph: the client did not say; stays busy
    }
)

#: Google ``eventType`` words, keyed by normalized word: (signal, implied transparency).
KIND_WORDS: Mapping[str, tuple[Signal, Transparency | None]] = MappingProxyType(
    {
        "default": (Signal.NOTHING, None),
        "fromgmail": (Signal.NOTHING, None),  # flights, reservations: real busy time
        "focustime": (Signal.NOTHING, None),  # the owner blocked the time on purpose
        "outofoffice": (Signal.OUT_OF_OFFICE, Transparency.OPAQUE),
        "workinglocation": (Signal.FREE, Transparency.TRANSPARENT),  # a place, not a meeting
        "birthday": (Signal.FREE, Transparency.TRANSPARENT),  # contacts' birthdays
    }
)

#: The owner's response words of all three providers, keyed by normalized word.
RESPONSE_WORDS: Mapping[str, Response] = MappingProxyType(
    {
        "accepted": Response.ACCEPTED,  # CalDAV ACCEPTED, Google accepted, Graph accepted
        "declined": Response.DECLINED,  # CalDAV DECLINED, Google declined, Graph declined
        "tentative": Response.TENTATIVE,  # CalDAV TENTATIVE, Google tentative
        "tentativelyaccepted": Response.TENTATIVE,  # Graph
        "needsaction": Response.UNANSWERED,  # CalDAV NEEDS-ACTION, Google needsAction
        "notresponded": Response.UNANSWERED,  # Graph
        "delegated": Response.NONE,  # CalDAV: handed to someone else; the event stays as is
        "organizer": Response.NONE,  # Graph: the owner organizes it
        "none": Response.NONE,  # Graph: no response asked for
    }
)


def _status_word(status: str | None) -> tuple[Signal, Transparency | None]:
    return (
        STATUS_WORDS.get(_key(status), (Signal.NOTHING, None)) if status else (Signal.NOTHING, None)
    )


def _kind_word(kind: str | None) -> tuple[Signal, Transparency | None]:
    return KIND_WORDS.get(_key(kind), (Signal.NOTHING, None)) if kind else (Signal.NOTHING, None)


def _response_word(response: str | None) -> Response:
    return RESPONSE_WORDS.get(_key(response), Response.NONE) if response else Response.NONE


def status_intent(
    policy: BusyPolicy,
    *,
    transparency: Transparency,
    status: str | None,
    own_response: str | None,
    kind: str | None = None,
    all_day: bool = False,
) -> tuple[StatusIntent, Transparency]:
    """The busy state of one occurrence, by the rules in the module docstring.

    Pure and total: every combination of words (known, unknown or ``None``) gives
    an answer; nothing raises.
    """
    status_signal, status_transparency = _status_word(status)
    kind_signal, kind_transparency = _kind_word(kind)
    response = _response_word(own_response)
    implied = status_transparency or kind_transparency
    if implied is not None:
        transparency = implied
    signals = {status_signal, kind_signal}

    if Signal.CANCELLED in signals:
        return StatusIntent.CANCELLED, transparency
    if Signal.OUT_OF_OFFICE in signals:
        return StatusIntent.OUT_OF_OFFICE, transparency
    if Signal.FREE in signals or transparency is Transparency.TRANSPARENT:
        return StatusIntent.FREE, transparency
    if response is Response.DECLINED and policy.declined_is_free:
        return StatusIntent.FREE, transparency
    if all_day and not policy.all_day_is_busy:
        return StatusIntent.FREE, transparency
    tentative = Signal.TENTATIVE in signals or response is Response.TENTATIVE
    if response is Response.UNANSWERED and not policy.unanswered_is_busy:
        tentative = True
    if tentative and not policy.tentative_is_busy:
        return StatusIntent.TENTATIVE, transparency
    return StatusIntent.BUSY, transparency
