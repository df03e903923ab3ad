from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from click.testing import CliRunner

from calsync.cli import main
from calsync.errors import ConfigurationError
from calsync.settings import Settings
from tests.conftest import ADMIN_TOKEN, SECRET_KEY

ENV = {"CALSYNC_SECRET_KEY": SECRET_KEY, "CALSYNC_ADMIN_TOKEN": ADMIN_TOKEN}


def test_reads_calsync_variables() -> None:
    s = Settings.from_env(
        {
            **ENV,
            "CALSYNC_WEB_PORT": "7000",
            "CALSYNC_DATA_DIR": "/tmp/x",
            "CALSYNC_RETRY_BASE_DELAY": "0.25",
        }
    )
    assert s.web_port == 7000 and s.data_dir == Path("/tmp/x") and s.retry_base_delay == 0.25
    assert s.google_api_url == "https://www.googleapis.com/calendar/v3"
    assert s.admin_address is None and s.faust_pages is False


def test_round_trips_through_the_environment() -> None:
    s = Settings.from_env(
        {
            **ENV,
            "CALSYNC_TOPIC_PARTITIONS": "3",
            "CALSYNC_ADMIN_BIND": "127.0.0.1:7001",
            "CALSYNC_FAUST_PAGES": "true",
        }
    )
    assert Settings.from_env(s.to_env()) == s


def test_secrets_are_masked() -> None:
    s = Settings.from_env({**ENV, "CALSYNC_GOOGLE_CLIENT_SECRET": "gcs"})
    masked = s.masked()
    assert masked["secret_key"] == masked["admin_token"] == masked["google_client_secret"] == "****"
    assert "gcs" not in repr(s) and SECRET_KEY not in repr(s) and ADMIN_TOKEN not in repr(s)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CALSYNC_ADMIN_TOKEN": ADMIN_TOKEN}, "CALSYNC_SECRET_KEY"),
        ({"CALSYNC_SECRET_KEY": SECRET_KEY}, "CALSYNC_ADMIN_TOKEN"),
        ({**ENV, "CALSYNC_WEB_PORT": "http"}, "CALSYNC_WEB_PORT"),
        # a refresh rarer than the dashboard's lookback would lose idle resources
        ({**ENV, "CALSYNC_SUMMARY_REFRESH": "50000"}, "CALSYNC_SUMMARY_REFRESH"),
        ({**ENV, "CALSYNC_SUMMARY_REFRESH": "30"}, "CALSYNC_SUMMARY_REFRESH"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env(env)


# -- secret strength ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        " " * 16,
        " " * 64,
        "\t\n" * 20,
        "s" * 20,
        "x" * 64,  # long, but one character
        "ab" * 32,  # long, but two characters
        "0123456789abcdef",  # 16 bytes: the old minimum
        "Zq3-vL9_xT2kP8mR4wB7nY1cH6jF0dG",  # 31 bytes
        "  Zq3-vL9_xT2kP8mR4wB7nY1cH6jF0  ",  # 33 with the padding, 29 without
    ],
)
def test_a_weak_secret_key_is_refused(key: str) -> None:
    with pytest.raises(ConfigurationError, match="CALSYNC_SECRET_KEY") as refused:
        Settings(secret_key=key, admin_token=ADMIN_TOKEN)
    message = str(refused.value)
    assert "secrets.token_urlsafe(32)" in message
    if key.strip():
        assert key.strip() not in message  # never echo the secret


@pytest.mark.parametrize(
    "token",
    [
        "1",
        "admin",
        "a" * 40,  # long, but one character
        "ab" * 20,  # long, but two characters
        "Zq3-vL9_xT2kP8mR4wB7nY1",  # 23 characters
        "Zq3-vL9_xT2k P8mR4wB7nY1cH6j",  # a space cannot travel in a bearer header intact
        " Zq3-vL9_xT2kP8mR4wB7nY1cH6j",
        "Zq3-vL9_xT2kP8mR4wB7nY1cH6jé",  # not ASCII: HTTP headers are not UTF-8
    ],
)
def test_a_weak_admin_token_is_refused(token: str) -> None:
    with pytest.raises(ConfigurationError, match="CALSYNC_ADMIN_TOKEN") as refused:
        Settings(secret_key=SECRET_KEY, admin_token=token)
    message = str(refused.value)
    assert "secrets.token_urlsafe(32)" in message
    if len(token) > 8:  # short ones may be words of the message
        assert token not in message


@pytest.mark.parametrize(
    ("key", "token"),
    [
        (SECRET_KEY, ADMIN_TOKEN),
        (secrets.token_urlsafe(32), secrets.token_urlsafe(32)),
        (secrets.token_hex(16), secrets.token_urlsafe(18)),  # 32 hex characters; 24 characters
        ("correct horse battery staple, twice over", "Zq3-vL9_xT2kP8mR4wB7nY1c"),
    ],
)
def test_good_secrets_are_accepted(key: str, token: str) -> None:
    s = Settings(secret_key=key, admin_token=token)
    assert s.secret_key == key and s.admin_token == token


@pytest.mark.parametrize("command", ["worker", "gateway"])
@pytest.mark.parametrize(
    ("variable", "weak"), [("CALSYNC_SECRET_KEY", " " * 16), ("CALSYNC_ADMIN_TOKEN", "1")]
)
def test_the_cli_refuses_to_start_with_a_weak_secret(
    command: str, variable: str, weak: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {**ENV, variable: weak}.items():
        monkeypatch.setenv(name, value)
    # nothing listens there: a command that got past its settings would fail differently
    monkeypatch.setenv("CALSYNC_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    result = CliRunner().invoke(main, [command])
    assert result.exit_code != 0
    assert variable in result.output and "secrets.token_urlsafe(32)" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# -- admin address and Faust's pages -----------------------------------------------------


@pytest.mark.parametrize(
    ("bind", "address"),
    [
        ("127.0.0.1:7001", ("127.0.0.1", 7001)),
        ("0.0.0.0:7001", ("0.0.0.0", 7001)),
        ("[::1]:7001", ("::1", 7001)),
        ("admin.internal:7001", ("admin.internal", 7001)),
    ],
)
def test_admin_bind_is_host_and_port(bind: str, address: tuple[str, int]) -> None:
    assert Settings.from_env({**ENV, "CALSYNC_ADMIN_BIND": bind}).admin_address == address


@pytest.mark.parametrize(
    "bind",
    ["7001", "127.0.0.1", "127.0.0.1:", ":7001", "127.0.0.1:0", "h:70000", "h:x", "::1:7001"],
)
def test_a_malformed_admin_bind_is_refused(bind: str) -> None:
    with pytest.raises(ConfigurationError, match="CALSYNC_ADMIN_BIND"):
        Settings.from_env({**ENV, "CALSYNC_ADMIN_BIND": bind})


def test_admin_bind_cannot_share_the_public_port() -> None:
    with pytest.raises(ConfigurationError, match="CALSYNC_ADMIN_BIND"):
        Settings.from_env(
            {**ENV, "CALSYNC_WEB_PORT": "7001", "CALSYNC_ADMIN_BIND": "10.0.0.1:7001"}
        )


@pytest.mark.parametrize(
    ("raw", "value"),
    [("true", True), ("1", True), ("Yes", True), ("on", True), ("false", False), ("0", False)],
)
def test_faust_pages_is_a_boolean(raw: str, value: bool) -> None:
    assert Settings.from_env({**ENV, "CALSYNC_FAUST_PAGES": raw}).faust_pages is value


def test_a_malformed_boolean_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="CALSYNC_FAUST_PAGES"):
        Settings.from_env({**ENV, "CALSYNC_FAUST_PAGES": "maybe"})
