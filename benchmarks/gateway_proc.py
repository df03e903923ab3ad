"""The standalone gateway (aiohttp + :class:`~calsync.gateway.publisher.KafkaPublisher`) as
a process of its own, configured by ``CALSYNC_*`` variables like ``calsync gateway``.

The gateway benchmark (:mod:`benchmarks.gateway`) starts it to tell apart what the process
boundary costs from what sharing a process with a Faust worker costs. It builds the
publisher inside the running event loop (aiokafka requires that) and serves until it is
terminated.
"""

from __future__ import annotations

import asyncio
import os

from benchmarks.harness.processes import serve_gateway
from calsync.settings import Settings


async def serve(settings: Settings) -> None:
    async with serve_gateway(settings, settings.web_bind, settings.web_port):
        await asyncio.Event().wait()


def main() -> None:
    asyncio.run(serve(Settings.from_env(os.environ)))


if __name__ == "__main__":
    main()
