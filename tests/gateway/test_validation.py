from __future__ import annotations

import pytest

from calsync.crypto import SecretBox
from calsync.gateway.http import RequestRejected, validate_registration
from calsync.normalize.busy import BusyPolicy

BOX = SecretBox("k" * 32)
GOOD = {
    "resource_id": "room-1@acme",
    "provider": "google",
    "calendar_id": "primary",
    "time_zone": "Europe/Zurich",
    "credentials": {"refresh_token": "1//plain-refresh"},
}


def test_valid_registration_encrypts_credentials() -> None:
    command = validate_registration(GOOD, BOX, now=1.0)
    assert command.kind == "register" and command.resource_id == "room-1@acme"
    assert command.credentials is not None
    ciphertext = command.credentials["refresh_token"]
    assert "plain-refresh" not in command.dumps().decode()
    assert BOX.decrypt(ciphertext) == "1//plain-refresh"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"resource_id": ""}, "resource_id"),
        ({"resource_id": "a" * 129}, "resource_id"),
        ({"resource_id": "has space"}, "resource_id"),
        ({"provider": "yahoo"}, "provider"),
        ({"calendar_id": ""}, "calendar_id"),
        ({"time_zone": "Mars/Base"}, "time_zone"),
        ({"credentials": {}}, "credentials"),
        ({"credentials": "x"}, "credentials"),
        ({"busy_policy": "strict"}, "busy_policy"),
        ({"busy_policy": ["declined_is_free"]}, "busy_policy"),
        ({"busy_policy": {"declined_is_free": "false"}}, "busy_policy"),
        ({"busy_policy": {"all_day_is_busy": 0}}, "busy_policy"),
        ({"busy_policy": {"tentative_is_busy": None}}, "busy_policy"),
        ({"busy_policy": {"weekends_are_free": True}}, "busy_policy"),
    ],
)
def test_bad_registrations_name_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(RequestRejected) as info:
        validate_registration({**GOOD, **change}, BOX, now=1.0)
    assert info.value.status == 400 and info.value.field == field


def test_non_object_body() -> None:
    with pytest.raises(RequestRejected, match="JSON object"):
        validate_registration([1, 2], BOX, now=1.0)


def test_busy_policy_is_optional() -> None:
    assert validate_registration(GOOD, BOX, now=1.0).busy_policy is None
    assert validate_registration({**GOOD, "busy_policy": None}, BOX, now=1.0).busy_policy is None


def test_busy_policy_switches_are_carried_as_given() -> None:
    switches = {
        "declined_is_free": False,
        "unanswered_is_busy": False,
        "all_day_is_busy": False,
        "tentative_is_busy": True,
    }
    command = validate_registration({**GOOD, "busy_policy": switches}, BOX, now=1.0)
    assert command.busy_policy == switches
    assert BusyPolicy(**command.busy_policy) == BusyPolicy(False, False, False, True)
    partial = validate_registration(
        {**GOOD, "busy_policy": {"all_day_is_busy": False}}, BOX, now=1.0
    )
    assert partial.busy_policy == {"all_day_is_busy": False}


def test_unknown_busy_policy_switch_is_named() -> None:
    with pytest.raises(RequestRejected, match="weekends_are_free") as info:
        validate_registration({**GOOD, "busy_policy": {"weekends_are_free": True}}, BOX, now=1.0)
    assert info.value.field == "busy_policy"


def test_own_address_is_kept_and_checked() -> None:
    caldav = {
        "resource_id": "room-2",
        "provider": "caldav",
        "calendar_id": "https://dav.example.com/alice/cal/",
        "own_address": "alice@example.com",
        "credentials": {"username": "alice", "password": "app-pw"},
    }
    command = validate_registration(caldav, BOX, now=1.0)
    assert command.own_address == "alice@example.com"
    assert command.credentials is not None and "app-pw" not in command.dumps().decode()
    with pytest.raises(RequestRejected) as info:
        validate_registration({**caldav, "own_address": "nobody"}, BOX, now=1.0)
    assert info.value.field == "own_address"
    with pytest.raises(RequestRejected) as info:
        validate_registration({**caldav, "calendar_id": "dav.example.com"}, BOX, now=1.0)
    assert info.value.field == "calendar_id"
    with pytest.raises(RequestRejected) as info:
        validate_registration({**caldav, "credentials": {"username": "alice"}}, BOX, now=1.0)
    assert info.value.field == "credentials"
