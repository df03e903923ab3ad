"""Ports for the servers that tests, benchmarks and the demo start and name in advance.

A port found free by binding to port 0 and closing the socket is taken back by the
kernel's ephemeral pool: the next ``bind(0)`` of another server, or the local end of
any outgoing connection (a Kafka client opens dozens), may get it before the server it
was meant for binds it, which then fails with "address already in use". So
:func:`free_port` draws from *below* the ephemeral range (Linux's
``net.ipv4.ip_local_port_range``), where the kernel never picks a port by itself, and
never hands out the same port twice in one process.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

#: the lowest port drawn (above the well-known and most registered ones)
LOWEST = 10_000
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_DEFAULT_EPHEMERAL_LOW = 32_768  # Linux's default, where the file cannot be read

_issued: set[int] = set()
_lock = threading.Lock()
#: private, so that tests seeding the global ``random`` cannot make two processes draw
#: the same ports (spreading picks, not a secret)
_rng = random.Random()


def _ephemeral_low() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _DEFAULT_EPHEMERAL_LOW


def _bindable(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", *, avoid: int | None = None) -> int:
    """A TCP port on ``host`` that nothing is bound to now and that neither the kernel
    (below its ephemeral range) nor an earlier call in this process hands to anyone
    else; never ``avoid``. Another process drawing at the same moment may still pick
    it (about one chance in 20,000 per pair of picks), which is why servers that start
    on it should still retry on "address already in use" where they can.

    Falls back to a kernel-chosen port when the range below the ephemeral one is too
    small (an unusual ``ip_local_port_range``) or exhausted."""
    high = _ephemeral_low() - 1
    with _lock:
        if high - LOWEST >= 1_000:
            for _ in range(200):
                port = _rng.randint(LOWEST, high)
                if port in _issued or port == avoid or not _bindable(port, host):
                    continue
                _issued.add(port)
                return port
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if port != avoid and port not in _issued:
                _issued.add(port)
                return port
