"""The Google emulator's authorization server, to the checklist of
reference/oauth-onboarding.md §6: exact redirect URIs, PKCE, single-use codes, JWT-bearer."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from calsync.emulators.google import GoogleEmulator

REDIRECT = "https://app.example.com/connect/google/callback"
VERIFIER = "v" * 43 + "-._~0123456789"
CHALLENGE = (
    base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).decode().rstrip("=")
)


@pytest.fixture
async def emu() -> AsyncIterator[GoogleEmulator]:
    async with GoogleEmulator(seed=3) as emulator:
        emulator.add_client("web", "web-secret")
        emulator.add_client("other", "other-secret")
        emulator.add_redirect_uri("web", REDIRECT)
        emulator.add_redirect_uri("other", REDIRECT)
        emulator.add_calendar("ann@example.com")
        yield emulator


def auth_query(client_id: str = "web", **extra: str) -> str:
    params = {
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "scope": "https://www.googleapis.com/auth/calendar.readonly",
        "state": "st-1",
        "access_type": "offline",
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
        **extra,
    }
    return urlencode(params)


async def consent(
    emu: GoogleEmulator, client: httpx.AsyncClient, query: str, decision: str = "allow"
) -> httpx.Response:
    screen = await client.get(f"{emu.auth_url}?{query}")
    assert screen.status_code == 200, screen.text
    sealed = re.search(r'name="request" value="([^"]+)"', screen.text)
    assert sealed is not None
    return await client.post(
        emu.auth_url,
        data={"request": sealed.group(1), "user": "ann@example.com", "decision": decision},
    )


def code_of(answer: httpx.Response) -> str:
    assert answer.status_code == 302, answer.text
    query = parse_qs(urlsplit(answer.headers["Location"]).query)
    assert query["state"] == ["st-1"]  # echoed verbatim
    return query["code"][0]


async def redeem(
    emu: GoogleEmulator, client: httpx.AsyncClient, code: str, **extra: str
) -> httpx.Response:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": "web",
        "client_secret": "web-secret",
        "code_verifier": VERIFIER,
        **extra,
    }
    return await client.post(emu.token_url, data=form)


async def test_redirect_uri_must_match_byte_for_byte(emu: GoogleEmulator) -> None:
    async with httpx.AsyncClient() as client:
        for uri in (REDIRECT + "/", REDIRECT.upper(), "https://evil.example.com/cb"):
            page = await client.get(f"{emu.auth_url}?{auth_query(redirect_uri=uri)}")
            assert page.status_code == 400 and "redirect_uri_mismatch" in page.text
            assert "Location" not in page.headers  # an error page, never a redirect
        unknown = await client.get(f"{emu.auth_url}?{auth_query('nobody')}")
        assert unknown.status_code == 401
        # a separate process registers redirect URIs over the control route
        control = f"{emu.base_url}/_emulator/redirect_uris"
        added = await client.post(
            control, json={"client_id": "web", "redirect_uri": REDIRECT + "/"}
        )
        assert added.status_code == 201
        page = await client.get(f"{emu.auth_url}?{auth_query(redirect_uri=REDIRECT + '/')}")
        assert page.status_code == 200
        missing = await client.post(control, json={"client_id": "nobody", "redirect_uri": REDIRECT})
        assert missing.status_code == 404


async def test_code_needs_the_verifier_the_client_and_is_single_use(emu: GoogleEmulator) -> None:
    async with httpx.AsyncClient() as client:
        code = code_of(await consent(emu, client, auth_query()))
        wrong = await redeem(emu, client, code, code_verifier="w" * 43)
        assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
        assert wrong.headers["Cache-Control"].startswith("no-cache, no-store")
        # a failed redemption spends the code too
        assert (await redeem(emu, client, code)).json()["error"] == "invalid_grant"

        code = code_of(await consent(emu, client, auth_query()))
        foreign = await redeem(emu, client, code, client_id="other", client_secret="other-secret")
        assert foreign.status_code == 400 and foreign.json()["error"] == "invalid_grant"

        code = code_of(await consent(emu, client, auth_query()))
        moved = await redeem(emu, client, code, redirect_uri=REDIRECT + "?x=1")
        assert moved.status_code == 400

        code = code_of(await consent(emu, client, auth_query()))
        ok = await redeem(emu, client, code)
        assert ok.status_code == 200, ok.text
        assert ok.json()["refresh_token"] in emu.grants_of("ann@example.com")
        assert (await redeem(emu, client, code)).json()["error"] == "invalid_grant"  # replay

        code = code_of(await consent(emu, client, auth_query()))
        emu.advance_clock(601)
        assert (await redeem(emu, client, code)).json()["error"] == "invalid_grant"  # expired


async def test_plain_pkce_and_denial(emu: GoogleEmulator) -> None:
    async with httpx.AsyncClient() as client:
        denied = await consent(emu, client, auth_query(), decision="deny")
        assert parse_qs(urlsplit(denied.headers["Location"]).query) == {
            "error": ["access_denied"],
            "state": ["st-1"],
        }
        # no method means plain (as Google does) unless plain is switched off
        plain = auth_query(code_challenge=VERIFIER, code_challenge_method="")
        code = code_of(await consent(emu, client, plain))
        assert (await redeem(emu, client, code)).status_code == 200
        emu.reject_plain_pkce = True
        refused = await client.get(f"{emu.auth_url}?{plain}")
        assert refused.status_code == 400
        # an online grant has no refresh token
        code = code_of(await consent(emu, client, auth_query(access_type="online")))
        assert "refresh_token" not in (await redeem(emu, client, code)).json()


def jwt(key: dict[str, str], claims: dict[str, object]) -> str:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    head = b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    private = serialization.load_pem_private_key(key["private_key"].encode(), None)
    signature = private.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr,call-arg]
    return f"{head}.{body}.{b64(signature)}"


async def test_jwt_bearer_checks_signature_claims_scope_and_subject(emu: GoogleEmulator) -> None:
    key = emu.create_service_account("sa@p.iam.gserviceaccount.com")
    other = emu.create_service_account("x@p.iam.gserviceaccount.com")
    now = int(time.time())
    good = {
        "iss": "sa@p.iam.gserviceaccount.com",
        "scope": "https://www.googleapis.com/auth/calendar.readonly",
        "aud": "https://oauth2.googleapis.com/token",
        "iat": now,
        "exp": now + 3600,
        "sub": "ann@example.com",
    }

    async def grant(assertion: str) -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.post(
                emu.token_url,
                data={
                    "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                    "assertion": assertion,
                },
            )

    ok = await grant(jwt(key, good))
    assert ok.status_code == 200, ok.text
    assert "refresh_token" not in ok.json()
    assert emu.impersonations == [("sa@p.iam.gserviceaccount.com", "ann@example.com")]
    cases = {
        "signed by another key": (jwt(other, good), 400, "invalid_grant"),
        "two hours": (jwt(key, {**good, "exp": now + 7200}), 400, "invalid_grant"),
        "expired": (jwt(key, {**good, "iat": now - 7200, "exp": now - 3600}), 400, "invalid_grant"),
        "audience": (jwt(key, {**good, "aud": "https://evil/token"}), 400, "invalid_grant"),
        "scope": (
            jwt(key, {**good, "scope": "https://www.googleapis.com/auth/calendar"}),
            401,
            "unauthorized_client",
        ),
        "subject": (jwt(key, {**good, "sub": "nobody@example.com"}), 400, "invalid_grant"),
        "issuer": (
            jwt(key, {**good, "iss": "ghost@p.iam.gserviceaccount.com"}),
            401,
            "invalid_client",
        ),
    }
    for name, (assertion, status, error) in cases.items():
        answer = await grant(assertion)
        assert (answer.status_code, answer.json()["error"]) == (status, error), name
    assert len(emu.impersonations) == 1
