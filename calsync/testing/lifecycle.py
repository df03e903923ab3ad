"""What the child-process helpers share: ``with`` support and stopping a process politely.

:class:`StartOnEnter` is for a helper that ``with`` starts and stops
(:class:`~calsync.testing.broker.KafkaBroker`, the CalDAV servers, a worker);
:class:`StopOnExit` for one that ``with`` only stops (a cluster, started by hand).
"""

from __future__ import annotations

import contextlib
import subprocess
from types import TracebackType
from typing import Self

__all__ = ["StartOnEnter", "StopOnExit", "terminate"]


class StopOnExit:
    """``with x as y:`` binds ``x`` itself and calls ``x.stop()`` on the way out,
    whatever happened inside."""

    __slots__ = ()

    def stop(self) -> None:
        """Stop what was started; idempotent."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class StartOnEnter(StopOnExit):
    """:class:`StopOnExit` that also calls ``x.start()`` on the way in."""

    __slots__ = ()

    def start(self) -> object:
        """Start; what it returns is the subclass's business (``with`` ignores it)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self


def terminate(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM ``process`` if it is alive, wait ``grace`` seconds for it to exit, then
    SIGKILL it and wait as long again; never raises :class:`subprocess.TimeoutExpired`."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
