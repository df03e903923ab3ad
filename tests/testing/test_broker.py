"""The test broker is a real Kafka: it starts, serves an idempotent producer and a consumer
group, keeps data in a reused work dir, reports failures with its log, and stops for good."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from calsync.errors import ConfigurationError
from calsync.testing.broker import KafkaBroker, KafkaBrokerError, ensure_kafka_libs
from calsync.testing.ports import free_port


def _process_exists(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie no one reaps, e.g. under a minimal PID 1, does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return "\nState:\tZ" not in status


async def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await asyncio.wait_for(producer.send_and_wait(topic, value, key=b"k"), 30)
    finally:
        await producer.stop()


async def _consume_one(bootstrap: str, topic: str) -> bytes | None:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-broker-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        message = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
    value: bytes | None = message.value
    return value


def test_jar_cache_has_the_slf4j_1_binding() -> None:
    libs = ensure_kafka_libs()
    jars = {jar.name for jar in libs.glob("*.jar")}
    assert any(name.startswith("kafka_2.13-") for name in jars)
    # Kafka 4.1 uses slf4j-api 1.7: only the SLF4J 1 binding makes the broker log anything
    assert any(name.startswith("log4j-slf4j-impl-") for name in jars)
    assert ensure_kafka_libs() == libs  # second call is a cache hit


async def test_produce_consume_and_stop() -> None:
    broker = KafkaBroker()
    began = time.monotonic()
    bootstrap = await asyncio.to_thread(broker.start)
    print(f"broker ready in {time.monotonic() - began:.2f} s")
    try:
        pid = broker.pid
        assert pid is not None and _process_exists(pid)
        assert os.getpgid(pid) == pid  # its own process group
        assert bootstrap == broker.bootstrap
        host, port = bootstrap.split(":")
        assert host == "127.0.0.1" and int(port) > 0
        assert "Kafka Server started" in broker.log_path.read_text()
        assert await asyncio.to_thread(broker.start) == bootstrap  # idempotent while running

        topic = f"broker-test-{uuid.uuid4().hex}"
        await _produce(bootstrap, topic, b"hello")
        assert await _consume_one(bootstrap, topic) == b"hello"
    finally:
        work_dir = broker.log_path.parent
        await asyncio.to_thread(broker.stop)

    assert not _process_exists(pid)
    assert broker.pid is None and not broker.running
    assert not work_dir.exists()
    with pytest.raises(KafkaBrokerError):
        _ = broker.bootstrap
    broker.stop()  # idempotent
    broker.stop()


async def test_fixed_port_and_reused_work_dir_keep_data(tmp_path: Path) -> None:
    port = free_port()
    work_dir = tmp_path / "kafka"
    topic = f"broker-test-{uuid.uuid4().hex}"

    with KafkaBroker(port, work_dir=work_dir) as broker:
        assert broker.bootstrap == f"127.0.0.1:{port}"
        await _produce(broker.bootstrap, topic, b"kept")
    assert not broker.running
    assert (work_dir / "data" / "meta.properties").is_file()  # a caller's work dir stays

    with KafkaBroker(work_dir=work_dir) as again:  # same data, other (free) ports
        assert await _consume_one(again.bootstrap, topic) == b"kept"


def test_failed_start_raises_with_log_and_leaves_nothing() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        broker = KafkaBroker(taken, startup_timeout=60)
        with pytest.raises(KafkaBrokerError, match="Address already in use"):
            broker.start()
    assert broker.pid is None and not broker.running
    assert not broker.log_path.parent.exists()


def test_missing_maven_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALSYNC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(ConfigurationError, match="Maven"):
        ensure_kafka_libs()


def test_a_port_taken_after_it_was_picked_is_picked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    import calsync.testing.broker as broker_module

    real_free_port = broker_module._free_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken: int = squatter.getsockname()[1]
        picks = iter([taken])

        def racy_free_port(*, avoid: int | None = None) -> int:
            return next(picks, None) or real_free_port(avoid=avoid)

        monkeypatch.setattr(broker_module, "_free_port", racy_free_port)
        with KafkaBroker() as broker:
            assert broker.bootstrap != f"127.0.0.1:{taken}"
            assert "Kafka Server started" in broker.log_path.read_text()


_CRASHING_TEST_RUN = """
import os, signal, sys
from calsync.testing.broker import KafkaBroker
broker = KafkaBroker()
broker.start()
print(broker.pid, broker.log_path.parent, flush=True)
if sys.argv[1] == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
raise RuntimeError("the test run crashed")
"""


@pytest.mark.parametrize("death", ["exception", "sigkill"])
def test_no_jvm_outlives_a_crashed_test_run(death: str) -> None:
    """atexit covers an exception; the watchdog covers a kill that skips atexit."""
    result = subprocess.run(
        [sys.executable, "-c", _CRASHING_TEST_RUN, death],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode != 0
    pid_text, work_text = result.stdout.split()
    pid, work_dir = int(pid_text), Path(work_text)
    deadline = time.monotonic() + 30
    while (_process_exists(pid) or work_dir.exists()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _process_exists(pid), result.stderr
    assert not work_dir.exists()
