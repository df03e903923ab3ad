"""Organisation-wide access: a Workspace service account with domain-wide delegation,
and a Microsoft application with client credentials, each syncing end to end."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from calsync.streams.records import StatusEvent
from tests.conftest import ADMIN_TOKEN, free_port
from tests.integration.conftest import (
    CLIENT_ID,
    GoogleWorld,
    event_body,
    google_world,
    ms_event_body,
)
from tests.integration.test_connect import hidden_fields, raw_topics

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def register(world: GoogleWorld, body: dict[str, Any]) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{world.admin_url}/api/resources", json=body, headers=ADMIN)
    assert response.status_code == 202, response.text


async def wait_status(
    world: GoogleWorld, rid: str, status: str, timeout: float = 90
) -> StatusEvent:
    deadline = time.monotonic() + timeout
    while True:
        found = [s for s in await world.statuses() if s.resource_id == rid and s.status == status]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, world.worker.tail()
        await asyncio.sleep(1)


async def test_google_domain_wide_delegation_syncs_rooms_and_users(kafka_settings) -> None:
    async with google_world(kafka_settings) as world:
        emu = world.emulator
        emu.add_calendar("admin@example.com")
        emu.add_calendar("room-1@resource.calendar.google.com", owner="admin@example.com")
        emu.add_calendar("frank@example.com")
        key = emu.create_service_account("calsync@project.iam.gserviceaccount.com")
        # a second key whose delegation the administrator never granted
        undelegated = emu.create_service_account(
            "other@project.iam.gserviceaccount.com", delegated_scopes=()
        )
        emu.insert_event("room-1@resource.calendar.google.com", event_body(1))
        emu.insert_event("frank@example.com", event_body(2))
        key_json = json.dumps(key)
        for rid, calendar, subject in (
            ("room-1", "room-1@resource.calendar.google.com", "admin@example.com"),
            ("frank", "frank@example.com", "frank@example.com"),
        ):
            await register(
                world,
                {
                    "resource_id": rid,
                    "provider": "google",
                    "calendar_id": calendar,
                    "credentials": {"service_account_key": key_json, "subject": subject},
                },
            )
        await register(
            world,
            {
                "resource_id": "nope",
                "provider": "google",
                "calendar_id": "frank@example.com",
                "credentials": {
                    "service_account_key": json.dumps(undelegated),
                    "subject": "frank@example.com",
                },
            },
        )

        def truth() -> set[tuple[str, str]]:
            return {
                (rid, e["id"])
                for rid, cal in (
                    ("room-1", "room-1@resource.calendar.google.com"),
                    ("frank", "frank@example.com"),
                )
                for e in emu.list_live_events(cal)
            }

        async def converged() -> None:
            deadline = time.monotonic() + 90
            while {(k[0], k[1]) for k in world.view()} != truth():
                if time.monotonic() > deadline:
                    statuses = [(s.resource_id, s.status, s.detail) for s in await world.statuses()]
                    raise AssertionError(f"{statuses}\n{world.view()}\n{truth()}")
                await world.events.poll(0.3)

        await converged()
        emu.insert_event("room-1@resource.calendar.google.com", event_body(3))
        await converged()
        # the emulator checked signature, audience, lifetime, scope and subject
        assert (
            "calsync@project.iam.gserviceaccount.com",
            "admin@example.com",
        ) in emu.impersonations
        assert (
            "calsync@project.iam.gserviceaccount.com",
            "frank@example.com",
        ) in emu.impersonations
        refused = await wait_status(world, "nope", "reauth_required")
        assert "unauthorized_client" in refused.detail
        private_key = key["private_key"].split("\n")[1]  # a line of the PEM body
        assert private_key not in world.worker.log_path.read_text(errors="replace")
        assert private_key.encode() not in await raw_topics(world.settings)


def self_signed_certificate(directory: Path) -> tuple[Path, bytes]:
    """A PEM file with a new private key and its self-signed certificate; and the cert."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "calsync test app")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = directory / "app.pem"
    path.write_bytes(key_pem + cert_pem)
    return path, cert_pem


@pytest.mark.parametrize("credential", ["secret", "certificate"])
async def test_microsoft_application_access_syncs_and_policy_refusal_is_clear(
    kafka_settings, tmp_path: Path, credential: str
) -> None:
    overrides: dict[str, Any] = {}
    cert_pem = b""
    if credential == "certificate":
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        path, cert_pem = self_signed_certificate(tmp_path)
        sha1 = x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA1())  # noqa: S303
        overrides = {
            "microsoft_client_certificate": str(path),
            "microsoft_client_certificate_thumbprint": sha1.hex(),
        }
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    overrides.update(web_port=port, public_url=public)
    async with google_world(kafka_settings, microsoft=True, **overrides) as world:
        ms = world.ms
        assert ms is not None
        if credential == "certificate":
            # the worker signs client assertions with the key; the secret is not used
            assert ms.add_client_certificate(CLIENT_ID, cert_pem) == sha1.hex().upper()
            ms.add_client(CLIENT_ID, "a-secret-the-worker-does-not-know")
        ms.add_mailbox("room-1@contoso.com")
        ms.add_mailbox("room-2@contoso.com")
        # the tenant's administrator consents through the admin-consent link ...
        ms.add_redirect_uri(CLIENT_ID, f"{public}/connect/microsoft/admin-consent")
        async with httpx.AsyncClient(
            follow_redirects=True, verify=ssl.create_default_context(cafile=ms.ca_bundle_path)
        ) as client:
            made = await client.post(
                f"{world.admin_url}/api/connect/microsoft/admin-consent",
                json={"tenant": ms.tenant_id},
                headers=ADMIN,
            )
            assert made.status_code == 201, made.text
            common = await client.post(
                f"{world.admin_url}/api/connect/microsoft/admin-consent",
                json={"tenant": "common"},
                headers=ADMIN,
            )
            assert common.status_code == 400
            screen = await client.get(made.json()["admin_consent_url"])
            assert screen.status_code == 200, screen.text
            granted = await client.post(
                str(screen.url).split("?")[0],
                data={**hidden_fields(screen.text), "decision": "allow"},
            )
            assert "Access granted for your organisation" in granted.text, granted.text
            assert ms.tenant_id in granted.text
            assert (await client.get(str(granted.url))).status_code == 400  # single use
        # ... and an Exchange administrator narrows it with an application access policy
        ms.consent_application(CLIENT_ID, mailboxes=["room-1@contoso.com"])
        ms.create_event("room-1@contoso.com", ms_event_body(1))
        ms.create_event("room-2@contoso.com", ms_event_body(2))
        for rid in ("room-1", "room-2"):
            await register(
                world,
                {
                    "resource_id": rid,
                    "provider": "microsoft",
                    "calendar_id": f"{rid}@contoso.com",
                    "credentials": {"tenant": ms.tenant_id},
                },
            )
        world.providers["room-1"] = "microsoft"
        await world.wait_converged(["room-1"])
        ms.create_event("room-1@contoso.com", ms_event_body(3))
        await world.wait_converged(["room-1"])
        assert ms.app_tokens_issued >= 1
        failed = await wait_status(world, "room-2", "failed")
        assert "application access policy" in failed.detail
        await asyncio.sleep(3)
        room2 = [s.status for s in await world.statuses() if s.resource_id == "room-2"]
        assert "retry_scheduled" not in room2, room2
        assert room2.count("failed") == 1, room2
        assert not [e for e in world.decoded() if e.resource_id == "room-2"]
