"""The authorization-code pieces the emulators share: codes, PKCE, the consent page.

Follows ``reference/oauth-onboarding.md`` §6 (the emulator fidelity checklist):
a ``redirect_uri`` that is not byte-identical to a registered one gets an error
page and no redirect; only ``response_type=code``; ``state`` is echoed verbatim;
a missing ``code_challenge_method`` means ``plain`` (a switch refuses it); codes
are single-use, short-lived and bound to their client, redirect URI and challenge.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

#: How long an authorization code can be redeemed, in seconds (emulator clock).
CODE_LIFETIME: Final = 600.0
_VERIFIER_ALPHABET: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)


@dataclass(slots=True)
class AuthCode:
    """An authorization code the consent page issued, waiting to be redeemed."""

    client_id: str
    redirect_uri: str
    scope: str
    user: str
    code_challenge: str | None
    code_challenge_method: str
    offline: bool
    expires_at: float
    #: Microsoft: the ``nonce`` of the authorize request, echoed in the ID token
    nonce: str | None = None


def pkce_matches(verifier: str | None, challenge: str | None, method: str) -> bool:
    """Whether ``verifier`` answers ``challenge`` (RFC 7636 §4.6); no challenge, no check."""
    if challenge is None:
        return True
    if verifier is None or not 43 <= len(verifier) <= 128:
        return False
    if not set(verifier) <= _VERIFIER_ALPHABET:
        return False
    if method == "S256":
        digest = hashlib.sha256(verifier.encode("ascii")).digest()
        computed = base64.urlsafe_b64encode(digest).decode().rstrip("=")
    else:
        computed = verifier
    return hmac.compare_digest(computed, challenge)


def consent_page(
    *, action: str, hidden: Mapping[str, str], client_id: str, scope: str, user: str
) -> str:
    """The consent screen: who asks for what, a user field, Allow and Deny buttons.

    The form posts ``hidden`` back to ``action`` with ``user`` and ``decision``
    (``allow`` or ``deny``).
    """
    fields = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in hidden.items()
    )
    scopes = "".join(f"<li>{html.escape(s)}</li>" for s in scope.split())
    return (
        "<!doctype html><html><head><title>Sign in - consent</title></head><body>"
        f"<h1>{html.escape(client_id)} wants to access your account</h1>"
        f"<ul>{scopes}</ul>"
        f'<form method="post" action="{html.escape(action)}">{fields}'
        f'<label>Account <input name="user" value="{html.escape(user)}"></label>'
        '<button name="decision" value="allow">Allow</button>'
        '<button name="decision" value="deny">Deny</button>'
        "</form></body></html>"
    )


def error_page(title: str, detail: str) -> str:
    """An authorization server's own error page (no redirect happens)."""
    return (
        f"<!doctype html><html><head><title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(detail)}</p></body></html>"
    )
