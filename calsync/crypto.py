"""Encryption of credentials and the signed tokens the gateway checks without a lookup.

Both keys are derived from ``CALSYNC_SECRET_KEY`` with HKDF under different labels,
so the encryption key and the webhook-signing key are never the same bytes.
Ciphertexts are Fernet tokens (AES-128-CBC + HMAC-SHA256, authenticated).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from calsync.errors import CryptoError


def _derive(secret_key: str, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"calsync/v1", info=label).derive(
        secret_key.encode()
    )


def derive_key(secret_key: str, label: bytes) -> bytes:
    """32 bytes for one purpose (``label``) from the secret key (HKDF-SHA256)."""
    return _derive(secret_key, label)


class SecretBox:
    """Encrypts and decrypts short secrets (refresh tokens, passwords)."""

    __slots__ = ("_fernet",)

    def __init__(self, secret_key: str) -> None:
        self._fernet = Fernet(base64.urlsafe_b64encode(_derive(secret_key, b"credentials")))

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, ciphertext: str) -> str:
        """Raises :class:`CryptoError` when the ciphertext was not made with this key."""
        try:
            return self._fernet.decrypt(ciphertext.encode("ascii")).decode()
        except (InvalidToken, UnicodeError, ValueError) as exc:
            raise CryptoError("credential ciphertext failed authentication") from exc


@dataclass(frozen=True, slots=True)
class ChannelClaim:
    """What a verified Google channel token says: whose channel it is, and until when."""

    resource_id: str
    #: epoch milliseconds after which the token is refused, signature or not
    expires_at_ms: int

    def expired(self, now: float) -> bool:
        """Whether the token's channel has lapsed at ``now`` (epoch seconds)."""
        return now * 1000 > self.expires_at_ms


class WebhookSigner:
    """Signs and verifies the tokens handed to providers with a push channel.

    A Google channel token is ``<resource id>.<expiry ms>.<signature>``: the resource
    id in unpadded URL-safe base64, the channel's expiry in epoch milliseconds, and
    an HMAC over the channel id, the resource id and the expiry. The gateway learns
    the resource id from the token and checks it in constant time, without a table
    lookup; a token copied to another channel id does not verify, and one whose
    channel has lapsed is refused although it verifies (Google's
    ``X-Goog-Channel-Expiration`` header is not signed, so it is not trusted).
    Tokens are at most 229 characters for a 128-character ASCII resource id (Google
    allows 256).
    """

    __slots__ = ("_key",)

    def __init__(self, secret_key: str) -> None:
        self._key = _derive(secret_key, b"webhooks")

    def _signature(self, purpose: str, *parts: str) -> str:
        message = "\x1f".join((purpose, *parts)).encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def channel_token(self, channel_id: str, resource_id: str, *, expires_at_ms: int) -> str:
        """The token of channel ``channel_id`` of ``resource_id``, valid until ``expires_at_ms``.

        Raises :class:`ValueError` for an implausible expiry or a token that would be
        longer than the 256 characters Google accepts (a resource id over 128 ASCII
        characters).
        """
        if not 0 < expires_at_ms <= _MAX_EXPIRY_MS:
            raise ValueError(f"expires_at_ms {expires_at_ms} is not a plausible epoch-ms time")
        encoded = base64.urlsafe_b64encode(resource_id.encode()).rstrip(b"=").decode("ascii")
        expiry = str(expires_at_ms)
        signature = self._signature(_CHANNEL_PURPOSE, channel_id, resource_id, expiry)
        token = f"{encoded}.{expiry}.{signature}"
        if len(token) > MAX_CHANNEL_TOKEN:
            raise ValueError(f"the channel token of {resource_id!r} would exceed 256 characters")
        return token

    def client_state(self, resource_id: str) -> str:
        """The Graph ``clientState`` of a resource's subscription (43 characters, ≤ 128)."""
        return self._signature("graph-client-state", resource_id)

    def verify_client_state(self, resource_id: str, client_state: str) -> bool:
        expected = self.client_state(resource_id)
        return hmac.compare_digest(expected.encode(), client_state.encode("utf-8", "replace"))

    def verify_channel_token(self, channel_id: str, token: str) -> ChannelClaim | None:
        """What the token claims, or ``None`` if it is malformed or does not verify.

        Parsing is strict: three dot-separated parts of ASCII, canonical base64, an
        expiry without leading zeros; anything else (the two-part tokens of earlier
        versions included) is ``None``. Expiry is the caller's to check
        (:meth:`ChannelClaim.expired`), against its own clock.
        """
        match = _CHANNEL_TOKEN.fullmatch(token) if len(token) <= MAX_CHANNEL_TOKEN else None
        if match is None:
            return None
        encoded, expiry, signature = match.groups()
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            resource_id = raw.decode()
        except (ValueError, UnicodeError):
            return None
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != encoded:
            return None  # non-canonical trailing bits: not a token we made
        try:
            expected = self._signature(_CHANNEL_PURPOSE, channel_id, resource_id, expiry)
        except UnicodeError:
            return None  # a header carrying undecodable bytes (lone surrogates)
        if hmac.compare_digest(expected.encode(), signature.encode()):
            return ChannelClaim(resource_id, int(expiry))
        return None


#: Google's limit on a channel token's length
MAX_CHANNEL_TOKEN = 256
_CHANNEL_PURPOSE = "google-channel/v2"
#: 9999-12-31: beyond this an "expiry" is garbage, and the digits stay few
_MAX_EXPIRY_MS = 253_402_300_799_999
_CHANNEL_TOKEN = re.compile(r"([A-Za-z0-9_-]{1,200})\.([1-9][0-9]{0,14})\.([A-Za-z0-9_-]{43})")
