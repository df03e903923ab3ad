from __future__ import annotations

import pytest

from calsync.crypto import SecretBox
from calsync.gateway.http import RequestRejected, validate_registration

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
    ],
)
def test_bad_registrations_name_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(RequestRejected) as info:
        validate_registration({**GOOD, **change}, BOX, now=1.0)
    assert info.value.status == 400 and info.value.field == field


def test_non_object_body() -> None:
    with pytest.raises(RequestRejected, match="JSON object"):
        validate_registration([1, 2], BOX, now=1.0)
