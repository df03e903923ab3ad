"""Connect links against the Google emulator's consent screen and the real broker.

An httpx client plays the calendar owner's browser: it opens the link, follows the
redirect to the emulator's consent page, posts the consent form, comes back to the
callback and submits the calendar picker. What the link registers is read back from
the commands topic; what it must not register is checked there too.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from calsync.crypto import SecretBox
from calsync.emulators.google import GoogleEmulator
from calsync.gateway.connect import extra_resource_id
from calsync.settings import Settings
from calsync.streams.records import Command
from calsync.testing.topics import TopicReader
from tests.conftest import ADMIN_TOKEN, free_port
from tests.integration.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    event_body,
    google_world,
    ms_event_body,
    serve_gateway,
)

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
_HIDDEN = re.compile(r'name="(?P<name>[a-z]+)" value="(?P<value>[^"]*)"')


@pytest.fixture(autouse=True)
def _plain_http_oauth(monkeypatch: pytest.MonkeyPatch) -> None:
    # The emulator speaks plain HTTP; requests-oauthlib refuses that unless told (the
    # worker subprocess inherits it). Production endpoints are HTTPS.
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")


def hidden_fields(page: str) -> dict[str, str]:
    return {m["name"]: m["value"] for m in _HIDDEN.finditer(page)}


@dataclass
class Owner:
    """A calendar owner's browser: every page it saw is kept (to look for secrets)."""

    client: httpx.AsyncClient
    pages: list[str] = field(default_factory=list)

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        response = await self.client.get(url, **kwargs)
        self.pages.append(response.text + str(response.headers))
        return response

    async def post(self, url: str, **kwargs: Any) -> httpx.Response:
        response = await self.client.post(url, **kwargs)
        self.pages.append(response.text + str(response.headers))
        return response

    async def consent(self, connect_url: str, user: str, *, decision: str = "allow") -> str:
        """Open the link and answer the consent screen; returns the callback URL that
        the emulator redirects to (not yet followed)."""
        opened = await self.get(connect_url)
        assert opened.status_code == 302, opened.text
        screen = await self.get(opened.headers["Location"])
        assert screen.status_code == 200, screen.text
        action = urlsplit(opened.headers["Location"])
        answer = await self.post(
            f"{action.scheme}://{action.netloc}{action.path}",
            data={**hidden_fields(screen.text), "user": user, "decision": decision},
        )
        assert answer.status_code == 302, answer.text
        return answer.headers["Location"]

    async def pick(
        self, picker: httpx.Response, indexes: list[int] | None = None
    ) -> httpx.Response:
        """Submit the picker: the preselected calendars, or ``indexes``."""
        assert picker.status_code == 200, picker.text
        action = re.search(r'form method="post" action="([^"]+)"', picker.text)
        assert action is not None, picker.text
        checked = re.findall(r'name="calendar" value="(\d+)" checked', picker.text)
        picked = [str(i) for i in indexes] if indexes is not None else checked
        fields = [("choice", hidden_fields(picker.text)["choice"])] + [
            ("calendar", v) for v in picked
        ]
        base = str(picker.url).split("/connect/")[0]
        return await self.post(
            base + action.group(1),
            content=urlencode(fields),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )


async def make_link(api_url: str, **body: Any) -> str:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{api_url}/api/connect", json={"provider": "google", **body}, headers=ADMIN
        )
    assert response.status_code == 201, response.text
    return str(response.json()["connect_url"])


async def registrations(settings: Settings, quiet: float = 1.5) -> list[Command]:
    reader = await TopicReader(settings.kafka_bootstrap, settings.topic("commands")).start()
    try:
        await reader.settle(quiet=quiet)
        return [Command.loads(v) for v in reader.values]
    finally:
        await reader.aclose()


async def raw_topics(settings: Settings) -> bytes:
    """Every record of every calsync topic (changelogs included), concatenated."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        names = [t for t in await consumer.topics() if t.startswith(settings.topic_prefix)]
        names += [t for t in await consumer.topics() if t.startswith(settings.app_id)]
    finally:
        await consumer.stop()
    blob = b""
    for name in sorted(set(names)):
        reader = await TopicReader(settings.kafka_bootstrap, name).start()
        try:
            await reader.settle(quiet=0.5)
            blob += b"\n".join(v or b"" for v in reader.values)
        finally:
            await reader.aclose()
    return blob


@asynccontextmanager
async def connect_gateway(kafka_settings: Any, **overrides: Any) -> AsyncIterator[Any]:
    """The Google emulator (alice owns two calendars, bob one) and a gateway whose
    public URL is its own address; yields ``(emulator, settings, gateway url)``."""
    async with GoogleEmulator(seed=7) as emulator:
        emulator.add_client(CLIENT_ID, CLIENT_SECRET)
        emulator.add_client("other-client", "other-secret")
        emulator.add_calendar("alice@example.com", time_zone="Europe/Berlin")
        emulator.add_calendar("team@group.example.com", owner="alice@example.com")
        emulator.add_calendar("bob@example.com")
        port = free_port()
        settings = kafka_settings(
            public_url=f"http://127.0.0.1:{port}",
            google_api_url=emulator.api_url,
            google_token_url=emulator.token_url,
            google_auth_url=emulator.auth_url,
            google_client_id=CLIENT_ID,
            google_client_secret=CLIENT_SECRET,
            **overrides,
        )
        callback = f"{settings.public_url}/connect/google/callback"
        emulator.add_redirect_uri(CLIENT_ID, callback)
        emulator.add_redirect_uri("other-client", callback)
        async with serve_gateway(settings, port) as url:
            yield emulator, settings, url


async def test_a_link_registers_the_calendars_the_owner_picks(kafka_settings) -> None:
    async with connect_gateway(kafka_settings) as (emulator, settings, url):
        link = await make_link(url, resource_id="alice")
        async with httpx.AsyncClient(follow_redirects=True) as client:
            owner = Owner(client)
            # the whole way with redirects followed: link, consent page, callback
            opened = await owner.get(link)
            assert "wants to access your account" in opened.text
            consent_url = str(opened.url)
            assert "code_challenge_method=S256" in consent_url
            assert "access_type=offline" in consent_url and "prompt=consent" in consent_url
            assert "calendar.readonly" in consent_url
            picker = await owner.post(
                consent_url.split("?")[0],
                data={
                    **hidden_fields(opened.text),
                    "user": "alice@example.com",
                    "decision": "allow",
                },
            )
            assert "Which calendars may be shared?" in picker.text
            assert "(main calendar)" in picker.text
            done = await owner.pick(picker, [0, 1])
            assert done.status_code == 200, done.text
            assert "Your calendar is connected" in done.text
            again = await owner.get(link)
            assert again.status_code == 404  # spent
        commands = [c for c in await registrations(settings) if c.kind == "register"]
        by_id = {c.resource_id: c for c in commands}
        extra = extra_resource_id("alice", "team@group.example.com")
        assert {rid: c.calendar_id for rid, c in by_id.items()} == {
            "alice": "alice@example.com",
            extra: "team@group.example.com",
        }
        assert by_id["alice"].time_zone == "Europe/Berlin"  # the calendar's own zone
        (refresh_token,) = emulator.grants_of("alice@example.com")
        box = SecretBox(settings.secret_key)
        for command in commands:
            assert command.credentials is not None
            assert box.decrypt(command.credentials["refresh_token"]) == refresh_token
        assert refresh_token.encode() not in await raw_topics(settings)
        assert not any(refresh_token in p for p in owner.pages)


async def test_forged_replayed_and_expired_state_register_nothing(kafka_settings) -> None:
    async with connect_gateway(kafka_settings, connect_state_ttl=3.0) as (_emulator, settings, url):
        async with httpx.AsyncClient() as client:
            owner = Owner(client)
            # forged: a state this gateway never issued, with a real code
            link = await make_link(url, resource_id="forged", calendar_id="alice@example.com")
            callback = await owner.consent(link, "alice@example.com")
            query = parse_qs(urlsplit(callback).query)
            forged = f"{url}/connect/google/callback?state={'A' * 43}&code={query['code'][0]}"
            assert (await owner.get(forged)).status_code == 400
            assert (await owner.get(f"{url}/connect/google/callback?code=x")).status_code == 400
            # replayed: the genuine callback twice; only the first one registers
            replayed_link = await make_link(
                url, resource_id="replayed", calendar_id="bob@example.com"
            )
            callback = await owner.consent(replayed_link, "bob@example.com")
            first = await owner.get(callback)
            assert first.status_code == 200, first.text
            assert (await owner.get(callback)).status_code == 400
            # expired: the owner takes longer than the state's lifetime
            expired_link = await make_link(
                url, resource_id="expired", calendar_id="bob@example.com"
            )
            callback = await owner.consent(expired_link, "bob@example.com")
            await asyncio.sleep(3.5)
            late = await owner.get(callback)
            assert late.status_code == 400
            assert "ten minutes" in late.text
        commands = [c for c in await registrations(settings) if c.kind == "register"]
        assert [c.resource_id for c in commands] == ["replayed"]


async def test_wrong_verifier_and_foreign_code_register_nothing(kafka_settings) -> None:
    async with connect_gateway(kafka_settings) as (emulator, settings, url):
        async with httpx.AsyncClient() as client:
            owner = Owner(client)
            # two consents in progress; each callback gets the other's code, so the
            # verifier sent with it answers another challenge
            one = await owner.consent(
                await make_link(url, resource_id="one", calendar_id="alice@example.com"),
                "alice@example.com",
            )
            two = await owner.consent(
                await make_link(url, resource_id="two", calendar_id="bob@example.com"),
                "bob@example.com",
            )
            q1, q2 = parse_qs(urlsplit(one).query), parse_qs(urlsplit(two).query)
            swapped = f"{url}/connect/google/callback?state={q1['state'][0]}&code={q2['code'][0]}"
            refused = await owner.get(swapped)
            assert refused.status_code == 502, refused.text
            assert "Nothing was connected" in refused.text
            # a code the emulator issued to another OAuth client for the same redirect URI
            link = await make_link(url, resource_id="three", calendar_id="alice@example.com")
            opened = await owner.get(link)
            state = parse_qs(urlsplit(opened.headers["Location"]).query)["state"][0]
            foreign_auth = opened.headers["Location"].replace(CLIENT_ID, "other-client")
            screen = await owner.get(foreign_auth)
            answer = await owner.post(
                emulator.auth_url,
                data={
                    **hidden_fields(screen.text),
                    "user": "alice@example.com",
                    "decision": "allow",
                },
            )
            code = parse_qs(urlsplit(answer.headers["Location"]).query)["code"][0]
            foreign = await owner.get(f"{url}/connect/google/callback?state={state}&code={code}")
            assert foreign.status_code == 502, foreign.text
            # the owner says no
            declined = await owner.consent(
                await make_link(url, resource_id="four", calendar_id="bob@example.com"),
                "bob@example.com",
                decision="deny",
            )
            page = await owner.get(declined)
            assert "You did not allow access" in page.text
        assert [c for c in await registrations(settings) if c.kind == "register"] == []
        assert emulator.grants_of("alice@example.com") == []


async def test_connect_link_api_and_pages_are_bounded(kafka_settings) -> None:
    async with (
        connect_gateway(kafka_settings) as (_emulator, _settings, url),
        httpx.AsyncClient(base_url=url) as client,
    ):
        unauthenticated = await client.post(
            "/api/connect", json={"resource_id": "x", "provider": "google"}
        )
        assert unauthenticated.status_code == 401
        for body in (
            {"resource_id": "x", "provider": "caldav"},
            {"resource_id": "../x", "provider": "google"},
            {"resource_id": "x", "provider": "google", "time_zone": "Mars/Olympus"},
            {"resource_id": "x", "provider": "google", "busy_policy": {"nope": True}},
        ):
            response = await client.post("/api/connect", json=body, headers=ADMIN)
            assert response.status_code == 400, body
        windows = await client.post(
            "/api/connect",
            json={
                "resource_id": "x",
                "provider": "google",
                "time_zone": "W. Europe Standard Time",
            },
            headers=ADMIN,
        )
        assert windows.status_code == 201
        assert (await client.get("/connect/" + "B" * 43)).status_code == 404
        assert (await client.get("/connect/short")).status_code == 404
        link = windows.json()["connect_url"].split("/connect/")[1]
        bad_form = await client.post(
            f"/connect/{link}/calendars", data={"choice": "C" * 43, "calendar": "0"}
        )
        assert bad_form.status_code == 400
        huge = await client.get(f"/connect/google/callback?state={'D' * 43}&code={'c' * 5000}")
        assert huge.status_code == 400
        assert huge.headers["Referrer-Policy"] == "no-referrer"
        assert huge.headers["Cache-Control"] == "no-store"


async def test_connected_calendar_syncs_and_reconnects_after_revocation(kafka_settings) -> None:
    port = free_port()
    async with google_world(
        kafka_settings, web_port=port, public_url=f"http://127.0.0.1:{port}"
    ) as world:
        emulator = world.emulator
        emulator.add_calendar("carol@example.com")
        emulator.add_calendar("bob@example.com")
        emulator.add_redirect_uri(CLIENT_ID, f"http://127.0.0.1:{port}/connect/google/callback")
        emulator.insert_event("carol@example.com", event_body(1))

        async def connect() -> None:
            link = await make_link(world.admin_url, resource_id="carol")
            async with httpx.AsyncClient(follow_redirects=True) as client:
                owner = Owner(client)
                opened = await owner.get(link)
                # carol has one calendar: no picker, it is registered at once
                done = await owner.post(
                    emulator.auth_url,
                    data={
                        **hidden_fields(opened.text),
                        "user": "carol@example.com",
                        "decision": "allow",
                    },
                )
                assert "Your calendar is connected" in done.text, done.text

        await connect()
        world.providers["carol"] = "google"
        await world.wait_converged(["carol"])
        emulator.insert_event("carol@example.com", event_body(2))
        await world.wait_converged(["carol"])

        # the owner revokes the grant: the resource needs a reconnect
        (first_grant,) = emulator.grants_of("carol@example.com")
        emulator.revoke_refresh_token(first_grant)
        emulator.expire_access_tokens()
        emulator.insert_event("carol@example.com", event_body(3))
        deadline = time.monotonic() + 90
        while True:
            status = [s for s in await world.statuses() if s.resource_id == "carol"]
            if any(s.status == "reauth_required" for s in status):
                break
            assert time.monotonic() < deadline, world.worker.tail()
            await asyncio.sleep(1)

        reauth = [s for s in status if s.status == "reauth_required"][-1]
        assert reauth.data == {"reconnect": "/api/resources/carol/reconnect"}
        async with httpx.AsyncClient(base_url=world.admin_url, headers=ADMIN) as api:
            described = await api.get("/api/resources/carol")
            assert described.json()["reconnect"] == "/api/resources/carol/reconnect"
            dashboard = await api.get("/status/")
            assert "reconnect: POST /api/resources/carol/reconnect" in dashboard.text
            made = await api.post("/api/resources/carol/reconnect")
            assert made.status_code == 201, made.text
            assert (await api.post("/api/resources/nobody/reconnect")).status_code == 404
        relink = made.json()["connect_url"]
        async with httpx.AsyncClient(follow_redirects=True) as client:
            owner = Owner(client)
            # someone else signs in: their grant cannot read carol's calendar
            opened = await owner.get(relink)
            wrong = await owner.post(
                emulator.auth_url,
                data={**hidden_fields(opened.text), "user": "bob@example.com", "decision": "allow"},
            )
            assert wrong.status_code == 400 and "cannot read the calendar" in wrong.text
            # carol herself: no picker, the calendar is the resource's
            opened = await owner.get(relink)
            done = await owner.post(
                emulator.auth_url,
                data={
                    **hidden_fields(opened.text),
                    "user": "carol@example.com",
                    "decision": "allow",
                },
            )
            assert "Your calendar is connected" in done.text, done.text
        emulator.insert_event("carol@example.com", event_body(4))
        await world.wait_converged(["carol"])
        await world.events.settle(quiet=2.0)
        upserts = [e for e in world.decoded() if e.change.value == "upsert"]
        per_event: dict[str, set[str]] = {}
        for e in upserts:
            per_event.setdefault(e.native_event_id, set()).add(e.version)
        # every event once per content version: the reconnect re-emitted nothing
        assert len(upserts) == sum(len(v) for v in per_event.values()) == 4
        second_grant = [g for g in emulator.grants_of("carol@example.com") if g != first_grant]
        assert (await world.api_status())["resources"] == 1
        assert len(second_grant) == 1
        # the syncToken belongs to the calendar, not the grant: the new grant resumed from
        # the stored cursor and never listed the calendar in full
        account = emulator.account_of(second_grant[0])
        listings = [
            r
            for r in emulator.requests_for(account=account)
            if r.method == "GET" and r.path.endswith("/events")
        ]
        assert listings, world.worker.tail()
        assert all("syncToken" in r.query for r in listings), [r.query for r in listings]
        carol = [s for s in await world.statuses() if s.resource_id == "carol"]
        recovered = max(i for i, s in enumerate(carol) if s.status == "recovered")
        assert carol[recovered].data == {"resumed": True}
        assert "resync_started" not in [s.status for s in carol[recovered:]]
        log = world.worker.log_path.read_text(errors="replace")
        for token in (first_grant, second_grant[0]):
            assert token not in log
            assert token.encode() not in await raw_topics(world.settings)


# -- Microsoft: msal's auth-code flow against the emulator's /authorize ---------------------


async def test_microsoft_link_registers_the_mailbox_and_events_flow(kafka_settings) -> None:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    async with google_world(
        kafka_settings, microsoft=True, web_port=port, public_url=public
    ) as world:
        ms = world.ms
        assert ms is not None
        ms.add_mailbox("dana@contoso.com", time_zone="W. Europe Standard Time")
        ms.add_mailbox("erin@contoso.com")
        ms.add_redirect_uri(CLIENT_ID, f"{public}/connect/microsoft/callback")
        ms.create_event("dana@contoso.com", ms_event_body(1))
        async with httpx.AsyncClient(
            follow_redirects=True, verify=ssl.create_default_context(cafile=ms.ca_bundle_path)
        ) as client:
            owner = Owner(client)
            # a forged state is refused before anything reaches Microsoft
            forged = await owner.get(f"{public}/connect/microsoft/callback?state={'E' * 43}&code=x")
            assert forged.status_code == 400
            # two consents; the first one's callback carries the second one's code: the
            # PKCE verifier (and msal's state and nonce) belong to another flow
            first = await make_link(world.admin_url, resource_id="dana", provider="microsoft")
            second = await make_link(world.admin_url, resource_id="erin", provider="microsoft")
            screens = [await owner.get(first), await owner.get(second)]
            callbacks = []
            for screen, user in zip(screens, ("dana@contoso.com", "erin@contoso.com"), strict=True):
                assert "wants to access your account" in screen.text
                assert "code_challenge_method=S256" in str(screen.url)
                assert "offline_access" in str(screen.url)
                answer = await client.post(
                    str(screen.url).split("?")[0],
                    data={**hidden_fields(screen.text), "user": user, "decision": "allow"},
                    follow_redirects=False,
                )
                assert answer.status_code == 302, answer.text
                callbacks.append(answer.headers["Location"])
            q1 = parse_qs(urlsplit(callbacks[0]).query)
            q2 = parse_qs(urlsplit(callbacks[1]).query)
            swapped = (
                f"{public}/connect/microsoft/callback?state={q1['state'][0]}&code={q2['code'][0]}"
            )
            refused = await owner.get(swapped)
            assert refused.status_code == 502, refused.text
            assert "Nothing was connected" in refused.text
            # that attempt spent erin's code: her genuine callback cannot redeem it now
            spent = await owner.get(callbacks[1])
            assert spent.status_code == 502, spent.text
            # both open their links again and complete them
            for link, user in ((first, "dana@contoso.com"), (second, "erin@contoso.com")):
                screen = await owner.get(link)
                done = await owner.post(
                    str(screen.url).split("?")[0],
                    data={**hidden_fields(screen.text), "user": user, "decision": "allow"},
                )
                assert "Your calendar is connected" in done.text, done.text
            # the callback replayed registers nothing more
            assert (await owner.get(str(done.url))).status_code == 400
        world.providers["dana"] = world.providers["erin"] = "microsoft"
        await world.wait_converged(["dana", "erin"])
        ms.create_event("dana@contoso.com", ms_event_body(2))
        await world.wait_converged(["dana", "erin"])
        commands = [c for c in await registrations(world.settings) if c.kind == "register"]
        assert sorted((c.resource_id, c.calendar_id) for c in commands) == [
            ("dana", "dana@contoso.com"),
            ("erin", "erin@contoso.com"),
        ]
        log = world.worker.log_path.read_text(errors="replace")
        topics = await raw_topics(world.settings)
        for user in ("dana@contoso.com", "erin@contoso.com"):
            grants = ms.grants_of(user)
            assert grants
            for token in grants:
                assert token not in log and token.encode() not in topics
                assert not any(token in p for p in owner.pages)


async def test_microsoft_code_from_another_client_registers_nothing(kafka_settings) -> None:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    async with google_world(
        kafka_settings, microsoft=True, web_port=port, public_url=public
    ) as world:
        ms = world.ms
        assert ms is not None
        ms.add_mailbox("frank@contoso.com")
        callback = f"{public}/connect/microsoft/callback"
        ms.add_redirect_uri(CLIENT_ID, callback)
        ms.add_client("other-client", "other-secret")
        ms.add_redirect_uri("other-client", callback)  # same redirect URI, another app
        link = await make_link(world.admin_url, resource_id="frank", provider="microsoft")
        async with httpx.AsyncClient(
            verify=ssl.create_default_context(cafile=ms.ca_bundle_path)
        ) as client:
            owner = Owner(client)
            opened = await owner.get(link)
            assert opened.status_code == 302, opened.text
            authorize = urlsplit(opened.headers["Location"])
            query = parse_qs(authorize.query)
            assert query["client_id"] == [CLIENT_ID]
            state = query["state"][0]
            # the same authorization request, made by the other application
            foreign_query = urlencode(
                {k: v[0] for k, v in query.items()} | {"client_id": "other-client"}
            )
            endpoint = f"{authorize.scheme}://{authorize.netloc}{authorize.path}"
            screen = await owner.get(f"{endpoint}?{foreign_query}")
            assert "other-client wants to access your account" in screen.text, screen.text
            answer = await owner.post(
                endpoint,
                data={
                    **hidden_fields(screen.text),
                    "user": "frank@contoso.com",
                    "decision": "allow",
                },
            )
            assert answer.status_code == 302, answer.text
            code = parse_qs(urlsplit(answer.headers["Location"]).query)["code"][0]
            # calsync's callback gets that code with its own, valid state
            foreign = await owner.get(
                f"{public}/connect/microsoft/callback?" + urlencode({"state": state, "code": code})
            )
            assert foreign.status_code == 502, foreign.text
            assert "Nothing was connected" in foreign.text
            assert code not in foreign.text
            # the link is not spent: the owner can open it again
            assert (await owner.get(link)).status_code == 302
        assert ms.grants_of("frank@contoso.com") == []
        assert [c for c in await registrations(world.settings) if c.resource_id == "frank"] == []
        async with httpx.AsyncClient(base_url=world.admin_url, headers=ADMIN) as api:
            assert (await api.get("/api/resources/frank")).status_code == 404
        assert (await world.api_status())["resources"] == 0


# -- the CLI's installed-app flow: a loopback redirect on a free port -----------------------


async def test_cli_connect_google_over_a_loopback_redirect(kafka_settings) -> None:
    async with google_world(kafka_settings) as world:
        emulator = world.emulator
        emulator.add_calendar("gina@example.com")
        emulator.add_redirect_uri(CLIENT_ID, "http://127.0.0.1")  # a "Desktop app" client
        emulator.insert_event("gina@example.com", event_body(1))
        env = {**os.environ, **world.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        process = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "calsync.cli", "connect", "google"],
            *["--resource-id", "gina", "--calendar", "all", "--no-browser", "--wait", "60"],
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        try:
            url = ""
            while not url.startswith("http"):
                line = await asyncio.wait_for(process.stdout.readline(), 60)
                assert line, await process.stderr.read()  # type: ignore[union-attr]
                url = line.decode().strip()
            assert "redirect_uri=http%3A%2F%2F127.0.0.1%3A" in url
            async with httpx.AsyncClient(follow_redirects=True) as client:
                owner = Owner(client)
                screen = await owner.get(url)
                done = await owner.post(
                    emulator.auth_url,
                    data={
                        **hidden_fields(screen.text),
                        "user": "gina@example.com",
                        "decision": "allow",
                    },
                )
                assert "the calendar is connected" in done.text
            out, err = await asyncio.wait_for(process.communicate(), 120)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0, (out, err, world.worker.tail())
        assert b"gina is registered and its first sync finished" in out
        (refresh_token,) = emulator.grants_of("gina@example.com")
        assert refresh_token.encode() not in out + err
        world.providers["gina"] = "google"
        await world.wait_converged(["gina"])


async def test_cli_connect_microsoft_with_a_device_code(kafka_settings) -> None:
    async with google_world(kafka_settings, microsoft=True) as world:
        ms = world.ms
        assert ms is not None
        ms.add_mailbox("hugo@contoso.com")
        ms.create_event("hugo@contoso.com", ms_event_body(1))
        env = {**os.environ, **world.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        process = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "calsync.cli", "connect", "microsoft"],
            *["--resource-id", "hugo", "--wait", "60"],
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        try:
            message = ""
            while "enter the code" not in message:
                line = await asyncio.wait_for(process.stdout.readline(), 60)
                assert line, await process.stderr.read()  # type: ignore[union-attr]
                message = line.decode()
            match = re.search(r"open the page (\S+) and enter the code (\S+) ", message)
            assert match is not None, message
            page, code = match.groups()
            context = ssl.create_default_context(cafile=ms.ca_bundle_path)
            async with httpx.AsyncClient(verify=context) as client:
                # a wrong code first: nothing happens
                wrong = await client.post(
                    page,
                    data={"user_code": "NOPE", "user": "hugo@contoso.com", "decision": "allow"},
                )
                assert wrong.status_code == 400
                done = await client.post(
                    page, data={"user_code": code, "user": "hugo@contoso.com", "decision": "allow"}
                )
                assert "You have signed in" in done.text
            out, err = await asyncio.wait_for(process.communicate(), 120)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0, (out, err, world.worker.tail())
        assert b"signed in as hugo@contoso.com" in out
        assert b"hugo is registered and its first sync finished" in out
        for token in ms.grants_of("hugo@contoso.com"):
            assert token.encode() not in out + err
        world.providers["hugo"] = "microsoft"
        await world.wait_converged(["hugo"])
