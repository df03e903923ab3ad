"""The port picker: ports a server is started on later must not be handed out
meanwhile, neither by the kernel nor by another call."""

from __future__ import annotations

import random
import socket
from contextlib import ExitStack

import pytest

from calsync.testing import ports
from calsync.testing.ports import free_port


def test_ports_are_free_distinct_and_never_the_avoided_one() -> None:
    picked = [free_port() for _ in range(300)]
    assert len(set(picked)) == len(picked)
    for port in picked[:20]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # nothing holds it
    avoided = free_port(avoid=picked[0])
    assert avoided != picked[0]


def test_the_kernel_never_hands_out_a_picked_port() -> None:
    """What broke a test: a port found free by ``bind(0)`` was given by the kernel to
    another server's ``bind(0)`` before the worker bound it."""
    port = free_port()
    with socket.socket() as listener, ExitStack() as stack:
        listener.bind(("127.0.0.1", 0))
        listener.listen(512)
        target = listener.getsockname()
        for _ in range(300):
            server = stack.enter_context(socket.socket())
            server.bind(("127.0.0.1", 0))
            client = stack.enter_context(socket.socket())
            client.connect(target)  # its local end: an ephemeral port
            assert port not in (server.getsockname()[1], client.getsockname()[1])


def test_a_port_something_listens_on_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        draws = iter([taken, taken])

        class Draws(random.Random):
            def randint(self, a: int, b: int) -> int:
                return next(draws, None) or super().randint(a, b)

        monkeypatch.setattr(ports, "_rng", Draws())
        assert free_port() != taken
