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
@click.option(
    "--processes",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Processes sharing CALSYNC_WEB_PORT (SO_REUSEPORT); each answers webhooks.",
)
@click.option("--relay-to", hidden=True, default=None)  # a helper's primary (internal)
@click.option("--index", hidden=True, default=0, type=int)
def gateway(processes: int, relay_to: str | None, index: int) -> None:
    """Run the webhook gateway and admin API alone (no sync), on CALSYNC_WEB_PORT.

    With CALSYNC_ADMIN_BIND the admin API moves to that address and CALSYNC_WEB_PORT
    serves only the webhooks, the connect pages and /healthz. Connect links live in
    this process: with several gateways, route /api/connect and /connect/ to one.
    With --processes N, N processes share CALSYNC_WEB_PORT: every one answers the
    webhooks, and the others relay everything else to this one (the connect links'
    home); see calsync.gateway.processes.
    """
    from calsync.gateway.http import Gateway, build_gateway_app, server_options
    from calsync.gateway.processes import (
        relay_socket,
        serve_helper,
        start_helpers,
        stop_helpers,
        tag_responses,
    )
    from calsync.gateway.publisher import KafkaPublisher
    from calsync.streams.topics import ensure_topics
    from calsync.web.metrics import Metrics
    from calsync.web.sites import Site, Surface, serve_until_signalled

    settings = _settings()
    if relay_to is not None:
        try:
            serve_helper(settings, relay_to, index)
        except OSError as exc:
            raise click.ClickException(f"cannot serve the gateway: {exc}") from exc
        return
    try:
        ensure_topics(settings)
    except CalsyncError as exc:
        raise click.ClickException(str(exc)) from exc
    publisher = KafkaPublisher(settings.kafka_bootstrap)
    clock = make_clock(settings.clock_rate, settings.clock_origin)
    options = server_options(settings)
    metrics = Metrics()  # one per process: the webhooks on one site, /metrics on the other
    # one Gateway for both addresses: connect links made on the admin one are opened
    # on the public one
    shared = Gateway(settings, publisher, clock=clock)

    shared_port = processes > 1
    relay = relay_socket() if shared_port else None

    def site(surface: Surface, host: str, port: int, *, public: bool = False) -> Site:
        app = build_gateway_app(
            settings,
            publisher,
            clock=clock,
            surface=surface.value,
            metrics=metrics,
            gateway=shared,
        )
        if not public or relay is None:
            return Site(app, host, port, options)
        app.middlewares.append(tag_responses(0))
        return Site(app, host, port, options, reuse_port=True, sockets=(relay,))

    if settings.admin_address is None:
        sites = [site(Surface.ALL, settings.web_bind, settings.web_port, public=True)]
    else:
        sites = [
            site(Surface.PUBLIC, settings.web_bind, settings.web_port, public=True),
            site(Surface.ADMIN, *settings.admin_address),
        ]
    helpers: list[Any] = []

    def spawn() -> None:
        if relay is not None:
            port = relay.getsockname()[1]
            helpers.extend(start_helpers(processes - 1, f"http://127.0.0.1:{port}"))

    async def serve() -> None:
        await publisher.start()
        try:
            for each in sites:
                click.echo(f"calsync gateway: serving on {each.url}")
            if shared_port:
                click.echo(f"calsync gateway: {processes} processes share {sites[0].url}")
            await serve_until_signalled(sites, on_serving=spawn)
        finally:
            await asyncio.to_thread(stop_helpers, helpers)
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


def _busy_switches(values: tuple[str, ...]) -> dict[str, bool] | None:
    """``--busy-policy declined_is_free=false`` (repeatable) as switches; None for none."""
    if not values:
        return None
    switches: dict[str, bool] = {}
    for value in values:
        name, sep, flag = value.partition("=")
        if not sep or flag.lower() not in ("true", "false"):
            raise click.BadParameter(
                f"{value!r} is not SWITCH=true|false", param_hint="busy-policy"
            )
        switches[name.strip()] = flag.lower() == "true"
    return switches


def _register(settings: Settings, commands: list[Any], wait: float) -> list[Any]:
    """Write register commands; with ``wait``, the outcome of each (a ``Registration``).

    Exit status on failure is the caller's; broker errors become a ClickException."""
    from calsync.gateway.publisher import KafkaPublisher
    from calsync.gateway.status import StatusFollower

    if not wait:
        for command in commands:
            _produce(settings, settings.topic("commands"), command.resource_id, command.dumps())
        return []

    async def register_and_wait() -> list[Any]:
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
            for command in commands:
                topic = settings.topic("commands")
                await publisher.publish(topic, command.resource_id, command.dumps())
            return [
                await follower.registration(c.resource_id, c.issued_at, wait=wait, after=mark)
                for c in commands
            ]
        finally:
            await publisher.aclose()
            await follower.aclose()

    try:
        return asyncio.run(register_and_wait())
    except Exception as exc:  # the broker's errors, in words, at the command line
        names = ", ".join(c.resource_id for c in commands)
        raise click.ClickException(f"could not register {names}: {exc!r}") from exc


def _report(outcomes: list[Any]) -> None:
    """Print each outcome; exit 3 if one is still pending, 1 if one failed."""
    for outcome in outcomes:
        click.echo(outcome.describe())
    if any(not o.done for o in outcomes):
        sys.exit(3)
    if any(not o.ok for o in outcomes):
        sys.exit(1)


def _registration(settings: Settings, body: dict[str, Any]) -> Any:
    """The register command of an API-style ``body`` (credentials encrypted here)."""
    from calsync.crypto import SecretBox
    from calsync.gateway.http import RequestRejected, validate_registration
    from calsync.providers.netpolicy import NetworkPolicy

    # the worker's clock, rounded as the gateway does, so the outcome can be matched
    now = round(make_clock(settings.clock_rate, settings.clock_origin)(), 3)
    try:
        return validate_registration(
            body,
            SecretBox(settings.secret_key),
            now=now,
            caldav_networks=NetworkPolicy.from_setting(settings.caldav_allowed_networks),
        )
    except RequestRejected as exc:
        raise click.BadParameter(exc.message, param_hint=exc.field) from exc


_WAIT_OPTION = click.option(
    "--wait",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds to wait for the worker's outcome on the status topic (0: do not wait).",
)


@resources.command("add")
@click.option("--resource-id", required=True, help="Your id for this calendar (1-128 chars).")
@click.option(
    "--provider",
    default="google",
    show_default=True,
    type=click.Choice(["google", "microsoft", "caldav"]),
)
@click.option(
    "--calendar-id",
    required=True,
    help="Google: the calendar id (primary, an address); Microsoft: the mailbox (UPN or "
    "id); CalDAV: the calendar collection URL (or the server URL to discover from).",
)
@click.option("--refresh-token", envvar="CALSYNC_REFRESH_TOKEN", help="Google and Microsoft.")
@click.option("--username", help="CalDAV: the account name (iCloud: the Apple Account email).")
@click.option(
    "--password",
    envvar="CALSYNC_CALDAV_PASSWORD",
    help="CalDAV: the password (iCloud: an app-specific password); prompted when missing.",
)
@click.option("--time-zone", default=None, help="IANA or Windows zone (default: the calendar's).")
@click.option("--own-address", default=None, help="CalDAV: the owner's email (for replies).")
@click.option(
    "--busy-policy",
    multiple=True,
    metavar="SWITCH=true|false",
    help="declined_is_free, unanswered_is_busy, all_day_is_busy, tentative_is_busy.",
)
@_WAIT_OPTION
def resources_add(
    resource_id: str,
    provider: str,
    calendar_id: str,
    refresh_token: str | None,
    username: str | None,
    password: str | None,
    time_zone: str | None,
    own_address: str | None,
    busy_policy: tuple[str, ...],
    wait: float,
) -> None:
    """Register a calendar; the owning worker subscribes to it and runs a full sync.

    Credentials by provider: Google and Microsoft take --refresh-token (or use
    ``calsync connect`` to get one); CalDAV takes --username and --password. Secrets
    are encrypted here, before they reach the broker.

    Waits (--wait) until the worker reports the outcome and prints it. Exit status:
    0 the first sync finished (or --wait 0: the command was written), 1 the worker
    could not sync it (credentials refused, calendar not found, ...), 3 no outcome
    within --wait (is a worker running?).
    """
    settings = _settings()
    if provider == "caldav":
        if not username:
            raise click.BadParameter("CalDAV needs --username", param_hint="username")
        if not password:
            password = click.prompt("Password", hide_input=True)
        credentials = {"username": username, "password": password}
    else:
        if not refresh_token:
            raise click.BadParameter(
                f"{provider} needs --refresh-token", param_hint="refresh-token"
            )
        credentials = {"refresh_token": refresh_token}
    body: dict[str, Any] = {
        "resource_id": resource_id,
        "provider": provider,
        "calendar_id": calendar_id,
        "time_zone": time_zone,
        "credentials": credentials,
        "busy_policy": _busy_switches(busy_policy),
        "own_address": own_address,
    }
    command = _registration(settings, body)
    if not wait:
        _register(settings, [command], 0)
        click.echo(f"registered {resource_id} (not waiting for the outcome)")
        return
    _report(_register(settings, [command], wait))


def _resource_command(kind: str, resource_id: str) -> None:
    """Write one resync/pause/resume/remove command, as the admin API and the dashboard
    do (:func:`calsync.gateway.http.write_command`); exit 1 if the broker refused it."""
    from calsync.gateway.http import RequestRejected, write_command
    from calsync.gateway.publisher import KafkaPublisher
    from calsync.streams.records import CommandKind

    settings = _settings()

    async def send() -> None:
        publisher = KafkaPublisher(settings.kafka_bootstrap, client_id=f"{settings.app_id}-cli")
        try:
            await write_command(
                publisher.publish,
                settings.topic("commands"),
                CommandKind(kind),
                resource_id,
                time.time(),
            )
        finally:
            await publisher.aclose()

    try:
        asyncio.run(send())
    except RequestRejected as exc:
        raise click.BadParameter(exc.message, param_hint="resource-id") from None
    except Exception as exc:  # the broker's errors, in words, at the command line
        raise click.ClickException(f"could not {kind} {resource_id}: {exc!r}") from exc
    click.echo(f"{kind} {resource_id}: command written (the owning worker applies it)")


_RESOURCE_ID_OPTION = click.option("--resource-id", required=True, help="The resource's id.")


@resources.command("resync")
@_RESOURCE_ID_OPTION
def resources_resync(resource_id: str) -> None:
    """Run a full resync of a calendar (the dashboard's Resync button)."""
    _resource_command("resync", resource_id)


@resources.command("pause")
@_RESOURCE_ID_OPTION
def resources_pause(resource_id: str) -> None:
    """Stop calling the provider for a calendar until it is resumed."""
    _resource_command("pause", resource_id)


@resources.command("resume")
@_RESOURCE_ID_OPTION
def resources_resume(resource_id: str) -> None:
    """Resume a paused calendar (with a full resync)."""
    _resource_command("resume", resource_id)


@resources.command("remove")
@_RESOURCE_ID_OPTION
def resources_remove(resource_id: str) -> None:
    """Unregister a calendar: deletes are emitted for every event known of it."""
    _resource_command("remove", resource_id)


@resources.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["csv", "jsonl"]),
    default=None,
    help="Default: from the file name (.csv, else JSON lines).",
)
@_WAIT_OPTION
def resources_import(path: str, file_format: str | None, wait: float) -> None:
    """Register many calendars from a CSV or JSON-lines file (see docs/connecting.md).

    The whole file is checked first: a bad row is named and nothing is registered.
    Idempotent on the resource id: applying a file again registers the same
    resources again. Exit status as for ``resources add``.
    """
    from calsync.crypto import SecretBox
    from calsync.gateway.bulk import BulkRejected, parse_rows, validate_rows
    from calsync.providers.netpolicy import NetworkPolicy

    settings = _settings()
    with click.open_file(path, "rb") as handle:
        content = handle.read()
    csv_format = file_format == "csv" or (file_format is None and path.endswith(".csv"))
    now = round(make_clock(settings.clock_rate, settings.clock_origin)(), 3)
    try:
        commands = validate_rows(
            parse_rows(content, csv_format=csv_format),
            SecretBox(settings.secret_key),
            now=now,
            caldav_networks=NetworkPolicy.from_setting(settings.caldav_allowed_networks),
        )
    except BulkRejected as exc:
        where = f"line {exc.line}: " if exc.line is not None else ""
        raise click.ClickException(
            f"{path}: {where}{exc.message}; nothing was registered"
        ) from None
    outcomes = _register(settings, commands, wait)
    if not wait:
        click.echo(f"registered {len(commands)} resources (not waiting for the outcome)")
        return
    _report(outcomes)


@main.group()
def connect() -> None:
    """Connect a calendar: find it, check its credentials, register it."""


@connect.command("google")
@click.option("--resource-id", required=True, help="Your id for the (first) calendar.")
@click.option(
    "--calendar",
    "calendars",
    multiple=True,
    help="A calendar to register: its number, id or name (repeatable; 'all'). "
    "Without it you are asked (the main calendar is the default).",
)
@click.option("--no-browser", is_flag=True, help="Only print the URL (another machine's browser).")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for consent.")
@_WAIT_OPTION
def connect_google(
    resource_id: str, calendars: tuple[str, ...], no_browser: bool, timeout: float, wait: float
) -> None:
    """Connect Google calendars without a public URL: the installed-app flow.

    Needs an OAuth client of type "Desktop app" (CALSYNC_GOOGLE_CLIENT_ID/SECRET): a
    one-request web server listens on a free loopback port for Google's redirect. The
    refresh token is encrypted here and never printed.
    """
    import httpx

    from calsync.connect import google as google_consent
    from calsync.gateway.connect import extra_resource_id

    settings = _settings()
    try:
        tokens = google_consent.installed_app_consent(
            settings, open_browser=not no_browser, timeout=timeout
        )

        async def listing() -> list[Any]:
            async with httpx.AsyncClient(trust_env=False) as client:
                return await google_consent.list_calendars(settings, client, tokens["access_token"])

        found = asyncio.run(listing())
    except google_consent.ConsentFailed as exc:
        raise click.ClickException(f"{exc}; nothing was registered") from None
    picked = _pick(
        found,
        calendars,
        keys=lambda c: (c.calendar_id, c.label),
        show=lambda c: f"{c.label}{' (main calendar)' if c.primary else ''}  {c.calendar_id}",
    )
    commands = [
        _registration(
            settings,
            {
                "resource_id": resource_id
                if index == 0
                else extra_resource_id(resource_id, choice.calendar_id),
                "provider": "google",
                "calendar_id": choice.calendar_id,
                "time_zone": choice.time_zone,
                "credentials": {"refresh_token": tokens["refresh_token"]},
            },
        )
        for index, choice in enumerate(picked)
    ]
    outcomes = _register(settings, commands, wait)
    if not wait:
        click.echo(f"registered {', '.join(c.resource_id for c in commands)} (not waiting)")
        return
    _report(outcomes)


@connect.command("microsoft")
@click.option("--resource-id", required=True, help="Your id for the mailbox's calendar.")
@_WAIT_OPTION
def connect_microsoft(resource_id: str, wait: float) -> None:
    """Connect a Microsoft 365 / Outlook calendar from a headless machine: msal's
    device-code flow. Open the page it names on any device, enter the code, sign in.

    The app registration must allow public client flows; the signed-in mailbox
    becomes the resource. The refresh token is encrypted here and never printed.
    """
    from calsync.connect import microsoft as microsoft_consent

    settings = _settings()
    try:
        found = microsoft_consent.device_code_consent(settings, show=click.echo)
    except microsoft_consent.ConsentFailed as exc:
        raise click.ClickException(f"{exc}; nothing was registered") from None
    command = _registration(
        settings,
        {
            "resource_id": resource_id,
            "provider": "microsoft",
            "calendar_id": found["mailbox"],
            "credentials": {"refresh_token": found["refresh_token"]},
        },
    )
    click.echo(f"signed in as {found['mailbox']}")
    outcomes = _register(settings, [command], wait)
    if not wait:
        click.echo(f"registered {resource_id} (not waiting)")
        return
    _report(outcomes)


def _pick(
    found: list[Any],
    wanted: tuple[str, ...],
    *,
    keys: Any,
    show: Any,
) -> list[Any]:
    """The entries of ``found`` named by ``wanted`` (numbers, keys, ``all``), asking
    when ``wanted`` is empty (default: the first)."""
    for index, entry in enumerate(found, 1):
        click.echo(f"  {index}. {show(entry)}")
    names = list(wanted)
    if not names:
        answer = click.prompt(
            "Calendars to register (numbers, comma-separated, or all)", default="1"
        )
        names = [part.strip() for part in answer.split(",") if part.strip()]
    picked: list[Any] = []
    for name in names:
        if name == "all":
            return list(found)
        matches = [e for i, e in enumerate(found, 1) if name == str(i) or name in keys(e)]
        if not matches:
            raise click.ClickException(f"no calendar {name!r} was found. Nothing was registered.")
        picked += [e for e in matches if e not in picked]
    return picked


@connect.command("caldav")
@click.option("--resource-id", required=True, help="Your id for the (first) calendar.")
@click.option(
    "--url",
    default="https://caldav.icloud.com",
    show_default=True,
    help="The CalDAV server (or principal, or calendar) URL.",
)
@click.option("--username", prompt=True, help="iCloud: your Apple Account email.")
@click.option(
    "--password",
    envvar="CALSYNC_CALDAV_PASSWORD",
    help="iCloud: an app-specific password (prompted when missing; never echoed).",
)
@click.option(
    "--calendar",
    "calendars",
    multiple=True,
    help="A calendar to register: its number, name, URL or last path segment (repeatable; "
    "'all' for every one). "
    "Without it you are asked.",
)
@click.option("--time-zone", default=None, help="IANA or Windows zone for floating times.")
@click.option("--own-address", default=None, help="Your calendar address (default: username).")
@_WAIT_OPTION
def connect_caldav(
    resource_id: str,
    url: str,
    username: str,
    password: str | None,
    calendars: tuple[str, ...],
    time_zone: str | None,
    own_address: str | None,
    wait: float,
) -> None:
    """Find the calendars of a CalDAV account (iCloud by default) and register them.

    Discovery follows RFC 6764 and RFC 4791 (``/.well-known/caldav``, the principal,
    its calendar home) and checks the password on the way: a refused one is said so
    and nothing is registered. The first calendar picked gets --resource-id, each
    other one ``<resource-id>.<8 hex digits>``.
    """
    from calsync.connect.caldav import ICLOUD_HELP, DiscoveryFailed, discover, is_icloud
    from calsync.gateway.connect import extra_resource_id

    settings = _settings()
    if is_icloud(url):
        click.echo(ICLOUD_HELP, err=True)
    if not password:
        password = click.prompt("Password", hide_input=True)
    try:
        found = asyncio.run(discover(settings, url, username, password))
    except DiscoveryFailed as exc:
        raise click.ClickException(f"{exc} Nothing was registered.") from None
    picked = _pick(
        found,
        calendars,
        keys=lambda c: (c.url, c.display_name, c.url.rstrip("/").rsplit("/", 1)[-1]),
        show=lambda c: f"{c.display_name or '(no name)'}  {c.url}",
    )
    commands = []
    for index, calendar in enumerate(picked):
        rid = resource_id if index == 0 else extra_resource_id(resource_id, calendar.url)
        body: dict[str, Any] = {
            "resource_id": rid,
            "provider": "caldav",
            "calendar_id": calendar.url,
            "time_zone": time_zone,
            "credentials": {"username": username, "password": password},
            "own_address": own_address or (username if "@" in username else None),
        }
        commands.append(_registration(settings, body))
    outcomes = _register(settings, commands, wait)
    if not wait:
        click.echo(f"registered {', '.join(c.resource_id for c in commands)} (not waiting)")
        return
    _report(outcomes)


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


@main.command()
@click.option(
    "--resource",
    "resource_ids",
    multiple=True,
    help="Check only this resource id (repeatable; default: every resource).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--limit", default=20, show_default=True, type=click.IntRange(min=0), help="Examples listed."
)
@click.option(
    "--margin-hours",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Leave this much of both ends of the horizon out (it moves with the clock).",
)
@click.option(
    "--resource-timeout",
    default=300.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Seconds a provider may take to list one calendar.",
)
@click.option(
    "--recheck-after",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Check resources that differ again after this many seconds; report what still "
    "differs (changes in flight on a live deployment).",
)
def verify(
    resource_ids: tuple[str, ...],
    as_json: bool,
    limit: int,
    margin_hours: float,
    resource_timeout: float,
    recheck_after: float,
) -> None:
    """Compare calsync.events with what the providers answer now (read-only).

    Folds the events topic into each resource's busy intervals, lists each calendar
    through the provider adapters and reports missing, extra and stale intervals inside
    the horizon. Exit code 0: they agree; 1: differences; 2: something could not be
    checked.
    """
    from datetime import timedelta

    from calsync.verify import verify as run_verify

    try:
        settings = Settings.from_env(os.environ)
    except CalsyncError as exc:  # exit 2, not click's 1: 1 means "differences"
        click.echo(f"verify failed: {exc}", err=True)
        sys.exit(2)
    try:
        report = asyncio.run(
            run_verify(
                settings,
                resource_ids=resource_ids,
                limit=limit,
                margin=timedelta(hours=margin_hours),
                resource_timeout=resource_timeout,
                recheck_after=recheck_after,
            )
        )
    except Exception as exc:  # Kafka or configuration trouble: nothing was compared
        reason = str(exc) if isinstance(exc, CalsyncError) else repr(exc)
        click.echo(f"verify failed: {reason}", err=True)
        sys.exit(2)
    click.echo(report.to_json() if as_json else report.to_text())
    sys.exit(report.exit_code)


if __name__ == "__main__":
    main()
