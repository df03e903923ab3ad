"""Tests of :mod:`calsync.normalize.busy`: every table row and every policy switch."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calsync.model import StatusIntent, Transparency
from calsync.normalize.busy import (
    KIND_WORDS,
    RESPONSE_WORDS,
    STATUS_WORDS,
    BusyPolicy,
    status_intent,
)

B, T, F, OOO, C = (
    StatusIntent.BUSY,
    StatusIntent.TENTATIVE,
    StatusIntent.FREE,
    StatusIntent.OUT_OF_OFFICE,
    StatusIntent.CANCELLED,
)
OPAQUE, TRANSPARENT = Transparency.OPAQUE, Transparency.TRANSPARENT
DEFAULT = BusyPolicy()


def _intent(
    policy: BusyPolicy = DEFAULT,
    *,
    transparency: Transparency = OPAQUE,
    status: str | None = None,
    own_response: str | None = None,
    kind: str | None = None,
    all_day: bool = False,
) -> tuple[StatusIntent, Transparency]:
    return status_intent(
        policy,
        transparency=transparency,
        status=status,
        own_response=own_response,
        kind=kind,
        all_day=all_day,
    )


# -- status words: CalDAV STATUS, Google status, Graph showAs ------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        # CalDAV STATUS
        ("CONFIRMED", (B, OPAQUE)),
        ("TENTATIVE", (T, OPAQUE)),
        ("CANCELLED", (C, OPAQUE)),
        # Google status
        ("confirmed", (B, OPAQUE)),
        ("tentative", (T, OPAQUE)),
        ("cancelled", (C, OPAQUE)),
        # Graph showAs
        ("free", (F, TRANSPARENT)),
        ("busy", (B, OPAQUE)),
        ("oof", (OOO, OPAQUE)),
        ("workingElsewhere", (F, TRANSPARENT)),
        ("unknown", (B, OPAQUE)),
        # missing or new words: when unsure, busy
        (None, (B, OPAQUE)),
        ("", (B, OPAQUE)),
        ("somethingNew", (B, OPAQUE)),
    ],
)
def test_status_words(status: str | None, expected: tuple[StatusIntent, Transparency]) -> None:
    assert _intent(status=status) == expected


def test_every_status_row_is_tested() -> None:
    assert set(STATUS_WORDS) == {
        "confirmed",
        "tentative",
        "cancelled",
        "free",
        "busy",
        "oof",
        "workingelsewhere",
        "unknown",
    }


def test_graph_busy_word_makes_transparent_opaque() -> None:
    assert _intent(transparency=TRANSPARENT, status="busy") == (B, OPAQUE)


# -- transparency: CalDAV TRANSP, Google transparency ----------------------------------


def test_transparent_is_free() -> None:
    assert _intent(transparency=TRANSPARENT) == (F, TRANSPARENT)
    assert _intent(transparency=TRANSPARENT, status="CONFIRMED") == (F, TRANSPARENT)


def test_cancelled_wins_over_everything() -> None:
    assert _intent(transparency=TRANSPARENT, status="cancelled", kind="outOfOffice")[0] is C


# -- responses: CalDAV PARTSTAT, Google responseStatus, Graph response -----------------


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        # CalDAV PARTSTAT
        ("ACCEPTED", B),
        ("DECLINED", F),
        ("TENTATIVE", T),
        ("NEEDS-ACTION", B),
        ("DELEGATED", B),
        # Google responseStatus
        ("accepted", B),
        ("declined", F),
        ("tentative", T),
        ("needsAction", B),
        # Graph responseStatus.response
        ("tentativelyAccepted", T),
        ("notResponded", B),
        ("organizer", B),
        ("none", B),
        # missing or new
        (None, B),
        ("maybeLater", B),
    ],
)
def test_response_words(response: str | None, expected: StatusIntent) -> None:
    assert _intent(own_response=response) == (expected, OPAQUE)


def test_every_response_row_is_tested() -> None:
    assert set(RESPONSE_WORDS) == {
        "accepted",
        "declined",
        "tentative",
        "tentativelyaccepted",
        "needsaction",
        "notresponded",
        "delegated",
        "organizer",
        "none",
    }


# -- kinds: Google eventType -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("default", (B, OPAQUE)),
        ("fromGmail", (B, OPAQUE)),
        ("focusTime", (B, OPAQUE)),
        ("outOfOffice", (OOO, OPAQUE)),
        ("workingLocation", (F, TRANSPARENT)),
        ("birthday", (F, TRANSPARENT)),
        ("somethingNew", (B, OPAQUE)),
        (None, (B, OPAQUE)),
    ],
)
def test_kind_words(kind: str | None, expected: tuple[StatusIntent, Transparency]) -> None:
    assert _intent(kind=kind) == expected


def test_every_kind_row_is_tested() -> None:
    assert set(KIND_WORDS) == {
        "default",
        "fromgmail",
        "focustime",
        "outofoffice",
        "workinglocation",
        "birthday",
    }


def test_out_of_office_stays_even_when_declined_or_all_day() -> None:
    assert _intent(status="oof", own_response="declined")[0] is OOO
    assert (
        _intent(kind="outOfOffice", all_day=True, policy=BusyPolicy(all_day_is_busy=False))[0]
        is OOO
    )


# -- switches --------------------------------------------------------------------------


def test_declined_is_free_switch() -> None:
    assert _intent(own_response="DECLINED")[0] is F
    assert _intent(BusyPolicy(declined_is_free=False), own_response="DECLINED")[0] is B
    assert (
        _intent(BusyPolicy(declined_is_free=False), own_response="declined", status="tentative")[0]
        is T
    )


def test_unanswered_is_busy_switch() -> None:
    assert _intent(own_response="NEEDS-ACTION")[0] is B
    assert _intent(BusyPolicy(unanswered_is_busy=False), own_response="NEEDS-ACTION")[0] is T
    assert _intent(BusyPolicy(unanswered_is_busy=False), own_response="notResponded")[0] is T
    # unanswered-as-tentative then follows tentative_is_busy
    both = BusyPolicy(unanswered_is_busy=False, tentative_is_busy=True)
    assert _intent(both, own_response="needsAction")[0] is B


def test_all_day_is_busy_switch() -> None:
    assert _intent(all_day=True)[0] is B
    assert _intent(BusyPolicy(all_day_is_busy=False), all_day=True)[0] is F
    assert _intent(BusyPolicy(all_day_is_busy=False), all_day=False)[0] is B


def test_tentative_is_busy_switch() -> None:
    policy = BusyPolicy(tentative_is_busy=True)
    assert _intent(status="TENTATIVE")[0] is T
    assert _intent(policy, status="TENTATIVE")[0] is B
    assert _intent(policy, own_response="tentativelyAccepted")[0] is B
    assert _intent(policy, status="tentative", transparency=TRANSPARENT)[0] is F


def test_policy_is_frozen_with_documented_defaults() -> None:
    assert (
        BusyPolicy(
            declined_is_free=True,
            unanswered_is_busy=True,
            all_day_is_busy=True,
            tentative_is_busy=False,
        )
        == DEFAULT
    )
    with pytest.raises(AttributeError):
        DEFAULT.declined_is_free = False  # type: ignore[misc]


WORDS = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.sampled_from([*STATUS_WORDS, *RESPONSE_WORDS, *KIND_WORDS, "NEEDS-ACTION", "needsAction"]),
)


@given(
    policy=st.builds(BusyPolicy, st.booleans(), st.booleans(), st.booleans(), st.booleans()),
    transparency=st.sampled_from(Transparency),
    status=WORDS,
    response=WORDS,
    kind=WORDS,
    all_day=st.booleans(),
)
def test_total_and_consistent(
    policy: BusyPolicy,
    transparency: Transparency,
    status: str | None,
    response: str | None,
    kind: str | None,
    all_day: bool,
) -> None:
    intent, out = _intent(
        policy,
        transparency=transparency,
        status=status,
        own_response=response,
        kind=kind,
        all_day=all_day,
    )
    assert isinstance(intent, StatusIntent)
    if out is TRANSPARENT and intent is not C:
        assert intent is F
