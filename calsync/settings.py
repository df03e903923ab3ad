"""One frozen, typed settings object, read from ``CALSYNC_*`` variables once at start.

Nothing below :mod:`calsync.app` and :mod:`calsync.cli` reads ``os.environ``; code
takes a :class:`Settings` and tests build one explicitly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calsync.errors import ConfigurationError
from calsync.providers.netpolicy import parse_networks

_SECRET_FIELDS = frozenset(
    {
        "secret_key",
        "admin_token",
        "read_token",
        "google_client_secret",
        "microsoft_client_secret",
    }
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable about a calsync process.

    The environment variable of a field is ``CALSYNC_`` + its upper-cased name
    (``kafka_bootstrap`` ← ``CALSYNC_KAFKA_BOOTSTRAP``). Provider URLs are settings so
    that the emulators, or any other stand-in, can take the real services' place.
    """

    secret_key: str = field(repr=False)
    admin_token: str = field(repr=False)
    #: A token that may look (the dashboard, every GET route) but change nothing;
    #: empty: no read-only access. Same rules as the admin token, and not equal to it.
    read_token: str = field(default="", repr=False)
    kafka_bootstrap: str = "127.0.0.1:9092"
    data_dir: Path = Path("./calsync-data")
    web_port: int = 6066
    web_bind: str = "127.0.0.1"
    #: ``host:port`` of a second web server for the admin API, ``/status/`` and Faust's
    #: pages; the public port (``web_bind:web_port``) then carries only the webhooks, the
    #: connect pages and ``/healthz``. Empty: everything is served on the public port
    #: (see :mod:`calsync.web`).
    admin_bind: str = ""
    #: Serve Faust's built-in pages (``/table/``, ``/router/``, ``/``, ``/assignment/``,
    #: ``/graph/``, ``/performance/``), behind the admin token like every admin route.
    #: Off by default: ``/table/`` shows table contents.
    faust_pages: bool = False
    public_url: str = "http://127.0.0.1:6066"
    app_id: str = "calsync"
    topic_prefix: str = "calsync."
    topic_partitions: int = 8
    replication_factor: int = 1
    #: The largest table value a worker writes (bytes): one resource's availability
    #: index (about 55 bytes per occurrence in the horizon) or sync state (its
    #: occurrence index). Kafka's default of 1 MiB stopped a worker on a 20,000-event
    #: calendar; the table changelogs are created with this ``max.message.bytes`` and
    #: the producer sends requests this large.
    max_table_value_bytes: int = 16 * 1024 * 1024
    #: The most events inside the horizon a worker keeps for one calendar. Its sync
    #: state stores each event's id and version (Graph ids alone are about 150 bytes),
    #: so this keeps that value well under ``max_table_value_bytes``; a calendar past it
    #: is paused with a ``paused`` status saying why, instead of stopping the worker.
    max_events_per_calendar: int = 50_000
    google_api_url: str = "https://www.googleapis.com/calendar/v3"
    google_token_url: str = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL, not a secret
    #: Google's authorization endpoint (the consent screen of ``calsync connect``).
    google_auth_url: str = "https://accounts.google.com/o/oauth2/v2/auth"
    google_client_id: str = ""
    google_client_secret: str = field(default="", repr=False)
    graph_api_url: str = "https://graph.microsoft.com/v1.0"
    microsoft_authority: str = "https://login.microsoftonline.com/common"
    microsoft_client_id: str = ""
    microsoft_client_secret: str = field(default="", repr=False)
    #: A PEM file with the app registration's certificate and its private key: the
    #: client credential of application (client-credentials) access instead of the
    #: secret; ``..._THUMBPRINT`` is the certificate's SHA-1 thumbprint (hex).
    microsoft_client_certificate: str = ""
    microsoft_client_certificate_thumbprint: str = ""
    #: A PEM file of extra CAs to trust for the Microsoft authority (corporate proxies, tests).
    microsoft_ca_bundle: str = ""
    #: A connect link (``POST /api/connect``) can be opened this many seconds after it
    #: was made; once it has registered a calendar it is spent.
    connect_link_ttl: float = 7 * 24 * 3600.0
    #: An OAuth ``state`` (one consent in progress) and the calendar choice after it
    #: expire after this many seconds.
    connect_state_ttl: float = 600.0
    #: Connect links and consents in progress a process keeps at most (each is a few
    #: hundred bytes); more are refused with 503 until some expire.
    connect_max_pending: int = 10_000
    #: Lifetime requested for Graph subscriptions, in minutes (the documented maximum
    #: for Outlook events without resource data is 10,080).
    graph_subscription_minutes: int = 10_080
    #: Subscriptions and channels are renewed this fraction of their lifetime before
    #: expiry, spread by up to a tenth of that either way.
    renew_fraction: float = 0.25
    #: A push subscription the provider refused is tried again after this many
    #: seconds, doubling per consecutive failure up to the maximum (jittered).
    subscribe_retry_base_delay: float = 60.0
    subscribe_retry_max_delay: float = 3600.0
    #: A PEM file of extra CAs to trust for CalDAV servers (self-hosted, tests).
    caldav_ca_bundle: str = ""
    #: Comma-separated CIDRs of non-public networks CalDAV servers may be in (e.g.
    #: ``10.20.0.0/16`` for a self-hosted server, ``127.0.0.0/8`` for local tests).
    #: Loopback, private, link-local and other non-public addresses are refused,
    #: after DNS resolution, unless listed here (:mod:`calsync.providers.netpolicy`).
    caldav_allowed_networks: str = ""
    #: CalDAV has no push: calendars are polled every this many seconds when they
    #: just changed, backing off (doubling) to the maximum while they stay quiet.
    poll_min_interval: float = 5.0
    poll_max_interval: float = 300.0
    #: Events starting more than this many days ago are outside the sync horizon.
    horizon_past_days: int = 30
    #: Events starting more than this many days ahead are outside the sync horizon.
    horizon_future_days: int = 365
    #: Webhook bodies larger than this many bytes are refused with 413.
    gateway_max_body: int = 64 * 1024
    #: Seconds a client has to deliver a request head (counted from connecting or from
    #: its last response, so also the keep-alive idle limit), and again its body.
    gateway_read_timeout: float = 10.0
    #: Seconds the gateway waits for the broker to acknowledge a write before it answers
    #: 503 with ``Retry-After`` (the provider retries). Without a bound a webhook hung
    #: for as long as the broker was away (up to the producer's 40 s), past the
    #: provider's own timeout. A write given up on may still land later (harmless).
    gateway_publish_timeout: float = 5.0
    #: Time-to-live requested for Google watch channels, in seconds.
    google_channel_ttl: int = 7 * 24 * 3600
    #: Retry attempts before work goes to the dead-letter topic: it goes there once it
    #: has failed this many times *and* has waited ``retry_patience`` seconds.
    max_attempts: int = 8
    #: How long retriable trouble (throttling, a provider down, the network) is
    #: retried, in seconds from the work's arrival, before it is dead-lettered. Eight
    #: quick attempts are over in about a minute; an outage or a 429 storm lasts longer,
    #: and a calendar whose first sync was dead-lettered would stay empty until its
    #: daily reconciliation. Retries keep backing off to ``retry_max_delay`` meanwhile.
    retry_patience: float = 3600.0
    #: First retry delay in seconds (doubled per attempt, full jitter).
    retry_base_delay: float = 0.5
    #: Longest retry delay in seconds: Google's truncated exponential backoff keeps
    #: retrying at a cap of 32 or 64 s (docs/reference: provider-protocols §1.4), and a
    #: longer cap is how long calendars stay stale after a provider comes back (a
    #: 5-minute outage converged 250 s after its end with 300 s; benchmarks §7).
    retry_max_delay: float = 64.0
    #: How often every resource gets a low-priority full reconciliation, in seconds.
    reconcile_period: float = 24 * 3600.0
    #: Reconciliations are spread by up to this fraction of the period either way.
    reconcile_jitter: float = 0.1
    #: A pushed calendar (Google, Microsoft) not synced for this many seconds is asked
    #: for its delta anyway (one cheap request): a push the provider lost is made up
    #: for within this time (give or take a tenth), not at the daily reconciliation.
    #: Providers do drop pushes. 0 turns it off.
    catchup_interval: float = 3600.0
    #: A Google push whose message number jumps by more than this triggers a reconciliation.
    google_message_gap: int = 1000
    #: A push message number further than this above the last one is not believed:
    #: neither recorded nor a reason to reconcile (it only asks for a delta).
    google_message_jump_limit: int = 1_000_000
    #: Google requests per second per user (600/min) and the burst allowed.
    google_user_rate: float = 10.0
    google_user_burst: float = 10.0
    #: Google requests per second per project (10,000/min), split across partitions.
    google_app_rate: float = 10_000 / 60
    google_app_burst: float = 100.0
    #: A rate-limit wait longer than this goes through the retry topic instead of sleeping.
    max_inline_wait: float = 0.25
    #: Syncs of different resources that may run at once per worker: live work (pushes
    #: needing a delta, renewals) and bulk work (full syncs, reconciliations, polls),
    #: the latter per provider (one provider's backlog never holds up another's).
    #: A full sync spends much of its time waiting on the provider and the broker, so
    #: two overlap well; more compete for the CPU with the live lane.
    live_concurrency: int = 8
    bulk_concurrency: int = 2
    #: Consumer-group session timeout in seconds: how long a killed worker keeps its
    #: partitions before the others take them over (brokers refuse less than
    #: ``group.min.session.timeout.ms``, 6 s by default). Shorter means a faster
    #: takeover, but a worker whose event loop stalls this long loses its partitions.
    kafka_session_timeout: float = 6.0
    #: Static group membership (``group.instance.id``), unique per worker; empty: off.
    #: A worker restarted within the session timeout keeps its partitions without a
    #: rebalance, but a cleanly stopped one no longer hands them over at once (the
    #: others wait the session timeout). See docs/architecture.md, "Failover".
    group_instance_id: str = ""
    #: Standby replicas per table partition: warm copies on other workers that make a
    #: takeover replay seconds of changelog instead of all of it.
    standby_replicas: int = 1
    #: Seconds between a worker's heartbeats on ``calsync.status`` (its partitions,
    #: consumer lag, rate-limit buckets, counters), which the dashboard shows.
    heartbeat_interval: float = 5.0
    #: Seconds between a worker's summaries of every resource it owns (sync state,
    #: channel expiry, retry backlog) on ``calsync.status``, so the dashboard knows
    #: resources whose last status change is older than the topic's retention.
    summary_interval: float = 60.0
    #: Seconds after which a resource's summary is sent again though nothing in it
    #: changed (a changed one goes out at the next summary pass). At most half of
    #: ``dashboard_lookback``, so a starting dashboard finds every resource.
    summary_refresh: float = 3600.0
    #: Seconds of ``calsync.status`` the dashboard reads when a worker starts.
    dashboard_lookback: float = 24 * 3600.0
    log_level: str = "info"
    #: Test only: the worker's clock runs this many times faster than real time from
    #: ``clock_origin`` on (so days of subscription life pass in seconds).
    clock_rate: float = 1.0
    clock_origin: float = 0.0
    #: Test only: the agent of this name (``calsync.sync``, ``calsync.retry``,
    #: ``calsync.commands``) raises on its first record, to test supervision.
    fail_agent: str = ""

    def __post_init__(self) -> None:
        _check_secret_key(self.secret_key)
        _check_admin_token(self.admin_token)
        if self.read_token:
            _check_admin_token(self.read_token, name="CALSYNC_READ_TOKEN")
            if self.read_token == self.admin_token:
                raise ConfigurationError("CALSYNC_READ_TOKEN must differ from CALSYNC_ADMIN_TOKEN")
        if self.admin_address is not None and self.admin_address[1] == self.web_port:
            raise ConfigurationError(
                f"CALSYNC_ADMIN_BIND={self.admin_bind!r} must use another port than "
                f"CALSYNC_WEB_PORT ({self.web_port}): it is a second web server"
            )
        if self.topic_partitions < 1 or self.replication_factor < 1:
            raise ConfigurationError("topic partitions and replication factor must be >= 1")
        if self.live_concurrency < 1 or self.bulk_concurrency < 1:
            raise ConfigurationError(
                "CALSYNC_LIVE_CONCURRENCY and CALSYNC_BULK_CONCURRENCY must be >= 1"
            )
        parse_networks(self.caldav_allowed_networks)  # raises ConfigurationError naming it
        if not self.summary_interval <= self.summary_refresh <= self.dashboard_lookback / 2:
            raise ConfigurationError(
                "CALSYNC_SUMMARY_REFRESH must lie between CALSYNC_SUMMARY_INTERVAL and half "
                "of CALSYNC_DASHBOARD_LOOKBACK"
            )

    @property
    def admin_address(self) -> tuple[str, int] | None:
        """``(host, port)`` of :attr:`admin_bind`, or ``None`` when it is not set.

        Raises :class:`ConfigurationError` naming ``CALSYNC_ADMIN_BIND`` when malformed
        (which :meth:`__post_init__` has already checked).
        """
        return _parse_bind(self.admin_bind) if self.admin_bind else None

    def topic(self, name: str) -> str:
        """The full name of a topic: ``notifications`` → ``calsync.notifications``."""
        return f"{self.topic_prefix}{name}"

    def masked(self) -> dict[str, Any]:
        """The settings as a dict with secrets masked, for logs and the status page."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = "****" if f.name in _SECRET_FIELDS and value else value
        return out

    def to_env(self) -> dict[str, str]:
        """The ``CALSYNC_*`` variables that :meth:`from_env` reads back into these settings."""
        return {
            f"CALSYNC_{f.name.upper()}": str(getattr(self, f.name))
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Read ``CALSYNC_*`` variables; ``overrides`` win over the environment.

        Raises :class:`ConfigurationError` naming the variable when a value does not parse.
        """
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            env_name = f"CALSYNC_{f.name.upper()}"
            raw = environ.get(env_name)
            if raw is None:
                continue
            values[f.name] = _parse(env_name, raw, f.type)
        values.update(overrides)
        for required in ("secret_key", "admin_token"):
            values.setdefault(required, "")
        return cls(**values)


_GENERATE = 'generate one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
#: A secret needs this many different characters: fewer is a pattern, not randomness
#: (32 random characters from any usual alphabet practically never have fewer).
_MIN_DISTINCT = 8
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _check_secret_key(key: str) -> None:
    """Refuse a key with less than 32 bytes of key material.

    Whitespace is not key material, and neither is a character repeated: the key
    derives both the credential-encryption and the webhook-signing keys (HKDF), which
    are only as strong as what goes in. The error never contains the key.
    """
    material = "".join(key.split())
    if len(material.encode()) < 32 or len(set(material)) < _MIN_DISTINCT:
        raise ConfigurationError(
            "CALSYNC_SECRET_KEY must be at least 32 bytes of random key material "
            "(whitespace and repeated characters do not count; it encrypts credentials "
            f"and signs webhook tokens); {_GENERATE}"
        )


def _check_admin_token(token: str, *, name: str = "CALSYNC_ADMIN_TOKEN") -> None:
    """Refuse an admin token that is short, patterned or cannot travel in a header.

    At least 24 characters, at least :data:`_MIN_DISTINCT` different ones, all visible
    ASCII (``Authorization: Bearer <token>`` strips surrounding whitespace and is not
    UTF-8). The error never contains the token.
    """
    printable = all("!" <= c <= "~" for c in token)
    if len(token) < 24 or len(set(token)) < _MIN_DISTINCT or not printable:
        raise ConfigurationError(
            f"{name} must be at least 24 random characters of visible ASCII "
            "(no spaces, not one or a few characters repeated; it guards the admin API "
            f"and the status pages); {_GENERATE}"
        )


def _parse_bind(bind: str) -> tuple[str, int]:
    """``host:port`` (``[v6 address]:port`` for IPv6) as ``(host, port)``."""
    host, sep, raw_port = bind.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address must be bracketed, or the port is ambiguous
    port = int(raw_port) if raw_port.isdigit() else 0
    if not sep or not host or not 0 < port < 65536:
        raise ConfigurationError(
            f"CALSYNC_ADMIN_BIND={bind!r} must be host:port, e.g. 127.0.0.1:6067 or [::1]:6067"
        )
    return host, port


def _parse(env_name: str, raw: str, annotation: object) -> Any:
    kind = str(annotation)
    if kind == "bool":
        if raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise ConfigurationError(f"{env_name}={raw!r} is not true or false")
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{env_name}={raw!r} is not a valid {kind}") from exc
    return raw
