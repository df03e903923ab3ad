from __future__ import annotations

from pathlib import Path

import pytest

from calsync.errors import ConfigurationError
from calsync.settings import Settings

ENV = {"CALSYNC_SECRET_KEY": "s" * 20, "CALSYNC_ADMIN_TOKEN": "admin"}


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


def test_round_trips_through_the_environment() -> None:
    s = Settings.from_env({**ENV, "CALSYNC_TOPIC_PARTITIONS": "3"})
    assert Settings.from_env(s.to_env()) == s


def test_secrets_are_masked() -> None:
    s = Settings.from_env({**ENV, "CALSYNC_GOOGLE_CLIENT_SECRET": "gcs"})
    masked = s.masked()
    assert masked["secret_key"] == masked["admin_token"] == masked["google_client_secret"] == "****"
    assert "gcs" not in repr(s) and "s" * 20 not in repr(s)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CALSYNC_ADMIN_TOKEN": "a"}, "CALSYNC_SECRET_KEY"),
        ({"CALSYNC_SECRET_KEY": "s" * 20}, "CALSYNC_ADMIN_TOKEN"),
        ({**ENV, "CALSYNC_WEB_PORT": "http"}, "CALSYNC_WEB_PORT"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env(env)
