"""The dashboard's fold of ``calsync.status`` and its pages' fragments, without Kafka."""

from __future__ import annotations

from calsync.streams.records import StatusEvent
from calsync.web.dashboard import detail_html, header_html, lag_chart, resource_row, span
from calsync.web.fleet import WORKER_PREFIX, Fleet

T = 1_800_000_000.0


def status(rid: str, name: str, at: float, detail: str = "", **data: object) -> StatusEvent:
    return StatusEvent(resource_id=rid, status=name, at=at, detail=detail, data=data or None)


def fed(*events: StatusEvent) -> Fleet:
    fleet = Fleet(heartbeat_interval=1.0)
    for event in events:
        fleet.feed(event)
    return fleet


def test_a_registration_then_a_sync_is_in_sync_with_its_lag() -> None:
    fleet = fed(
        status("r1", "registered", T, provider="google", calendar_id="room-1@example.com"),
        status("r1", "subscription_renewed", T + 1, expires_at_ms=int((T + 3600) * 1000)),
        status("r1", "synced", T + 2, counts={"upserts": 3}, lag_ms=850, reason="push"),
    )
    view = fleet.resources["r1"]
    assert (view.provider, view.calendar_id, view.state) == ("google", "room-1@example.com", "ok")
    assert view.synced_at == T + 2 and view.lag_ms == 850
    assert view.channel_expires_at == T + 3600 and view.push == "channel"
    assert list(view.lags) == [(T + 2, 850)]
    assert not view.problem
    assert [e["status"] for e in view.timeline] == ["registered", "subscription_renewed", "synced"]


def test_a_revoked_grant_needs_reconnecting_until_new_credentials_sync() -> None:
    fleet = fed(
        status("r1", "registered", T, provider="microsoft"),
        status("r1", "reauth_required", T + 1, "invalid_grant"),
    )
    view = fleet.resources["r1"]
    assert view.state == "reauth_required" and view.credential == "reauth_required"
    assert view.problem
    assert "Reconnect" in view.errors[-1]["action"]
    row = resource_row(view, T + 10)
    assert "needs reconnecting" in row and 'data-problem="1"' in row
    fleet.feed(status("r1", "recovered", T + 20, "new credentials"))
    fleet.feed(status("r1", "synced", T + 21))
    assert fleet.resources["r1"].state == "ok" and not fleet.resources["r1"].problem


def test_retries_count_until_a_sync_succeeds() -> None:
    fleet = fed(
        status("r1", "registered", T, provider="google"),
        status("r1", "rate_limited", T + 1, "429"),
        status("r1", "retry_scheduled", T + 1, "429", attempt=1, delay=30.0),
        status("r1", "retry_scheduled", T + 31, "503", attempt=2, delay=60.0),
    )
    view = fleet.resources["r1"]
    assert view.state == "failing" and view.retries == 2 and view.next_retry_at == T + 91
    assert view.errors[-1]["cause"].startswith("A temporary error")
    fleet.feed(status("r1", "synced", T + 95))
    assert (view.state, view.retries, view.next_retry_at) == ("ok", 0, None)


def test_pause_resume_remove_and_quarantine() -> None:
    fleet = fed(
        status("r1", "registered", T, provider="caldav"),
        status("r1", "synced", T + 1),
        status("r1", "quarantined", T + 2, "malformed ICS", item="abc"),
        status("r1", "paused", T + 3),
    )
    view = fleet.resources["r1"]
    assert view.state == "paused" and view.quarantined == 1 and view.push == "poll"
    fleet.feed(status("r1", "synced", T + 4))  # a sync already running when it was paused
    assert view.state == "paused"
    fleet.feed(status("r1", "resumed", T + 5))
    fleet.feed(status("r1", "synced", T + 6))
    assert view.state == "ok"
    fleet.feed(status("r1", "removed", T + 7))
    assert view.state == "removed"


def test_a_summary_tells_what_no_status_change_did() -> None:
    fleet = fed(
        status(
            "old",
            "summary",
            T,
            provider="google",
            calendar_id="c@example.com",
            state="active",
            synced_at=T - 50,
            channel_expires_at=T + 100,
            retries=2,
            next_retry_at=T + 5,
            worker="host:6066",
        )
    )
    view = fleet.resources["old"]
    assert (view.state, view.synced_at, view.worker, view.retries) == (
        "ok",
        T - 50,
        "host:6066",
        2,
    )
    fleet.feed(status("old", "summary", T + 60, state="reauth_required"))
    assert view.state == "reauth_required"


def test_heartbeats_give_rates_workers_and_lag() -> None:
    fleet = fed(
        status(f"{WORKER_PREFIX}a:1", "heartbeat", T, counters={"events": 10, "notifications": 4}),
        status(
            f"{WORKER_PREFIX}a:1",
            "heartbeat",
            T + 2,
            partitions=[0, 1],
            resources=3,
            counters={"events": 30, "notifications": 8},
            consumer_lag={"n:0": 5},
            rate_limits={"google": {"tokens": 12.0, "held_for": 0.0}},
        ),
        status(f"{WORKER_PREFIX}b:2", "heartbeat", T - 60, partitions=[2]),
    )
    assert fleet.resources == {}  # workers are not resources
    header = fleet.header(now=T + 2.5)
    assert header["events_per_second"] == 10.0 and header["notifications_per_second"] == 2.0
    assert header["consumer_lag"] == {"n:0": 5}
    assert [(w["name"], w["silent"]) for w in header["workers"]] == [("a:1", False), ("b:2", True)]
    text = header_html(header)
    assert "partitions 0, 1" in text and "google (a:1): 12 tokens" in text


def test_pages_escape_what_they_show() -> None:
    fleet = fed(status("r1", "registered", T, provider="google", calendar_id="<script>x</script>"))
    view = fleet.resources["r1"]
    assert "<script>" not in resource_row(view, T) + detail_html(view, T)


def test_the_lag_chart_and_durations() -> None:
    assert "No changes" in lag_chart([], T)
    svg = lag_chart([(T - 60, 500), (T - 30, 1500)], T)
    assert svg.startswith("<svg") and svg.count("<circle") == 2 and "1.50s" in svg
    assert [span(5), span(125), span(7300), span(90000), span(None)] == [
        "5s",
        "2m 05s",
        "2h 01m",
        "1d 1h",
        "—",
    ]


def test_a_token_endpoint_failing_shows_refreshing_until_a_sync_succeeds() -> None:
    fleet = fed(
        status("r1", "registered", T, provider="google"),
        status("r1", "synced", T + 1),
        status(
            "r1",
            "retry_scheduled",
            T + 2,
            "token 503",
            attempt=1,
            delay=5.0,
            credentials="refreshing",
        ),
    )
    view = fleet.resources["r1"]
    assert view.credential == "refreshing" and view.state == "failing"
    assert view.to_json(T + 3)["credential"] == "refreshing"
    assert fleet.header(T + 3)["credentials"] == {"refreshing": 1}
    assert "refreshing" in resource_row(view, T + 3)
    assert "refreshing" in detail_html(view, T + 3)
    # another failure that is not the token endpoint's does not say the token is fine
    fleet.feed(status("r1", "retry_scheduled", T + 8, "calendar 503", attempt=2, delay=9.0))
    assert fleet.resources["r1"].credential == "refreshing"
    fleet.feed(status("r1", "synced", T + 20))
    assert fleet.resources["r1"].credential == "ok" and fleet.resources["r1"].state == "ok"
    assert fleet.header(T + 21)["credentials"] == {"ok": 1}


def test_a_plain_retry_leaves_the_credentials_ok_and_a_revoked_grant_wins() -> None:
    fleet = fed(
        status("r1", "registered", T, provider="google"),
        status("r1", "retry_scheduled", T + 1, "503", attempt=1, delay=5.0),
    )
    assert fleet.resources["r1"].credential == "ok"
    fleet.feed(status("r1", "reauth_required", T + 2, "invalid_grant"))
    fleet.feed(status("r1", "failed", T + 3, "token 503", attempt=5, credentials="refreshing"))
    assert fleet.resources["r1"].credential == "reauth_required"


def test_a_summary_carries_the_refreshing_credentials_and_their_end() -> None:
    fleet = fed(status("r1", "summary", T, provider="google", state="active", credentials="ok"))
    assert fleet.resources["r1"].credential == "ok"
    fleet.feed(status("r1", "summary", T + 5, state="active", credentials="refreshing"))
    assert fleet.resources["r1"].credential == "refreshing"
    fleet.feed(status("r1", "summary", T + 10, state="active", credentials="ok"))
    assert fleet.resources["r1"].credential == "ok"


def test_a_calendar_paused_for_its_size_is_a_problem_with_its_cause() -> None:
    fleet = fed(
        status("r1", "registered", T, provider="google"),
        status("r1", "paused", T + 1, "more than 50,000 events", reason="too_large", limit=50_000),
    )
    view = fleet.resources["r1"]
    assert view.state == "paused" and view.problem
    assert "CALSYNC_MAX_EVENTS_PER_CALENDAR" in view.errors[-1]["action"]
    fleet.feed(status("r1", "resumed", T + 2))
    fleet.feed(status("r1", "synced", T + 3))
    assert not fleet.resources["r1"].problem
    operator = fed(status("r2", "registered", T), status("r2", "paused", T + 1))
    assert not operator.resources["r2"].problem and not operator.resources["r2"].errors
