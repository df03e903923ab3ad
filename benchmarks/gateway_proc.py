"""The standalone gateway (aiohttp + :class:`~calsync.gateway.publisher.KafkaPublisher`) as
a process of its own, configured by ``CALSYNC_*`` variables like ``calsync gateway``.

``benchmarks/run.py`` starts it to tell apart what the process boundary costs from what
sharing a process with a Faust worker costs. It builds the publisher inside the running
event loop (aiokafka requires that) and serves until it is terminated.
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from calsync.gateway.http import build_gateway_app
from calsync.gateway.publisher import KafkaPublisher
from calsync.settings import Settings
from calsync.streams.topics import ensure_topics


async def serve(settings: Settings) -> None:
    await asyncio.to_thread(ensure_topics, settings)
    publisher = KafkaPublisher(settings.kafka_bootstrap)
    await publisher.start()
    runner = web.AppRunner(build_gateway_app(settings, publisher))
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.web_bind, settings.web_port).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await publisher.aclose()


def main() -> None:
    asyncio.run(serve(Settings.from_env(os.environ)))


if __name__ == "__main__":
    main()
