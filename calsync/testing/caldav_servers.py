"""Real CalDAV servers (Radicale, Xandikos) as child processes, for tests.

Both are the pip-installed servers (``radicale``, ``xandikos`` in the ``dev`` extra),
started with ``sys.executable -m ...`` on a free loopback port and a temporary
storage directory, and both require HTTP Basic auth with :attr:`DavServer.username`
and :attr:`DavServer.password`:

* **Radicale** (plain HTTP): ``[auth] type = htpasswd`` with a ``plain`` htpasswd
  file (bcrypt/argon2 need extra packages; since 3.5 the default auth type is
  ``denyall``, so it must be set). ``delay = 0`` so wrong-password tests are fast.
  The calendar home is ``/<username>/``.
* **Xandikos** (HTTPS): ``--htpasswd`` is refused without ``--autocert``, so the
  server runs TLS with a self-signed certificate that is written here beforehand
  (Xandikos' own names ``127.0.0.1`` as a DNS name, which no client accepts for an IP)
  into ``<state-dir>/certs``; clients trust it through :attr:`DavServer.verify`. The
  htpasswd entry is ``{SHA}`` (bcrypt would need the ``bcrypt`` package). The
  principal is ``/user/`` whatever the login, the calendar home ``/user/calendars/``.

Readiness: :meth:`DavServer.start` returns once the server answers HTTP (any status)
or raises :class:`RuntimeError` with the tail of its log, leaving no process behind.
:meth:`DavServer.stop` sends SIGTERM to the one pid it started, waits, then SIGKILLs,
and removes the temporary directory. Both are idempotent.

:class:`DavAdmin` makes changes "on the server" (MKCALENDAR, PUT, DELETE) with httpx.

Example::

    with RadicaleServer() as server:
        async with server.client() as http:
            admin = DavAdmin(http)
            calendar = await admin.make_calendar(server.home_url, "work")
            await admin.put(calendar, "ev1.ics", ics_text)
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from calsync.testing.lifecycle import StartOnEnter, terminate
from calsync.testing.ports import free_port

__all__ = ["DavAdmin", "DavServer", "RadicaleServer", "XandikosServer", "free_port"]


class DavServer(StartOnEnter):
    """A CalDAV server child process; subclasses say how to configure and run it."""

    name = "dav"
    scheme = "http"

    def __init__(
        self,
        *,
        username: str = "alice",
        password: str = "app-specific-pw",  # noqa: S107 - a throwaway test server's login
    ) -> None:
        self.username = username
        self.password = password
        self.port = 0
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None

    # -- what subclasses provide -------------------------------------------------
    def _command(self, work: Path) -> list[str]:
        raise NotImplementedError

    @property
    def home_path(self) -> str:
        raise NotImplementedError

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What to pass as httpx ``verify`` to trust this server."""
        return True

    @property
    def ca_bundle_path(self) -> str:
        """A PEM file to trust this server with (``CALSYNC_CALDAV_CA_BUNDLE``), or ``""``."""
        return ""

    #: What ``CALSYNC_CALDAV_ALLOWED_NETWORKS`` must allow for calsync to reach the
    #: server: it listens on loopback, which the network policy refuses by default.
    allowed_networks = "127.0.0.0/8"

    # -- lifecycle ---------------------------------------------------------------
    @property
    def url(self) -> str:
        """The server's root URL (where ``/.well-known/caldav`` lives), with a trailing ``/``."""
        return f"{self.scheme}://127.0.0.1:{self.port}/"

    @property
    def home_url(self) -> str:
        return self.url.rstrip("/") + self.home_path

    def client(self, *, password: str | None = None, timeout: float = 10.0) -> httpx.AsyncClient:
        """An :class:`httpx.AsyncClient` that trusts this server and logs in as the test user."""
        return httpx.AsyncClient(
            auth=httpx.BasicAuth(self.username, self.password if password is None else password),
            verify=self.verify,
            timeout=timeout,
        )

    def start(self, timeout: float = 30.0) -> None:
        if self._process is not None:
            return
        self._dir = Path(tempfile.mkdtemp(prefix=f"calsync-{self.name}-"))
        self.port = free_port()
        self._log = self._dir / "server.log"
        command = self._command(self._dir)
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        with httpx.Client(verify=self.verify, timeout=2.0) as probe:
            while True:
                if self._process.poll() is not None:
                    break
                try:
                    probe.request("PROPFIND", self.url, headers={"Depth": "0"})
                    return
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
        tail = self._log.read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"{self.name} did not start:\n{tail}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            terminate(process, 10)
        work, self._dir = self._dir, None
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


class RadicaleServer(DavServer):
    """Radicale with htpasswd (plain) Basic auth over HTTP; home ``/<username>/``."""

    name = "radicale"

    @property
    def home_path(self) -> str:
        return f"/{self.username}/"

    def _command(self, work: Path) -> list[str]:
        htpasswd = work / "htpasswd"
        htpasswd.write_text(f"{self.username}:{self.password}\n")
        config = work / "config"
        config.write_text(
            "[server]\n"
            f"hosts = 127.0.0.1:{self.port}\n"
            "[auth]\n"
            "type = htpasswd\n"
            f"htpasswd_filename = {htpasswd}\n"
            "htpasswd_encryption = plain\n"
            "delay = 0\n"
            "[storage]\n"
            f"filesystem_folder = {work / 'collections'}\n"
            "[logging]\n"
            "level = warning\n"
        )
        return [sys.executable, "-m", "radicale", "--config", str(config)]


class XandikosServer(DavServer):
    """Xandikos with ``{SHA}`` htpasswd Basic auth over self-signed HTTPS.

    The calendar home is ``/user/calendars/``.
    """

    name = "xandikos"
    scheme = "https"
    _context: ssl.SSLContext | None = None

    @property
    def home_path(self) -> str:
        return "/user/calendars/"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        if self._dir is None:
            return True
        if self._context is None:
            cafile = self._dir / "state" / "certs" / "selfsigned.crt"
            self._context = ssl.create_default_context(cafile=str(cafile))
        return self._context

    @property
    def ca_bundle_path(self) -> str:
        if self._dir is None:
            return ""
        return str(self._dir / "state" / "certs" / "selfsigned.crt")

    def stop(self) -> None:
        super().stop()
        self._context = None

    def _command(self, work: Path) -> list[str]:
        _write_certificate(work / "state" / "certs")
        digest = base64.b64encode(hashlib.sha1(self.password.encode()).digest()).decode()  # noqa: S324 - the only unsalted format Xandikos reads without bcrypt
        htpasswd = work / "htpasswd"
        htpasswd.write_text(f"{self.username}:{{SHA}}{digest}\n")
        return [
            sys.executable,
            "-m",
            "xandikos",
            "serve",
            "-d",
            str(work / "data"),
            "--state-dir",
            str(work / "state"),
            "--defaults",
            "-l",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--current-user-principal",
            "/user/",
            "--autocert",
            "--htpasswd",
            str(htpasswd),
            "--no-detect-systemd",
        ]


def _write_certificate(directory: Path) -> None:
    """A self-signed certificate for ``127.0.0.1`` (an IP SAN) in Xandikos' autocert names."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "selfsigned.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    (directory / "selfsigned.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class DavAdmin:
    """Changes made directly on a server, as another client would make them.

    Every method raises :class:`httpx.HTTPStatusError` when the server refuses.
    """

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def make_calendar(self, home_url: str, name: str | None = None) -> str:
        """MKCALENDAR a new collection under ``home_url``; returns its URL (trailing ``/``)."""
        url = f"{home_url.rstrip('/')}/{name or uuid.uuid4().hex[:12]}/"
        response = await self._client.request("MKCALENDAR", url)
        response.raise_for_status()
        return url

    async def delete_collection(self, url: str) -> None:
        response = await self._client.delete(url)
        response.raise_for_status()

    async def put(self, calendar_url: str, name: str, ics: str) -> str:
        """PUT ``ics`` as ``<calendar>/<name>``; returns the resource URL."""
        url = calendar_url.rstrip("/") + "/" + name
        response = await self._client.put(
            url, content=ics.encode(), headers={"Content-Type": "text/calendar; charset=utf-8"}
        )
        response.raise_for_status()
        return url

    async def delete(self, calendar_url: str, name: str) -> None:
        response = await self._client.delete(calendar_url.rstrip("/") + "/" + name)
        response.raise_for_status()
