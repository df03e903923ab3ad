"""A real single-node Apache Kafka broker (KRaft, combined mode) as a child JVM, for tests.

The broker is the one production uses, not a stand-in: ``kafka.Kafka`` from the Maven Central
jars that ``ci/kafka/pom.xml`` gathers, configured from ``ci/kafka/server.properties.in`` and
``ci/kafka/log4j2.properties``. No Docker, no Apache download mirrors; Java 17+ and Maven are
needed (and Maven Central once, to fill the cache).

Contracts:

* **Jars** are cached outside the repository, in ``$CALSYNC_CACHE_DIR/kafka-<version>/libs``
  (default ``$XDG_CACHE_HOME/calsync`` or ``~/.cache/calsync`` for ``$CALSYNC_CACHE_DIR``), so a
  fresh clone reuses them. ``<version>`` is ``<kafka.version>`` of the pom. The cache is filled by
  ``mvn package -Dkafka.libs.dir=<temp dir>`` and then renamed into place, so it is either
  complete or absent, never half-filled. It records the pom's SHA-256 and is rebuilt when the
  pom changes (a new logging binding, say) even if the Kafka version does not.
* **Isolation**: each :class:`KafkaBroker` gets free loopback ports (client and controller
  listener, both bound to and advertised as ``127.0.0.1``) and its own work dir (on the
  ``/dev/shm`` tmpfs when it has room, which makes KRaft's fsyncs free).
* **Readiness**: :meth:`KafkaBroker.start` returns only after the broker logged
  ``Kafka Server started`` *and* answered a metadata request; otherwise it raises
  :class:`KafkaBrokerError` with the tail of the broker log and leaves no process behind.
* **Restart**: :meth:`KafkaBroker.halt` stops the JVM (SIGTERM, or SIGKILL with
  ``kill=True``) but keeps its ports and work dir; the next :meth:`KafkaBroker.start` brings the
  same broker back (same bootstrap address, same topics, offsets and committed group offsets),
  as an operator's broker restart or crash does to clients. :meth:`KafkaBroker.restart` does
  both. :meth:`KafkaBroker.freeze` (SIGSTOP) makes it unreachable without closing a connection
  until :meth:`KafkaBroker.thaw`.
* **Cleanup**: :meth:`KafkaBroker.stop` sends SIGTERM to the one pid it started, waits up to
  15 s, then SIGKILLs it, and removes the work dir it created. An ``atexit`` hook does the
  same for brokers still running when the interpreter exits. The JVM runs in its own session
  (a terminal's ^C or a kill of the test's process group does not reach it), so a small
  watchdog process does the same when the test process dies without running ``atexit``
  (SIGKILL, SIGTERM, a cancelled CI job): it holds the read end of a pipe from the test
  process and acts on EOF.

Example::

    with KafkaBroker() as broker:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Final

from calsync.errors import ConfigurationError, KafkaBrokerError
from calsync.testing.lifecycle import StartOnEnter, terminate
from calsync.testing.ports import free_port as _free_port

__all__ = [
    "CLUSTER_ID",
    "KafkaBroker",
    "KafkaBrokerError",
    "ensure_kafka_libs",
    "kafka_ci_dir",
    "kafka_libs_dir",
    "kafka_version",
]

#: ``ci/kafka`` of the checkout this package is imported from (editable install).
_CI_KAFKA_DIR: Final = Path(__file__).resolve().parents[2] / "ci" / "kafka"

#: Pinned cluster id (22-char URL-safe base64): no ``random-uuid`` JVM launch, and a reused
#: work dir is accepted by ``format --ignore-formatted``. Same value as docker-compose.yml.
CLUSTER_ID: Final = "4L6g3nShT-eMCtK--X86sw"

#: What ``kafka.server.KafkaRaftServer`` logs once the client listeners accept connections.
_STARTED_MESSAGE: Final = b"Kafka Server started"
_BIND_FAILURE: Final = b"Address already in use"
_STACK_FRAME: Final = re.compile(r"\s+(at |\.\.\. \d+ more)")

#: JVM flags for a fast start on a small machine (heap stays well below 512 MiB when idle).
_JVM_OPTIONS: Final = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
_MIN_JAVA_MAJOR: Final = 17
_STOP_GRACE_SECONDS: Final = 15.0
_PORT_ATTEMPTS: Final = 3
_POM_STAMP: Final = ".pom-sha256"
_SHM: Final = Path("/dev/shm")  # noqa: S108 - a tmpfs we choose on purpose, via mkdtemp
_SHM_MIN_FREE_BYTES: Final = 512 * 1024 * 1024
_STALE_TEMP_SECONDS: Final = 3600.0
_MVN_TIMEOUT_SECONDS: Final = 900.0
_LOG_TAIL_LINES: Final = 60


# --------------------------------------------------------------------------- locating files


def kafka_ci_dir() -> Path:
    """Return the repository's ``ci/kafka`` directory (pom and config templates).

    Raises :class:`~calsync.errors.ConfigurationError` if calsync is not imported from a
    checkout (an editable install, ``pip install -e .``), since only a checkout has it.
    """
    pom = _CI_KAFKA_DIR / "pom.xml"
    if not pom.is_file():
        raise ConfigurationError(
            f"the Kafka test broker needs {pom}, which only a calsync checkout has; "
            "install calsync from a git checkout in editable mode (pip install -e .)"
        )
    return _CI_KAFKA_DIR


def _ci_file(name: str) -> Path:
    path = kafka_ci_dir() / name
    if not path.is_file():
        raise ConfigurationError(f"the Kafka test broker needs {path}, which is missing")
    return path


def kafka_version() -> str:
    """Return ``<kafka.version>`` of ``ci/kafka/pom.xml``: the Kafka release the broker runs."""
    pom = _ci_file("pom.xml")
    match = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", pom.read_text("utf-8"))
    if match is None:
        raise ConfigurationError(f"{pom} has no <kafka.version> property")
    return match.group(1)


def kafka_libs_dir() -> Path:
    """Return where the broker jars are cached; the directory may not exist yet.

    ``$CALSYNC_CACHE_DIR/kafka-<version>/libs``; ``$CALSYNC_CACHE_DIR`` defaults to
    ``$XDG_CACHE_HOME/calsync``, and ``$XDG_CACHE_HOME`` to ``~/.cache``.
    """
    configured = os.environ.get("CALSYNC_CACHE_DIR")
    if configured:
        root = Path(configured).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "calsync"
    return root.resolve() / f"kafka-{kafka_version()}" / "libs"


# --------------------------------------------------------------------------- tools


def _find_mvn() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ConfigurationError(
            "Maven (mvn) is not on PATH; the Kafka test broker needs it once to fetch the broker "
            "jars from Maven Central. Install Apache Maven 3.8+ (Debian/Ubuntu: apt-get install "
            "maven; macOS: brew install maven)"
        )
    return mvn


def _find_java() -> str:
    """Return a ``java`` executable of release 17 or newer ($JAVA_HOME first, then PATH)."""
    candidates: list[str] = []
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidates.append(str(Path(java_home) / "bin" / "java"))
    on_path = shutil.which("java")
    if on_path is not None:
        candidates.append(on_path)
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            major = _java_major(candidate)
            if major >= _MIN_JAVA_MAJOR:
                return candidate
            raise ConfigurationError(
                f"{candidate} is Java {major}; the Kafka test broker needs Java "
                f"{_MIN_JAVA_MAJOR}+. Install a Java {_MIN_JAVA_MAJOR}+ runtime (Debian/Ubuntu: "
                "apt-get install openjdk-17-jre-headless) and put it first on PATH or in JAVA_HOME"
            )
    raise ConfigurationError(
        "no java executable on PATH or in $JAVA_HOME; the Kafka test broker runs on the JVM. "
        f"Install a Java {_MIN_JAVA_MAJOR}+ runtime (Debian/Ubuntu: apt-get install "
        "openjdk-17-jre-headless; macOS: brew install openjdk@17)"
    )


@functools.lru_cache(maxsize=8)
def _java_major(java: str) -> int:
    try:
        result = subprocess.run(  # noqa: S603 - an absolute path we looked up, fixed arguments
            [java, "-version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigurationError(f"cannot run {java} -version: {exc}") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if match is None:
        raise ConfigurationError(f"cannot tell the Java release of {java}: {result.stderr!r}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_402" is Java 8
        major = int(match.group(2))
    return major


# --------------------------------------------------------------------------- jar cache


def ensure_kafka_libs() -> Path:
    """Return the directory of broker jars, downloading them first if needed.

    The cache (:func:`kafka_libs_dir`) is used as is when it holds jars and the SHA-256 of the
    pom that filled it matches the current pom. Otherwise ``mvn -B -q -f ci/kafka/pom.xml
    package -Dkafka.libs.dir=<temp>`` fills a temporary sibling directory, which is then renamed
    into place; a killed download leaves only a ``libs.tmp-*`` directory (removed later), never
    a half-filled cache. Concurrent callers are safe: the first rename wins, the others reuse it.

    Raises :class:`~calsync.errors.ConfigurationError` when the pom, ``mvn`` or Java 17+ is
    missing, and :class:`KafkaBrokerError` when Maven fails (its output is in the message).
    """
    pom = _ci_file("pom.xml")
    stamp = hashlib.sha256(pom.read_bytes()).hexdigest()
    libs = kafka_libs_dir()
    if _libs_ready(libs, stamp):
        return libs
    mvn = _find_mvn()
    _find_java()  # Maven needs it too; fail with the clear message rather than Maven's
    libs.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(libs.parent)
    tmp = Path(tempfile.mkdtemp(prefix="libs.tmp-", dir=libs.parent))
    try:
        command = [mvn, "-B", "-q", "-f", str(pom), "package", f"-Dkafka.libs.dir={tmp}"]
        try:
            result = subprocess.run(  # noqa: S603 - absolute mvn path, our own arguments
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=_MVN_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise KafkaBrokerError(
                f"{' '.join(command)} did not finish in {_MVN_TIMEOUT_SECONDS:.0f} s"
            ) from exc
        output = _tail((result.stdout or "") + (result.stderr or ""))
        if result.returncode != 0:
            raise KafkaBrokerError(
                f"fetching the Kafka broker jars failed (exit {result.returncode}): "
                f"{' '.join(command)}\n{output}"
            )
        if not any(tmp.glob("*.jar")):
            raise KafkaBrokerError(f"{' '.join(command)} put no jars in {tmp}\n{output}")
        (tmp / _POM_STAMP).write_text(stamp + "\n", "utf-8")
        tmp.chmod(0o755)  # mkdtemp made it private; the cache may be shared (CI cache dirs)
        _install_libs(tmp, libs, stamp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a no-op once it was renamed into place
    return libs


def _libs_ready(libs: Path, stamp: str) -> bool:
    try:
        recorded = (libs / _POM_STAMP).read_text("utf-8").strip()
    except OSError:
        return False
    return recorded == stamp and any(libs.glob("*.jar"))


def _install_libs(tmp: Path, libs: Path, stamp: str) -> None:
    """Atomically make ``tmp`` the cache at ``libs``, replacing an outdated cache."""
    with contextlib.suppress(OSError):  # fails when libs exists and is not empty
        tmp.rename(libs)
        return
    if _libs_ready(libs, stamp):  # a concurrent caller installed the same jars first
        return
    old = libs.with_name(f"libs.stale-{os.getpid()}-{time.monotonic_ns()}")
    with contextlib.suppress(FileNotFoundError):
        libs.rename(old)
    try:
        tmp.rename(libs)
    except OSError as exc:
        if not _libs_ready(libs, stamp):
            raise KafkaBrokerError(f"cannot install the Kafka jars into {libs}: {exc}") from exc
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _remove_stale_temps(parent: Path) -> None:
    """Remove ``libs.tmp-*``/``libs.stale-*`` left by killed runs more than an hour ago."""
    cutoff = time.time() - _STALE_TEMP_SECONDS
    for leftover in [*parent.glob("libs.tmp-*"), *parent.glob("libs.stale-*")]:
        with contextlib.suppress(OSError):
            if leftover.stat().st_mtime < cutoff:
                shutil.rmtree(leftover, ignore_errors=True)


# --------------------------------------------------------------------------- helpers


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _default_work_root() -> Path | None:
    """``/dev/shm`` if it is a writable tmpfs with room; ``None`` means the system temp dir."""
    try:
        if _SHM.is_dir() and os.access(_SHM, os.W_OK | os.X_OK):
            stats = os.statvfs(_SHM)
            if stats.f_bavail * stats.f_frsize >= _SHM_MIN_FREE_BYTES:
                return _SHM
    except OSError:
        pass
    return None


def _probe_metadata(bootstrap: str, timeout: float) -> str | None:
    """Ask the broker for its topics; return ``None`` on success, else the error's text."""
    from kafka import KafkaAdminClient  # kafka-python; imported only when a broker starts

    timeout_ms = max(500, int(timeout * 1000))
    wanted: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "client_id": "calsync-test-broker-probe",
        "request_timeout_ms": timeout_ms,
        "bootstrap_timeout_ms": timeout_ms,  # kafka-python 3.x
        "api_version_auto_timeout_ms": timeout_ms,  # kafka-python 2.x
    }
    # kafka-python rejects settings it does not know, and the names changed between 2.x and 3.x
    config = {key: value for key, value in wanted.items() if key in KafkaAdminClient.DEFAULT_CONFIG}
    try:
        admin = KafkaAdminClient(**config)
        try:
            admin.list_topics()
        finally:
            admin.close()
    except Exception as exc:  # any failure just means "not ready yet"
        return f"{type(exc).__name__}: {exc}"
    return None


#: Run with ``sys.executable -c``; argv: JVM pid, a string only the JVM's command line has, the
#: work dir to remove ("" for none). Reads stdin: a byte means "disarmed", EOF means the test
#: process died, so stop the JVM (checking /proc that the pid is still the JVM) and clean up.
_WATCHDOG_SCRIPT: Final = """
import os, shutil, signal, sys, time
pid, marker, work = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3]
if sys.stdin.buffer.read(1):
    sys.exit(0)
def ours():
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return marker in f.read()
    except FileNotFoundError:
        return not os.path.isdir("/proc")
    except OSError:
        return False
def alive():
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return ours()
def send(sig):
    try:
        os.kill(pid, sig)
    except OSError:
        pass
if alive():
    send(signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive():
        send(signal.SIGKILL)
        time.sleep(0.5)
if work:
    shutil.rmtree(work, ignore_errors=True)
"""


def _start_watchdog(pid: int, marker: str, work_dir: Path | None) -> subprocess.Popen[bytes]:
    """Start the watchdog of JVM ``pid``; write a byte to its stdin to disarm it."""
    script = _WATCHDOG_SCRIPT.replace("GRACE", repr(_STOP_GRACE_SECONDS))
    return subprocess.Popen(  # noqa: S603 - our interpreter and our own script
        [sys.executable, "-c", script, str(pid), marker, str(work_dir or "")],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _disarm_watchdog(watchdog: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError, ValueError):
        if watchdog.stdin is not None:
            watchdog.stdin.write(b"\n")
            watchdog.stdin.close()
    try:
        watchdog.wait(timeout=5)
    except subprocess.TimeoutExpired:
        watchdog.kill()
        watchdog.wait()


class _PortClash(Exception):
    """The JVM could not bind a port that was free when we picked it; pick again."""


# --------------------------------------------------------------------------- the broker

_running: set[KafkaBroker] = set()
_running_lock = threading.Lock()


@atexit.register
def _stop_all_at_exit() -> None:
    """Stop brokers still running when the interpreter exits, so no JVM outlives a test run."""
    with _running_lock:
        brokers = list(_running)
    for broker in brokers:
        with contextlib.suppress(Exception):
            broker.stop()


class KafkaBroker(StartOnEnter):
    """A single-node Kafka broker (KRaft, broker+controller) running as a child JVM.

    ``port`` fixes the client listener port (default: a free one); the controller port is
    always a free one. ``work_dir`` holds the config, the data and ``kafka.log``; by default a
    fresh directory under ``/dev/shm`` (or the system temp dir) that :meth:`stop` removes. A
    ``work_dir`` you pass is created if missing, is never removed, and may be reused: its data
    survives a restart. ``startup_timeout`` bounds :meth:`start` (jar download excluded).

    A broker can be started again after :meth:`stop`. All methods are thread-safe.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        work_dir: Path | None = None,
        startup_timeout: float = 120.0,
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, not {port}")
        if startup_timeout <= 0:
            raise ValueError(f"startup_timeout must be positive, not {startup_timeout}")
        self._requested_port = port
        self._requested_work_dir = work_dir
        self._startup_timeout = startup_timeout
        self._lock = threading.RLock()
        self._process: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._controller_port: int | None = None
        self._halted = False
        self._work_dir: Path | None = None
        self._owns_work_dir = False
        self._log_path: Path | None = None

    def __repr__(self) -> str:
        state = f"running at {self._bootstrap_of(self._port)}" if self.running else "stopped"
        return f"<KafkaBroker {state}>"

    # ------------------------------------------------------------------ state

    @property
    def running(self) -> bool:
        """Whether the broker process started by :meth:`start` is alive."""
        process = self._process
        return process is not None and process.poll() is None

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"``, for ``bootstrap_servers``; raises if the broker is not running."""
        if not self.running or self._port is None:
            raise KafkaBrokerError("the Kafka broker is not running; call start() first")
        return self._bootstrap_of(self._port)

    @property
    def pid(self) -> int | None:
        """The broker JVM's process id while it runs, else ``None``."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def log_path(self) -> Path:
        """The broker's log (storage format output, then the JVM's stdout and stderr).

        It is the log of the current or last run; :meth:`stop` deletes it with a work dir the
        broker created. Raises :class:`KafkaBrokerError` before the first :meth:`start`.
        """
        if self._log_path is None:
            raise KafkaBrokerError("the Kafka broker was never started, so it has no log")
        return self._log_path

    @staticmethod
    def _bootstrap_of(port: int | None) -> str:
        return f"127.0.0.1:{port}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Start the broker and wait until it serves metadata; return the bootstrap address.

        Idempotent while the broker runs. Downloads the jars first if the cache is empty
        (:func:`ensure_kafka_libs`). Raises :class:`~calsync.errors.ConfigurationError` if Java,
        Maven or the ``ci/kafka`` files are missing, and :class:`KafkaBrokerError` if the broker
        exits or is not ready within ``startup_timeout``; either way no process is left behind.
        """
        with self._lock:
            if self.running:
                return self.bootstrap
            if not self._halted:
                self.stop()  # clean up after a broker that died on its own
            java = _find_java()
            libs = ensure_kafka_libs()
            template = _ci_file("server.properties.in").read_text("utf-8")
            log4j = _ci_file("log4j2.properties")
            deadline = time.monotonic() + self._startup_timeout
            if self._halted:  # the same broker again: its ports and data, one attempt
                try:
                    return self._start_once(java, libs, template, log4j, deadline)
                except _PortClash as clash:
                    self.stop()
                    raise KafkaBrokerError(
                        f"the restarted Kafka broker could not bind its ports again\n{clash}"
                    ) from None
                except BaseException:
                    self.stop()
                    raise
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                try:
                    return self._start_once(java, libs, template, log4j, deadline)
                except _PortClash as clash:
                    self.stop()
                    if attempt == _PORT_ATTEMPTS or time.monotonic() >= deadline:
                        raise KafkaBrokerError(
                            f"the Kafka broker could not bind ports that were free a moment "
                            f"earlier ({attempt} attempts)\n{clash}"
                        ) from None
                except BaseException:
                    self.stop()
                    raise
            raise AssertionError("unreachable")  # pragma: no cover

    def halt(self, *, kill: bool = False) -> None:
        """Stop the broker JVM but keep its ports, config and data for :meth:`start`.

        SIGTERM (a controlled shutdown, SIGKILL after 15 s) or, with ``kill``, SIGKILL at
        once (a crash). Returns once the process is gone. While halted the bootstrap
        address refuses connections; :meth:`start` serves it again with the same topics,
        records and committed offsets, :meth:`stop` discards everything. Raises
        :class:`KafkaBrokerError` if the broker is not running.
        """
        with self._lock:
            process = self._process
            if process is None or process.poll() is not None:
                raise KafkaBrokerError("the Kafka broker is not running, so it cannot be halted")
            watchdog, self._watchdog = self._watchdog, None
            if watchdog is not None:
                _disarm_watchdog(watchdog)
            if kill:
                process.kill()
                process.wait()
            else:
                with contextlib.suppress(OSError):
                    process.send_signal(signal.SIGCONT)
                terminate(process, _STOP_GRACE_SECONDS)
            self._process = None
            self._halted = True  # still in _running: the atexit hook removes the work dir

    def restart(self, *, down: float = 0.0, kill: bool = False) -> str:
        """:meth:`halt` (``kill`` as there), wait ``down`` seconds, :meth:`start` again;
        returns the bootstrap address, which is the same as before."""
        self.halt(kill=kill)
        time.sleep(down)
        return self.start()

    def freeze(self) -> None:
        """SIGSTOP the broker JVM: its connections stay open but nothing answers, as when
        the network to it drops packets or its host stalls. :meth:`thaw` resumes it."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT a :meth:`freeze`-stopped broker."""
        self._signal(signal.SIGCONT)

    def _signal(self, signum: int) -> None:
        with self._lock:
            process = self._process
            if process is None or process.poll() is not None:
                raise KafkaBrokerError("the Kafka broker is not running")
            process.send_signal(signum)

    def stop(self) -> None:
        """Stop the broker and remove the work dir it created; idempotent and safe to repeat.

        Sends SIGTERM to the broker's pid only (controlled shutdown), waits up to 15 s, then
        sends SIGKILL. Returns once the process is gone.
        """
        with self._lock:
            process, self._process = self._process, None
            watchdog, self._watchdog = self._watchdog, None
            if watchdog is not None:
                _disarm_watchdog(watchdog)
            if process is not None:
                with contextlib.suppress(OSError):
                    process.send_signal(signal.SIGCONT)  # a frozen JVM cannot act on SIGTERM
                terminate(process, _STOP_GRACE_SECONDS)
            with _running_lock:
                _running.discard(self)  # also a halted broker's, whose process is gone
            if self._owns_work_dir and self._work_dir is not None:
                shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None
            self._owns_work_dir = False
            self._halted = False
            self._port = self._controller_port = None

    # ------------------------------------------------------------------ internals

    def _start_once(
        self, java: str, libs: Path, template: str, log4j: Path, deadline: float
    ) -> str:
        if self._halted and self._work_dir is not None and self._port is not None:
            port, work = self._port, self._work_dir
            controller_port = self._controller_port or _free_port(avoid=port)
        else:
            port = self._requested_port if self._requested_port is not None else _free_port()
            controller_port = _free_port(avoid=port)
            work = self._make_work_dir()
        self._halted = False
        data = work / "data"
        log_path = work / "kafka.log"
        self._log_path = log_path
        config = work / "server.properties"
        rendered = (
            template.replace("@PORT@", str(port))
            .replace("@CPORT@", str(controller_port))
            .replace("@DATA@", str(data))
        )
        leftover = re.search(r"@[A-Z_]+@", rendered)
        if leftover is not None:
            raise ConfigurationError(f"server.properties.in has an unknown {leftover.group(0)}")
        config.write_text(rendered, "utf-8")
        jvm = [java, *_JVM_OPTIONS, f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{libs}/*"]

        # format (static quorum: no --standalone); --ignore-formatted accepts a reused work dir
        with log_path.open("wb") as log:
            try:
                formatted = subprocess.run(  # noqa: S603 - absolute java path, our own arguments
                    [
                        *jvm,
                        "kafka.tools.StorageTool",
                        "format",
                        "--cluster-id",
                        CLUSTER_ID,
                        "--config",
                        str(config),
                        "--ignore-formatted",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=work,
                    timeout=max(1.0, deadline - time.monotonic()),
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise KafkaBrokerError(
                    f"formatting the Kafka storage timed out\n{self._log_tail()}"
                ) from exc
        if formatted.returncode != 0:
            raise KafkaBrokerError(
                f"formatting the Kafka storage in {data} failed (exit {formatted.returncode}); "
                f"a reused work_dir must come from the same cluster id\n{self._log_tail()}"
            )

        with log_path.open("ab") as log:
            self._process = subprocess.Popen(  # noqa: S603 - absolute java path, our arguments
                [*jvm, "kafka.Kafka", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=work,
                start_new_session=True,  # own process group: a terminal's ^C goes to us only
            )
        with _running_lock:
            _running.add(self)
        self._watchdog = _start_watchdog(
            self._process.pid, str(config), work if self._owns_work_dir else None
        )
        self._port = port
        self._controller_port = controller_port
        bootstrap = self._bootstrap_of(port)
        self._wait_ready(self._process, bootstrap, log_path, deadline)
        return bootstrap

    def _make_work_dir(self) -> Path:
        if self._requested_work_dir is not None:
            work = self._requested_work_dir.resolve()
            work.mkdir(parents=True, exist_ok=True)
            self._owns_work_dir = False
        else:
            work = Path(tempfile.mkdtemp(prefix="calsync-kafka-", dir=_default_work_root()))
            self._owns_work_dir = True
        self._work_dir = work
        return work

    def _wait_ready(
        self, process: subprocess.Popen[bytes], bootstrap: str, log_path: Path, deadline: float
    ) -> None:
        started = False
        last_error = "the broker has not logged 'Kafka Server started' yet"
        while True:
            returncode = process.poll()
            if returncode is not None:
                log = log_path.read_bytes()
                if _BIND_FAILURE in log and not self._clash_is_requested_port(log):
                    raise _PortClash(self._log_tail())
                raise KafkaBrokerError(
                    f"the Kafka broker exited with code {returncode} during startup\n"
                    f"{self._log_tail()}"
                )
            if not started:
                started = _STARTED_MESSAGE in log_path.read_bytes()
            remaining = deadline - time.monotonic()
            if started:
                error = _probe_metadata(bootstrap, timeout=min(5.0, max(remaining, 0.5)))
                if error is None:
                    return
                last_error = f"metadata request to {bootstrap} failed: {error}"
                remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KafkaBrokerError(
                    f"the Kafka broker was not ready within {self._startup_timeout:g} s "
                    f"({last_error})\n{self._log_tail()}"
                )
            time.sleep(0.1)

    def _clash_is_requested_port(self, log: bytes) -> bool:
        """Whether the port that could not be bound is the caller's (retrying cannot help)."""
        if self._requested_port is None:
            return False
        return f"127.0.0.1:{self._requested_port}".encode() in log.split(_BIND_FAILURE)[0][-300:]

    def _log_tail(self) -> str:
        """The end of the broker log without Java stack frames, for error messages.

        Called before :meth:`stop` removes the log, so the message outlives the file; a
        caller-owned work dir keeps the full log, and the message says where.
        """
        if self._log_path is None:
            return "(no broker log)"
        try:
            text = self._log_path.read_text("utf-8", errors="replace")
        except OSError as exc:
            return f"(broker log unreadable: {exc})"
        lines = [line for line in text.splitlines() if not _STACK_FRAME.match(line)]
        where = "" if self._owns_work_dir else f" (full log: {self._log_path})"
        body = _tail("\n".join(lines)) or "(empty)"
        return f"--- broker log, stack frames left out{where} ---\n{body}"
