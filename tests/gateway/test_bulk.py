"""Bulk registration files: every row validated as one API body, all or nothing."""

from __future__ import annotations

import json

import pytest

from calsync.crypto import SecretBox
from calsync.gateway.bulk import MAX_ROWS, BulkRejected, parse_rows, validate_rows
from tests.conftest import SECRET_KEY

BOX = SecretBox(SECRET_KEY)
CSV = (
    "resource_id,provider,calendar_id,time_zone,refresh_token,username,password,tenant,"
    "busy_policy.declined_is_free\n"
    "room-1,microsoft,room-1@contoso.com,W. Europe Standard Time,,,,contoso.com,\n"
    "alice,google,primary,,1//token,,,,false\n"
    "bob,caldav,https://caldav.example.com/bob/,,,bob,app-password,,\n"
)


def commands(content: str, *, csv_format: bool = True):  # type: ignore[no-untyped-def]
    return validate_rows(parse_rows(content.encode(), csv_format=csv_format), BOX, now=1.0)


def test_csv_rows_become_register_commands_with_encrypted_credentials() -> None:
    made = {c.resource_id: c for c in commands(CSV)}
    assert set(made) == {"room-1", "alice", "bob"}
    assert made["room-1"].time_zone == "Europe/Berlin"  # a Windows name, stored as IANA
    assert made["alice"].busy_policy == {"declined_is_free": False}
    assert made["bob"].credentials is not None
    assert BOX.decrypt(made["bob"].credentials["password"]) == "app-password"
    assert "app-password" not in made["bob"].dumps().decode()
    assert made["room-1"].credentials is not None
    assert BOX.decrypt(made["room-1"].credentials["tenant"]) == "contoso.com"


def test_json_lines_are_the_api_bodies() -> None:
    lines = "\n".join(
        json.dumps(
            {
                "resource_id": f"room-{n}",
                "provider": "microsoft",
                "calendar_id": f"room-{n}@contoso.com",
                "credentials": {"tenant": "contoso.com"},
            }
        )
        for n in range(3)
    )
    assert [c.resource_id for c in commands(lines + "\n\n", csv_format=False)] == [
        "room-0",
        "room-1",
        "room-2",
    ]


@pytest.mark.parametrize(
    ("content", "line", "words"),
    [
        (CSV + "carol,google,primary,,,,,,\n", 5, "credentials"),
        (CSV + "alice,google,primary,,1//other,,,,\n", 5, "also on line 3"),
        (CSV.replace("W. Europe", "Mars"), 2, "time_zone"),
        ("resource_id,colour\nx,red\n", 2, "unknown column"),
        (CSV + "dave,caldav,http://127.0.0.1/dav/,,,d,p,,\n", 5, "calendar_id"),
    ],
)
def test_one_bad_row_refuses_the_file_naming_its_line(content: str, line: int, words: str) -> None:
    with pytest.raises(BulkRejected) as refused:
        commands(content)
    assert refused.value.line == line
    assert words in refused.value.message + str(refused.value.field)


def test_limits() -> None:
    with pytest.raises(BulkRejected, match="no rows"):
        commands("resource_id,provider\n")
    with pytest.raises(BulkRejected, match=f"more than {MAX_ROWS}"):
        parse_rows(b"{}\n" * (MAX_ROWS + 1), csv_format=False)
    with pytest.raises(BulkRejected, match="not a JSON object"):
        parse_rows(b'{"a": 1}\n[', csv_format=False)
    with pytest.raises(BulkRejected, match="UTF-8"):
        parse_rows(b"\xff\xfe", csv_format=True)
