"""The Graph webhook endpoints against a real broker: handshake, clientState, lifecycle."""

from __future__ import annotations

import httpx

from calsync.crypto import WebhookSigner
from calsync.streams.records import Notification
from calsync.testing.topics import TopicReader
from tests.integration.conftest import serve_gateway


def change(client_state: str, subscription: str = "sub-1") -> dict[str, object]:
    return {
        "subscriptionId": subscription,
        "subscriptionExpirationDateTime": "2026-12-01T00:00:00Z",
        "changeType": "updated",
        "resource": "Users/alice@contoso.com/Events/AAMk=",
        "resourceData": {"@odata.type": "#Microsoft.Graph.Event", "id": "AAMk="},
        "clientState": client_state,
        "tenantId": "t",
    }


async def test_graph_webhooks(kafka_settings) -> None:
    settings = kafka_settings()
    good = WebhookSigner(settings.secret_key).client_state("alice")
    forged = WebhookSigner("some-other-secret-key").client_state("alice")
    async with serve_gateway(settings) as url, httpx.AsyncClient(base_url=url) as client:
        for path in ("/webhooks/microsoft", "/webhooks/microsoft/lifecycle"):
            handshake = await client.post(
                f"{path}?resource=alice&validationToken=Validation%3A%20Testing%20client%20application",
                content=b"",
            )
            assert handshake.status_code == 200
            assert handshake.headers["content-type"].startswith("text/plain")
            assert handshake.text == "Validation: Testing client application"
            assert handshake.headers["x-content-type-options"] == "nosniff"

        forged_only = await client.post(
            "/webhooks/microsoft?resource=alice", json={"value": [change(forged)]}
        )
        assert forged_only.status_code == 403
        other_resource = await client.post(
            "/webhooks/microsoft?resource=bob", json={"value": [change(good)]}
        )
        assert other_resource.status_code == 403  # alice's clientState does not verify for bob
        mixed = await client.post(
            "/webhooks/microsoft?resource=alice",
            json={"value": [change(good), change(forged), change(good, "sub-2")]},
        )
        assert mixed.status_code == 403  # Graph never mixes clientStates in one batch
        batch = await client.post(
            "/webhooks/microsoft?resource=alice",
            json={"value": [change(good), change(good), change(good, "sub-2")]},
        )
        assert batch.status_code == 202 and batch.json()["items"] == 3
        too_many = await client.post(
            "/webhooks/microsoft?resource=alice", json={"value": [change(good)] * 101}
        )
        assert too_many.status_code == 413
        missed = await client.post(
            "/webhooks/microsoft/lifecycle?resource=alice",
            json={"value": [{**change(good), "lifecycleEvent": "missed"}]},
        )
        assert missed.status_code == 202
        malformed = {
            "no resource": await client.post("/webhooks/microsoft", json={"value": [change(good)]}),
            "not json": await client.post("/webhooks/microsoft?resource=alice", content=b"{"),
            "no value": await client.post("/webhooks/microsoft?resource=alice", json={"v": 1}),
            "bad lifecycle": await client.post(
                "/webhooks/microsoft/lifecycle?resource=alice",
                json={"value": [{**change(good), "lifecycleEvent": "party"}]},
            ),
        }
        assert {k: r.status_code for k, r in malformed.items()} == dict.fromkeys(malformed, 400)

    reader = await TopicReader(settings.kafka_bootstrap, settings.topic("notifications")).start()
    try:
        await reader.settle(quiet=1.5)
    finally:
        await reader.aclose()
    notifications = [Notification.loads(v) for v in reader.values]
    assert [
        (n.resource_id, n.reason, n.channel_id, n.lifecycle, n.full) for n in notifications
    ] == [
        ("alice", "push", "sub-1", None, False),
        ("alice", "push", "sub-2", None, False),
        ("alice", "lifecycle", "sub-1", "missed", True),
    ]
