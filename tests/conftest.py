"""Shared fixtures. Fixtures are factories with defaults; the broker is one per session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from calsync.settings import Settings
from calsync.testing.hog import CpuHog, hog_count
from calsync.testing.ports import free_port

__all__ = ["free_port"]  # the tests' port picker, shared with the benchmarks

SECRET_KEY = "test-secret-key-0123456789abcdef"
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"


_HOG = pytest.StashKey[CpuHog]()


def pytest_configure(config: pytest.Config) -> None:
    """Under load (``CALSYNC_TEST_HOG=<n>|auto``, what ``./scripts/test --under-load``
    sets): busy processes run from here until pytest exits, whatever the outcome."""
    count = hog_count(os.environ.get("CALSYNC_TEST_HOG"))
    if count:
        hog = CpuHog(count)
        hog.start()
        config.add_cleanup(hog.stop)
        config.stash[_HOG] = hog


def pytest_report_header(config: pytest.Config) -> str | None:
    hog = config.stash.get(_HOG, None)
    return f"under load: {hog.count} CPU hog processes {hog.pids}" if hog else None


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real Kafka broker for the whole session (started here unless one is given)."""
    external = os.environ.get("CALSYNC_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    from calsync.testing.broker import KafkaBroker

    with KafkaBroker() as broker:
        yield broker.bootstrap


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Settings with a unique app id and topic prefix, so tests never share state."""

    def factory(**overrides: Any) -> Settings:
        unique = uuid.uuid4().hex[:10]
        port = free_port()
        values: dict[str, Any] = {
            "secret_key": SECRET_KEY,
            "admin_token": ADMIN_TOKEN,
            "app_id": f"calsync-test-{unique}",
            "topic_prefix": f"t{unique}.",
            "topic_partitions": 4,
            "data_dir": tmp_path / f"data-{unique}",
            "web_port": port,
            "public_url": f"http://127.0.0.1:{port}",
            "google_client_id": "test-client",
            "google_client_secret": "test-client-secret",
            "kafka_session_timeout": 10.0,
            "retry_base_delay": 0.2,
            "retry_max_delay": 2.0,
        }
        values.update(overrides)
        return Settings(**values)

    return factory


RocksdbTableFactory = Callable[..., Any]


@pytest.fixture
def rocksdb_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RocksdbTableFactory:
    """Faust tables on Faust's own RocksDB store (rocksdict), each in its own app and data
    dir: ``make(name, value_type, partitions=N, active=S)`` where ``S`` (default ``{0}``)
    is the set of active partitions, read at every call, so a test may change it later
    (a rebalance)."""

    def make(
        name: str, value_type: type, *, partitions: int, active: set[int] | None = None
    ) -> Any:
        import faust
        from faust.types import TP

        unique = uuid.uuid4().hex[:10]
        app = faust.App(
            f"{name}-{unique}", store="rocksdb://", datadir=str(tmp_path / f"rocksdb-{unique}")
        )
        table = app.Table(name, value_type=value_type, partitions=partitions)
        topic = table.changelog_topic_name
        actives = {0} if active is None else active
        monkeypatch.setattr(
            app.assignor, "assigned_actives", lambda: {TP(topic, p) for p in actives}
        )
        return table

    return make


def recording(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[Any]:
    """Wrap the method ``name`` of ``owner`` (a library's object, such as Faust's store)
    so that each call's first argument is appended to the list returned; the calls
    themselves are unchanged."""
    calls: list[Any] = []
    method = getattr(owner, name)

    def record(first: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(first)
        return method(first, *args, **kwargs)

    monkeypatch.setattr(owner, name, record)
    return calls
