"""The gateway's handlers in-process: a list publisher, a fed status board, no broker."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from calsync.crypto import WebhookSigner
from calsync.gateway.http import MAX_GRAPH_ITEMS, Gateway, server_options
from calsync.gateway.status import StatusBoard
from calsync.settings import Settings
from calsync.streams.records import Command, Notification, StatusEvent
from tests.conftest import ADMIN_TOKEN, SettingsFactory

NOW = 1_800_000_000.0
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
REGISTRATION = {
    "resource_id": "room-1",
    "provider": "google",
    "calendar_id": "primary",
    "credentials": {"refresh_token": "1//refresh"},
}


class ListPublisher:
    """Keeps what was published; ``on_publish`` plays the worker."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, bytes]] = []
        self.on_publish: Callable[[str, bytes], None] | None = None

    async def publish(self, topic: str, key: str, value: bytes) -> None:
        self.records.append((topic, key, value))
        if self.on_publish is not None:
            self.on_publish(topic, value)

    def on(self, suffix: str) -> list[bytes]:
        return [value for topic, _, value in self.records if topic.endswith(suffix)]


class World:
    def __init__(self, settings: Settings, client: TestClient[Any, Any]) -> None:
        self.settings = settings
        self.client = client
        self.publisher = ListPublisher()
        self.board = StatusBoard()
        self.signer = WebhookSigner(settings.secret_key)
        self.clock = [NOW]


@pytest.fixture
async def world(make_settings: SettingsFactory) -> AsyncIterator[World]:
    settings = make_settings(gateway_read_timeout=0.5)
    holder: list[World] = []
    publisher = ListPublisher()
    board = StatusBoard()
    clock = [NOW]
    gateway = Gateway(settings, publisher, clock=lambda: clock[0], statuses=board)
    app = web.Application(client_max_size=settings.gateway_max_body)
    app.add_routes(gateway.routes())
    async with TestClient(TestServer(app)) as client:
        w = World(settings, client)
        w.publisher, w.board, w.clock = publisher, board, clock
        holder.append(w)
        yield w


def google_headers(
    w: World, *, channel: str = "cs-1", number: str = "7", state: str = "exists", **extra: str
) -> dict[str, str]:
    expiry = int((NOW + 3600) * 1000)
    token = w.signer.channel_token("cs-1", "room-1", expires_at_ms=expiry)
    return {
        "X-Goog-Channel-ID": channel,
        "X-Goog-Channel-Token": token,
        "X-Goog-Resource-State": state,
        "X-Goog-Message-Number": number,
        **extra,
    }


# -- Google pushes ---------------------------------------------------------------------


async def test_an_authentic_push_is_written(world: World) -> None:
    response = await world.client.post("/webhooks/google", headers=google_headers(world))
    assert response.status == 202
    (value,) = world.publisher.on("notifications")
    notification = Notification.loads(value)
    assert (notification.resource_id, notification.channel_id) == ("room-1", "cs-1")
    assert notification.message_number == 7


@pytest.mark.parametrize(
    "number",
    [
        "٣",  # Arabic-indic three: str.isdigit() says yes
        "²",
        "7\u0663",
        "9" * 5000,  # beyond int()'s 4300-digit limit
        "9" * 19,
        str(2**53 + 1),
        str(2**63 - 1),
        "-1",
        "+7",
        "",
    ],
)
async def test_implausible_message_numbers_are_400(world: World, number: str) -> None:
    headers = google_headers(world, number=number)
    response = await world.client.post("/webhooks/google", headers=headers)
    assert response.status == 400
    assert "X-Goog-Message-Number" in (await response.json())["error"]
    assert not world.publisher.records


async def test_the_largest_plausible_message_number_is_taken(world: World) -> None:
    headers = google_headers(world, number=str(2**53))
    assert (await world.client.post("/webhooks/google", headers=headers)).status == 202


@pytest.mark.parametrize("channel", ["cs 1", "cs-1;", "c" * 65, "cs-\u00e9", ""])
async def test_channel_ids_outside_googles_alphabet_are_400(world: World, channel: str) -> None:
    headers = google_headers(world, channel=channel)
    assert (await world.client.post("/webhooks/google", headers=headers)).status == 400


async def test_a_token_of_an_expired_channel_is_refused(world: World) -> None:
    world.clock[0] = NOW + 3600.5  # the channel (and its token) lapsed at NOW + 3600
    response = await world.client.post("/webhooks/google", headers=google_headers(world))
    assert response.status == 403
    assert "expired" in (await response.json())["error"]
    # Google's own expiration header is not signed: it cannot revive the token
    forged = google_headers(world, **{"X-Goog-Channel-Expiration": "Fri, 01 Jan 2100 00:00:00 GMT"})
    assert (await world.client.post("/webhooks/google", headers=forged)).status == 403
    assert not world.publisher.records


async def test_a_token_of_the_old_format_is_refused(world: World) -> None:
    legacy = google_headers(world)
    encoded, _, signature = legacy["X-Goog-Channel-Token"].split(".")
    legacy["X-Goog-Channel-Token"] = f"{encoded}.{signature}"
    assert (await world.client.post("/webhooks/google", headers=legacy)).status == 403


# -- Graph notifications -----------------------------------------------------------------


def graph_item(client_state: str, subscription: str = "sub-1") -> dict[str, object]:
    return {"subscriptionId": subscription, "changeType": "updated", "clientState": client_state}


async def test_a_huge_forged_batch_is_refused_with_one_log_line(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    body = json.dumps(
        {"value": [{}] * 21_000}, separators=(",", ":")
    ).encode()  # 63 KB, under the body limit
    assert len(body) < world.settings.gateway_max_body
    with caplog.at_level(logging.INFO, logger="calsync"):
        response = await world.client.post("/webhooks/microsoft?resource=alice", data=body)
    assert response.status == 413
    assert len([r for r in caplog.records if r.name.startswith("calsync")]) <= 1
    assert not world.publisher.records


async def test_a_forged_batch_under_the_cap_stops_at_the_first_item(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    forged = [graph_item("x" * 43)] * MAX_GRAPH_ITEMS
    with caplog.at_level(logging.INFO, logger="calsync"):
        response = await world.client.post(
            "/webhooks/microsoft?resource=alice", json={"value": forged}
        )
    assert response.status == 403
    assert "value[0]" in (await response.json())["error"]
    assert len([r for r in caplog.records if r.name.startswith("calsync")]) == 1
    assert not world.publisher.records


async def test_one_forged_item_spoils_the_batch(world: World) -> None:
    good = world.signer.client_state("alice")
    mixed = [graph_item(good), graph_item("forged"), graph_item(good, "sub-2")]
    response = await world.client.post("/webhooks/microsoft?resource=alice", json={"value": mixed})
    assert response.status == 403
    assert not world.publisher.records


async def test_a_batch_becomes_one_ping_per_subscription(world: World) -> None:
    good = world.signer.client_state("alice")
    batch = [graph_item(good)] * 3 + [graph_item(good, "sub-2")]
    response = await world.client.post("/webhooks/microsoft?resource=alice", json={"value": batch})
    assert response.status == 202
    assert (await response.json())["items"] == 4
    written = [Notification.loads(v).channel_id for v in world.publisher.on("notifications")]
    assert written == ["sub-1", "sub-2"]


async def test_the_validation_echo_is_not_sniffed_and_is_bounded(world: World) -> None:
    echo = await world.client.post("/webhooks/microsoft?validationToken=%3Cscript%3E")
    assert echo.status == 200 and await echo.text() == "<script>"
    assert echo.headers["X-Content-Type-Options"] == "nosniff"
    assert echo.headers["Content-Type"].startswith("text/plain")
    long = await world.client.post(f"/webhooks/microsoft?validationToken={'a' * 1025}")
    assert long.status == 400


@pytest.mark.parametrize(
    ("path", "item", "status"),
    [
        ("/webhooks/microsoft?resource=alice%0A", "good", 400),  # "alice\n" is not alice
        ("/webhooks/microsoft/lifecycle?resource=alice", {"lifecycleEvent": []}, 400),
        ("/webhooks/microsoft?resource=alice", {"clientState": "\ud800"}, 403),
        ("/webhooks/microsoft?resource=alice", {"clientState": ["x"]}, 403),
    ],
)
async def test_odd_graph_bodies_are_refused_not_500(
    world: World, path: str, item: Any, status: int
) -> None:
    good = {"clientState": world.signer.client_state("alice")}
    item = good if item == "good" else {**good, **item}
    response = await world.client.post(path, data=json.dumps({"value": [item]}))
    assert response.status == status
    assert "error" in await response.json()
    assert not world.publisher.records


# -- request parsing -----------------------------------------------------------------------


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
        await asyncio.sleep(0.01)


async def test_a_registration_sent_in_two_chunks_is_read_whole(world: World) -> None:
    body = json.dumps(REGISTRATION).encode()
    response = await world.client.post(
        "/api/resources", data=chunks(body[:20], body[20:]), headers=AUTH
    )
    assert response.status == 202, await response.text()
    assert Command.loads(world.publisher.on("commands")[0]).resource_id == "room-1"


async def test_a_chunked_body_over_the_limit_is_413(world: World) -> None:
    piece = b" " * 16_384
    count = world.settings.gateway_max_body // len(piece) + 2
    response = await world.client.post(
        "/api/resources", data=chunks(*[piece] * count), headers=AUTH
    )
    assert response.status == 413
    assert "error" in await response.json()
    assert not world.publisher.records


async def test_a_body_that_does_not_arrive_is_408(world: World) -> None:
    async def stalls() -> AsyncIterator[bytes]:
        yield b'{"resource_id": '
        await asyncio.sleep(2)  # over gateway_read_timeout (0.5 s here)
        yield b"1}"

    response = await world.client.post("/api/resources", data=stalls(), headers=AUTH)
    assert response.status == 408


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[" * 30_000 + b"]" * 30_000, "nested"),
        (b"[" * 60_000, "JSON"),
        (b'{"resource_id": ' + b"9" * 5000 + b"}", "JSON"),
        (json.dumps({**REGISTRATION, "provider": ["google"]}).encode(), "provider"),
        (json.dumps({**REGISTRATION, "provider": {"a": 1}}).encode(), "provider"),
        (json.dumps({**REGISTRATION, "resource_id": "room-1\n"}).encode(), "resource_id"),
        (json.dumps({**REGISTRATION, "calendar_id": ["x"]}).encode(), "calendar_id"),
        (json.dumps({**REGISTRATION, "credentials": {"refresh_token": ["x"]}}).encode(), "cred"),
        (b"\xff\xfe", "JSON"),
    ],
)
async def test_malformed_registrations_are_400(world: World, body: bytes, words: str) -> None:
    response = await world.client.post("/api/resources", data=body, headers=AUTH)
    assert response.status == 400, await response.text()
    assert words in json.dumps(await response.json())
    assert not world.publisher.records


async def test_a_trailing_newline_is_not_a_resource_id_in_paths(world: World) -> None:
    response = await world.client.delete("/api/resources/room-1%0A", headers=AUTH)
    assert response.status == 400


async def test_undecodable_bearer_bytes_are_401(world: World) -> None:
    response = await world.client.post(
        "/api/resources", json=REGISTRATION, headers={"Authorization": "Bearer \udcff"}
    )
    assert response.status == 401


# -- registration outcome ------------------------------------------------------------------


def play_worker(world: World, *statuses: tuple[str, str], stamp: bool = True) -> None:
    """When the register command is written, the "worker" reports these statuses
    (``registered`` with the command's ``issued_at`` if ``stamp``)."""

    def on_publish(topic: str, value: bytes) -> None:
        if not topic.endswith("commands"):
            return
        command = Command.loads(value)

        async def report() -> None:
            for status, detail in statuses:
                await asyncio.sleep(0.02)
                at = world.clock[0] + 0.1
                stamped = stamp and status == "registered"
                data = {"issued_at": command.issued_at} if stamped else None
                world.board.feed(StatusEvent(command.resource_id, status, at, detail, data))

        asyncio.get_running_loop().create_task(report())

    world.publisher.on_publish = on_publish


async def test_without_wait_the_answer_is_202_with_a_status_url(world: World) -> None:
    response = await world.client.post("/api/resources", json=REGISTRATION, headers=AUTH)
    assert response.status == 202
    location = response.headers["Location"]
    assert location == f"/api/resources/room-1/registration?since={NOW:.3f}"
    assert (await response.json())["status_url"] == location


async def test_wait_returns_a_successful_first_sync(world: World) -> None:
    play_worker(
        world,
        ("registered", ""),
        ("subscription_lost", "could not subscribe: 403"),
        ("resync_started", ""),
        ("resync_finished", ""),
        ("synced", ""),
    )
    response = await world.client.post("/api/resources?wait=5s", json=REGISTRATION, headers=AUTH)
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "synced" and body["registration"]["ok"] is True
    assert body["registration"]["warnings"] == [
        {"status": "subscription_lost", "detail": "could not subscribe: 403"}
    ]
    assert response.headers["Location"].endswith(f"since={NOW:.3f}")


async def test_wait_returns_a_refused_credential(world: World) -> None:
    play_worker(world, ("registered", ""), ("reauth_required", "invalid_grant: Bad Request"))
    response = await world.client.post("/api/resources?wait=5", json=REGISTRATION, headers=AUTH)
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "reauth_required"
    assert body["registration"]["ok"] is False
    assert "invalid_grant" in body["registration"]["detail"]


async def test_wait_ends_with_202_when_nothing_is_decided(world: World) -> None:
    play_worker(world, ("registered", ""), ("retry_scheduled", "503"))
    response = await world.client.post("/api/resources?wait=300ms", json=REGISTRATION, headers=AUTH)
    assert response.status == 202
    body = await response.json()
    assert body["registration"]["outcome"] == "pending"
    assert body["registration"]["last_status"] == "retry_scheduled"
    # ... and the status URL tells the outcome once the worker does
    world.board.feed(StatusEvent("room-1", "synced", NOW + 1))
    polled = await world.client.get(response.headers["Location"], headers=AUTH)
    assert polled.status == 200 and (await polled.json())["status"] == "synced"


async def test_an_earlier_registration_is_not_taken_for_this_one(world: World) -> None:
    world.board.feed(StatusEvent("room-1", "registered", NOW - 60, "", {"issued_at": NOW - 60}))
    world.board.feed(StatusEvent("room-1", "reauth_required", NOW - 59, "old token"))
    response = await world.client.post("/api/resources?wait=100ms", json=REGISTRATION, headers=AUTH)
    assert response.status == 202


async def test_without_issued_at_a_registration_seen_before_the_write_is_not_this_one(
    world: World,
) -> None:
    """Workers that do not stamp ``registered`` with ``issued_at``: a registration a
    moment earlier (within the clock skew) is ruled out by the mark."""
    world.board.feed(StatusEvent("room-1", "registered", NOW - 0.5))
    world.board.feed(StatusEvent("room-1", "synced", NOW - 0.4))
    play_worker(world, ("registered", ""), ("reauth_required", "invalid_grant"), stamp=False)
    response = await world.client.post("/api/resources?wait=5", json=REGISTRATION, headers=AUTH)
    assert response.status == 200
    assert (await response.json())["status"] == "reauth_required"


@pytest.mark.parametrize("wait", ["31", "31s", "forever", "-1", "1e3", "10 s"])
async def test_bad_waits_are_400_and_write_nothing(world: World, wait: str) -> None:
    response = await world.client.post(
        f"/api/resources?wait={wait}", json=REGISTRATION, headers=AUTH
    )
    assert response.status == 400
    assert (await response.json())["field"] == "wait"
    assert not world.publisher.records


async def test_the_status_url_needs_the_admin_token_and_a_since(world: World) -> None:
    url = "/api/resources/room-1/registration"
    assert (await world.client.get(f"{url}?since=1", headers={})).status == 401
    assert (await world.client.get(url, headers=AUTH)).status == 400
    assert (await world.client.get(f"{url}?since=soon", headers=AUTH)).status == 400
    pending = await world.client.get(f"{url}?since={NOW}", headers=AUTH)
    assert pending.status == 202
    assert (await pending.json())["registration"]["registered"] is False


# -- connections that never finish a request head -------------------------------------------


async def test_a_connection_without_a_complete_request_head_is_closed(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(gateway_read_timeout=0.5)
    app = web.Application()
    app.add_routes(Gateway(settings, ListPublisher(), statuses=StatusBoard()).routes())
    runner = web.AppRunner(app, **server_options(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:

        async def closed_after(head: bytes) -> float:
            loop = asyncio.get_running_loop()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = loop.time()
            writer.write(head)
            try:
                assert await asyncio.wait_for(reader.read(), 5.0) == b""
            finally:
                writer.close()
            return loop.time() - started

        silent, partial = await asyncio.gather(
            closed_after(b""), closed_after(b"POST /webhooks/google HTTP/1.1\r\nHost: x\r\n")
        )
        assert silent < 2.0 and partial < 2.0
    finally:
        await runner.cleanup()


def test_the_status_board_ignores_heartbeats_and_summaries() -> None:
    board = StatusBoard()
    board.feed(StatusEvent(resource_id="room-1", status="registered", at=NOW))
    board.feed(StatusEvent(resource_id="room-1", status="summary", at=NOW + 1, data={"x": 1}))
    found = board.lookup("room-1", NOW)
    assert found.registered and found.last_status == "registered" and found.counts == {}
