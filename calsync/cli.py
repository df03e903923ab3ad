"""``calsync``: the worker, the standalone gateway, emulators, admin and consumer tools.

Settings come from ``CALSYNC_*`` environment variables (see :class:`Settings`); this
module and :mod:`calsync.app` are the only places that read the environment.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from typing import Any

import click

from calsync.clock import make_clock
from calsync.errors import CalsyncError
from calsync.settings import Settings


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings.from_env(os.environ, **overrides)
    except CalsyncError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
def main() -> None:
    """calsync keeps a company's picture of when its people and rooms are busy."""


@main.command()
def worker() -> None:
    """Run a worker: sync agents, tables, the gateway and the web pages.

    Creates CALSYNC_DATA_DIR (mode 0700) when it does not exist.
    """
    import faust

    from calsync.app import create_app
    from calsync.streams.topics import ensure_topics

    settings = _settings()
    try:
        # mode only applies to a directory made here: an existing one is the operator's
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(
            f"cannot create CALSYNC_DATA_DIR={str(settings.data_dir)!r}: {exc.strerror}"
        ) from exc
    try:
        ensure_topics(settings)
    except CalsyncError as exc:
        raise click.ClickException(str(exc)) from exc
    app = create_app(settings)
    # one line per provider request drowns the worker log; failures are logged by us
    logging.getLogger("httpx").setLevel(logging.WARNING)
    host, port = settings.admin_address or (settings.web_bind, settings.web_port)
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    host = f"[{host}]" if ":" in host else host
    click.echo(
        f"calsync worker {settings.app_id}: status at http://{host}:{port}/status/ "
        '(curl -H "Authorization: Bearer $CALSYNC_ADMIN_TOKEN" ...)'
    )
    runner = faust.Worker(app, loglevel=settings.log_level)
    # At warn and above Faust shows a terminal spinner that sets the root logger to
    # DEBUG, so every aiokafka debug record gets built: measurably slower.
    runner.spinner = None
    runner.execute_from_commandline()


@main.command()
def gateway() -> None:
    """Run the webhook gateway and admin API alone (no sync), on CALSYNC_WEB_PORT.

    With CALSYNC_ADMIN_BIND the admin API moves to that address and CALSYNC_WEB_PORT
    serves only the webhooks and /healthz.
    """
    from calsync.gateway.http import build_gateway_app, server_options
    from calsync.gateway.publisher import KafkaPublisher
    from calsync.streams.topics import ensure_topics
    from calsync.web.metrics import Metrics
    from calsync.web.sites import Site, Surface, serve_until_signalled

    settings = _settings()
    try:
        ensure_topics(settings)
    except CalsyncError as exc:
        raise click.ClickException(str(exc)) from exc
    publisher = KafkaPublisher(settings.kafka_bootstrap)
    clock = make_clock(settings.clock_rate, settings.clock_origin)
    options = server_options(settings)
    metrics = Metrics()  # one per process: the webhooks on one site, /metrics on the other

    def site(surface: Surface, host: str, port: int) -> Site:
        app = build_gateway_app(
            settings, publisher, clock=clock, surface=surface.value, metrics=metrics
        )
        return Site(app, host, port, options)

    if settings.admin_address is None:
        sites = [site(Surface.ALL, settings.web_bind, settings.web_port)]
    else:
        sites = [
            site(Surface.PUBLIC, settings.web_bind, settings.web_port),
            site(Surface.ADMIN, *settings.admin_address),
        ]

    async def serve() -> None:
        await publisher.start()
        try:
            for each in sites:
                click.echo(f"calsync gateway: serving on {each.url}")
            await serve_until_signalled(sites)
        finally:
            await publisher.aclose()

    try:
        asyncio.run(serve())
    except OSError as exc:
        raise click.ClickException(f"cannot serve the gateway: {exc}") from exc


@main.group()
def topics() -> None:
    """calsync's Kafka topics."""


@topics.command("create")
def topics_create() -> None:
    """Create every topic and table changelog a worker needs (idempotent).

    Workers do this themselves at start; run it once before starting several
    workers at the same instant if you prefer one place to create topics.
    """
    from calsync.streams.topics import ensure_topics

    settings = _settings()
    try:
        ensure_topics(settings)
    except CalsyncError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"topics ready ({settings.topic_partitions} partitions)")


@main.group()
def emulator() -> None:
    """Local provider emulators for tests and the demo."""


@emulator.command("google")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8710, show_default=True, type=int)
def emulator_google(host: str, port: int) -> None:
    """Serve the Google Calendar v3 + OAuth emulator."""
    from calsync.emulators.google import serve_forever

    asyncio.run(serve_forever(host, port))


@emulator.command(
    "microsoft",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,  # --help goes to the emulator's own parser
)
@click.pass_context
def emulator_microsoft(ctx: click.Context) -> None:
    """Serve the Microsoft Graph + identity platform (TLS) emulator; --help for options."""
    from calsync.emulators.microsoft import main as emulator_main

    sys.exit(emulator_main(ctx.args))


@main.command()
def broker() -> None:
    """Start a local single-node Kafka broker (jars from Maven Central) until Ctrl-C."""
    from calsync.testing.broker import KafkaBroker

    with KafkaBroker() as kafka:
        click.echo(f"CALSYNC_KAFKA_BOOTSTRAP={kafka.bootstrap}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


@main.group()
def resources() -> None:
    """Register and manage calendars (writes commands to the commands topic)."""


@resources.command("add")
@click.option("--resource-id", required=True, help="Your id for this calendar (1-128 chars).")
@click.option("--provider", default="google", show_default=True)
@click.option("--calendar-id", required=True, help="The provider's calendar id, e.g. primary.")
@click.option("--refresh-token", required=True, envvar="CALSYNC_REFRESH_TOKEN")
@click.option("--time-zone", default=None, help="IANA zone for all-day events (optional).")
@click.option(
    "--wait",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds to wait for the worker's outcome on the status topic (0: do not wait).",
)
def resources_add(
    resource_id: str,
    provider: str,
    calendar_id: str,
    refresh_token: str,
    time_zone: str | None,
    wait: float,
) -> None:
    """Register a calendar; the owning worker subscribes to it and runs a full sync.

    Waits (--wait) until the worker reports the outcome and prints it. Exit status:
    0 the first sync finished (or --wait 0: the command was written), 1 the worker
    could not sync it (credentials refused, calendar not found, ...), 3 no outcome
    within --wait (is a worker running?).
    """
    from calsync.crypto import SecretBox
    from calsync.gateway.http import RequestRejected, validate_registration
    from calsync.gateway.publisher import KafkaPublisher
    from calsync.gateway.status import Registration, StatusFollower

    settings = _settings()
    body = {
        "resource_id": resource_id,
        "provider": provider,
        "calendar_id": calendar_id,
        "time_zone": time_zone,
        "credentials": {"refresh_token": refresh_token},
    }
    # the worker's clock, rounded as the gateway does, so the outcome can be matched
    now = round(make_clock(settings.clock_rate, settings.clock_origin)(), 3)
    try:
        command = validate_registration(body, SecretBox(settings.secret_key), now=now)
    except RequestRejected as exc:
        raise click.BadParameter(exc.message, param_hint=exc.field) from exc
    if not wait:
        _produce(settings, settings.topic("commands"), resource_id, command.dumps())
        click.echo(f"registered {resource_id} (not waiting for the outcome)")
        return

    async def register_and_wait() -> Registration:
        # Follow the status topic before writing, so that no status of this is missed.
        follower = StatusFollower(
            settings.kafka_bootstrap,
            settings.topic("status"),
            lookback=0.0,
            client_id=f"{settings.app_id}-cli",
        )
        publisher = KafkaPublisher(settings.kafka_bootstrap, client_id=f"{settings.app_id}-cli")
        try:
            await follower.ready()
            mark = follower.mark()
            await publisher.publish(settings.topic("commands"), resource_id, command.dumps())
            return await follower.registration(resource_id, now, wait=wait, after=mark)
        finally:
            await publisher.aclose()
            await follower.aclose()

    try:
        outcome = asyncio.run(register_and_wait())
    except Exception as exc:  # the broker's errors, in words, at the command line
        raise click.ClickException(f"could not register {resource_id}: {exc!r}") from exc
    click.echo(outcome.describe())
    if not outcome.done:
        sys.exit(3)
    if not outcome.ok:
        sys.exit(1)


def _produce(settings: Settings, topic: str, key: str, value: bytes) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    try:
        producer.send(topic, value=value, key=key.encode()).get(timeout=30)
    finally:
        producer.close()


@main.group()
def deadletter() -> None:
    """Work that failed its last attempt."""


@deadletter.command("replay")
@click.option("--resource-id", default=None, help="Only this resource's dead letters.")
@click.option("--timeout", default=5.0, type=float, show_default=True, help="Stop when idle (s).")
def deadletter_replay(resource_id: str | None, timeout: float) -> None:
    """Put dead-lettered work back on the notifications topic, attempts reset.

    A consumer group remembers what was replayed, so each dead letter is replayed once
    (the admin API's ``POST /api/deadletters/replay`` and the dashboard share it).
    """
    from calsync.deadletters import replay_deadletters
    from calsync.gateway.publisher import KafkaPublisher

    settings = _settings()

    async def replay() -> int:
        publisher = KafkaPublisher(settings.kafka_bootstrap, client_id="calsync-cli")
        try:
            return await replay_deadletters(
                settings, publisher, resource_id=resource_id, idle=timeout
            )
        finally:
            await publisher.aclose()

    replayed = asyncio.run(replay())
    click.echo(f"replayed {replayed} dead letter(s)")


@main.group()
def events() -> None:
    """Read the normalized events."""


@events.command("tail")
@click.option("--from-beginning/--from-now", default=True, show_default=True)
@click.option("--max-events", default=0, type=int, help="Stop after this many (0: never).")
@click.option("--timeout", default=0.0, type=float, help="Stop after this many idle seconds.")
def events_tail(from_beginning: bool, max_events: int, timeout: float) -> None:
    """Print each event on calsync.events as one JSON line (Avro decoded)."""
    from calsync.codecs.avro import decode_event, to_record
    from calsync.errors import CodecError

    settings = _settings()
    consumer = _consumer(settings, from_beginning, timeout)
    seen = 0
    try:
        for message in consumer:
            try:
                record = to_record(decode_event(message.value))
            except CodecError as exc:
                click.echo(json.dumps({"undecodable": str(exc), "offset": message.offset}))
                continue
            click.echo(json.dumps(record, default=str, sort_keys=True))
            seen += 1
            if max_events and seen >= max_events:
                break
    finally:
        consumer.close()


def _consumer(settings: Settings, from_beginning: bool, timeout: float) -> Any:
    from kafka import KafkaConsumer

    return KafkaConsumer(
        settings.topic("events"),
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        consumer_timeout_ms=int(timeout * 1000) if timeout else float("inf"),
    )


@main.command()
@click.option(
    "--duration", default=0.0, type=float, help="Stop after this many seconds (0: Ctrl-C)."
)
def demo(duration: float) -> None:
    """Run Kafka, the Google emulator and a worker; register and edit calendars; print events."""
    from calsync.demo import run_demo

    sys.exit(run_demo(duration=duration))


if __name__ == "__main__":
    main()
