"""Organisation-wide access: a Workspace service account with domain-wide delegation,
and a Microsoft application with client credentials, each syncing end to end."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from calsync.streams.records import StatusEvent
from tests.conftest import ADMIN_TOKEN
from tests.integration.conftest import GoogleWorld, event_body, google_world
from tests.integration.test_connect import raw_topics

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
